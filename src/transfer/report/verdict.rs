//! The report's verdicts, one per level, never merged: question-level transfer (the student moved
//! toward the humans within countries, which the typical answer alone achieves) and country-level
//! transfer (it tells countries apart on questions it never saw, confirmed by the swap control).
//! "Detected" is said only of the level whose change has a 95% CI above 0.
use super::country::CountryLevel;
use super::pairs::Delta;
use super::within::QuestionLevel;
use crate::util::fmt::f;

pub fn describe(d: &Delta) -> String {
    describe_to(d, 3)
}

/// `describe` with `digits` decimals (swap gaps in 1 - JSD are often below 0.001).
pub fn describe_to(d: &Delta, digits: usize) -> String {
    let n = digits;
    match (d.value, d.ci95, d.p) {
        // A bootstrap p of 0 means no resample crossed zero: below what the resamples resolve.
        (Some(v), Some((lo, hi)), Some(p)) if p < 0.001 => {
            format!("{v:+.n$} (95% CI {lo:+.n$} to {hi:+.n$}, p < 0.001)")
        }
        (Some(v), Some((lo, hi)), Some(p)) => format!("{v:+.n$} (95% CI {lo:+.n$} to {hi:+.n$}, p = {p:.3})"),
        (Some(v), _, _) => format!("{v:+.n$} (no CI: too few points)"),
        _ => "n/a".into(),
    }
}

pub fn up(d: &Delta) -> bool {
    d.ci95.is_some_and(|(lo, _)| lo > 0.0)
}

fn down(d: &Delta) -> bool {
    d.ci95.is_some_and(|(_, hi)| hi < 0.0)
}

pub fn question_level(q: &QuestionLevel) -> String {
    let d = describe(&q.mean_delta);
    if up(&q.mean_delta) {
        format!("Question-level transfer detected: within-country normalised r on held-out questions rose by {d}.")
    } else if down(&q.mean_delta) {
        format!(
            "Question-level: within-country normalised r on held-out questions fell by {d}: the fine-tune moved the student away from the humans."
        )
    } else {
        format!(
            "Question-level transfer not detected: within-country normalised r on held-out questions changed by {d}."
        )
    }
}

pub fn country_level(c: &CountryLevel, probed: usize) -> String {
    if c.delta.ci95.is_none() {
        return format!(
            "Country-level transfer not measurable: {} held-out questions were probed in at least {} countries ({probed} countries probed); cross-country r needs at least {} countries per question and 5 such questions.",
            c.n_questions, c.min_countries, c.min_countries
        );
    }
    let what = format!(
        "cross-country r per held-out question ({} questions, {:.1} countries each) {} -> {}, change {}, {} of questions improved; swap gap after training {}",
        c.n_questions,
        c.mean_countries_per_question.unwrap_or(0.0),
        f(c.r_before),
        f(c.r_after),
        describe(&c.delta),
        c.share_improved.map(|v| format!("{:.0}%", 100.0 * v)).unwrap_or_else(|| "n/a".into()),
        describe_to(&c.swap.gap_after, 4)
    );
    if up(&c.delta) && up(&c.swap.gap_after) {
        format!("Country-level transfer detected: {what}.")
    } else if up(&c.delta) {
        format!(
            "Country-level transfer not confirmed: {what}; the cross-country r rose but the student does not do better with the right country's persona than with a swapped one."
        )
    } else if down(&c.delta) {
        format!("Country-level: {what}: the fine-tune made the student's country differences less like the humans'.")
    } else {
        format!("Country-level transfer not detected: {what}.")
    }
}

/// The question-level verdict in a word or two, for tables: "detected", "fell" or "not detected",
/// by the same rule as `question_level`.
pub fn question_level_short(q: &QuestionLevel) -> &'static str {
    if up(&q.mean_delta) {
        "detected"
    } else if down(&q.mean_delta) {
        "fell"
    } else {
        "not detected"
    }
}

/// The country-level verdict in a word or two, for tables: "not measurable", "detected", "not
/// confirmed" (cross-country r up without a swap gap), "fell" or "not detected", by the same rule
/// as `country_level`.
pub fn country_level_short(c: &CountryLevel) -> &'static str {
    if c.delta.ci95.is_none() {
        "not measurable"
    } else if up(&c.delta) && up(&c.swap.gap_after) {
        "detected"
    } else if up(&c.delta) {
        "not confirmed"
    } else if down(&c.delta) {
        "fell"
    } else {
        "not detected"
    }
}

/// The sentence that names which level a held-out gain belongs to, when only one level moved.
pub fn reading(q: &QuestionLevel, c: &CountryLevel) -> Option<String> {
    let country = up(&c.delta) && up(&c.swap.gap_after);
    if c.delta.ci95.is_none() {
        return up(&q.mean_delta).then(|| {
            "Only the question level is measurable here, and a question-level gain is what each question's typical answer alone gives (see the typical-answer reference); probe more countries per question to measure the country level.".into()
        });
    }
    match (up(&q.mean_delta), country) {
        (true, false) => Some(
            "The held-out gain is question-level: the student moved toward each question's typical answer, not toward how countries differ."
                .into(),
        ),
        (false, true) => Some(
            "The student learned how countries differ without moving its within-country alignment.".into(),
        ),
        _ => None,
    }
}

/// The training questions' fit, both levels: a variant that does not fit the country differences
/// of the questions it trained on cannot transfer them.
pub fn training(q: &QuestionLevel, c: &CountryLevel) -> String {
    format!(
        "Training questions (fit): within-country change {}; cross-country change {}.",
        describe(&q.mean_delta),
        describe(&c.delta)
    )
}

#[cfg(test)]
mod tests {
    use super::super::country::SwapControl;
    use super::*;

    fn delta(v: f64, lo: f64, hi: f64) -> Delta {
        Delta { value: Some(v), ci95: Some((lo, hi)), p: Some(0.01) }
    }

    fn levels(q: Delta, c: Delta, gap: Delta) -> (QuestionLevel, CountryLevel) {
        let ql = QuestionLevel {
            mean_r_before_raw: None,
            mean_r_after_raw: None,
            mean_r_before: Some(0.1),
            mean_r_after: Some(0.3),
            mean_r_teacher: None,
            mean_delta: q,
            mean_delta_raw: Delta::default(),
            mean_delta_js: Delta::default(),
            js_before: None,
            js_after: None,
            share_improved: None,
            countries: vec![],
            continents: vec![],
            categories: vec![],
        };
        let cl = CountryLevel {
            min_countries: 8,
            n_questions: 20,
            n_questions_few_countries: 0,
            mean_countries_per_question: Some(15.0),
            r_before: Some(0.0),
            r_after: Some(0.2),
            delta: c,
            share_improved: Some(0.7),
            spread_before: None,
            spread_after: None,
            swap: SwapControl { gap_after: gap, ..Default::default() },
            questions: vec![],
        };
        (ql, cl)
    }

    /// Every combination of the two effects gets its own wording; "detected" only where it holds.
    #[test]
    fn verdict_wording_for_each_combination() {
        let (pos, null, neg) = (delta(0.2, 0.1, 0.3), delta(0.01, -0.1, 0.1), delta(-0.2, -0.3, -0.1));
        let cases = [
            (
                pos.clone(),
                pos.clone(),
                pos.clone(),
                "Question-level transfer detected",
                "Country-level transfer detected",
                None,
            ),
            (
                pos.clone(),
                null.clone(),
                null.clone(),
                "Question-level transfer detected",
                "Country-level transfer not detected",
                Some("is question-level"),
            ),
            (
                null.clone(),
                pos.clone(),
                pos.clone(),
                "Question-level transfer not detected",
                "Country-level transfer detected",
                Some("without moving"),
            ),
            (
                null.clone(),
                pos.clone(),
                null.clone(),
                "Question-level transfer not detected",
                "Country-level transfer not confirmed",
                None,
            ),
            (neg.clone(), neg.clone(), null.clone(), "held-out questions fell", "less like the humans", None),
            (
                null.clone(),
                null.clone(),
                pos.clone(),
                "Question-level transfer not detected",
                "Country-level transfer not detected",
                None,
            ),
        ];
        for (q, c, g, qwant, cwant, read) in cases {
            let (ql, cl) = levels(q, c, g);
            let (qs, cs) = (question_level(&ql), country_level(&cl, 15));
            assert!(qs.contains(qwant), "{qs}");
            assert!(cs.contains(cwant), "{cs}");
            // The short labels follow the sentences.
            let (qshort, cshort) = (question_level_short(&ql), country_level_short(&cl));
            assert!(qs.contains(&format!("transfer {qshort}")) || qshort == "fell" && qs.contains("fell"), "{qs}");
            assert!(cs.contains(&format!("transfer {cshort}")) || cshort == "fell" && cs.contains("less like"), "{cs}");
            let r = reading(&ql, &cl);
            match read {
                Some(w) => assert!(r.as_deref().is_some_and(|r| r.contains(w)), "{r:?}"),
                None => assert!(r.is_none(), "{r:?}"),
            }
        }
        let (ql, mut cl) = levels(pos.clone(), pos.clone(), pos);
        cl.delta.ci95 = None;
        cl.n_questions = 3;
        let cs = country_level(&cl, 6);
        assert!(cs.starts_with("Country-level transfer not measurable: 3 held-out questions"), "{cs}");
        assert_eq!(country_level_short(&cl), "not measurable");
        assert!(reading(&ql, &cl).unwrap().starts_with("Only the question level is measurable"));
    }
}
