//! The transfer report's numbers on tiny hand-made surveys and probes, no model needed:
//! the references against values computed by hand, and planted effects (country differences vs
//! typical answers only) landing at the level they were planted at.
use mores::probe::Sample;
use mores::survey::Survey;
use mores::transfer::report::{build, Inputs, TransferReport};
use std::collections::HashMap;
use std::path::Path;

/// A 3-option question whose humans answer Binomial(2, m): the normalised mean score is m exactly.
pub(crate) fn binomial(m: f64) -> Vec<f64> {
    vec![(1.0 - m) * (1.0 - m), 2.0 * m * (1.0 - m), m * m]
}

pub(crate) struct Tiny {
    /// (id, text, option labels)
    pub questions: Vec<(String, String, [String; 3])>,
    pub countries: Vec<String>,
    pub means: HashMap<(String, String), f64>,
}

impl Tiny {
    pub fn write(&self, dir: &Path) -> Survey {
        let mut q = String::new();
        for (id, text, labels) in &self.questions {
            let options: Vec<serde_json::Value> = labels
                .iter()
                .enumerate()
                .map(|(i, l)| serde_json::json!({"code": i + 1, "label": l, "score": (i + 1) as f64}))
                .collect();
            let rec = serde_json::json!({"qid": id, "category": "Test", "is_value_question": true, "label": text,
                "text": text, "options": options, "ordinal": true});
            q.push_str(&format!("{rec}\n"));
        }
        std::fs::write(dir.join("wvs7_questions.jsonl"), q).unwrap();
        let mut c = String::from("iso3,name,wvs_name,continent\n");
        for (i, iso) in self.countries.iter().enumerate() {
            c.push_str(&format!("{iso},Country {iso},,{}\n", if i % 2 == 0 { "Europe" } else { "Asia" }));
        }
        std::fs::write(dir.join("countries.csv"), c).unwrap();
        let mut d = String::new();
        let mut keys: Vec<_> = self.means.keys().collect();
        keys.sort();
        for (qid, iso) in keys {
            let p = binomial(self.means[&(qid.clone(), iso.clone())]);
            let rec = serde_json::json!({"qid": qid, "country": iso, "source": "test",
                "distribution": {"1": p[0], "2": p[1], "3": p[2]}});
            d.push_str(&format!("{rec}\n"));
        }
        std::fs::write(dir.join("wvs7_country_distributions.jsonl"), d).unwrap();
        Survey::load(dir).unwrap()
    }
}

pub(crate) fn sample(s: &Survey, q: &str, c: &str, m: f64) -> Sample {
    let question = s.question(q).unwrap();
    let probs = binomial(m.clamp(0.0, 1.0));
    let human = s.answers(q, c).unwrap();
    Sample {
        id: format!("{q}-{c}"),
        question_id: q.into(),
        country: c.into(),
        category: question.category.clone(),
        template: "persona".into(),
        prompt: String::new(),
        prompt_sha256: String::new(),
        labels: vec!["1".into(), "2".into(), "3".into()],
        codes: vec![1, 2, 3],
        order: vec![],
        raw: probs.clone(),
        expected_score: question.expected_score(&probs),
        probs,
        position_probs: vec![],
        mass: 1.0,
        unread_mass: None,
        n_tokens: 1,
        human_mean: human.mean,
        human_distribution: human.distribution.clone(),
    }
}

pub(crate) fn write_probe(dir: &Path, samples: &[Sample]) {
    std::fs::create_dir_all(dir).unwrap();
    let text: String = samples.iter().map(|s| serde_json::to_string(s).unwrap() + "\n").collect();
    std::fs::write(dir.join("samples.jsonl"), text).unwrap();
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn report(
    dir: &Path,
    s: &Survey,
    before: &[Sample],
    after: &[Sample],
    teacher: Option<&[Sample]>,
    heldout: &[String],
    train_split: &[String],
    min_countries: usize,
) -> TransferReport {
    write_probe(&dir.join("before"), before);
    write_probe(&dir.join("after"), after);
    if let Some(t) = teacher {
        write_probe(&dir.join("teacher"), t);
    }
    let teacher_dir = dir.join("teacher");
    build(&Inputs {
        name: "t".into(),
        survey: s,
        before: &dir.join("before"),
        after: &dir.join("after"),
        teacher: teacher.map(|_| teacher_dir.as_path()),
        heldout,
        train: &[],
        train_split,
        trained: &[],
        neighbours: 3,
        min_countries,
        bootstrap: 400,
        seed: 0,
        dataset: &dir.join("none.jsonl"),
    })
    .unwrap()
}

pub(crate) fn s3(a: &str, b: &str, c: &str) -> [String; 3] {
    [a.into(), b.into(), c.into()]
}

fn row<'a>(r: &'a TransferReport, name: &str) -> &'a mores::transfer::report::Profile {
    &r.heldout.references.rows.iter().find(|x| x.name == name).unwrap_or_else(|| panic!("no {name} row")).profile
}

/// Pearson's r written out, independent of the library's.
pub(crate) fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let syy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    sxy / (sxx * syy).sqrt()
}

pub(crate) fn close(a: Option<f64>, b: f64) {
    let a = a.unwrap_or_else(|| panic!("expected {b}, got None"));
    assert!((a - b).abs() < 1e-9, "{a} vs {b}");
}

/// Typical-answer and lexical-neighbour references against values computed by hand (in comments).
#[test]
fn references_match_hand_computed_values() {
    let dir = tempfile::tempdir().unwrap();
    let imp = s3("Very important", "Rather important", "Not important");
    let imp2 = imp.clone();
    let often = s3("Often", "Sometimes", "Never");
    let tiny = Tiny {
        questions: vec![
            ("Q1".into(), "How important is family in your life?".into(), imp.clone()),
            ("Q2".into(), "How often do you attend religious services?".into(), often.clone()),
            ("Q3".into(), "How important is family to you?".into(), imp.clone()),
            ("Q4".into(), "How often do you attend religious services these days?".into(), often),
            ("Q5".into(), "How important is work in your life?".into(), imp2),
        ],
        countries: ["AAA", "BBB", "CCC", "DDD"].map(String::from).to_vec(),
        means: HashMap::new(),
    };
    let profiles = [
        ("Q1", [0.2, 0.4, 0.6, 0.8]),
        ("Q2", [0.8, 0.6, 0.4, 0.2]),
        ("Q3", [0.3, 0.3, 0.7, 0.7]),
        ("Q4", [0.7, 0.6, 0.6, 0.5]),
        ("Q5", [0.5, 0.2, 0.4, 0.3]),
    ];
    let mut tiny = tiny;
    for (q, ms) in profiles {
        for (c, m) in tiny.countries.clone().iter().zip(ms) {
            tiny.means.insert((q.into(), c.clone()), m);
        }
    }
    let s = tiny.write(dir.path());
    let heldout = ["Q3".to_string(), "Q4".to_string(), "Q5".to_string()];
    let train = ["Q1".to_string(), "Q2".to_string()];
    let probe: Vec<Sample> =
        heldout.iter().flat_map(|q| tiny.countries.iter().map(|c| sample(&s, q, c, 0.5)).collect::<Vec<_>>()).collect();
    let r = report(dir.path(), &s, &probe, &probe, None, &heldout, &train, 4);

    // Neighbours by words: Q3 -> Q1 (family), Q4 -> Q2 (religious services), Q5 -> Q1 (important
    // in your life).
    let n: Vec<(String, String)> =
        r.heldout.references.neighbours.iter().map(|n| (n.question.clone(), n.neighbour.clone())).collect();
    assert_eq!(n, [("Q3".into(), "Q1".into()), ("Q4".into(), "Q2".into()), ("Q5".into(), "Q1".into())]);

    let fisher = |rs: &[f64]| (rs.iter().map(|r: &f64| r.atanh()).sum::<f64>() / rs.len() as f64).tanh();
    let col = |q: usize, c: usize| profiles[q].1[c];
    // Lexical neighbour, cross-country (centred sums by hand): r(Q1, Q3) = 0.16 / sqrt(0.2 * 0.16)
    // = 2/sqrt(5); r(Q2, Q4) = 0.06 / sqrt(0.2 * 0.02) = 3/sqrt(10); r(Q1, Q5) = -0.04 / sqrt(0.2 *
    // 0.05) = -0.4.
    let lex = row(&r, mores::transfer::report::LEXICAL_SPLIT);
    close(lex.cross_r, fisher(&[2.0 / 5f64.sqrt(), 3.0 / 10f64.sqrt(), -0.4]));
    // Spread: SD(neighbour) / SD(question): sqrt(0.2/0.16), sqrt(0.2/0.02), sqrt(0.2/0.05) = 2.
    close(lex.spread, ((0.2f64 / 0.16).sqrt() + (0.2f64 / 0.02).sqrt() + 2.0) / 3.0);
    assert_eq!(lex.js, None, "a lexical profile predicts scores, not distributions");
    // Within each country, across Q3..Q5: predictions (Q1, Q2, Q1) against the humans.
    let within: Vec<f64> =
        (0..4).map(|c| pearson(&[col(0, c), col(1, c), col(0, c)], &[col(2, c), col(3, c), col(4, c)])).collect();
    close(lex.within_r, fisher(&within));

    // Typical answer: the mean over countries (expected score is linear in the distribution):
    // Q3 0.5, Q4 0.6, Q5 0.35 for every country. No country differences: no cross-country r, spread 0.
    let typ = row(&r, "typical answer");
    let within: Vec<f64> = (0..4).map(|c| pearson(&[0.5, 0.6, 0.35], &[col(2, c), col(3, c), col(4, c)])).collect();
    close(typ.within_r, fisher(&within));
    assert_eq!(typ.cross_r, None, "no country differences, no cross-country r");
    close(typ.spread, 0.0);
    let mean_dist = |ms: [f64; 4]| -> Vec<f64> {
        let ps: Vec<Vec<f64>> = ms.iter().map(|m| binomial(*m)).collect();
        (0..3).map(|k| ps.iter().map(|p| p[k]).sum::<f64>() / 4.0).collect()
    };
    let mut js = 0.0;
    for (_, ms) in &profiles[2..] {
        let t = mean_dist(*ms);
        js += ms.iter().map(|m| mores::analysis::correlate::js_similarity(&t, &binomial(*m)).unwrap()).sum::<f64>();
    }
    close(typ.js, js / 12.0);

    // A constant student: no within- or cross-country r, spread 0, swap gap exactly 0.
    let before = row(&r, "student before");
    assert_eq!((before.within_r, before.cross_r), (None, None));
    assert_eq!(r.heldout.country_level.swap.gap_before.value, Some(0.0));
}

/// The tiny world's humans: for question q and country c, (the question's base, the country's
/// deviation along a latent axis v with the question's own sign, a deterministic noise in [-1, 1]).
pub(crate) fn truth(q: usize, c: usize) -> (f64, f64, f64) {
    let v = c as f64 / 11.0 - 0.5;
    let base = 0.35 + 0.025 * q as f64;
    let amp = if q.is_multiple_of(2) { 0.5 } else { -0.5 };
    (base, amp * v, ((q * 7919 + c * 104_729) % 1000) as f64 / 500.0 - 1.0)
}

/// 12 countries x 12 questions answered as `truth` says; all questions held out.
pub(crate) fn world(dir: &Path) -> (Tiny, Survey, Vec<String>) {
    let countries: Vec<String> = (0..12).map(|i| format!("C{i:02}")).collect();
    let questions: Vec<(String, String, [String; 3])> = (1..=12)
        .map(|i| (format!("Q{i}"), format!("Question number {i} about values?"), s3("low", "mid", "high")))
        .collect();
    let mut means = HashMap::new();
    for (qi, (q, _, _)) in questions.iter().enumerate() {
        for (ci, c) in countries.iter().enumerate() {
            let (base, dev, _) = truth(qi, ci);
            means.insert((q.clone(), c.clone()), base + dev);
        }
    }
    let tiny = Tiny { questions, countries, means };
    let s = tiny.write(dir);
    let heldout: Vec<String> = (1..=12).map(|i| format!("Q{i}")).collect();
    (tiny, s, heldout)
}

pub(crate) fn probe_of(t: &Tiny, s: &Survey, m: impl Fn(usize, usize) -> f64) -> Vec<Sample> {
    let mut out = Vec::new();
    for (qi, (q, _, _)) in t.questions.iter().enumerate() {
        for (ci, c) in t.countries.iter().enumerate() {
            out.push(sample(s, q, c, m(qi, ci)));
        }
    }
    out
}

/// Planted country differences show up at the country level: cross-country r up with a CI above
/// 0, a positive swap gap after training, and the verdict saying so.
#[test]
fn planted_country_signal_is_detected_at_country_level() {
    let dir = tempfile::tempdir().unwrap();
    let (t, s, heldout) = world(dir.path());
    let before = probe_of(&t, &s, |q, c| 0.5 + 0.05 * truth(q, c).2);
    let after = probe_of(&t, &s, |q, c| {
        let (_, dev, n) = truth(q, c);
        0.5 + 0.8 * dev + 0.05 * n
    });
    let r = report(dir.path(), &s, &before, &after, None, &heldout, &[], 8);
    let c = &r.heldout.country_level;
    assert_eq!((c.n_questions, c.n_questions_few_countries), (12, 0));
    assert!(c.r_after.unwrap() > 0.9 && c.r_before.unwrap().abs() < 0.5, "{c:?}");
    assert!(c.delta.ci95.unwrap().0 > 0.0, "{:?}", c.delta);
    assert!(c.swap.gap_after.ci95.unwrap().0 > 0.0, "{:?}", c.swap);
    assert!(c.swap.gap_before.value.unwrap().abs() < c.swap.gap_after.value.unwrap());
    assert!(c.spread_after.unwrap() > c.spread_before.unwrap());
    assert!(r.verdict_country_level.starts_with("Country-level transfer detected"), "{}", r.verdict_country_level);
}

/// Planted typical answers only (every country gets the question's base): within-country r rises,
/// the country level does not move, and the report says the gain is question-level.
#[test]
fn planted_typical_answers_are_question_level_only() {
    let dir = tempfile::tempdir().unwrap();
    let (t, s, heldout) = world(dir.path());
    let before = probe_of(&t, &s, |q, c| 0.5 + 0.05 * truth(q, c).2);
    let after = probe_of(&t, &s, |q, c| {
        let (base, _, n) = truth(q, c);
        base + 0.05 * n
    });
    let r = report(dir.path(), &s, &before, &after, None, &heldout, &[], 8);
    assert!(r.verdict_question_level.starts_with("Question-level transfer detected"), "{}", r.verdict_question_level);
    assert!(!r.verdict_country_level.contains("transfer detected"), "{}", r.verdict_country_level);
    assert!(r.verdict.contains("The held-out gain is question-level"), "{}", r.verdict);
    let c = &r.heldout.country_level;
    assert!(c.swap.gap_after.ci95.is_some_and(|(lo, hi)| lo <= 0.0 || hi < 0.05), "{:?}", c.swap);

    // Too few countries per question: the country level is not measurable, and says why.
    let r = report(dir.path(), &s, &before, &after, None, &heldout, &[], 13);
    assert!(r.verdict_country_level.starts_with("Country-level transfer not measurable: 0 held-out questions"));
}
