//! The families beyond llama and gemma3 (qwen2, qwen3, mistral, phi3) against
//! transformers, on tiny random-weight models saved by transformers with its logits beside them
//! (tests/data/arch, made by scripts/make_arch_fixtures.py).
use crate::common::{assert_clean_error, mores, root};
use crate::lora::{gradients_match_finite_differences_at, logits, max_diff, spec, ALL};
use mores::model::adapter::Adapter;
use mores::model::mode::Mode;
use mores::model::{LoadOptions, Model};
use mores::score::{ScoreRequest, Scorer};
use std::path::PathBuf;

const FAMILIES: [&str; 4] = ["qwen2", "qwen3", "mistral", "phi3"];

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/data/arch").join(name)
}

#[derive(serde::Deserialize)]
struct Reference {
    rows: Vec<Vec<u32>>,
    logits: Vec<Vec<Vec<f32>>>,
}

#[test]
fn families_match_transformers_logits_at_every_position() {
    for name in FAMILIES {
        let m = Model::load(&fixture(name), &LoadOptions::default()).unwrap();
        assert_eq!(m.architecture(), name);
        let r: Reference = mores::util::io::read_json(&fixture(name).join("reference.json")).unwrap();
        for (row, want) in r.rows.iter().zip(&r.logits) {
            let reads: Vec<(usize, usize)> = (0..row.len()).map(|p| (0, p)).collect();
            let got = m.logits_rows(std::slice::from_ref(row), &reads, Mode::INFER).unwrap();
            let got = got.to_vec2::<f32>().unwrap();
            let worst = got.iter().zip(want).map(|(g, w)| max_diff(g, w)).fold(0.0, f32::max);
            assert!(worst < 1e-4, "{name}: logits differ from transformers by {worst}");
        }
        // The prefix-shared path, both rows in one batch: the same logits at the last positions.
        let reads: Vec<(usize, usize)> = r.rows.iter().enumerate().map(|(i, row)| (i, row.len() - 1)).collect();
        let shared = m.logits_at(&r.rows, &reads).unwrap().to_vec2::<f32>().unwrap();
        for (i, row) in r.rows.iter().enumerate() {
            let d = max_diff(&shared[i], &r.logits[i][row.len() - 1]);
            assert!(d < 1e-4, "{name}: batched row {i} differs from transformers by {d}");
        }
    }
}

#[test]
fn families_score_batched_equal_to_single() {
    for name in FAMILIES {
        let m = Model::load(&fixture(name), &LoadOptions::default()).unwrap();
        let reqs: Vec<ScoreRequest> =
            ["Family matters a lot to me. Answer: ", "Work? Answer: ", "Family matters less. Answer: "]
                .iter()
                .map(|p| ScoreRequest { prompt: p.to_string(), labels: (1..=10).map(|i| i.to_string()).collect() })
                .collect();
        let batched = m.score_batch(&reqs).unwrap();
        for (r, b) in reqs.iter().zip(&batched) {
            assert_eq!(&m.score_batch(std::slice::from_ref(r)).unwrap()[0], b, "{name}: {:?}", r.prompt);
        }
    }
}

#[test]
fn families_lora_with_zero_b_equals_base_and_gradients_match_finite_differences() {
    for name in ["qwen2", "qwen3", "mistral"] {
        let mut m = Model::load(&fixture(name), &LoadOptions::default()).unwrap();
        let (train, infer) = (logits(&m, Mode::train(None)), logits(&m, Mode::INFER));
        Adapter::attach_new(&mut m, &spec(&ALL, 4), 1).unwrap();
        assert_eq!(max_diff(&train, &logits(&m, Mode::train(None))), 0.0, "{name}: training path");
        assert_eq!(max_diff(&infer, &logits(&m, Mode::INFER)), 0.0, "{name}: inference path");
    }
    // Qwen2 has biases on Q, K and V, Qwen3 norms on Q and K heads: both in the graph.
    for name in ["mistral", "qwen2", "qwen3"] {
        gradients_match_finite_differences_at(&fixture(name), &ALL);
    }
}

pub const PHI3_TARGETS: [&str; 4] = ["qkv_proj", "gate_up_proj", "o_proj", "down_proj"];

#[test]
fn phi3_lora_uses_the_fused_peft_modules() {
    // An adapter Python PEFT made on Phi-3's fused qkv_proj and gate_up_proj: mores' logits with
    // it equal PEFT + transformers' at every position.
    let mut m = Model::load(&fixture("phi3"), &LoadOptions::default()).unwrap();
    let peft_dir = fixture("phi3-peft");
    let ad = Adapter::load(&mut m, &peft_dir).unwrap();
    let r: Reference = mores::util::io::read_json(&peft_dir.join("reference.json")).unwrap();
    for (row, want) in r.rows.iter().zip(&r.logits) {
        let reads: Vec<(usize, usize)> = (0..row.len()).map(|p| (0, p)).collect();
        let got = m.logits_rows(std::slice::from_ref(row), &reads, Mode::INFER).unwrap().to_vec2::<f32>().unwrap();
        let worst = got.iter().zip(want).map(|(g, w)| max_diff(g, w)).fold(0.0, f32::max);
        assert!(worst < 1e-4, "phi3 + PEFT adapter: logits differ from PEFT by {worst}");
    }
    // Written back under the same PEFT names and values (B rows of the parts stacked again).
    let dir = tempfile::tempdir().unwrap();
    ad.save(dir.path(), &m).unwrap();
    let read = |d: &std::path::Path| {
        let bytes = std::fs::read(d.join("adapter_model.safetensors")).unwrap();
        let (t, _) = mores::model::adapter::read_safetensors(&bytes, &candle_core::Device::Cpu).unwrap();
        let mut t: Vec<(String, Vec<f32>)> =
            t.into_iter().map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1().unwrap())).collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    assert_eq!(read(dir.path()), read(&peft_dir));
    // Two A per layer (qkv, gate_up) shared by their parts, one B per part, two unfused pairs.
    let layers = ad.params.iter().map(|p| p.layer + 1).max().unwrap();
    assert_eq!(ad.vars().len(), layers * (2 + 5 + 4));
}

#[test]
fn phi3_fresh_lora_is_exact_at_zero_and_its_gradients_match_finite_differences() {
    let mut m = Model::load(&fixture("phi3"), &LoadOptions::default()).unwrap();
    let (train, infer) = (logits(&m, Mode::train(None)), logits(&m, Mode::INFER));
    Adapter::attach_new(&mut m, &spec(&PHI3_TARGETS, 4), 1).unwrap();
    assert_eq!(max_diff(&train, &logits(&m, Mode::train(None))), 0.0, "phi3: training path");
    assert_eq!(max_diff(&infer, &logits(&m, Mode::INFER)), 0.0, "phi3: inference path");
    // The shared A of a fused module gets the sum of its parts' gradients.
    gradients_match_finite_differences_at(&fixture("phi3"), &PHI3_TARGETS);
}

#[test]
fn lora_targets_must_match_the_models_fusion() {
    let mut m = Model::load(&fixture("phi3"), &LoadOptions::default()).unwrap();
    let e = Adapter::attach_new(&mut m, &spec(&["q_proj"], 2), 1).err().expect("refused").to_string();
    assert!(e.contains("fuses q_proj, k_proj, v_proj into qkv_proj: target qkv_proj"), "{e}");
    let mut m = Model::load(&fixture("qwen2"), &LoadOptions::default()).unwrap();
    let e = Adapter::attach_new(&mut m, &spec(&["qkv_proj"], 2), 1).err().expect("refused").to_string();
    assert!(e.contains("a fused module (Phi-3), but this model has q_proj, k_proj, v_proj apart"), "{e}");
    let e = Adapter::load(&mut m, &fixture("phi3-peft")).err().expect("refused").to_string();
    assert!(e.contains("adapter for another model"), "{e}");
}

#[test]
fn unknown_architecture_names_the_supported_list() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(fixture("qwen2").join(f), dir.path().join(f)).unwrap();
    }
    let cfg = std::fs::read_to_string(dir.path().join("config.json"))
        .unwrap()
        .replace("Qwen2ForCausalLM", "FalconForCausalLM");
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    let o = mores(&["score", "--model", dir.path().to_str().unwrap(), "--prompt", "Hi", "--labels", "1,2"]);
    assert_clean_error(&o, "unsupported architecture \"FalconForCausalLM\" (supported: llama");
    // A RoPE scaling the decoder cannot honour is refused by name, not ignored.
    let mut raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("qwen2").join("config.json")).unwrap()).unwrap();
    raw["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    std::fs::write(dir.path().join("config.json"), raw.to_string()).unwrap();
    let o = mores(&["score", "--model", dir.path().to_str().unwrap(), "--prompt", "Hi", "--labels", "1,2"]);
    assert_clean_error(&o, "rope scaling type \"yarn\"");
}

/// A transformers fixture rewritten as a GGUF file the way llama.cpp's converter writes Qwen
/// models (llama.cpp tensor names, `{arch}.*` metadata, Q/K rows unpermuted), f32 tensors, and a
/// placeholder gpt2-type vocabulary of the fixture's size (the test feeds token ids).
fn fixture_as_gguf(name: &str, dir: &std::path::Path) -> PathBuf {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let src = fixture(name);
    let cfg: serde_json::Value = mores::util::io::read_json(&src.join("config.json")).unwrap();
    let tensors = candle_core::safetensors::load(src.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let rename = |k: &str| -> String {
        let k = k.replace("model.embed_tokens.", "token_embd.").replace("model.norm.", "output_norm.");
        let k = k.replace("lm_head.", "output.");
        let Some(rest) = k.strip_prefix("model.layers.") else { return k };
        let (i, rest) = rest.split_once('.').unwrap();
        let rest = [
            ("self_attn.q_proj", "attn_q"),
            ("self_attn.k_proj", "attn_k"),
            ("self_attn.v_proj", "attn_v"),
            ("self_attn.o_proj", "attn_output"),
            ("self_attn.q_norm", "attn_q_norm"),
            ("self_attn.k_norm", "attn_k_norm"),
            ("mlp.gate_proj", "ffn_gate"),
            ("mlp.up_proj", "ffn_up"),
            ("mlp.down_proj", "ffn_down"),
            ("input_layernorm", "attn_norm"),
            ("post_attention_layernorm", "ffn_norm"),
        ]
        .iter()
        .fold(rest.to_string(), |r, (a, b)| r.replace(a, b));
        format!("blk.{i}.{rest}")
    };
    let q: Vec<(String, QTensor)> =
        tensors.iter().map(|(k, t)| (rename(k), QTensor::quantize(t, GgmlDType::F32).unwrap())).collect();
    let u = |x: &str| gguf_file::Value::U32(cfg[x].as_u64().unwrap() as u32);
    let s = |x: &str| gguf_file::Value::String(x.into());
    let vocab = cfg["vocab_size"].as_u64().unwrap() as usize;
    let mut md = vec![
        ("general.architecture".to_string(), s(name)),
        (format!("{name}.block_count"), u("num_hidden_layers")),
        (format!("{name}.embedding_length"), u("hidden_size")),
        (format!("{name}.feed_forward_length"), u("intermediate_size")),
        (format!("{name}.attention.head_count"), u("num_attention_heads")),
        (format!("{name}.attention.head_count_kv"), u("num_key_value_heads")),
        (format!("{name}.context_length"), u("max_position_embeddings")),
        (format!("{name}.rope.freq_base"), gguf_file::Value::F32(cfg["rope_theta"].as_f64().unwrap_or(10000.0) as f32)),
        (
            format!("{name}.attention.layer_norm_rms_epsilon"),
            gguf_file::Value::F32(cfg["rms_norm_eps"].as_f64().unwrap() as f32),
        ),
        ("tokenizer.ggml.model".to_string(), s("gpt2")),
        ("tokenizer.ggml.pre".to_string(), s("qwen2")),
        (
            "tokenizer.ggml.tokens".to_string(),
            gguf_file::Value::Array((0..vocab).map(|i| s(&format!("t{i}"))).collect()),
        ),
        ("tokenizer.ggml.merges".to_string(), gguf_file::Value::Array(vec![])),
    ];
    if let Some(hd) = cfg["head_dim"].as_u64() {
        md.push((format!("{name}.attention.key_length"), gguf_file::Value::U32(hd as u32)));
    }
    let path = dir.join(format!("{name}.gguf"));
    let md: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = q.iter().map(|(k, t)| (k.as_str(), t)).collect();
    gguf_file::write(&mut std::fs::File::create(&path).unwrap(), &md, &ts).unwrap();
    path
}

/// Qwen2 (QKV bias) and Qwen3 (head norms, explicit head size) GGUF files load into the
/// shared decoder with llama.cpp's names and half-split RoPE, and give transformers' logits.
#[test]
fn qwen_gguf_files_match_transformers_logits() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["qwen2", "qwen3"] {
        let m = Model::load(&fixture_as_gguf(name, dir.path()), &LoadOptions::default()).unwrap();
        assert_eq!(m.architecture(), name);
        let r: Reference = mores::util::io::read_json(&fixture(name).join("reference.json")).unwrap();
        for (row, want) in r.rows.iter().zip(&r.logits) {
            let reads: Vec<(usize, usize)> = (0..row.len()).map(|p| (0, p)).collect();
            let got = m.logits_rows(std::slice::from_ref(row), &reads, Mode::INFER).unwrap().to_vec2::<f32>().unwrap();
            let worst = got.iter().zip(want).map(|(g, w)| max_diff(g, w)).fold(0.0, f32::max);
            assert!(worst < 1e-4, "{name} GGUF: logits differ from transformers by {worst}");
        }
    }
}
