//! report.md: the tables a person reads, written from `Results`.
use crate::results::{GroupResult, Results};
use std::fmt::Write;

/// A correlation or mean to 3 decimals, or "–" when undefined.
pub fn f(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into())
}

fn group_table(out: &mut String, title: &str, rows: &[GroupResult]) {
    let _ = writeln!(out, "\n## {title}\n");
    let _ = writeln!(
        out,
        "| {title} | countries | questions | mean r (raw) | mean r (normalised) | uniform baseline r (raw) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for g in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            g.name,
            g.n_countries,
            g.n_questions,
            f(g.mean_r_raw),
            f(g.mean_r_normalised),
            f(g.uniform_mean_r_raw)
        );
    }
}

pub fn markdown(r: &Results) -> String {
    let mut out = String::new();
    let o = &r.overall;
    let _ = writeln!(out, "# mores probe: {}\n", r.model.name);
    let _ = writeln!(
        out,
        "Model `{}` ({}, {}, sha256 `{}`), recipe `{}`, template `{}`, {} prompts over {} countries.\n",
        r.model.path.display(),
        r.model.architecture,
        if r.model.chat_template.is_some() { "chat template" } else { "plain text" },
        &r.model.sha256[..12],
        r.recipe,
        r.template,
        o.n_samples,
        o.n_countries
    );
    let _ = writeln!(
        out,
        "Raw r compares model and human mean scores on each question's own scale (1-4, 1-10, ...): \
         because scales differ, a model answering uniformly at random already scores the baseline \
         shown beside it. Normalised r maps every question to [0, 1] first, and cross-country r asks \
         whether the model ranks countries like humans do on the same question: that is the test of \
         cultural knowledge.\n"
    );
    let _ = writeln!(out, "| metric | value |\n|---|---:|");
    let _ = writeln!(out, "| mean per-country r, raw (paper's metric) | {} |", f(o.mean_r_raw));
    let _ = writeln!(out, "| same, uniform-answer baseline | {} |", f(o.uniform_mean_r_raw));
    let ci = |c: Option<(f64, f64)>| c.map(|(lo, hi)| format!(" (95% CI {lo:.3} to {hi:.3})")).unwrap_or_default();
    let _ = writeln!(
        out,
        "| mean per-country r, scale-normalised | {}{} |",
        f(o.mean_r_normalised),
        ci(o.mean_r_normalised_ci95)
    );
    let _ = writeln!(out, "| mean per-country Spearman rho, normalised | {} |", f(o.mean_spearman));
    let _ = writeln!(out, "| mean 1 - Jensen-Shannon distance to human distributions | {} |", f(o.mean_js_similarity));
    let _ = writeln!(out, "| mean Wasserstein-1 to human distributions (0-1 scale) | {} |", f(o.mean_wasserstein));
    let _ = writeln!(
        out,
        "| cross-country r per question (Fisher mean; {} of {} positive) | {} |",
        o.cross_country_positive,
        o.cross_country_questions,
        f(o.cross_country_r)
    );
    let _ = writeln!(out, "| mean probability mass on option labels | {:.3} |", o.mean_mass);

    let _ = writeln!(out, "\n## Countries\n");
    let _ = writeln!(
        out,
        "| country | name | continent | n | r (raw) | p | r (normalised) | 95% CI | p | Spearman | 1-JSD | W1 | uniform r (raw) | label mass |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    for c in &r.countries {
        let (rr, rp) = c.raw.as_ref().map(|x| (Some(x.r), Some(x.p))).unwrap_or((None, None));
        let (nr, np) = c.normalised.as_ref().map(|x| (Some(x.r), Some(x.p))).unwrap_or((None, None));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.3} |",
            c.iso3,
            c.name,
            c.continent,
            c.n,
            f(rr),
            rp.map(|p| format!("{p:.2e}")).unwrap_or_else(|| "–".into()),
            f(nr),
            c.normalised_ci95.map(|(lo, hi)| format!("{lo:.3} to {hi:.3}")).unwrap_or_else(|| "–".into()),
            np.map(|p| format!("{p:.2e}")).unwrap_or_else(|| "–".into()),
            f(c.spearman),
            f(c.js_similarity),
            f(c.wasserstein),
            f(c.uniform_raw_r),
            c.mean_mass
        );
    }
    group_table(&mut out, "WVS category", &r.categories);
    group_table(&mut out, "Continent", &r.continents);
    let _ = writeln!(out, "\n## Questions across countries\n");
    let _ = writeln!(out, "| question | category | countries | cross-country r | model spread | human spread |");
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|");
    for q in r.questions.iter().filter(|q| q.n_countries >= 3) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.3} | {:.3} |",
            q.id,
            q.category,
            q.n_countries,
            f(q.cross_country.as_ref().map(|c| c.r)),
            q.model_spread,
            q.human_spread
        );
    }
    out
}

/// Side-by-side summary of several runs (`mores compare`).
pub fn compare(runs: &[(String, Results)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| run | model | arch | prompting | prompts | countries | label mass | r raw | uniform r raw | r normalised | cross-country r |"
    );
    let _ = writeln!(out, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (dir, r) in runs {
        let o = &r.overall;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.3} | {} | {} | {} | {} |",
            dir,
            r.model.name,
            r.model.architecture,
            if r.model.chat_template.is_some() { "chat" } else { "plain" },
            o.n_samples,
            o.n_countries,
            o.mean_mass,
            f(o.mean_r_raw),
            f(o.uniform_mean_r_raw),
            f(o.mean_r_normalised),
            f(o.cross_country_r)
        );
    }
    out
}
