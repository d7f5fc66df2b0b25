use crate::common::{assert_clean_error, mores, smollm2, stderr};
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

/// A GGUF with one tensor and a one-token gpt2-type vocabulary: enough to reach the tokenizer
/// and the architecture checks.
fn vocab_gguf(path: &std::path::Path, arch: &str, pre: Option<&str>) {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let t = QTensor::quantize(
        &candle_core::Tensor::zeros((4, 32), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let s = |x: &str| gguf_file::Value::String(x.into());
    let mut md = vec![
        ("general.architecture", s(arch)),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.tokens", gguf_file::Value::Array(vec![s("a")])),
        ("tokenizer.ggml.merges", gguf_file::Value::Array(vec![])),
    ];
    if let Some(p) = pre {
        md.push(("tokenizer.ggml.pre", s(p)));
    }
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md.iter().map(|(k, v)| (*k, v)).collect::<Vec<_>>(), &[("token_embd.weight", &t)])
        .unwrap();
}

/// A missing input file's error line named the OS message twice (the I/O error was also the
/// error's source, which the CLI's chained format appends).
#[test]
fn missing_file_error_says_the_os_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("prompts.jsonl");
    let o = mores(&[
        "bench",
        "probe-one",
        "--model",
        "checkpoints/none.gguf",
        "--prompts",
        missing.to_str().unwrap(),
        "--batch",
        "8",
        "--weights",
        "f32",
    ]);
    assert_clean_error(&o, "prompts.jsonl");
    let err = stderr(&o);
    let line = err.lines().find(|l| l.starts_with("error: ")).unwrap();
    let os = std::fs::read(&missing).unwrap_err().to_string();
    assert_eq!(line.matches(&os).count(), 1, "{line:?}");
}

#[test]
fn unsupported_architecture_names_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mamba.gguf");
    vocab_gguf(&path, "mamba", None);
    let o = mores(&["score", "--model", path.to_str().unwrap(), "--prompt", "x"]);
    assert_clean_error(&o, "unsupported architecture \"mamba\"");
    assert_clean_error(&o, "gemma3");
}

/// A gpt2-type GGUF vocabulary with a pre-tokenizer mores does not implement was once
/// split by SmolLM2's rules without a word; now it is refused by name.
#[test]
fn unknown_gguf_pre_tokenizer_is_refused_not_guessed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("falcon-vocab.gguf");
    vocab_gguf(&path, "llama", Some("falcon"));
    let o = mores(&["score", "--model", path.to_str().unwrap(), "--prompt", "x"]);
    assert_clean_error(&o, "tokenizer.ggml.pre = \"falcon\" is not supported");
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

/// Regression: two runs on one --out both did all the work, and two generators left
/// every record twice. The second writer now stops at once, naming the first one's pid.
#[test]
fn second_writer_on_the_same_out_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let held = mores::util::lock::OutputLock::dir(&out).unwrap();
    let model = crate::common::tiny_model(&dir.path().join("m"), "llama", 1);
    let (m, o) = (model.to_str().unwrap(), out.to_str().unwrap());
    let probe = || mores(&["probe", "--model", m, "--countries", "USA", "--limit", "1", "--out", o]);
    assert_clean_error(&probe(), &format!("another mores process (pid {}) is writing", std::process::id()));
    assert!(!out.join("samples.jsonl").exists(), "nothing written by the refused run");
    drop(held);
    let done = probe();
    assert!(done.status.success(), "{}", stderr(&done));
    // Output files: the lock is beside the file.
    let file = dir.path().join("data.jsonl");
    let _held = mores::util::lock::OutputLock::file(&file).unwrap();
    let e = mores::util::lock::OutputLock::file(&file).unwrap_err().to_string();
    assert!(e.contains("is writing") && e.contains("data.jsonl"), "{e}");
}

/// A minimal llama GGUF (one layer's Q weight, embeddings) with `over` replacing metadata.
pub(crate) fn hostile_gguf(path: &std::path::Path, over: &[(&str, candle_core::quantized::gguf_file::Value)]) {
    hostile_gguf_with(path, over, None)
}

/// The same, with an output head of `head_rows` rows when given.
fn hostile_gguf_with(
    path: &std::path::Path,
    over: &[(&str, candle_core::quantized::gguf_file::Value)],
    head_rows: Option<usize>,
) {
    use candle_core::quantized::{gguf_file::Value, GgmlDType, QTensor};
    let t = |r: usize, c: usize| {
        QTensor::quantize(
            &candle_core::Tensor::zeros((r, c), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
            GgmlDType::F32,
        )
        .unwrap()
    };
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(vec![Value::String("a".into()), Value::String("b".into())])),
        ("tokenizer.ggml.merges".into(), Value::Array(vec![])),
        ("llama.embedding_length".into(), Value::U32(32)),
        ("llama.feed_forward_length".into(), Value::U32(64)),
        ("llama.block_count".into(), Value::U32(1)),
        ("llama.attention.head_count".into(), Value::U32(4)),
    ];
    for (k, v) in over {
        md.retain(|(key, _)| key != k);
        md.push((k.to_string(), v.clone()));
    }
    let (emb, q, head) = (t(2, 32), t(32, 32), t(head_rows.unwrap_or(1), 32));
    let mut f = std::fs::File::create(path).unwrap();
    let md_ref: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut tensors = vec![("token_embd.weight", &emb), ("blk.0.attn_q.weight", &q)];
    if head_rows.is_some() {
        tensors.push(("output.weight", &head));
    }
    candle_core::quantized::gguf_file::write(&mut f, &md_ref, &tensors).unwrap();
}

/// Regression: hyperparameters from a hostile GGUF were trusted, and aborted the
/// process allocating gigabytes or panicked dividing by zero.
#[test]
fn hostile_hyperparameters_are_refused_before_any_allocation() {
    use candle_core::quantized::gguf_file::Value;
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("llama.block_count", Value::U32(u32::MAX), "layer count = 4294967295"),
        ("llama.attention.head_count", Value::U32(0), "attention heads = 0"),
        ("llama.rope.dimension_count", Value::U32(u32::MAX), "head dimension 4294967295"),
        ("llama.attention.head_count_kv", Value::U32(3), "not a multiple of KV heads 3"),
        ("llama.block_count", Value::U32(2), "does not match the layers stored"),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(f32::NAN), "epsilon NaN"),
    ];
    for (i, (k, v, want)) in cases.into_iter().enumerate() {
        let p = dir.path().join(format!("h{i}.gguf"));
        hostile_gguf(&p, &[(k, v)]);
        let t0 = std::time::Instant::now();
        let o = mores(&["score", "--model", p.to_str().unwrap(), "--prompt", "a"]);
        assert_clean_error(&o, want);
        assert_clean_error(&o, "invalid model configuration");
        assert!(t0.elapsed().as_secs() < 20, "{k}: took {:?}", t0.elapsed());
    }
    // An alignment of 0 panicked inside candle's GGUF reader.
    let p = dir.path().join("align.gguf");
    hostile_gguf(&p, &[("general.alignment", Value::U32(0))]);
    assert_clean_error(&mores(&["score", "--model", p.to_str().unwrap(), "--prompt", "a"]), "not a readable GGUF");
    hostile_gguf(&p, &[("general.alignment", Value::U32(48))]);
    assert_clean_error(&mores(&["score", "--model", p.to_str().unwrap(), "--prompt", "a"]), "general.alignment = 48");
    // An output head wider than the vocabulary scored token ids the tokenizer does not have.
    hostile_gguf_with(&p, &[], Some(3));
    assert_clean_error(
        &mores(&["score", "--model", p.to_str().unwrap(), "--prompt", "a"]),
        "the output head has 3 rows but the vocabulary has 2 tokens",
    );
}

/// Regression: empty, blank and repeated labels, and an empty prompt, panicked or were
/// silently dropped or double counted.
#[test]
fn bad_labels_and_empty_prompt_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = crate::common::tiny_model(&dir.path().join("m"), "llama", 1);
    let m = model.to_str().unwrap();
    for (labels, want) in
        [("", "label 1 of [\"\"] is empty"), ("1,1,2", "\"1\" appears twice"), ("1,,2", "label 2 of"), ("1, ", "blank")]
    {
        assert_clean_error(&mores(&["score", "--model", m, "--prompt", "Q?\nAnswer: ", "--labels", labels]), want);
    }
    assert_clean_error(&mores(&["score", "--model", m, "--prompt", ""]), "empty prompt");
}

/// Regression: arguments that silently meant "everything".
#[test]
fn arguments_that_would_mean_everything_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = crate::common::tiny_model(&dir.path().join("m"), "llama", 1);
    let out = dir.path().join("o");
    let probe = |extra: &[&str]| {
        let mut a = vec!["probe", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap()];
        a.extend_from_slice(extra);
        mores(&a)
    };
    assert_clean_error(&probe(&["--limit", "0"]), "--limit 0");
    assert_clean_error(&probe(&["--countries", ""]), "empty entry");
    assert_clean_error(&probe(&["--countries", ","]), "empty entry");
    assert_clean_error(&probe(&["--countries", "USA,USA"]), "\"USA\" twice");
    let slurm = |id: &str, n: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mores"))
            .args(["probe", "--model", model.to_str().unwrap(), "--limit", "1", "--countries", "USA"])
            .args(["--out", out.to_str().unwrap()])
            .env("SLURM_ARRAY_TASK_ID", id)
            .env("SLURM_ARRAY_TASK_COUNT", n)
            .env("MORES_THREADS", "2")
            .output()
            .unwrap()
    };
    assert_clean_error(&slurm("7", "2"), "--array=0-1");
    assert_clean_error(&slurm("x", "2"), "SLURM_ARRAY_TASK_ID=x");
    assert!(!out.join("samples.jsonl").exists(), "nothing written");

    // merge refuses a split with a shard missing unless asked.
    let shard0 = dir.path().join("s0");
    let o = mores(&[
        "probe",
        "--model",
        model.to_str().unwrap(),
        "--limit",
        "2",
        "--countries",
        "USA,DEU",
        "--shard",
        "0/2",
        "--out",
        shard0.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let merged = dir.path().join("merged");
    let o = mores(&["merge", "--out", merged.to_str().unwrap(), shard0.to_str().unwrap()]);
    assert_clean_error(&o, "missing shards 1/2");
    assert!(!merged.exists(), "a refused merge writes nothing");
    let o = mores(&["merge", "--allow-partial", "--out", merged.to_str().unwrap(), shard0.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Regression: prompts longer than the context were run anyway (6 GB, then an abort);
/// NaN weights gave probabilities with exit 0.
#[test]
fn overlong_prompts_and_nan_weights_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = crate::common::tiny_model(&dir.path().join("m"), "llama", 1);
    let cfg_path = model.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["max_position_embeddings"] = 64.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let m = model.to_str().unwrap();
    let long = "word ".repeat(40);
    assert_clean_error(&mores(&["score", "--model", m, "--prompt", &long]), "longer than the model's context of 64");
    assert!(mores(&["score", "--model", m, "--prompt", "short\nAnswer: "]).status.success());

    let st = model.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&st, &candle_core::Device::Cpu).unwrap();
    let w = t["model.layers.1.mlp.down_proj.weight"].clone();
    let mut v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[5] = f32::NAN;
    t.insert(
        "model.layers.1.mlp.down_proj.weight".into(),
        candle_core::Tensor::from_vec(v, w.shape(), &candle_core::Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, &st).unwrap();
    assert_clean_error(&mores(&["score", "--model", m, "--prompt", "short\nAnswer: "]), "non-finite logits");
}

#[test]
fn bench_sizes_of_zero_are_errors() {
    for args in [["--steps", "0"], ["--batch", "0"], ["--seq", "0"]] {
        let mut a = vec!["bench", "lora"];
        a.extend_from_slice(&args);
        assert_clean_error(&mores(&a), "bench lora needs");
    }
}

/// Both benchmarks run end to end on a tiny model (mores rows only): the probe table
/// shows prefix reuse computing fewer tokens than the rows hold, beside the whole-rows reference;
/// the decoding table reports the tokens asked for.
#[test]
fn bench_probe_and_generate_tables_on_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let m = crate::common::tiny_model(&dir.path().join("m"), "llama", 1);
    let work = dir.path().join("work");
    let (m, work) = (m.to_str().unwrap(), work.to_str().unwrap());
    let o = mores(&["bench", "probe", "--models", m, "--n", "12", "--weights", "f32", "--repeat", "2", "--work", work]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    let row = |name: &str| {
        table.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("no {name} row: {table}")).to_string()
    };
    let tokens = |line: &str| -> (u64, u64) {
        let cell = line.split('|').nth(5).unwrap().trim().to_string();
        let (a, b) = cell.split_once(" / ").unwrap_or_else(|| panic!("tokens cell {cell:?}"));
        (a.parse().unwrap(), b.parse().unwrap())
    };
    let (reuse, whole) = (tokens(&row("| mores (f32) |")), tokens(&row("whole rows")));
    assert!(reuse.0 < reuse.1 && whole.0 == whole.1 && reuse.1 == whole.1, "{table}");
    assert!(table.contains("2 round(s)"), "{table}");
    let o =
        mores(&["bench", "generate", "--models", m, "--weights", "f32", "--new", "3", "--reps", "1", "--work", work]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("3 new tokens"));
    assert_clean_error(&mores(&["bench", "generate", "--models", m, "--new", "0"]), "bench generate needs");
}

/// Regression: `dataset stats` and training accepted records whose hash no longer
/// matched their content, or with a mode no generator writes.
#[test]
fn dataset_hash_and_mode_are_verified() {
    use mores::generate::dataset::Record;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.jsonl");
    let mut r: Record =
        serde_json::from_value(serde_json::json!({"id": "a", "prompt": "Q?", "target": "A.", "mode": "qa"})).unwrap();
    r.hash = Some(r.content_hash());
    let good = serde_json::to_string(&r).unwrap();
    std::fs::write(&p, format!("{good}\n")).unwrap();
    assert!(mores(&["dataset", "stats", p.to_str().unwrap()]).status.success());
    std::fs::write(&p, format!("{}\n", good.replace("\"A.\"", "\"B.\""))).unwrap();
    assert_clean_error(
        &mores(&["dataset", "stats", p.to_str().unwrap()]),
        "d.jsonl:1: record \"a\": its hash does not match",
    );
    r.mode = Some("magic".into());
    r.hash = None;
    std::fs::write(&p, format!("{}\n", serde_json::to_string(&r).unwrap())).unwrap();
    assert_clean_error(&mores(&["dataset", "stats", p.to_str().unwrap()]), "unknown mode \"magic\"");
    let labels =
        serde_json::json!({"id": "b", "prompt": "Q?", "labels": ["", "", "", ""], "target": [0.25, 0.25, 0.25, 0.25]});
    std::fs::write(&p, format!("{labels}\n")).unwrap();
    assert_clean_error(&mores(&["dataset", "stats", p.to_str().unwrap()]), "empty or blank");
}

/// A TOML syntax error names the file it is in (the included one, not the includer) and where.
#[test]
fn recipe_syntax_error_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.toml"), "[scoring]\nbatch = 4\norders = [\"original\"\n").unwrap();
    let top = dir.path().join("top.toml");
    std::fs::write(&top, "include = \"base.toml\"\n").unwrap();
    let o = mores(&[
        "probe",
        "--recipe",
        top.to_str().unwrap(),
        "--model",
        "x.gguf",
        "--out",
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert_clean_error(&o, "base.toml");
    assert_clean_error(&o, "line 3, column");
}

/// Regression: a model's chat template is a program; nested loops, a huge repeated
/// list and a string doubled in a loop ran for minutes or allocated until the process aborted.
#[test]
fn runaway_chat_templates_end_in_a_clear_error_before_scoring() {
    let dir = tempfile::tempdir().unwrap();
    let model = crate::common::tiny_model(&dir.path().join("m"), "llama", 1);
    let cases = [
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "template instructions"),
        ("{% for x in [1] * 2000000000 %}{{ x }}{% endfor %}", "chat template from"),
        // Forty doublings: few instructions, a terabyte; the allocator's cap stops it at 32 MiB.
        (
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
            "built one value over 33554432 bytes",
        ),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
            "string doubled",
        ),
    ];
    for (i, (template, want)) in cases.into_iter().enumerate() {
        let tc = serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "chat_template": template});
        std::fs::write(model.join("tokenizer_config.json"), tc.to_string()).unwrap();
        let out = dir.path().join(format!("o{i}"));
        let t0 = std::time::Instant::now();
        let o = mores(&[
            "probe",
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--limit",
            "1",
            "--countries",
            "USA",
        ]);
        assert_clean_error(&o, want);
        assert_clean_error(&o, "tokenizer_config.json");
        assert!(t0.elapsed().as_secs() < 20, "case {i}: took {:?}", t0.elapsed());
        let left: Vec<_> =
            std::fs::read_dir(&out).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert!(!left.iter().any(|f| f == "samples.jsonl" || f == "results.json"), "case {i}: output left: {left:?}");
    }
}

/// Every recipe the project ships parses, resolves its includes and validates: a typo in a
/// screening variant's field or an include it cannot find fails here, not an hour into a run.
#[test]
fn every_shipped_recipe_loads_and_validates() {
    let root = crate::common::root().join("recipes");
    let mut n = 0;
    fn tomls(d: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                tomls(&p, out);
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
    for dir in ["probe", "distill", "transfer"] {
        let mut files = Vec::new();
        tomls(&root.join(dir), &mut files);
        for p in files {
            {
                let r = if dir == "probe" {
                    mores::recipe::ProbeRecipe::load(&p).map(|_| ())
                } else {
                    mores::recipe::DistillRecipe::load(&p).map(|_| ())
                };
                assert!(r.is_ok(), "{}: {}", p.display(), r.unwrap_err());
                n += 1;
            }
        }
    }
    assert!(n >= 20, "only {n} recipes found under {}", root.display());
}
