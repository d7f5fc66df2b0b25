use crate::common::root;
use mores::survey::Survey;
use std::path::Path;

fn shipped() -> Survey {
    Survey::load(root().join("data/wvs")).unwrap()
}

/// A copy of the shipped data with `edit` applied to the distributions file's text.
fn edited(dir: &Path, edit: impl Fn(String) -> String) -> mores::error::Result<Survey> {
    let src = root().join("data/wvs");
    for f in ["wvs7_questions.jsonl", "countries.csv"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let text = std::fs::read_to_string(src.join("wvs7_country_distributions.jsonl")).unwrap();
    std::fs::write(dir.join("wvs7_country_distributions.jsonl"), edit(text)).unwrap();
    Survey::load(dir)
}

#[test]
fn shipped_data_has_the_documented_coverage() {
    let s = shipped();
    assert_eq!(s.n_answers(), 5623);
    assert_eq!(s.categories().len(), 13);
    // PROVENANCE.md: 26 countries with >= 50 questions, 19 with (nearly) all of them.
    assert_eq!(s.countries_with(50).len(), 26);
    assert_eq!(s.countries_with(200).len(), 19);
    let q = s.question("Q1").unwrap();
    assert_eq!(q.options.len(), 4);
    assert!(q.is_scored());
    // Nominal: choice among aims (Q152) and the party list (Q223) have no mean.
    assert!(!s.question("Q152").unwrap().is_scored());
    assert!(!s.question("Q223").unwrap().is_scored());
    assert!(s.answers("Q152", "USA").unwrap().mean.is_none());
}

#[test]
fn human_means_match_the_source_file() {
    // mean_score in the source is sum p_k score_k over scored options; we recompute it.
    let s = shipped();
    let src = std::fs::read_to_string(root().join("data/wvs/wvs7_country_distributions.jsonl")).unwrap();
    for line in src.lines().take(500) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (q, c) = (v["qid"].as_str().unwrap(), v["country"].as_str().unwrap());
        if let (Some(want), Some(got)) = (v["mean_score"].as_f64(), s.answers(q, c).unwrap().mean) {
            assert!((want - got).abs() < 1e-9, "{q} {c}: {want} vs {got}");
        }
    }
}

#[test]
fn unknown_question_id_is_an_error() {
    let err = shipped().question("Q9999").unwrap_err().to_string();
    assert!(err.contains("Q9999"), "{err}");
}

#[test]
fn distribution_not_summing_to_one_is_rejected_with_line() {
    let dir = tempfile::tempdir().unwrap();
    let err = edited(dir.path(), |t| t.replacen("\"1\": 0.8954183266932271", "\"1\": 0.5", 1)).unwrap_err().to_string();
    assert!(err.contains("wvs7_country_distributions.jsonl:1:") && err.contains("sums to"), "{err}");
}

#[test]
fn option_code_not_in_question_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let err = edited(dir.path(), |t| t.replacen("\"distribution\": {\"1\"", "\"distribution\": {\"7\"", 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("option code 7 is not an option"), "{err}");
}

#[test]
fn duplicate_question_country_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let err = edited(dir.path(), |t| {
        let first = t.lines().next().unwrap().to_string();
        format!("{t}{first}\n")
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("duplicate record for (Q1, AND)"), "{err}");
}

#[test]
fn malformed_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let err = edited(dir.path(), |t| t.replacen("{\"qid\": \"Q1\", \"country\": \"ARG\"", "{\"qid\": ", 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("wvs7_country_distributions.jsonl:2: malformed distribution record"), "{err}");
}
