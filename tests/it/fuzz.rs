//! Seeded, structure-aware fuzzing of every format mores reads: GGUF headers and tensor tables,
//! safetensors headers with their model folder, PEFT adapter folders, dataset lines, recipe TOML
//! and the survey files (JSONL and CSV, and the respondent-level CSV `survey import` reads).
//!
//! Each reader gets mutated inputs built from well-formed seeds (fields set to hostile values,
//! JSON nodes replaced, lines dropped or repeated, bytes flipped, files cut short) and must end in
//! `Ok` or a one-line error: never a panic, never more than [`CASE_SECONDS`] on one input, never a
//! single allocation over [`ALLOC_CAP`] bytes (the test binary's allocator ends the process with
//! the case named). A failing input is kept under `target/fuzz-crashes/` and becomes a regression
//! test in `hostile.rs`, named after what broke.
//!
//! CI runs each reader for [`DEFAULT_CASES`] inputs (or [`DEFAULT_SECONDS`], whichever ends first);
//! `scripts/fuzz.sh MINUTES` runs longer with a fresh seed. Settings: `MORES_FUZZ_CASES`,
//! `MORES_FUZZ_SECONDS`, `MORES_FUZZ_SEED`.
use crate::common::{root, tiny_model};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEFAULT_CASES: usize = 1500;
const DEFAULT_SECONDS: u64 = 10;
const CASE_SECONDS: u64 = 20;
const ALLOC_CAP: usize = 1 << 30;

fn env_num(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.parse().ok())
}

/// Run `one` on `cases` seeded inputs. `one` writes its input under the folder it is given and
/// calls the reader; an `Err` from the reader is a pass if it is one line.
fn fuzz(name: &str, one: impl Fn(&mut ChaCha8Rng, &Path) -> Result<(), String>) {
    let cases = env_num("MORES_FUZZ_CASES").unwrap_or(DEFAULT_CASES as u64);
    let budget = Duration::from_secs(env_num("MORES_FUZZ_SECONDS").unwrap_or(DEFAULT_SECONDS));
    let seed = env_num("MORES_FUZZ_SEED").unwrap_or(0x6d6f726573);
    let tmp = tempfile::tempdir().unwrap();
    let case_dir = tmp.path().join("case");
    // (case number, start) of the case running now; a watchdog ends the process on a hang.
    let current: Arc<Mutex<Option<(u64, Instant)>>> = Arc::new(Mutex::new(None));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (current, done, name, dir) = (current.clone(), done.clone(), name.to_string(), case_dir.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if let Some((i, t0)) = *current.lock().unwrap() {
                    if t0.elapsed() > Duration::from_secs(CASE_SECONDS) {
                        let kept = keep(&name, seed, i, &dir);
                        eprintln!(
                            "fuzz {name}: case {i} (seed {seed}) ran over {CASE_SECONDS} s; input kept in {kept}"
                        );
                        std::process::exit(101);
                    }
                }
            }
        });
    }
    let what: &'static str = Box::leak(
        format!(
            "fuzz {name} (seed {seed}): one allocation over {ALLOC_CAP} bytes; the input is in {}",
            case_dir.display()
        )
        .into_boxed_str(),
    );
    let t0 = Instant::now();
    let (mut ran, mut refused) = (0u64, 0u64);
    for i in 0..cases {
        if t0.elapsed() > budget {
            break;
        }
        let _ = std::fs::remove_dir_all(&case_dir);
        std::fs::create_dir_all(&case_dir).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fxhash(name) ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        *current.lock().unwrap() = Some((i, Instant::now()));
        let r = {
            let _cap = mores::util::alloc::cap_allocations(ALLOC_CAP, what);
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| one(&mut rng, &case_dir)))
        };
        *current.lock().unwrap() = None;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                refused += 1;
                if e.contains('\n') || e.trim().is_empty() {
                    let kept = keep(name, seed, i, &case_dir);
                    done.store(true, std::sync::atomic::Ordering::Relaxed);
                    panic!("fuzz {name}: case {i} (seed {seed}) gave an error that is not one line: {e:?}; input kept in {kept}");
                }
            }
            Err(p) => {
                let msg =
                    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                let kept = keep(name, seed, i, &case_dir);
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                panic!("fuzz {name}: case {i} (seed {seed}) panicked: {msg:?}; input kept in {kept}");
            }
        }
        ran += 1;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    eprintln!("fuzz {name}: {ran} inputs ({refused} refused with an error) in {:.1} s", t0.elapsed().as_secs_f64());
    assert!(ran >= cases.min(50), "fuzz {name}: only {ran} inputs ran");
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// Copy a failing input to `target/fuzz-crashes/NAME-SEED-CASE`.
fn keep(name: &str, seed: u64, case: u64, dir: &Path) -> String {
    let to = root().join("target/fuzz-crashes").join(format!("{name}-{seed}-{case}"));
    let _ = std::fs::create_dir_all(&to);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = std::fs::copy(e.path(), to.join(e.file_name()));
        }
    }
    to.display().to_string()
}

// ---- mutators --------------------------------------------------------------------------------

const INTERESTING: [i128; 16] = [
    0,
    1,
    -1,
    2,
    3,
    7,
    255,
    65_535,
    i32::MAX as i128,
    u32::MAX as i128,
    (1i128 << 32) + 1,
    i64::MAX as i128,
    u64::MAX as i128,
    i32::MIN as i128,
    1 << 40,
    -(1i128 << 33),
];

fn interesting_int(rng: &mut ChaCha8Rng) -> i128 {
    INTERESTING[rng.random_range(0..INTERESTING.len())]
}

/// A hostile JSON value: huge or negative numbers, NaN-like strings, wrong types, deep nesting.
fn hostile_json(rng: &mut ChaCha8Rng) -> Json {
    match rng.random_range(0..10) {
        0..=3 => {
            let n = interesting_int(rng);
            serde_json::from_str(&n.to_string()).unwrap_or(Json::Null)
        }
        4 => serde_json::json!(f64::MAX),
        5 => serde_json::json!(-1.5e300),
        6 => Json::String("x".repeat(rng.random_range(0..5000))),
        7 => Json::Null,
        8 => serde_json::json!([[[[[[[[1]]]]]]]]),
        _ => serde_json::json!({"": {}}),
    }
}

/// Replace one node of `v` (chosen uniformly among all nodes) with a hostile value, or drop one
/// key of an object.
fn mutate_json(rng: &mut ChaCha8Rng, v: &mut Json) {
    fn count(v: &Json) -> usize {
        1 + match v {
            Json::Array(a) => a.iter().map(count).sum(),
            Json::Object(o) => o.values().map(count).sum(),
            _ => 0,
        }
    }
    fn nth<'a>(v: &'a mut Json, n: &mut usize) -> Option<&'a mut Json> {
        if *n == 0 {
            return Some(v);
        }
        *n -= 1;
        match v {
            Json::Array(a) => a.iter_mut().find_map(|x| nth(x, n)),
            Json::Object(o) => o.values_mut().find_map(|x| nth(x, n)),
            _ => None,
        }
    }
    let mut k = rng.random_range(0..count(v));
    let replacement = hostile_json(rng);
    let drop_key = rng.random_bool(0.2);
    if let Some(node) = nth(v, &mut k) {
        match node {
            Json::Object(o) if drop_key && !o.is_empty() => {
                let key = o.keys().nth(rng.random_range(0..o.len())).unwrap().clone();
                o.remove(&key);
            }
            _ => *node = replacement,
        }
    }
}

/// Byte-level damage: flips, interesting values written over 1-8 bytes, cuts, repeats.
fn mutate_bytes(rng: &mut ChaCha8Rng, b: &mut Vec<u8>, window: usize) {
    for _ in 0..rng.random_range(1..4) {
        if b.is_empty() {
            return;
        }
        let at = rng.random_range(0..b.len().min(window.max(1)));
        match rng.random_range(0..6) {
            0 => b[at] ^= 1 << rng.random_range(0..8),
            1 => b[at] = [0u8, 0xff, 0x7f, 0x80][rng.random_range(0..4)],
            2 => {
                let bytes = (interesting_int(rng) as u64).to_le_bytes();
                let w = [1usize, 2, 4, 8][rng.random_range(0..4)];
                for (j, x) in bytes.iter().take(w).enumerate() {
                    if at + j < b.len() {
                        b[at + j] = *x;
                    }
                }
            }
            3 => b.truncate(at),
            4 => {
                let end = (at + rng.random_range(1..64)).min(b.len());
                let chunk = b[at..end].to_vec();
                b.splice(at..at, chunk);
            }
            _ => {
                let end = (at + rng.random_range(1..64)).min(b.len());
                b.drain(at..end);
            }
        }
    }
}

/// Text damage: numbers replaced by hostile ones, lines dropped, repeated or cut.
fn mutate_text(rng: &mut ChaCha8Rng, s: &str) -> String {
    let mut lines: Vec<String> = s.lines().map(String::from).collect();
    if lines.is_empty() {
        return s.to_string();
    }
    for _ in 0..rng.random_range(1..4) {
        let i = rng.random_range(0..lines.len());
        match rng.random_range(0..5) {
            0 | 1 => {
                // The first number on the line.
                let l = &lines[i];
                if let Some(start) = l.find(|c: char| c.is_ascii_digit()) {
                    let end = l[start..].find(|c: char| !c.is_ascii_digit() && c != '.').map_or(l.len(), |e| start + e);
                    lines[i] = format!("{}{}{}", &l[..start], interesting_int(rng), &l[end..]);
                }
            }
            2 => {
                lines.remove(i);
                if lines.is_empty() {
                    break;
                }
            }
            3 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            _ => {
                let l = &lines[i];
                let cut = rng.random_range(0..=l.len());
                lines[i] = l.get(..cut).unwrap_or(l).to_string();
            }
        }
    }
    lines.join("\n") + "\n"
}

fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string()
}

// ---- readers ---------------------------------------------------------------------------------

/// A complete tiny llama GGUF with hyperparameters, tensor shapes and tokenizer metadata drawn
/// hostile at times.
pub(crate) fn write_gguf(rng: &mut ChaCha8Rng, path: &Path, damage: bool) {
    write_gguf_with(rng, path, damage, None)
}

/// [`write_gguf`], with one tensor's shape replaced.
pub(crate) fn write_gguf_with(rng: &mut ChaCha8Rng, path: &Path, damage: bool, shape: Option<(&str, (usize, usize))>) {
    use candle_core::quantized::{gguf_file::Value, GgmlDType, QTensor};
    let (hidden, inter, heads, kv, layers, vocab) = (32usize, 64usize, 4usize, 2usize, 2usize, 5usize);
    let hd = hidden / heads;
    let t = |r: usize, c: usize| {
        let v: Vec<f32> = (0..r * c).map(|i| ((i * 7919 % 97) as f32 - 48.0) / 97.0).collect();
        let dt = if c.is_multiple_of(32) { GgmlDType::Q8_0 } else { GgmlDType::F32 };
        QTensor::quantize(&candle_core::Tensor::from_vec(v, (r, c), &candle_core::Device::Cpu).unwrap(), dt).unwrap()
    };
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(["a", "b", "Ġ", "1", "Ġ1"].iter().map(|s| Value::String(s.to_string())).collect()),
        ),
        ("tokenizer.ggml.merges".into(), Value::Array(vec![Value::String("Ġ 1".into())])),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(0)),
        ("llama.embedding_length".into(), Value::U32(hidden as u32)),
        ("llama.feed_forward_length".into(), Value::U32(inter as u32)),
        ("llama.block_count".into(), Value::U32(layers as u32)),
        ("llama.attention.head_count".into(), Value::U32(heads as u32)),
        ("llama.attention.head_count_kv".into(), Value::U32(kv as u32)),
        ("llama.context_length".into(), Value::U32(64)),
        ("llama.rope.freq_base".into(), Value::F32(10_000.0)),
        ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(1e-5)),
    ];
    let mut shapes: Vec<(String, (usize, usize))> =
        vec![("token_embd.weight".into(), (vocab, hidden)), ("output_norm.weight".into(), (1, hidden))];
    for i in 0..layers {
        for (n, s) in [
            ("attn_norm", (1, hidden)),
            ("attn_q", (heads * hd, hidden)),
            ("attn_k", (kv * hd, hidden)),
            ("attn_v", (kv * hd, hidden)),
            ("attn_output", (hidden, heads * hd)),
            ("ffn_norm", (1, hidden)),
            ("ffn_gate", (inter, hidden)),
            ("ffn_up", (inter, hidden)),
            ("ffn_down", (hidden, inter)),
        ] {
            shapes.push((format!("blk.{i}.{n}.weight"), s));
        }
    }
    if let Some((name, s)) = shape {
        shapes.iter_mut().filter(|(n, _)| n == name).for_each(|(_, old)| *old = s);
    }
    // Structure-aware damage: a metadata value, a tensor's shape, or a tensor gone.
    for _ in 0..if damage { rng.random_range(0..3) } else { 0 } {
        match rng.random_range(0..4) {
            0 | 1 => {
                let k = rng.random_range(0..md.len());
                let n = interesting_int(rng);
                md[k].1 = match rng.random_range(0..6) {
                    0 => Value::U32(n as u32),
                    1 => Value::U64(n as u64),
                    2 => Value::I32(n as i32),
                    3 => Value::I64(n as i64),
                    4 => Value::F32([f32::NAN, f32::INFINITY, -1.0, 0.0, 1e30][rng.random_range(0..5)]),
                    _ => Value::String("7".into()),
                };
            }
            2 => {
                let k = rng.random_range(0..shapes.len());
                let d = [0usize, 1, 3, 33, 64, 128][rng.random_range(0..6)];
                if rng.random_bool(0.5) {
                    shapes[k].1 .0 = d;
                } else {
                    shapes[k].1 .1 = d;
                }
            }
            _ => {
                let k = rng.random_range(0..shapes.len());
                shapes.remove(k);
            }
        }
    }
    let tensors: Vec<(String, QTensor)> = shapes
        .iter()
        .filter(|(_, (r, c))| *r > 0 && *c > 0)
        .map(|(n, (r, c))| {
            let q = if *r == 1 {
                t(1, *c).dequantize(&candle_core::Device::Cpu).unwrap().squeeze(0).unwrap()
            } else {
                t(*r, *c).dequantize(&candle_core::Device::Cpu).unwrap()
            };
            let dt = if *r > 1 && *c % 32 == 0 { GgmlDType::Q8_0 } else { GgmlDType::F32 };
            (n.clone(), QTensor::quantize(&q, dt).unwrap())
        })
        .collect();
    let mut f = std::fs::File::create(path).unwrap();
    let md_ref: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_ref: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    candle_core::quantized::gguf_file::write(&mut f, &md_ref, &t_ref).unwrap();
}

/// Load a model and, if it loads, score one prompt with it.
fn load_and_score(path: &Path, weights: mores::recipe::WeightMode) -> Result<(), String> {
    let m = mores::model::Model::load(path, &mores::model::LoadOptions::for_weights(weights)).map_err(one_line)?;
    let req = mores::score::ScoreRequest { prompt: "a b 1".into(), labels: vec!["1".into(), "a".into()] };
    mores::score::Scorer::score_batch(&m, &[req]).map_err(one_line)?;
    Ok(())
}

#[test]
fn fuzz_gguf_headers_and_tensor_tables() {
    // The seed itself loads and scores.
    let seed = tempfile::tempdir().unwrap();
    let p = seed.path().join("m.gguf");
    write_gguf(&mut ChaCha8Rng::seed_from_u64(0), &p, false);
    load_and_score(&p, mores::recipe::WeightMode::F32).unwrap();
    load_and_score(&p, mores::recipe::WeightMode::Stored).unwrap();
    fuzz("gguf", |rng, dir| {
        let p = dir.join("m.gguf");
        write_gguf(rng, &p, true);
        if rng.random_bool(0.5) {
            let mut b = std::fs::read(&p).unwrap();
            mutate_bytes(rng, &mut b, 2048);
            std::fs::write(&p, b).unwrap();
        }
        let w = [mores::recipe::WeightMode::F32, mores::recipe::WeightMode::Stored][rng.random_range(0..2)];
        load_and_score(&p, w)
    });
}

/// Rewrite a safetensors file's JSON header (or its length prefix, or raw header bytes).
fn mutate_safetensors(rng: &mut ChaCha8Rng, p: &Path) {
    let mut b = std::fs::read(p).unwrap();
    if b.len() < 8 {
        return;
    }
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    match rng.random_range(0..3) {
        0 if 8 + n <= b.len() => {
            let mut header: Json = serde_json::from_slice(&b[8..8 + n]).unwrap_or(Json::Null);
            mutate_json(rng, &mut header);
            let mut h = serde_json::to_vec(&header).unwrap();
            while !h.len().is_multiple_of(8) {
                h.push(b' ');
            }
            let mut out = (h.len() as u64).to_le_bytes().to_vec();
            out.extend(h);
            out.extend_from_slice(&b[8 + n..]);
            b = out;
        }
        1 => b[..8].copy_from_slice(&(interesting_int(rng) as u64).to_le_bytes()),
        _ => mutate_bytes(rng, &mut b, 8 + n.min(4096)),
    }
    std::fs::write(p, b).unwrap();
}

fn copy_folder(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn mutate_json_file(rng: &mut ChaCha8Rng, p: &Path) {
    let mut v: Json = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap_or(Json::Null);
    mutate_json(rng, &mut v);
    std::fs::write(p, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn fuzz_safetensors_model_folders() {
    let seed = tempfile::tempdir().unwrap();
    let model = tiny_model(&seed.path().join("m"), "llama", 1);
    let gemma = tiny_model(&seed.path().join("g"), "gemma3", 2);
    fuzz("safetensors", |rng, dir| {
        copy_folder(if rng.random_bool(0.5) { &model } else { &gemma }, dir);
        match rng.random_range(0..10) {
            0..=3 => mutate_safetensors(rng, &dir.join("model.safetensors")),
            4..=7 => mutate_json_file(rng, &dir.join("config.json")),
            8 => mutate_json_file(rng, &dir.join("tokenizer_config.json")),
            _ => mutate_json_file(rng, &dir.join("tokenizer.json")),
        }
        load_and_score(dir, mores::recipe::WeightMode::F32)
    });
}

#[test]
fn fuzz_adapter_folders() {
    let seed = tempfile::tempdir().unwrap();
    let model_dir = tiny_model(&seed.path().join("m"), "llama", 1);
    let adapter_dir = seed.path().join("a");
    {
        let mut m = mores::model::Model::load(&model_dir, &Default::default()).unwrap();
        let spec: mores::recipe::lora::LoraSpec = toml::from_str("rank = 4\nalpha = 8.0").unwrap();
        let a = mores::model::adapter::Adapter::attach_new(&mut m, &spec, 3).unwrap();
        std::fs::create_dir_all(&adapter_dir).unwrap();
        a.save(&adapter_dir, &m).unwrap();
    }
    fuzz("adapter", |rng, dir| {
        copy_folder(&adapter_dir, dir);
        match rng.random_range(0..3) {
            0 => mutate_json_file(rng, &dir.join(mores::model::adapter::CONFIG_FILE)),
            1 => mutate_safetensors(rng, &dir.join(mores::model::adapter::WEIGHTS_FILE)),
            _ => mutate_json_file(rng, &dir.join(mores::model::adapter::MORES_FILE)),
        }
        let mut m = mores::model::Model::load(&model_dir, &Default::default()).map_err(one_line)?;
        mores::model::adapter::Adapter::load(&mut m, dir).map_err(one_line)?;
        let req = mores::score::ScoreRequest { prompt: "a b 1".into(), labels: vec!["1".into(), "2".into()] };
        mores::score::Scorer::score_batch(&m, &[req]).map_err(one_line)?;
        Ok(())
    });
}

const DATASET_SEED: &str = r#"{"id":"a","mode":"survey-grounded","country":"NGA","question_id":"Q1","prompt":"How important is family?","answer_prefix":"Answer: ","labels":["1","2","3","4"],"target":[0.7,0.2,0.05,0.05]}
{"id":"b","prompt":"Name a festival.","target":"Durbar"}
{"id":"c","messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"}]}
"#;

#[test]
fn fuzz_dataset_lines() {
    fuzz("dataset", |rng, dir| {
        let mut lines: Vec<Json> = DATASET_SEED.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let p = dir.join("d.jsonl");
        let mut text = String::new();
        for l in &mut lines {
            if rng.random_bool(0.5) {
                mutate_json(rng, l);
            }
            text.push_str(&l.to_string());
            text.push('\n');
        }
        let mut b = if rng.random_bool(0.3) { mutate_text(rng, &text).into_bytes() } else { text.into_bytes() };
        if rng.random_bool(0.2) {
            mutate_bytes(rng, &mut b, usize::MAX);
        }
        std::fs::write(&p, b).unwrap();
        let _ = mores::generate::stats(&p).map_err(one_line)?;
        mores::generate::dataset::read(&p).map_err(one_line)?;
        Ok(())
    });
}

/// Every shipped recipe, its includes made absolute so a copy reads them from anywhere.
fn shipped_recipes() -> Vec<(PathBuf, String)> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.path().is_dir() {
                walk(&e.path(), out);
            } else if e.path().extension().is_some_and(|x| x == "toml") {
                out.push(e.path());
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("recipes"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let dir = p.parent().unwrap();
            let text = text
                .lines()
                .map(|l| match l.strip_prefix("include = \"") {
                    Some(rest) => format!("include = {:?}", dir.join(rest.trim_end_matches('"')).display().to_string()),
                    None => l.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n");
            (p, text)
        })
        .collect()
}

#[test]
fn fuzz_recipe_toml() {
    let recipes = shipped_recipes();
    fuzz("recipe", |rng, dir| {
        let (path, text) = &recipes[rng.random_range(0..recipes.len())];
        let mut t = mutate_text(rng, text);
        if rng.random_bool(0.1) {
            t.push_str("include = \"r.toml\"\n");
        }
        let mut b = t.into_bytes();
        if rng.random_bool(0.2) {
            mutate_bytes(rng, &mut b, usize::MAX);
        }
        let p = dir.join("r.toml");
        std::fs::write(&p, b).unwrap();
        if path.components().any(|c| c.as_os_str() == "probe") {
            mores::recipe::ProbeRecipe::load(&p).map(|_| ()).map_err(one_line)
        } else {
            mores::recipe::DistillRecipe::load(&p).map(|_| ()).map_err(one_line)
        }
    });
}

/// A small survey folder: the first questions of the shipped data and their distributions.
fn survey_seed(to: &Path, n_questions: usize) {
    use mores::survey::{COUNTRIES_FILE, DISTRIBUTIONS_FILE, QUESTIONS_FILE};
    let data = root().join("data/wvs");
    std::fs::create_dir_all(to).unwrap();
    let qs: Vec<String> = std::fs::read_to_string(data.join(QUESTIONS_FILE))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"is_value_question\": true") || l.contains("\"is_value_question\":true"))
        .take(n_questions)
        .map(String::from)
        .collect();
    let ids: Vec<String> =
        qs.iter().map(|l| serde_json::from_str::<Json>(l).unwrap()["qid"].as_str().unwrap().to_string()).collect();
    let dists: Vec<String> = std::fs::read_to_string(data.join(DISTRIBUTIONS_FILE))
        .unwrap()
        .lines()
        .filter(|l| {
            let v: Json = serde_json::from_str(l).unwrap();
            ids.iter().any(|q| v.as_object().unwrap().values().any(|x| x.as_str() == Some(q)))
        })
        .map(String::from)
        .collect();
    std::fs::write(to.join(QUESTIONS_FILE), qs.join("\n") + "\n").unwrap();
    std::fs::write(to.join(DISTRIBUTIONS_FILE), dists.join("\n") + "\n").unwrap();
    std::fs::copy(data.join(COUNTRIES_FILE), to.join(COUNTRIES_FILE)).unwrap();
    std::fs::copy(data.join("category_groups.toml"), to.join("category_groups.toml")).unwrap();
}

#[test]
fn fuzz_survey_files() {
    use mores::survey::{COUNTRIES_FILE, DISTRIBUTIONS_FILE, QUESTIONS_FILE};
    let seed = tempfile::tempdir().unwrap();
    let template = seed.path().join("wvs");
    survey_seed(&template, 6);
    assert!(mores::survey::Survey::load(&template).is_ok(), "the seed survey loads");
    fuzz("survey", |rng, dir| {
        copy_folder(&template, dir);
        let f = [QUESTIONS_FILE, DISTRIBUTIONS_FILE, COUNTRIES_FILE, "category_groups.toml"][rng.random_range(0..4)];
        let p = dir.join(f);
        let text = std::fs::read_to_string(&p).unwrap();
        let new = if f.ends_with(".jsonl") && rng.random_bool(0.7) {
            // One line's JSON damaged.
            let mut lines: Vec<String> = text.lines().map(String::from).collect();
            let i = rng.random_range(0..lines.len());
            let mut v: Json = serde_json::from_str(&lines[i]).unwrap();
            mutate_json(rng, &mut v);
            lines[i] = v.to_string();
            lines.join("\n") + "\n"
        } else {
            mutate_text(rng, &text)
        };
        std::fs::write(&p, new).unwrap();
        let s = mores::survey::Survey::load(dir).map_err(one_line)?;
        let _ = s.stats_table();
        s.category_groups(None).map_err(one_line)?;
        Ok(())
    });
}

#[test]
fn fuzz_respondent_csv_import() {
    let seed = tempfile::tempdir().unwrap();
    let template = seed.path().join("wvs");
    survey_seed(&template, 6);
    let s = mores::survey::Survey::load(&template).unwrap();
    let qs: Vec<String> = s.questions.iter().take(3).map(|q| q.id.clone()).collect();
    let mut csv = format!("version,B_COUNTRY,B_COUNTRY_ALPHA,W_WEIGHT,{}\n", qs.join(","));
    for (i, c) in [("840", "USA"), ("276", "DEU"), ("566", "NGA")].iter().enumerate() {
        for r in 0..3 {
            csv.push_str(&format!("7,{},{},{}.5,{},{},-1\n", c.0, c.1, r + 1, (i + r) % 4 + 1, (r + 1) % 3 + 1));
        }
    }
    fuzz("survey-import", |rng, dir| {
        let p = dir.join("wvs.csv");
        let mut b = mutate_text(rng, &csv).into_bytes();
        if rng.random_bool(0.3) {
            mutate_bytes(rng, &mut b, usize::MAX);
        }
        std::fs::write(&p, b).unwrap();
        mores::survey::import::import(&p, &template, &dir.join("out")).map(|_| ()).map_err(one_line)
    });
}
