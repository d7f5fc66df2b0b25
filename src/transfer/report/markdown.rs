//! report.md: the two verdicts first, then for held-out and training questions the question-level
//! table, the country-level table (cross-country r, swap control, persona spread), the references
//! on the same pairs, and per-country, continent and category breakdowns.
use super::verdict::{describe, describe_to};
use super::{CountryLevel, QuestionLevel, SubsetReport, TransferReport};
use crate::util::fmt::{ci, f};
use std::fmt::Write;

const EXPLAIN: &str = "Two levels are measured apart. **Question level**: per country, Pearson r across questions between the student's expected scores and the humans' mean scores, scale-normalised to [0, 1] per question (raw r on WVS means is inflated by question scales: a uniform-answer model already scores about 0.72); moving toward each question's typical answer raises it in every country at once. **Country level**: per question, r across the probed countries (only questions probed in enough countries), and the country-swap control: 1 - JSD to the right country's humans with the right country's persona minus with another probed country's persona (a seeded derangement per question); a student that learned how countries differ has a positive gap. Changes carry a paired bootstrap 95% CI (over questions per country, over countries for means, over questions at the country level) and a bootstrap p-value; means of r are Fisher-z means; the mean change is the mean of the per-country changes, so it need not equal their difference.";

const REFERENCES: &str = "Typical answer: every country gets the question's mean human distribution over the probed countries (no country knowledge; an oracle, it reads these questions' humans). Lexical neighbour: the nearest question by TF-IDF word overlap (text and option labels) lends its human country profile, from the whole training split or from the student's training questions only (the source questions of the dataset's records, less those the training held out whole for validation). k neighbours z-scored: the k nearest questions' human country profiles, each z-scored across the countries that answered it, averaged per country; it predicts the order of countries only, so it has no within-country r (–). The student-minus-predictor difference is over the questions both have a cross-country r for, with a paired bootstrap over those questions; cross-country r CIs are bootstraps over questions.";

fn pct(x: Option<f64>) -> String {
    x.map(|v| format!("{:.0}%", 100.0 * v)).unwrap_or_else(|| "n/a".into())
}

fn question_level(s: &mut String, x: &QuestionLevel) {
    let _ = writeln!(s, "### Question level (within countries)\n");
    let _ = writeln!(s, "| metric | before | after | change |\n|---|---:|---:|---|");
    let rows = [
        ("mean r, normalised", x.mean_r_before, x.mean_r_after, describe(&x.mean_delta)),
        ("mean r, raw (paper)", x.mean_r_before_raw, x.mean_r_after_raw, describe(&x.mean_delta_raw)),
        ("1 - JSD to human distribution", x.js_before, x.js_after, describe(&x.mean_delta_js)),
    ];
    for (name, b, a, d) in rows {
        let _ = writeln!(s, "| {name} | {} | {} | {d} |", f(b), f(a));
    }
    let _ = writeln!(s, "| countries improved | | | {} |\n", pct(x.share_improved));
}

fn country_level(s: &mut String, c: &CountryLevel) {
    let _ = writeln!(
        s,
        "### Country level (across countries): {} questions probed in at least {} countries ({} countries each on average; {} questions with fewer left out)\n",
        c.n_questions,
        c.min_countries,
        c.mean_countries_per_question.map(|v| format!("{v:.1}")).unwrap_or_else(|| "–".into()),
        c.n_questions_few_countries
    );
    let w = &c.swap;
    let _ = writeln!(s, "| metric | before | after | change |\n|---|---:|---:|---|");
    let _ =
        writeln!(s, "| cross-country r per question | {} | {} | {} |", f(c.r_before), f(c.r_after), describe(&c.delta));
    let _ = writeln!(s, "| questions improved | | | {} |", pct(c.share_improved));
    let f4 = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into());
    let _ = writeln!(s, "| 1 - JSD, right country's persona | {} | {} | |", f4(w.js_true_before), f4(w.js_true_after));
    let _ = writeln!(s, "| 1 - JSD, swapped persona | {} | {} | |", f4(w.js_swapped_before), f4(w.js_swapped_after));
    let _ = writeln!(
        s,
        "| swap gap (right - swapped), {} pairs | {} | {} | {} |",
        w.n_pairs,
        describe_to(&w.gap_before, 4),
        describe_to(&w.gap_after, 4),
        describe_to(&w.gap_change, 4)
    );
    let _ = writeln!(
        s,
        "| persona spread (SD across countries / humans' SD) | {} | {} | |\n",
        f(c.spread_before),
        f(c.spread_after)
    );
}

fn references(s: &mut String, x: &SubsetReport) {
    let _ = writeln!(s, "### References on the same pairs\n");
    let _ = writeln!(s, "{REFERENCES}\n");
    let _ = writeln!(
        s,
        "| predictor | within-country r | cross-country r | cross-country r 95% CI | student after - predictor, cross-country r (95% CI) | 1 - JSD | persona spread |\n|---|---:|---:|---|---|---:|---:|"
    );
    for r in &x.references.rows {
        let p = &r.profile;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            f(p.within_r),
            f(p.cross_r),
            ci(r.cross_r_ci95),
            r.after_minus_reference.as_ref().map(describe).unwrap_or_else(|| "–".into()),
            f(p.js),
            f(p.spread)
        );
    }
    let _ = writeln!(s);
}

fn breakdowns(s: &mut String, x: &QuestionLevel) {
    let _ = writeln!(s, "| country | continent | questions | r before | r after | change (95% CI) | p | 1-JSD before | after | teacher r |");
    let _ = writeln!(s, "|---|---|---:|---:|---:|---|---:|---:|---:|---:|");
    for c in &x.countries {
        let ci = c.delta.ci95.map(|(lo, hi)| format!(" ({lo:+.3}, {hi:+.3})")).unwrap_or_default();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {}{} | {} | {} | {} | {} |",
            c.iso3,
            c.continent,
            c.n_questions,
            f(c.r_before),
            f(c.r_after),
            c.delta.value.map(|v| format!("{v:+.3}")).unwrap_or_else(|| "n/a".into()),
            ci,
            c.delta.p.map(|p| format!("{p:.3}")).unwrap_or_else(|| "n/a".into()),
            f(c.js_before),
            f(c.js_after),
            f(c.r_teacher)
        );
    }
    let groups = [
        ("continent", "countries", "r before", &x.continents),
        ("category", "pairs", "r before (pooled)", &x.categories),
    ];
    for (what, n, rb, gs) in groups {
        let _ = writeln!(s, "\n| {what} | {n} | {rb} | r after | change (95% CI) |\n|---|---:|---:|---:|---|");
        for g in gs {
            let _ =
                writeln!(s, "| {} | {} | {} | {} | {} |", g.name, g.n, f(g.r_before), f(g.r_after), describe(&g.delta));
        }
    }
    let _ = writeln!(s);
}

fn part(s: &mut String, title: &str, x: &SubsetReport) {
    let _ =
        writeln!(s, "## {title}: {} questions x {} countries ({} pairs)\n", x.n_questions, x.n_countries, x.n_pairs);
    question_level(s, &x.question_level);
    country_level(s, &x.country_level);
    references(s, x);
    breakdowns(s, &x.question_level);
}

pub fn markdown(r: &TransferReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Transfer report: {}\n", r.name);
    let _ = writeln!(s, "- {}\n- {}", r.verdict_question_level, r.verdict_country_level);
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    let _ = writeln!(s, "\nDataset: `{}` ({} records). {EXPLAIN}\n", r.dataset, r.dataset_records);
    part(&mut s, "Held-out questions (never seen in training)", &r.heldout);
    if let Some(t) = &r.train {
        part(&mut s, "Training questions (seen in training)", t);
    }
    let _ = writeln!(s, "![before and after per country](transfer.svg)\n");
    let _ = writeln!(s, "![before, after and change per continent](transfer-continents.svg)\n");
    let _ = writeln!(s, "![cross-country r per held-out question](transfer-questions.svg)\n");
    if !r.stage_seconds.is_empty() {
        let _ = writeln!(s, "| stage | seconds | |\n|---|---:|---|");
        for (k, (secs, skipped)) in &r.stage_seconds {
            let _ = writeln!(s, "| {k} | {secs:.1} | {} |", if *skipped { "skipped (up to date)" } else { "" });
        }
    }
    s
}
