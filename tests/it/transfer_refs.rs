//! The transfer report's neighbour references on a tiny hand-made survey, against values computed
//! by hand: the lexical neighbour from the student's own training questions only, the k-neighbour
//! z-score average with a country missing a neighbour, the student-minus-reference difference and
//! its pairing; transfer.json's schema field.
use crate::transfer_report::{close, pearson, s3, sample, write_probe, Tiny};
use mores::probe::Sample;
use mores::survey::Survey;
use mores::transfer::report::{build, k_name, Inputs, Reference, TransferReport, LEXICAL_SPLIT, LEXICAL_TRAINED};
use std::collections::HashMap;
use std::path::Path;

const COUNTRIES: [&str; 4] = ["AAA", "BBB", "CCC", "DDD"];

/// Five questions in four countries; DDD never answered Q5.
fn survey(dir: &Path) -> Survey {
    let imp = s3("Very important", "Rather important", "Not important");
    let often = s3("Often", "Sometimes", "Never");
    let mut tiny = Tiny {
        questions: vec![
            ("Q1".into(), "How important is family in your life?".into(), imp.clone()),
            ("Q2".into(), "How often do you attend religious services?".into(), often.clone()),
            ("Q3".into(), "How important is family to you?".into(), imp.clone()),
            ("Q4".into(), "How often do you attend religious services these days?".into(), often),
            ("Q5".into(), "How important is work in your life?".into(), imp),
        ],
        countries: COUNTRIES.map(String::from).to_vec(),
        means: HashMap::new(),
    };
    for (q, ms) in PROFILES {
        for (c, m) in COUNTRIES.iter().zip(ms) {
            if !(q == "Q5" && *c == "DDD") {
                tiny.means.insert((q.into(), c.to_string()), m);
            }
        }
    }
    tiny.write(dir)
}

const PROFILES: [(&str, [f64; 4]); 5] = [
    ("Q1", [0.2, 0.4, 0.6, 0.8]),
    ("Q2", [0.8, 0.6, 0.4, 0.2]),
    ("Q3", [0.3, 0.3, 0.7, 0.7]),
    ("Q4", [0.7, 0.6, 0.6, 0.5]),
    ("Q5", [0.5, 0.2, 0.8, f64::NAN]),
];

fn human(q: &str) -> [f64; 4] {
    PROFILES.iter().find(|p| p.0 == q).unwrap().1
}

/// The student after training answers `after(q)` per country; before, 0.5 everywhere.
fn run(dir: &Path, s: &Survey, heldout: &[String], k: usize, after: impl Fn(&str) -> [f64; 4]) -> TransferReport {
    let probe = |m: &dyn Fn(&str, usize) -> f64| -> Vec<Sample> {
        heldout.iter().flat_map(|q| COUNTRIES.iter().enumerate().map(|(i, c)| sample(s, q, c, m(q, i)))).collect()
    };
    write_probe(&dir.join("before"), &probe(&|_, _| 0.5));
    write_probe(&dir.join("after"), &probe(&|q, i| after(q)[i]));
    // The dataset: records made from Q2 and Q5 (twice), one without a source question, one the
    // survey does not know.
    let dataset = dir.join("dataset.jsonl");
    let lines = ["Q5", "Q2", "Q5", "", "Q99"]
        .iter()
        .enumerate()
        .map(|(i, q)| match *q {
            "" => format!("{{\"id\":\"r{i}\"}}\n"),
            q => format!("{{\"id\":\"r{i}\",\"question_id\":\"{q}\"}}\n"),
        })
        .collect::<String>();
    std::fs::write(&dataset, lines).unwrap();
    // A recipe that holds out no validation records: every source question is trained.
    let recipe = mores::recipe::DistillRecipe::load_with(
        &crate::common::root().join("recipes/distill/default.toml"),
        &["train.val_fraction=0.0".into()],
    )
    .unwrap();
    let trained = mores::transfer::report::trained_questions(&dataset, s, &recipe).unwrap();
    assert_eq!(trained, ["Q2", "Q5"], "the dataset's distinct known source questions, in questionnaire order");
    let train_split = ["Q1", "Q2", "Q5"].map(String::from);
    build(&Inputs {
        name: "refs".into(),
        survey: s,
        before: &dir.join("before"),
        after: &dir.join("after"),
        teacher: None,
        heldout,
        train: &[],
        train_split: &train_split,
        trained: &trained,
        neighbours: k,
        min_countries: 4,
        bootstrap: 200,
        seed: 0,
        dataset: &dataset,
    })
    .unwrap()
}

fn row<'a>(r: &'a TransferReport, name: &str) -> &'a Reference {
    r.heldout.references.rows.iter().find(|x| x.name == name).unwrap_or_else(|| panic!("no {name} row"))
}

fn fisher(rs: &[f64]) -> f64 {
    (rs.iter().map(|r| r.atanh()).sum::<f64>() / rs.len() as f64).tanh()
}

/// Population z-scores.
fn z(xs: &[f64]) -> Vec<f64> {
    let m = xs.iter().sum::<f64>() / xs.len() as f64;
    let sd = (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64).sqrt();
    xs.iter().map(|x| (x - m) / sd).collect()
}

/// The lexical neighbour from the student's questions draws only on Q2 and Q5 (the dataset's
/// source questions), while the training split's also offers Q1.
#[test]
fn lexical_neighbour_from_the_students_questions_picks_only_trained_questions() {
    let dir = tempfile::tempdir().unwrap();
    let s = survey(dir.path());
    let heldout = ["Q3", "Q4"].map(String::from);
    let after = |q: &str| if q == "Q3" { [0.2, 0.4, 0.5, 0.9] } else { [0.6, 0.6, 0.5, 0.3] };
    let r = run(dir.path(), &s, &heldout, 1, after);
    let refs = &r.heldout.references;
    let firsts = |v: &[mores::transfer::report::Neighbour]| -> Vec<(String, String)> {
        v.iter().map(|n| (n.question.clone(), n.neighbour.clone())).collect()
    };
    // Q3 "How important is family to you?": Q1 (family) from the split, Q5 (important, and the
    // same option labels) from the student's questions; Q4 -> Q2 (religious services) from both.
    assert_eq!(firsts(&refs.neighbours), [("Q3".into(), "Q1".into()), ("Q4".into(), "Q2".into())]);
    assert_eq!(firsts(&refs.neighbours_trained), [("Q3".into(), "Q5".into()), ("Q4".into(), "Q2".into())]);

    // Split pool: Q3 <- Q1 (r = 2/sqrt(5)), Q4 <- Q2 (r = 3/sqrt(10)).
    let split = row(&r, LEXICAL_SPLIT);
    close(split.profile.cross_r, fisher(&[2.0 / 5f64.sqrt(), 3.0 / 10f64.sqrt()]));
    // Student's questions: Q3 <- Q5 for AAA, BBB, CCC (0.5, 0.2, 0.8); DDD never answered Q5 and
    // takes the next nearest trained question it answered, Q2 (0.2). Centred: (0.075, -0.225,
    // 0.375, -0.225) against (-0.2, -0.2, 0.2, 0.2): r = 0.06 / sqrt(0.2475 * 0.16).
    let trained = row(&r, LEXICAL_TRAINED);
    let r_q3 = 0.06 / (0.2475f64 * 0.16).sqrt();
    close(Some(pearson(&[0.5, 0.2, 0.8, 0.2], &human("Q3"))), r_q3);
    close(trained.profile.cross_r, fisher(&[r_q3, 3.0 / 10f64.sqrt()]));
    assert_ne!(split.profile.cross_r, trained.profile.cross_r);

    // Student after minus the reference: Fisher means over the same two questions.
    let r_after = [pearson(&after("Q3"), &human("Q3")), pearson(&after("Q4"), &human("Q4"))];
    close(
        trained.after_minus_reference.as_ref().unwrap().value,
        fisher(&r_after) - fisher(&[r_q3, 3.0 / 10f64.sqrt()]),
    );
    // Two questions: too few for a bootstrap CI.
    assert_eq!(trained.cross_r_ci95, None);
    assert_eq!(trained.after_minus_reference.as_ref().unwrap().ci95, None);
}

/// k = 2 neighbours of Q3: each neighbour z-scored across the countries that answered it, then
/// averaged per country over the neighbours it answered (DDD has only Q1 from the split pool).
#[test]
fn k_neighbours_average_z_scores_over_the_neighbours_each_country_answered() {
    let dir = tempfile::tempdir().unwrap();
    let s = survey(dir.path());
    let heldout = ["Q3".to_string()];
    let r = run(dir.path(), &s, &heldout, 2, |_| [0.2, 0.4, 0.5, 0.9]);
    // Split pool ranking for Q3: Q1, Q5, Q2. Q1 z = (-3, -1, 1, 3) / sqrt(5); Q5 over AAA, BBB,
    // CCC (0.5, 0.2, 0.8): z = (0, -sqrt(1.5), sqrt(1.5)).
    let (a, b) = (5f64.sqrt(), 1.5f64.sqrt());
    let q1 = z(&[0.2, 0.4, 0.6, 0.8]);
    let q5 = z(&[0.5, 0.2, 0.8]);
    for (x, want) in q1.iter().zip([-3.0 / a, -1.0 / a, 1.0 / a, 3.0 / a]).chain(q5.iter().zip([0.0, -b, b])) {
        close(Some(*x), want);
    }
    let split = [(-3.0 / a) / 2.0, (-1.0 / a - b) / 2.0, (1.0 / a + b) / 2.0, 3.0 / a];
    let row_split = row(&r, &k_name(2, "training split"));
    close(row_split.profile.cross_r, pearson(&split, &human("Q3")));
    // Student's questions, ranking Q5, Q2: Q2 z = (3, 1, -1, -3) / sqrt(5).
    let trained = [(0.0 + 3.0 / a) / 2.0, (-b + 1.0 / a) / 2.0, (b - 1.0 / a) / 2.0, -3.0 / a];
    let row_trained = row(&r, &k_name(2, "student's questions"));
    close(row_trained.profile.cross_r, pearson(&trained, &human("Q3")));
    // Country order only: no within-country r, no spread, no distribution.
    for x in [row_split, row_trained] {
        assert_eq!((x.profile.within_r, x.profile.spread, x.profile.js), (None, None, None), "{x:?}");
    }
    let r_after = pearson(&[0.2, 0.4, 0.5, 0.9], &human("Q3"));
    close(row_split.after_minus_reference.as_ref().unwrap().value, r_after - pearson(&split, &human("Q3")));
    let md = mores::transfer::report::markdown(&r);
    let line = md.lines().find(|l| l.starts_with("| 2 neighbours z-scored (training split) |")).unwrap();
    assert!(line.starts_with("| 2 neighbours z-scored (training split) | – |"), "{line}");
}

/// The difference from a reference is a paired bootstrap over questions: a reference whose
/// cross-country r equals the student's on every question differs by exactly 0 in every
/// resample; one equal to the student before differs by the country-level change.
#[test]
fn student_minus_reference_is_paired_over_questions() {
    let dir = tempfile::tempdir().unwrap();
    let countries: Vec<String> = (0..8).map(|i| format!("C{i}")).collect();
    let questions: Vec<(String, String, [String; 3])> =
        (1..=8).map(|i| (format!("Q{i}"), format!("Question {i}?"), s3("low", "mid", "high"))).collect();
    let m = |q: usize, c: usize| 0.2 + 0.6 * (((q * 31 + c * 17) % 11) as f64 / 10.0);
    let mut means = HashMap::new();
    for (qi, (q, _, _)) in questions.iter().enumerate() {
        for (ci, c) in countries.iter().enumerate() {
            means.insert((q.clone(), c.clone()), m(qi, ci));
        }
    }
    let tiny = Tiny { questions, countries, means };
    let s = tiny.write(dir.path());
    let probe = |f: &dyn Fn(usize, usize) -> f64| -> Vec<Sample> {
        let mut out = Vec::new();
        for (qi, (q, _, _)) in tiny.questions.iter().enumerate() {
            for (ci, c) in tiny.countries.iter().enumerate() {
                out.push(sample(&s, q, c, f(qi, ci)));
            }
        }
        out
    };
    let before = probe(&|q, c| 0.5 + 0.1 * (((q * 7 + c * 3) % 5) as f64 / 4.0 - 0.5));
    let after = probe(&|q, c| 0.5 + 0.5 * (m(q, c) - 0.5) + 0.1 * (((q + c * 5) % 3) as f64 / 2.0 - 0.5));
    let heldout: Vec<String> = (1..=8).map(|i| format!("Q{i}")).collect();
    for (teacher, what) in [(&after, "after"), (&before, "before")] {
        for (d, x) in [("before", &before), ("after", &after), ("teacher", teacher)] {
            write_probe(&dir.path().join(d), x);
        }
        let r = build(&Inputs {
            name: "paired".into(),
            survey: &s,
            before: &dir.path().join("before"),
            after: &dir.path().join("after"),
            teacher: Some(&dir.path().join("teacher")),
            heldout: &heldout,
            train: &[],
            train_split: &[],
            trained: &[],
            neighbours: 3,
            min_countries: 8,
            bootstrap: 300,
            seed: 0,
            dataset: &dir.path().join("none.jsonl"),
        })
        .unwrap();
        let t = row(&r, "teacher");
        let d = t.after_minus_reference.as_ref().unwrap();
        let c = &r.heldout.country_level;
        if what == "after" {
            assert_eq!((d.value, d.ci95), (Some(0.0), Some((0.0, 0.0))), "paired: the same questions each resample");
            assert_eq!(t.profile.cross_r, c.r_after);
            let ci = t.cross_r_ci95.unwrap();
            assert!(ci.0 < c.r_after.unwrap() && c.r_after.unwrap() < ci.1, "{ci:?}");
        } else {
            // Hand rule: Fisher mean of the after r's minus that of the before r's.
            let rs = |x: &dyn Fn(&mores::transfer::report::QuestionCross) -> Option<f64>| -> Vec<f64> {
                c.questions.iter().filter_map(x).collect()
            };
            let want = fisher(&rs(&|q| q.r_after)) - fisher(&rs(&|q| q.r_before));
            close(d.value, want);
            assert_eq!(d.value, c.delta.value);
            let (lo, hi) = d.ci95.unwrap();
            assert!(lo < want && want < hi, "{d:?}");
        }
        // The student's own rows carry no difference from themselves.
        assert!(row(&r, "student after").after_minus_reference.is_none());
    }
}

/// transfer.json names its layout first; one written before the field existed still reads.
#[test]
fn transfer_json_names_its_schema_first_and_old_files_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = survey(dir.path());
    let heldout = ["Q3", "Q4"].map(String::from);
    let r = run(dir.path(), &s, &heldout, 3, |_| [0.2, 0.4, 0.5, 0.9]);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    mores::transfer::report::write(&out, &r).unwrap();
    let text = std::fs::read_to_string(out.join("transfer.json")).unwrap();
    assert!(text.starts_with("{\n  \"schema\": \"mores.transfer/2\",\n"), "{}", &text[..80]);
    let back: TransferReport = mores::util::io::read_json(&out.join("transfer.json")).unwrap();
    assert_eq!(back, r);
    // The older layout: no schema, no reference CIs or differences, no second neighbour list.
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_object_mut().unwrap().remove("schema");
    let refs = v["heldout"]["references"].as_object_mut().unwrap();
    refs.remove("neighbours_trained");
    for row in refs["rows"].as_array_mut().unwrap() {
        let row = row.as_object_mut().unwrap();
        row.remove("cross_r_ci95");
        row.remove("after_minus_reference");
    }
    let old: TransferReport = serde_json::from_value(v).unwrap();
    assert_eq!(old.schema, "mores.transfer/1");
    assert_eq!(old.heldout.question_level, r.heldout.question_level);
}
