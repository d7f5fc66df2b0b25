use crate::common::{assert_clean_error, mores, smollm2};
use std::io::Write;

#[test]
fn truncated_gguf_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    let bytes = std::fs::read(smollm2()).unwrap();
    std::fs::File::create(&cut).unwrap().write_all(&bytes[..bytes.len() / 2]).unwrap();
    let o = mores(&["score", "--model", cut.to_str().unwrap(), "--prompt", "x"]);
    assert_clean_error(&o, "truncated GGUF");
    assert_clean_error(&o, "cut.gguf");
    // Cut inside the header: not even the metadata parses.
    std::fs::File::create(&cut).unwrap().write_all(&bytes[..1000]).unwrap();
    assert_clean_error(&mores(&["score", "--model", cut.to_str().unwrap(), "--prompt", "x"]), "not a readable GGUF");
}

#[test]
fn unsupported_architecture_names_the_supported_ones() {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mamba.gguf");
    let t = QTensor::quantize(
        &candle_core::Tensor::zeros((4, 32), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let md = [
        ("general.architecture", gguf_file::Value::String("mamba".into())),
        ("tokenizer.ggml.model", gguf_file::Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", gguf_file::Value::Array(vec![gguf_file::Value::String("a".into())])),
        ("tokenizer.ggml.merges", gguf_file::Value::Array(vec![])),
    ];
    let mut f = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut f, &md.iter().map(|(k, v)| (*k, v)).collect::<Vec<_>>(), &[("token_embd.weight", &t)])
        .unwrap();
    drop(f);
    let o = mores(&["score", "--model", path.to_str().unwrap(), "--prompt", "x"]);
    assert_clean_error(&o, "unsupported architecture \"mamba\"");
    assert_clean_error(&o, "gemma3");
}

#[test]
fn missing_model_file() {
    assert_clean_error(&mores(&["score", "--model", "checkpoints/nope.gguf", "--prompt", "x"]), "model not found");
}

#[test]
fn unknown_question_id_fails_before_loading_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = mores(&[
        "probe",
        "--model",
        "checkpoints/nope.gguf",
        "--questions",
        "Q1,Q9999",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clean_error(&o, "unknown question id \"Q9999\"");
    assert!(!out.exists(), "nothing is written when the input is bad");
}

#[test]
fn unknown_country_is_an_error() {
    let o = mores(&["probe", "--model", "checkpoints/nope.gguf", "--countries", "USA,XXX", "--out", "/tmp/never"]);
    assert_clean_error(&o, "unknown country \"XXX\"");
}

#[test]
fn unknown_recipe_field_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("r.toml");
    std::fs::write(&r, "include = \"../../../work/nowhere.toml\"\n").unwrap();
    assert_clean_error(&mores(&["probe", "--recipe", r.to_str().unwrap(), "--out", "/tmp/never"]), "nowhere.toml");
    let base = crate::common::root().join("recipes/probe/wvs.toml");
    std::fs::write(&r, format!("include = {:?}\n[prompt]\ntemperature = 0.5\n", base.to_str().unwrap())).unwrap();
    assert_clean_error(
        &mores(&["probe", "--recipe", r.to_str().unwrap(), "--out", "/tmp/never"]),
        "unknown field `temperature`",
    );
    std::fs::write(
        &r,
        format!("include = {:?}\n[prompt]\nuser = \"{{question}} {{options}} {{nation}}\"\n", base.to_str().unwrap()),
    )
    .unwrap();
    assert_clean_error(
        &mores(&["probe", "--recipe", r.to_str().unwrap(), "--out", "/tmp/never"]),
        "unknown placeholder {nation}",
    );
}

#[test]
fn malformed_survey_data_line() {
    let dir = tempfile::tempdir().unwrap();
    let src = crate::common::root().join("data/wvs");
    for f in ["wvs7_questions.jsonl", "countries.csv"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("wvs7_country_distributions.jsonl"), "{\"qid\": \"Q1\", \"country\": \n").unwrap();
    let o = mores(&["survey", "stats", "--data", dir.path().to_str().unwrap()]);
    assert_clean_error(&o, "wvs7_country_distributions.jsonl:1: malformed distribution record");
}
