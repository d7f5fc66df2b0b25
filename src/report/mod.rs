//! What a person reads: report.md's tables, written from `Results` (this file), the probe's
//! figures ([`plots`]) and the SVG chart helpers every stage draws with ([`svg`]).
pub mod plots;
pub mod svg;

use crate::analysis::results::{GroupResult, Results};
use crate::util::fmt::{ci, f};
use std::fmt::Write;

fn group_table(out: &mut String, title: &str, rows: &[GroupResult]) {
    let _ = writeln!(out, "\n## {title}\n");
    let _ = writeln!(
        out,
        "| {title} | countries | questions | mean r (raw) | uniform baseline r (raw) | mean r (normalised) | 95% CI (countries) | cross-country r |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|---:|");
    for g in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            g.name,
            g.n_countries,
            g.n_questions,
            f(g.mean_r_raw),
            f(g.uniform_mean_r_raw),
            f(g.mean_r_normalised),
            ci(g.normalised_ci95),
            f(g.cross_country_r)
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
        r.model.sha256.get(..12).unwrap_or(&r.model.sha256),
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
    overall_table(&mut out, r);
    let _ = writeln!(out, "\nPlots: {}.", plot_links(r));

    country_table(&mut out, r);
    baselines_section(&mut out, r);
    group_table(&mut out, "WVS category", &r.categories);
    if !r.groups.is_empty() {
        group_table(&mut out, "Category group", &r.groups);
        let _ = writeln!(out, "\nGroups from {}:", r.category_groups_source);
        for (g, cats) in &r.category_groups {
            let _ = writeln!(out, "- {g}: {}", cats.join("; "));
        }
    }
    group_table(&mut out, "Continent", &r.continents);
    templates_section(&mut out, r);
    order_section(&mut out, r);
    question_table(&mut out, r);
    out
}

/// The headline numbers, each beside the baseline it is read against.
fn overall_table(out: &mut String, r: &Results) {
    let o = &r.overall;
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
    let _ = writeln!(
        out,
        "| shuffled-country baseline: persona X's answers vs other countries' humans, normalised | {} |",
        f(o.shuffled_r)
    );
    if let Some(usa) = r.references.iter().find(|x| x.iso3 == "USA") {
        let _ = writeln!(out, "| reference: USA humans as the model, normalised | {} |", f(usa.mean_r));
    }
    if o.mean_persona_effect.is_some() {
        let _ = writeln!(out, "| country-blind answers vs each country's humans, normalised | {} |", f(o.mean_blind_r));
        let _ = writeln!(
            out,
            "| persona effect (normalised r with persona minus country-blind) | {} |",
            f(o.mean_persona_effect)
        );
    }
    let _ = writeln!(out, "| mean probability mass on option labels | {:.3} |", o.mean_mass);
    let _ = writeln!(out, "| option orders | {} |", if r.orders.is_empty() { "original" } else { &r.orders });
    if let Some(sp) = &r.order_spread {
        let _ = writeln!(
            out,
            "| expected score range across orders (0-1 scale; {:.1} orders per item) | {:.3} |",
            sp.orders_per_item, sp.mean_range
        );
    }
}

fn country_table(out: &mut String, r: &Results) {
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
}

fn question_table(out: &mut String, r: &Results) {
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
}

/// The SVG files `report::plots` writes next to report.md.
fn plot_links(r: &Results) -> String {
    crate::report::plots::files(r).iter().map(|(f, what)| format!("[{what}](plots/{f})")).collect::<Vec<_>>().join(", ")
}

fn baselines_section(out: &mut String, r: &Results) {
    let _ = writeln!(out, "\n## Baselines per country (normalised r)\n");
    let _ = writeln!(
        out,
        "Own: the model's answers for the persona against that country's humans. Shuffled: the same answers \
         against every other country's humans (Fisher mean); if own is not above shuffled, the persona \
         carries no country-specific knowledge. Best match: the country whose humans these answers \
         match best, and the persona's own rank among {} countries.\n",
        r.countries.first().and_then(|c| c.baselines.as_ref()).map(|b| b.candidates).unwrap_or(0)
    );
    let refs: Vec<&crate::analysis::baseline::Reference> = r.references.iter().collect();
    let mut head = "| country | own r | shuffled r | best match | best r | own rank | persona effect |".to_string();
    let mut rule = "|---|---:|---:|---|---:|---:|---:|".to_string();
    for x in &refs {
        let _ = write!(head, " {} humans |", x.iso3);
        rule.push_str("---:|");
    }
    let _ = writeln!(out, "{head}\n{rule}");
    for c in &r.countries {
        let b = c.baselines.as_ref();
        let _ = write!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            c.iso3,
            f(c.normalised.as_ref().map(|x| x.r)),
            f(b.and_then(|b| b.shuffled_r)),
            b.and_then(|b| b.best_match.clone()).unwrap_or_else(|| "–".into()),
            f(b.and_then(|b| b.best_match_r)),
            b.and_then(|b| b.own_rank).map(|k| k.to_string()).unwrap_or_else(|| "–".into()),
            f(c.persona_effect)
        );
        for x in &refs {
            let _ = write!(out, " {} |", f(x.per_country.get(&c.iso3).copied()));
        }
        let _ = writeln!(out);
    }
    if !refs.is_empty() {
        let _ = write!(out, "| mean | | | | | | |");
        for x in &refs {
            let _ = write!(out, " {} |", f(x.mean_r));
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "\nReference columns: one country's human means used as the \"model\" for each other country \
             (USA, and each continent's most covered country): what a model that knew exactly one culture would score."
        );
    }
    if !r.bias.is_empty() {
        let _ = writeln!(out, "\n### Which humans do the personas match? (western-bias table)\n");
        let _ = writeln!(out, "| persona continent | personas | best match is own country | best-match countries | best-match continents |");
        let _ = writeln!(out, "|---|---:|---:|---|---|");
        let list = |m: &std::collections::BTreeMap<String, usize>| {
            let mut v: Vec<(&String, &usize)> = m.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            v.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
        };
        for b in &r.bias {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                b.continent,
                b.personas,
                b.own_best,
                list(&b.best_matches),
                list(&b.best_continents)
            );
        }
    }
}

fn templates_section(out: &mut String, r: &Results) {
    if r.templates.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n## Prompt templates\n");
    let _ = writeln!(out, "| template | items | label mass | r raw | r normalised | 95% CI | cross-country r |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---|---:|");
    for t in &r.templates {
        let _ = writeln!(
            out,
            "| {} | {} | {:.3} | {} | {} | {} | {} |",
            t.name,
            t.n_items,
            t.mean_mass,
            f(t.mean_r_raw),
            f(t.mean_r_normalised),
            ci(t.mean_r_normalised_ci95),
            f(t.cross_country_r)
        );
    }
    let o = &r.overall;
    let _ = writeln!(
        out,
        "| ensemble (probabilities averaged) | | {:.3} | {} | {} | {} | {} |",
        o.mean_mass,
        f(o.mean_r_raw),
        f(o.mean_r_normalised),
        ci(o.mean_r_normalised_ci95),
        f(o.cross_country_r)
    );
}

fn order_section(out: &mut String, r: &Results) {
    if r.position_bias.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n## Option positions\n");
    let _ = writeln!(
        out,
        "Mean probability of the option shown at each position, by number of options. With orders \
         `{}`, {}.\n",
        if r.orders.is_empty() { "original" } else { &r.orders },
        if r.orders.is_empty() || r.orders == "original" {
            "each position always holds the same option, so content and position are confounded"
        } else {
            "every option is shown at several positions, so unequal means are a preference for positions"
        }
    );
    let _ = writeln!(out, "| options | prompts | uniform | P(position 1), P(2), ... |");
    let _ = writeln!(out, "|---:|---:|---:|---|");
    for b in &r.position_bias {
        let ps: Vec<String> = b.mean_prob.iter().map(|p| format!("{p:.3}")).collect();
        let _ = writeln!(out, "| {} | {} | {:.3} | {} |", b.k, b.prompts, 1.0 / b.k as f64, ps.join(", "));
    }
    if let Some(sp) = &r.order_spread {
        let _ = writeln!(
            out,
            "\n{} items asked in {:.1} orders on average: the normalised expected score moves by {:.3} \
             (mean range; mean sd {:.3}) with the order alone, and the most likely option changes in {:.0}% of items.",
            sp.items,
            sp.orders_per_item,
            sp.mean_range,
            sp.mean_sd,
            100.0 * sp.top_option_changes
        );
    }
}

/// Side-by-side summary of several runs (`mores compare`): each run's numbers with CIs, and
/// each later run against the first, paired over the countries both probed.
pub fn compare(runs: &[(String, Results)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| run | model | arch | prompting | prompts | countries | label mass | r raw | uniform r raw | r normalised | 95% CI | shuffled r | cross-country r | persona effect | position-1 share (4 options) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|");
    for (dir, r) in runs {
        let o = &r.overall;
        let p1 = r.position_bias.iter().find(|b| b.k == 4).and_then(|b| b.mean_prob.first().copied());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.3} | {} | {} | {} | {} | {} | {} | {} | {} |",
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
            ci(o.mean_r_normalised_ci95),
            f(o.shuffled_r),
            f(o.cross_country_r),
            f(o.mean_persona_effect),
            f(p1)
        );
    }
    if runs.len() >= 2 {
        let _ =
            writeln!(out, "\nPaired over the countries both runs probed (normalised r, bootstrap over countries):\n");
        let _ = writeln!(out, "| run | vs | countries | mean difference | 95% CI | p |");
        let _ = writeln!(out, "|---|---|---:|---:|---|---:|");
        let (base_dir, base) = &runs[0];
        for (dir, r) in &runs[1..] {
            let d = paired_difference(base, r);
            let _ = writeln!(
                out,
                "| {dir} | {base_dir} | {} | {} | {} | {} |",
                d.n,
                f(d.mean),
                ci(d.ci95),
                d.p.map(|p| format!("{p:.3}")).unwrap_or_else(|| "–".into())
            );
        }
    }
    out
}

pub struct Paired {
    pub n: usize,
    pub mean: Option<f64>,
    pub ci95: Option<(f64, f64)>,
    pub p: Option<f64>,
}

/// Mean over shared countries of (b's normalised r - a's), with a seeded bootstrap over countries.
pub fn paired_difference(a: &Results, b: &Results) -> Paired {
    let d: Vec<f64> = b
        .countries
        .iter()
        .filter_map(|cb| {
            let ca = a.countries.iter().find(|c| c.iso3 == cb.iso3)?;
            Some(cb.normalised.as_ref()?.r - ca.normalised.as_ref()?.r)
        })
        .collect();
    let mean = |idx: &[usize]| crate::analysis::correlate::mean(&idx.iter().map(|&i| d[i]).collect::<Vec<_>>());
    let seed = crate::util::seed::from_text(&format!("mores-compare:{}:{}", a.model.sha256, b.model.sha256));
    let (ci95, vals) = crate::analysis::correlate::bootstrap(d.len(), crate::analysis::results::BOOTSTRAP, seed, mean);
    Paired {
        n: d.len(),
        mean: mean(&(0..d.len()).collect::<Vec<_>>()),
        ci95,
        p: crate::analysis::correlate::bootstrap_p(&vals),
    }
}
