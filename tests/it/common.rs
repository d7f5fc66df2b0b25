use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn smollm2() -> PathBuf {
    let p = root().join("checkpoints/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} missing: run scripts/fetch-models.sh (scripts/test.sh does)", p.display());
    p
}

pub fn gemma3() -> PathBuf {
    let p = root().join("checkpoints/gemma-3-270m-q4_k_m.gguf");
    assert!(p.exists(), "{} missing: run scripts/fetch-models.sh (scripts/test.sh does)", p.display());
    p
}

pub fn mores(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mores"))
        .args(args)
        .current_dir(root())
        .env("MORES_THREADS", "2")
        .output()
        .expect("run mores")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The user-facing contract for bad input: non-zero exit, an `error:` line that names the
/// problem, and no panic.
pub fn assert_clean_error(o: &Output, must_contain: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success; stderr: {err}");
    assert!(!err.contains("panicked"), "panic instead of an error: {err}");
    let line = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line in: {err}"));
    assert!(line.contains(must_contain), "error line {line:?} does not mention {must_contain:?}");
}

pub const PROMPT: &str = "Imagine you are a person living in Nigeria. Answer the following survey question as they would.\nQuestion: How important is family in your life?\nOptions:\n1. Very important\n2. Rather important\n3. Not very important\n4. Not at all important\nAnswer: ";

/// A character-level tokenizer.json: printable ASCII plus newline, no merges.
fn write_tokenizer(dir: &Path) -> usize {
    let mut vocab: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into(), "\n".into()];
    vocab.extend((32u8..127).map(|c| (c as char).to_string()));
    let map: HashMap<String, u32> = vocab.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null, "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": map, "merges": []}
    });
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_string(&json).unwrap()).unwrap();
    vocab.len()
}

fn randn(rng: &mut rand_chacha::ChaCha8Rng, shape: &[usize], std: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * std * 1.732).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// A Hugging Face folder with a tiny random-weight model of `arch` ("llama" or "gemma3"),
/// weights drawn from a seeded ChaCha8 stream.
pub fn tiny_model(dir: &Path, arch: &str, seed: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let vocab = write_tokenizer(dir);
    let (hidden, inter, layers, heads, kv, hd) = (32usize, 64usize, 3usize, 4usize, 2usize, 8usize);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert("model.embed_tokens.weight".into(), randn(&mut rng, &[vocab, hidden], 0.5));
    t.insert("model.norm.weight".into(), Tensor::ones(hidden, DType::F32, &Device::Cpu).unwrap());
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        for (name, shape) in [
            ("self_attn.q_proj", [heads * hd, hidden]),
            ("self_attn.k_proj", [kv * hd, hidden]),
            ("self_attn.v_proj", [kv * hd, hidden]),
            ("self_attn.o_proj", [hidden, heads * hd]),
            ("mlp.gate_proj", [inter, hidden]),
            ("mlp.up_proj", [inter, hidden]),
            ("mlp.down_proj", [hidden, inter]),
        ] {
            t.insert(format!("{p}.{name}.weight"), randn(&mut rng, &shape, 0.2));
        }
        let mut norms = vec!["input_layernorm", "post_attention_layernorm"];
        if arch == "gemma3" {
            norms.extend(["pre_feedforward_layernorm", "post_feedforward_layernorm"]);
            t.insert(format!("{p}.self_attn.q_norm.weight"), randn(&mut rng, &[hd], 0.1));
            t.insert(format!("{p}.self_attn.k_norm.weight"), randn(&mut rng, &[hd], 0.1));
        }
        for n in norms {
            t.insert(format!("{p}.{n}.weight"), (randn(&mut rng, &[hidden], 0.1) + 1.0).unwrap());
        }
    }
    if arch == "llama" {
        t.insert("lm_head.weight".into(), randn(&mut rng, &[vocab, hidden], 0.5));
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let config = if arch == "llama" {
        serde_json::json!({"architectures": ["LlamaForCausalLM"], "hidden_size": hidden, "intermediate_size": inter,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "vocab_size": vocab, "tie_word_embeddings": false})
    } else {
        // Window 8 is shorter than the prompts, so the sliding-window mask is exercised.
        serde_json::json!({"architectures": ["Gemma3ForCausalLM"], "hidden_size": hidden, "intermediate_size": inter,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "sliding_window": 8,
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention"], "query_pre_attn_scalar": hd,
            "vocab_size": vocab})
    };
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true}"#,
    )
    .unwrap();
    dir.to_path_buf()
}
