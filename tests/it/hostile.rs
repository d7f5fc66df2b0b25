//! Hostile inputs, second round: paths that never end, files over their cap, sizes out of range
//! before anything is allocated, and the faults a fuzzer finds first. Each test is named after
//! what broke.
use crate::common::{assert_clean_error, mores, stderr, tiny_model};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A FIFO nobody writes to: opening it for reading blocks forever.
fn fifo(dir: &Path) -> PathBuf {
    let p = dir.join("endless.fifo");
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    p
}

/// `mores args` must end in an error line containing `want`, within seconds.
fn refused_quickly(args: &[&str], want: &str) {
    let t0 = Instant::now();
    let o = mores(args);
    assert_clean_error(&o, want);
    assert!(t0.elapsed() < Duration::from_secs(30), "{args:?} took {:?}", t0.elapsed());
}

#[test]
fn endless_paths_as_recipe_include_dataset_model_or_survey_end_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out");
    let o = out.to_str().unwrap();
    let model = tiny_model(&d.join("m"), "llama", 1);
    let m = model.to_str().unwrap();
    let fifo = fifo(d);
    for endless in [Path::new("/dev/zero"), Path::new("/dev/urandom"), fifo.as_path()] {
        let e = endless.to_str().unwrap();
        let want = "not a regular file";
        refused_quickly(&["probe", "--recipe", e, "--model", m, "--out", o], want);
        let inc = d.join("inc.toml");
        std::fs::write(&inc, format!("include = {e:?}\n")).unwrap();
        refused_quickly(&["probe", "--recipe", inc.to_str().unwrap(), "--model", m, "--out", o], want);
        refused_quickly(&["train", "--recipe", inc.to_str().unwrap(), "--data", e, "--out", o], want);
        refused_quickly(&["dataset", "stats", e], want);
        refused_quickly(&["train", "--data", e, "--model", m, "--out", o], want);
        refused_quickly(&["score", "--model", e, "--prompt", "a"], want);
        // A survey folder whose questions file never ends.
        let survey = d.join("survey");
        std::fs::create_dir_all(&survey).unwrap();
        let q = survey.join(mores::survey::QUESTIONS_FILE);
        let _ = std::fs::remove_file(&q);
        std::os::unix::fs::symlink(endless, &q).unwrap();
        refused_quickly(&["survey", "stats", "--data", survey.to_str().unwrap()], want);
        // A model folder whose config never ends.
        let hf = d.join("hf");
        std::fs::create_dir_all(&hf).unwrap();
        for f in ["model.safetensors", "tokenizer.json"] {
            std::fs::copy(model.join(f), hf.join(f)).unwrap();
        }
        let _ = std::fs::remove_file(hf.join("config.json"));
        std::os::unix::fs::symlink(endless, hf.join("config.json")).unwrap();
        refused_quickly(&["score", "--model", hf.to_str().unwrap(), "--prompt", "a"], want);
    }
    assert!(!out.join("samples.jsonl").exists());
}

#[test]
fn a_recipe_over_its_size_cap_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.toml");
    std::fs::File::create(&big).unwrap().set_len(3 << 20).unwrap();
    let e = mores::recipe::ProbeRecipe::load(&big).unwrap_err().to_string();
    assert!(e.contains("big.toml") && e.contains("over the 1 MiB cap"), "{e}");
    assert!(mores::util::io::sha256_file(Path::new("/dev/zero")).is_err());
}

/// Each class of size a user sets in a recipe is checked against a sane limit and named.
#[test]
fn recipe_sizes_out_of_range_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let root = crate::common::root();
    let distill = root.join("recipes/distill/default.toml");
    let probe = root.join("recipes/probe/wvs.toml");
    let check = |base: &Path, extra: &str, key: &str| {
        let p = dir.path().join("r.toml");
        std::fs::write(&p, format!("include = {:?}\n{extra}\n", base.to_str().unwrap())).unwrap();
        let e = if base == probe.as_path() {
            mores::recipe::ProbeRecipe::load(&p).map(|_| ()).unwrap_err().to_string()
        } else {
            mores::recipe::DistillRecipe::load(&p).map(|_| ()).unwrap_err().to_string()
        };
        assert!(e.contains(key), "{extra}: {e}");
    };
    check(&distill, "[lora]\nrank = 1000000000000", "lora.rank = 1000000000000");
    check(&distill, "[train]\nbatch = 100000000", "train.batch = 100000000");
    check(&distill, "[train]\nmax_len = 100000000000", "train.max_len");
    check(&distill, "[train]\nepochs = 1000000000", "train.epochs");
    check(&distill, "[train]\nfrozen_rows_mib = 1000000000000", "train.frozen_rows_mib");
    check(&distill, "[train]\nbetas = [0.9, 1.5]", "train.betas");
    check(
        &distill,
        "[teacher]\npath = \"x\"\n[generate]\nmode = \"soft-labels\"\nper_pair = 1000000000",
        "generate.per_pair",
    );
    check(
        &distill,
        "[teacher]\npath = \"x\"\n[generate]\nmode = \"soft-labels\"\n[generate.sampling]\nmax_new_tokens = 100000000000",
        "generate.sampling.max_new_tokens",
    );
    check(&distill, "[transfer]\nbootstrap = 0", "transfer.bootstrap = 0");
    check(&distill, "[transfer]\nmin_countries = 1", "transfer.min_countries = 1");
    check(&distill, "[transfer]\nneighbours = 0", "transfer.neighbours = 0");
    check(&distill, "[transfer]\nneighbours = 51", "transfer.neighbours = 51");
    check(&probe, "[scoring]\nprefix_cache_mib = 1125899906842624", "scoring.prefix_cache_mib");
    check(&probe, "[scoring]\nbatch = 1000000", "scoring.batch = 1000000");
}

/// A LoRA rank beyond the model's width aborted the process in an allocation.
#[test]
fn lora_rank_beyond_the_model_width_is_an_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(&dir.path().join("m"), "llama", 1);
    let mut model = mores::model::Model::load(&path, &Default::default()).unwrap();
    // q_proj is 32 -> 32, v_proj 32 -> 16 (two KV heads of 8).
    let spec: mores::recipe::lora::LoraSpec = toml::from_str("rank = 17\nalpha = 8.0").unwrap();
    let e = mores::model::adapter::Adapter::attach_new(&mut model, &spec, 1).err().expect("refused").to_string();
    assert!(e.contains("lora.rank = 17 exceeds the width") && e.contains("at most 16"), "{e}");
    let spec: mores::recipe::lora::LoraSpec = toml::from_str("rank = 16\nalpha = 8.0").unwrap();
    assert!(mores::model::adapter::Adapter::attach_new(&mut model, &spec, 1).is_ok());
}

/// `score --logits F --prompt ""` with a tokenizer that adds no BOS underflowed `ids.len() - 1`;
/// `bench probe --weights ""` panicked on an empty list.
#[test]
fn empty_prompt_without_bos_and_empty_weight_list_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(&dir.path().join("m"), "llama", 1);
    std::fs::write(model.join("tokenizer_config.json"), r#"{"eos_token": "</s>", "add_bos_token": false}"#).unwrap();
    let logits = dir.path().join("l.json");
    let o = mores(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "",
        "--labels",
        "1,2",
        "--logits",
        logits.to_str().unwrap(),
    ]);
    assert_clean_error(&o, "--prompt is empty");
    assert_clean_error(&mores(&["bench", "probe", "--weights", ""]), "--weights names no weight form");
    assert_clean_error(&mores(&["bench", "generate", "--weights", " , "]), "--weights names no weight form");
}

/// The output lock came after the model was loaded and hashed (probe) or the dataset read
/// (train): a second process did that work before it was refused. Now it is refused first: a
/// path that would fail later (a missing model, an endless dataset) is never looked at.
#[test]
fn a_second_writer_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let _held = mores::util::lock::OutputLock::dir(&out).unwrap();
    let o = out.to_str().unwrap();
    let want = "another mores process";
    refused_quickly(&["probe", "--model", "/nonexistent/model.gguf", "--countries", "USA", "--out", o], want);
    let model = tiny_model(&dir.path().join("m"), "llama", 1);
    refused_quickly(&["train", "--data", "/dev/zero", "--model", model.to_str().unwrap(), "--out", o], want);
}

/// A scoring-cache line with a short `probs` vector panicked when read back; a samples.jsonl
/// category unknown to the survey panicked in the figures. The damaged cache line is scored
/// again (same numbers), and the unknown category gets its own box.
#[test]
fn damaged_cache_lines_are_rescored_and_unknown_categories_plotted() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(&dir.path().join("m"), "llama", 1);
    let out = dir.path().join("p");
    let args = |o: &Path| {
        let v: Vec<String> =
            ["probe", "--model", model.to_str().unwrap(), "--countries", "USA", "--limit", "3", "--out"]
                .iter()
                .map(|s| s.to_string())
                .chain([o.to_str().unwrap().to_string()])
                .collect();
        v
    };
    let run = |o: &Path| {
        let a = args(o);
        let r = mores(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(r.status.success(), "{}", stderr(&r));
    };
    run(&out);
    let before = std::fs::read_to_string(out.join("samples.jsonl")).unwrap();
    let cache = std::fs::read_dir(out.join("cache")).unwrap().next().unwrap().unwrap().path();
    let text = std::fs::read_to_string(&cache).unwrap();
    let damaged: Vec<String> = text
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["scores"]["probs"] = serde_json::json!([0.5]);
            v.to_string()
        })
        .collect();
    std::fs::write(&cache, damaged.join("\n") + "\n").unwrap();
    run(&out);
    assert_eq!(std::fs::read_to_string(out.join("samples.jsonl")).unwrap(), before);
    // A category the survey does not know.
    let renamed: Vec<String> = before
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["category"] = "A category from other survey data".into();
            v.to_string()
        })
        .collect();
    std::fs::write(out.join("samples.jsonl"), renamed.join("\n") + "\n").unwrap();
    let merged = dir.path().join("merged");
    let r = mores(&["merge", "--out", merged.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(merged.join("plots/categories.svg").exists());
}

/// `adapter merge` rewrote any `rope_scaling` with a factor to `linear`: a merged Llama 3.1/3.2
/// folder carried the wrong RoPE.
#[test]
fn exported_folder_keeps_llama3_rope_scaling_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(&dir.path().join("m"), "llama", 1);
    let cfg_path = path.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let scaling = serde_json::json!({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    cfg["rope_scaling"] = scaling.clone();
    cfg["max_position_embeddings"] = 131072.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let mut model = mores::model::Model::load(&path, &Default::default()).unwrap();
    let out = dir.path().join("exported");
    mores::model::export::export_hf(&mut model, &out).unwrap();
    let got: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(got["rope_scaling"], scaling);
}

/// GGUF metadata integers were cast `as u32`: a block count of 2^32 + 1 read as 1 and matched
/// the one layer stored; a negative head count wrapped.
#[test]
fn gguf_integers_out_of_range_are_refused_not_truncated() {
    use candle_core::quantized::gguf_file::Value;
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("llama.block_count", Value::U64((1 << 32) + 1), "llama.block_count: 4294967297 is out of range"),
        ("llama.attention.head_count", Value::I32(-4), "llama.attention.head_count: not a non-negative integer"),
        ("llama.attention.head_count_kv", Value::I64(-1), "llama.attention.head_count_kv: not a non-negative integer"),
        ("llama.context_length", Value::U64(u64::MAX), "llama.context_length: 18446744073709551615 is out of range"),
    ];
    for (i, (k, v, want)) in cases.into_iter().enumerate() {
        let p = dir.path().join(format!("h{i}.gguf"));
        crate::cli::hostile_gguf(&p, &[(k, v)]);
        refused_quickly(&["score", "--model", p.to_str().unwrap(), "--prompt", "a"], want);
    }
}

/// Found by the fuzzer: tokenizers' BPE builder panicked (a slice out of range) on a GGUF merge
/// whose joined token is not in the vocabulary.
#[test]
fn gguf_merge_joining_unknown_tokens_is_an_error_not_a_panic() {
    use candle_core::quantized::gguf_file::Value;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    crate::cli::hostile_gguf(&p, &[("tokenizer.ggml.merges", Value::Array(vec![Value::String("a b".into())]))]);
    refused_quickly(
        &["score", "--model", p.to_str().unwrap(), "--prompt", "a"],
        "tokenizer.ggml.merges[0] = \"a b\" joins tokens that are not in tokenizer.ggml.tokens",
    );
}

/// Found by the fuzzer: with RUST_BACKTRACE set, candle appends a backtrace to its errors, and a
/// placeholder quoted from a recipe could hold a newline: the error took many lines.
#[test]
fn errors_stay_one_line_with_rust_backtrace_set() {
    use candle_core::quantized::gguf_file::Value;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    crate::cli::hostile_gguf(&p, &[("general.architecture", Value::U64(7))]);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mores"))
        .args(["score", "--model", p.to_str().unwrap(), "--prompt", "a"])
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_clean_error(&o, "general.architecture");
    assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", stderr(&o));
    let r = dir.path().join("r.toml");
    let base = crate::common::root().join("recipes/probe/wvs.toml");
    std::fs::write(
        &r,
        format!("include = {:?}\n[prompt]\nuser = \"{{countr\\nQuestion: {{question}} {{options}}\"\n", base),
    )
    .unwrap();
    let e = mores::recipe::ProbeRecipe::load(&r).unwrap_err().to_string();
    assert!(!e.contains('\n') && e.contains("unknown placeholder {countr\\nQuestion: {question}"), "{e}");
}

/// Found by the fuzzer: a GGUF tensor whose dimensions multiply past usize wrapped the size check
/// and aborted in an allocation; a weight whose shape disagrees with the header (here a K
/// projection of 33 rows) failed deep in a product with "capacity overflow".
#[test]
fn gguf_tensor_shapes_are_checked_before_reading() {
    refused_quickly(
        &["score", "--model", "tests/data/fuzz/tensor-dims-overflow.gguf", "--prompt", "a"],
        "has shape [144115188075855888, 32], which no file can hold",
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    use rand::SeedableRng;
    crate::fuzz::write_gguf_with(
        &mut rand_chacha::ChaCha8Rng::seed_from_u64(0),
        &p,
        false,
        Some(("blk.0.attn_k.weight", (33, 32))),
    );
    for w in [&["--f32"][..], &[][..]] {
        let mut a = vec!["score", "--model", p.to_str().unwrap(), "--prompt", "a"];
        a.extend_from_slice(w);
        refused_quickly(&a, "layer 0 k_proj is 33 x 32");
    }
}
