use crate::common::{smollm2, tiny_model};
use mores::model::{LoadOptions, Model};
use mores::score::{OptionScores, ScoreRequest, Scorer};

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

/// Bit-identical, not within a tolerance: on one machine a prompt's numbers must not depend on
/// the batch it is scored in (its size, the other prompts, their order, a prefix they share).
fn assert_batch_invariant(m: &Model) {
    let mut reqs = requests();
    // Two more prompts that share a long prefix with each other, so a batch of just these two
    // runs that prefix as a separate forward pass.
    let shared = "A long common preamble that both of these prompts start with, word for word, ";
    for (i, tail) in ["then one question.\nAnswer: ", "then another, different question.\nAnswer: "].iter().enumerate()
    {
        reqs.push(ScoreRequest {
            prompt: format!("{shared}{tail}"),
            labels: (1..=3 + i).map(|k| k.to_string()).collect(),
        });
    }
    let single: Vec<OptionScores> =
        reqs.iter().map(|r| m.score_batch(std::slice::from_ref(r)).unwrap().remove(0)).collect();
    for s in &single {
        assert!((s.probs.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }
    let check = |order: &[usize], what: &str| {
        let batch: Vec<ScoreRequest> = order.iter().map(|&i| reqs[i].clone()).collect();
        let got = m.score_batch(&batch).unwrap();
        for (&i, g) in order.iter().zip(&got) {
            assert_eq!(g, &single[i], "{what}: prompt {i} ({:?}) differs from its single run", reqs[i].prompt);
        }
    };
    let n = reqs.len();
    check(&(0..n).collect::<Vec<_>>(), "whole batch");
    check(&(0..n).rev().collect::<Vec<_>>(), "reversed batch");
    check(&[n - 2, n - 1], "two prompts sharing a prefix");
    check(&[n - 1, 1, n - 2], "prefix pair with another prompt");
    check(&[2, 0], "pair");
}

#[test]
fn batched_equals_single_tiny_llama() {
    let dir = tempfile::tempdir().unwrap();
    let m = Model::load(&tiny_model(dir.path(), "llama", 1), &LoadOptions::default()).unwrap();
    assert_batch_invariant(&m);
}

#[test]
fn batched_equals_single_tiny_gemma3_with_sliding_window() {
    let dir = tempfile::tempdir().unwrap();
    let m = Model::load(&tiny_model(dir.path(), "gemma3", 2), &LoadOptions::default()).unwrap();
    assert_batch_invariant(&m);
}

#[test]
fn batched_equals_single_smollm2_f32_and_quantized() {
    for dequantize in [true, false] {
        let m = Model::load(&smollm2(), &LoadOptions { dequantize, ..Default::default() }).unwrap();
        assert_batch_invariant(&m);
    }
}

/// Regression: a step's loss moved in the last digits with the micro-batch size,
/// since padding shifted keys between SIMD lanes of the training softmax and the loss was summed
/// per micro-batch in f32.
fn assert_step_loss_independent_of_micro_batch(m: &mut Model) {
    use mores::generate::dataset::Record;
    use mores::model::adapter::{Adapter, LoraSpec};
    use mores::train::examples::{build, Built};
    let spec = LoraSpec {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec!["q_proj".into(), "v_proj".into()],
        rslora: false,
        layers: None,
    };
    let ad = Adapter::attach_new(m, &spec, 3).unwrap();
    let recs = [
        serde_json::json!({"id": "a", "prompt": "How important is family?", "target": "Very important."}),
        serde_json::json!({"id": "b", "prompt": "Rate 1-10: trust in police, as a person in Chile would?", "answer_prefix": "Answer: ",
            "labels": ["1","2","3","4","5","6","7","8","9","10"], "target": [0.02,0.03,0.05,0.1,0.2,0.2,0.15,0.1,0.1,0.05]}),
        serde_json::json!({"id": "c", "prompt": "Is it ever justifiable to cheat on taxes? Give a short answer.", "target": "Never."}),
        serde_json::json!({"id": "d", "prompt": "Q?", "answer_prefix": "A: ", "labels": ["1","2"], "target": [0.3, 0.7]}),
    ];
    let exs: Vec<_> = recs
        .into_iter()
        .map(|j| {
            let r: Record = serde_json::from_value(j).unwrap();
            match build(m, &r, &r.lesson().unwrap(), false, 256).unwrap() {
                Built::Ok(e) => e,
                Built::TooLong => panic!("too long"),
            }
        })
        .collect();
    let refs: Vec<_> = exs.iter().collect();
    let (one, _) = mores::train::step_grads(m, &ad, &refs, 1, None).unwrap();
    for micro in [2, 3, 4] {
        let (l, _) = mores::train::step_grads(m, &ad, &refs, micro, None).unwrap();
        assert_eq!(l.to_bits(), one.to_bits(), "micro-batch {micro}: loss {l} vs {one} with micro-batch 1");
    }
    assert_eq!(mores::train::eval_loss(m, &refs, 4).unwrap(), mores::train::eval_loss(m, &refs, 1).unwrap());
}

#[test]
fn step_loss_independent_of_micro_batch_tiny_llama_and_gemma3() {
    for (arch, seed) in [("llama", 5), ("gemma3", 6)] {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Model::load(&tiny_model(dir.path(), arch, seed), &LoadOptions::default()).unwrap();
        assert_step_loss_independent_of_micro_batch(&mut m);
    }
}

#[test]
fn step_loss_independent_of_micro_batch_smollm2() {
    let mut m = Model::load(&smollm2(), &LoadOptions { dequantize: true, ..Default::default() }).unwrap();
    assert_step_loss_independent_of_micro_batch(&mut m);
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

/// Probe-shaped prompts: one header, a persona per country, each question in two option orders,
/// ten labels (so "10" branches after "1"), wrapped in the chat template when the model has one.
fn persona_requests(m: &Model) -> Vec<ScoreRequest> {
    let mut out = Vec::new();
    for country in ["Kenya", "Germany", "Peru"] {
        for q in ["How important is family in your life?", "How much do you trust your neighbours?"] {
            for options in ["1. Very\n2. Rather\n3. Not very", "3. Not very\n2. Rather\n1. Very"] {
                let user = format!(
                    "Imagine you are a person living in {country}. Answer the following survey question as they would.\nQuestion: {q}\nOptions:\n{options}"
                );
                let prompt = if m.is_chat() { m.render_chat(&user).unwrap() } else { user };
                out.push(ScoreRequest {
                    prompt: format!("{prompt}Answer: "),
                    labels: (1..=10).map(|i| i.to_string()).collect(),
                });
            }
        }
    }
    out
}

/// Scoring through the radix tree and a prefix cache kept across batches gives the
/// probabilities of whole rows bit for bit (also when the cache is too small to keep anything),
/// and the reuse really happens: most tokens are not computed again.
fn assert_prefix_reuse_exact(m: &mut Model) {
    use mores::model::radix::PrefixCache;
    let reqs = persona_requests(m);
    m.prefix_reuse = false;
    let whole: Vec<OptionScores> = reqs.chunks(3).flat_map(|c| m.score_batch(c).unwrap()).collect();
    m.prefix_reuse = true;
    for mib in [256, 0] {
        let mut cache = PrefixCache::new(mib);
        let got: Vec<OptionScores> =
            reqs.chunks(3).flat_map(|c| m.score_batch_cached(c, &mut cache).unwrap()).collect();
        for (i, (g, w)) in got.iter().zip(&whole).enumerate() {
            assert_eq!(g, w, "cache {mib} MiB: prompt {i} differs from its whole-row score");
        }
        let s = cache.stats;
        assert!(s.computed < s.row_tokens, "cache {mib} MiB: nothing shared: {s:?}");
        if mib > 0 {
            assert!(s.from_cache > 0 && 2 * s.computed < s.row_tokens, "cache {mib} MiB: little reuse: {s:?}");
        } else {
            assert_eq!(s.from_cache, 0);
        }
    }
}

#[test]
fn prefix_reuse_equals_whole_rows_tiny_llama_and_gemma3_past_the_window() {
    for (arch, seed) in [("llama", 3), ("gemma3", 4)] {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Model::load(&tiny_model(dir.path(), arch, seed), &LoadOptions::default()).unwrap();
        assert_prefix_reuse_exact(&mut m);
    }
}

#[test]
fn prefix_reuse_equals_whole_rows_smollm2() {
    let mut m = Model::load(&smollm2(), &LoadOptions { dequantize: true, ..Default::default() }).unwrap();
    assert_prefix_reuse_exact(&mut m);
}

/// Regression: a cached prefix taken for one row covered the read position of a shorter row in the
/// same batch that shares those tokens ("cat expects at least one tensor" in `mores run`).
#[test]
fn cached_prefix_never_covers_another_rows_read() {
    use mores::model::radix::PrefixCache;
    let dir = tempfile::tempdir().unwrap();
    let m = Model::load(&tiny_model(dir.path(), "llama", 6), &LoadOptions::default()).unwrap();
    let req = |p: &str| ScoreRequest { prompt: p.to_string(), labels: vec!["1".into(), "2".into(), "3".into()] };
    let p = "Imagine a person in Kenya. Question: family?";
    let mut cache = PrefixCache::new(256);
    let first = [req(&format!("{p} Options: 1 2 Answer: ")), req(&format!("{p} Options: 2 1 Answer: "))];
    m.score_batch_cached(&first, &mut cache).unwrap();
    // The shorter prompt ends inside the cached "... Options: " path of the other one.
    let second = [req("Imagine a person in Kenya. Question: fam"), req(&format!("{p} Options: 3 1 Answer: "))];
    let got = m.score_batch_cached(&second, &mut cache).unwrap();
    for (r, g) in second.iter().zip(&got) {
        assert_eq!(g, &m.score_batch(std::slice::from_ref(r)).unwrap()[0], "{:?}", r.prompt);
    }
}
