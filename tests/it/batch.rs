use crate::common::{smollm2, tiny_model};
use mores::model::{LoadOptions, Model};
use mores::score::{ScoreRequest, Scorer};

fn requests() -> Vec<ScoreRequest> {
    let labels = |n: usize| (1..=n).map(|i| i.to_string()).collect::<Vec<_>>();
    vec![
        ScoreRequest { prompt: "Q: how happy are you?\nOptions: 1 2 3 4\nAnswer: ".into(), labels: labels(4) },
        ScoreRequest { prompt: "Short\nAnswer: ".into(), labels: labels(2) },
        // Ten labels: "10" is two tokens, scored as a sequence.
        ScoreRequest {
            prompt: "Rate from 1 to 10 how important God is in your life, as a person in Kenya would.\nAnswer: ".into(),
            labels: labels(10),
        },
        ScoreRequest { prompt: "A much longer prompt, so that the others are padded on the left by many positions, and the mask matters.\nAnswer: ".into(), labels: labels(5) },
    ]
}

fn assert_batched_equals_single(m: &Model, tol: f64) {
    let reqs = requests();
    let batched = m.score_batch(&reqs).unwrap();
    for (req, b) in reqs.iter().zip(&batched) {
        let single = m.score_batch(std::slice::from_ref(req)).unwrap().remove(0);
        assert_eq!(single.probs.len(), req.labels.len());
        for (x, y) in single.probs.iter().zip(&b.probs) {
            assert!((x - y).abs() < tol, "batched {y} vs single {x} for {:?}", req.prompt);
        }
        assert!((single.mass - b.mass).abs() < tol);
        assert!((single.probs.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }
}

#[test]
fn batched_equals_single_tiny_llama() {
    let dir = tempfile::tempdir().unwrap();
    let m = Model::load(&tiny_model(dir.path(), "llama", 1), &LoadOptions::default()).unwrap();
    assert_batched_equals_single(&m, 1e-5);
}

#[test]
fn batched_equals_single_tiny_gemma3_with_sliding_window() {
    let dir = tempfile::tempdir().unwrap();
    let m = Model::load(&tiny_model(dir.path(), "gemma3", 2), &LoadOptions::default()).unwrap();
    assert_batched_equals_single(&m, 1e-5);
}

#[test]
fn batched_equals_single_smollm2_f32_and_quantized() {
    for dequantize in [true, false] {
        let m = Model::load(&smollm2(), &LoadOptions { dequantize, ..Default::default() }).unwrap();
        assert_batched_equals_single(&m, 1e-5);
    }
}

#[test]
fn multi_token_label_is_scored_as_a_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let m = Model::load(&tiny_model(dir.path(), "llama", 3), &LoadOptions::default()).unwrap();
    let prompt = "Answer: ";
    let ids = m.tok.encode_prompt(prompt).unwrap();
    let seqs = mores::score::label_sequences(&m, prompt, &ids, &["10".into()]).unwrap();
    // Character-level vocabulary: "10" -> ["1", "0"], " 10" -> [" ", "1", "0"].
    assert_eq!(seqs[0].len(), 2);
    assert_eq!(seqs[0][0].len(), 2);
    assert_eq!(seqs[0][1].len(), 3);
}

#[test]
fn label_one_does_not_count_the_answer_ten() {
    // Regression: with labels 1..10, P("1") also covered "1" followed by "0" (the answer 10), so
    // the labels' mass could exceed 1 (1.021 on SmolLM2 over the main job). Label 1 must get
    // exactly P(1) - P(10) of the mass label "1" alone gets.
    let dir = tempfile::tempdir().unwrap();
    let m = Model::load(&tiny_model(dir.path(), "llama", 4), &LoadOptions::default()).unwrap();
    let prompt = "Rate 1 to 10.\nAnswer: ".to_string();
    let alone = m.score_batch(&[ScoreRequest { prompt: prompt.clone(), labels: vec!["1".into()] }]).unwrap().remove(0);
    let ten =
        m.score_batch(&[ScoreRequest { prompt, labels: (1..=10).map(|i| i.to_string()).collect() }]).unwrap().remove(0);
    assert!(ten.raw[9] > 0.0);
    assert!(
        (ten.raw[0] + ten.raw[9] - alone.raw[0]).abs() < 1e-9,
        "{} + {} vs {}",
        ten.raw[0],
        ten.raw[9],
        alone.raw[0]
    );
    assert!(ten.mass <= 1.0 + 1e-9);
}
