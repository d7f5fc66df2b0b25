//! The device-generic path (candle's tensor ops and autograd only: what a GPU runs), here on
//! the CPU as `cpu-generic`, against mores' CPU kernels: option probabilities within 1e-5 on the
//! tiny model of every architecture and on SmolLM2, ten LoRA steps' losses within 1e-5 (SmolLM2:
//! 1e-4 of the loss), greedy
//! generation token for token; bf16 close to f32; bad device settings as one line.
use crate::arch::{fixture, PHI3_TARGETS};
use crate::common::{assert_clean_error, mores, smollm2, tiny_model};
use crate::lora::{examples, spec, ALL};
use mores::lm::Lm;
use mores::model::adapter::Adapter;
use mores::model::{DeviceSpec, FloatType, LoadOptions, Model};
use mores::score::{ScoreRequest, Scorer};
use mores::train::examples::Example;
use mores::train::optim::AdamW;
use std::path::{Path, PathBuf};

/// The generic device under test: `cpu-generic` here; `MORES_GENERIC_DEVICE=cuda` runs the same
/// comparisons against a GPU (scripts/gpu-check.sh, a build with `--features cuda`).
fn generic() -> DeviceSpec {
    std::env::var("MORES_GENERIC_DEVICE").map_or(DeviceSpec::CpuGeneric, |d| d.parse().expect("MORES_GENERIC_DEVICE"))
}

fn load(path: &Path, device: DeviceSpec, dtype: FloatType) -> Model {
    Model::load(path, &LoadOptions { device, dtype, dequantize: true, ..Default::default() }).unwrap()
}

fn requests() -> Vec<ScoreRequest> {
    let labels = |n: usize| (1..=n).map(|i| i.to_string()).collect::<Vec<_>>();
    vec![
        // Short: the fixtures' context is 64 tokens of a character-level vocabulary.
        ScoreRequest { prompt: "Family: 1 very, 4 not at all? ".into(), labels: labels(4) },
        ScoreRequest { prompt: "Trust police 1-10? ".into(), labels: labels(10) },
        ScoreRequest { prompt: "Divorce ok? ".into(), labels: vec!["Yes".into(), "No".into()] },
    ]
}

/// Largest absolute difference of the option probabilities (before renormalising) between the
/// CPU kernels and the generic path.
fn probability_gap(path: &Path, dtype: FloatType) -> f64 {
    let reqs = requests();
    let a = load(path, DeviceSpec::Cpu, FloatType::F32).score_batch(&reqs).unwrap();
    let b = load(path, generic(), dtype).score_batch(&reqs).unwrap();
    let mut worst = 0f64;
    for (x, y) in a.iter().zip(&b) {
        for (p, q) in x.raw.iter().zip(&y.raw) {
            assert!(q.is_finite(), "{}: generic probability {q}", path.display());
            worst = worst.max((p - q).abs());
        }
    }
    eprintln!("{} ({}): largest probability difference {worst:e}", path.display(), dtype.name());
    worst
}

fn architectures(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> =
        ["llama", "gemma3"].iter().map(|a| (a.to_string(), tiny_model(&dir.join(a), a, 3))).collect();
    for name in ["phi3", "qwen2", "qwen3", "mistral"] {
        v.push((name.to_string(), fixture(name)));
    }
    v
}

#[test]
fn generic_path_probabilities_match_the_cpu_kernels() {
    let dir = tempfile::tempdir().unwrap();
    for (name, path) in architectures(dir.path()).into_iter().chain([("SmolLM2".to_string(), smollm2())]) {
        let d = probability_gap(&path, FloatType::F32);
        assert!(d <= 1e-5, "{name}: generic and CPU-kernel probabilities differ by {d}");
    }
}

#[test]
fn generic_path_in_half_precision_stays_close() {
    // bf16 and f16 weights and activations (what a GPU would run) against the f32 kernels: close,
    // not equal; the bound is loose on purpose (8 bits of mantissa for bf16).
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(&dir.path().join("llama"), "llama", 3);
    for (t, bound) in [(FloatType::Bf16, 0.05), (FloatType::F16, 0.01)] {
        let d = probability_gap(&path, t);
        assert!(d <= bound, "{}: probabilities differ by {d} from f32", t.name());
    }
    let d = probability_gap(&smollm2(), FloatType::Bf16);
    assert!(d <= 0.05, "SmolLM2 bf16: probabilities differ by {d} from f32");
}

/// Largest loss difference over `steps` AdamW steps, each path training its own adapter from
/// the same initialisation on token and label examples.
fn training_gap(path: &Path, targets: &[&str], dropout: f64, steps: usize, lr: f64) -> f64 {
    let mut sp = spec(targets, 4);
    sp.dropout = dropout;
    let run = |device| {
        let mut m = load(path, device, FloatType::F32);
        let ad = Adapter::attach_new(&mut m, &sp, 7).unwrap();
        let exs = examples(&m);
        let refs: Vec<&Example> = exs.iter().collect();
        let mut opt = AdamW::new(ad.vars(), (0.9, 0.999), 1e-8, 0.01).unwrap();
        (0..steps)
            .map(|step| {
                let seed = (dropout > 0.0).then_some(step as u64 + 1);
                let (loss, grads) = mores::train::step_grads(&m, &ad, &refs, 1, seed).unwrap();
                opt.step(&grads, lr).unwrap();
                loss
            })
            .collect::<Vec<f64>>()
    };
    let (a, b) = (run(DeviceSpec::Cpu), run(generic()));
    let gaps: Vec<f64> = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).collect();
    let worst = gaps.iter().copied().fold(0f64, f64::max);
    eprintln!("losses {a:?}; per step: {:?}", gaps.iter().map(|g| format!("{g:.1e}")).collect::<Vec<_>>());
    assert!(a.last() < a.first(), "{}: the loss did not fall: {a:?}", path.display());
    eprintln!("{}: {targets:?}, dropout {dropout}: largest loss difference {worst:e}", path.display());
    worst
}

#[test]
fn generic_path_trains_like_the_cpu_kernels() {
    let dir = tempfile::tempdir().unwrap();
    for (name, path) in architectures(dir.path()) {
        let targets: &[&str] = if name == "phi3" { &PHI3_TARGETS } else { &ALL };
        let d = training_gap(&path, targets, 0.1, 10, 1e-2);
        assert!(d <= 1e-5, "{name}: losses differ by {d} over 10 steps");
    }
    // SmolLM2's 30 layers sum in another order on each path: its logits differ by 3e-5 to 1e-4
    // (as much as candle's own fused and composed ops differ from each other), its loss (about
    // 4.8) by about 1.7e-4, the same at every step: bounded relative to the loss.
    let path = smollm2();
    let d = training_gap(&path, &["q_proj", "v_proj"], 0.0, 10, 1e-3);
    assert!(d <= 1e-4 * 4.8, "SmolLM2: losses differ by {d} over 10 steps");
}

#[test]
fn generic_path_generates_the_same_greedy_text() {
    let s = mores::recipe::generate::Sampling {
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        repetition_penalty: 1.0,
        max_new_tokens: 24,
        stop: Vec::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let paths = [smollm2(), tiny_model(&dir.path().join("g"), "gemma3", 5)];
    for path in paths {
        let text = |device| {
            let m = load(&path, device, FloatType::F32);
            let mut rng = rand::SeedableRng::seed_from_u64(0);
            let g = m.complete("The most important thing in life is", &s, &mut rng).unwrap();
            (g.text, g.n_tokens)
        };
        let (a, b) = (text(DeviceSpec::Cpu), text(generic()));
        assert!(a.1 > 0, "{}: nothing generated", path.display());
        assert_eq!(a, b, "{}: greedy generation differs", path.display());
    }
}

#[test]
fn device_settings_fail_as_one_line() {
    let model = smollm2();
    let m = model.to_str().unwrap();
    // A build without CUDA names the feature; a build with it and no GPU names the driver.
    let o = mores(&["--device", "cuda", "score", "--model", m, "--prompt", "x", "--labels", "a,b"]);
    let want = if cfg!(feature = "cuda") { "cuda:0" } else { "--features cuda" };
    assert_clean_error(&o, want);
    let o = mores(&["--device", "gpu", "score", "--model", m, "--prompt", "x", "--labels", "a,b"]);
    assert_clean_error(&o, "cpu-generic");
    // The generic path runs from the command line and gives the kernels' probabilities (f32
    // weights: quantized products round the activations to 8 bits, which turns the paths'
    // float-level differences into quantization-level ones).
    let score = |device: &str| {
        let o = mores(&[
            "--device",
            device,
            "score",
            "--model",
            m,
            "--f32",
            "--prompt",
            "Is family important? Answer: ",
            "--labels",
            "Yes,No",
        ]);
        assert!(o.status.success(), "{}", crate::common::stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["probs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<f64>>()
    };
    let (a, b) = (score("cpu"), score("cpu-generic"));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5, "cpu {a:?} vs cpu-generic {b:?}");
    }
    // Recipe keys: half precision on mores' CPU kernels, and a device for a served model.
    let dir = tempfile::tempdir().unwrap();
    for (body, want) in [
        ("[model]\ndtype = \"bf16\"\n", "mores' CPU kernels are f32"),
        ("[model]\ndevice = \"cuda\"\nendpoint = \"http://127.0.0.1:9/v1\"\n", "served model"),
        ("[model]\ndevice = \"tpu\"\n", "cpu-generic"),
    ] {
        let r = dir.path().join("r.toml");
        let base = crate::common::root().join("recipes/probe/wvs.toml");
        std::fs::write(&r, format!("include = {:?}\n{body}", base.to_str().unwrap())).unwrap();
        let o = mores(&[
            "probe",
            "--recipe",
            r.to_str().unwrap(),
            "--model",
            m,
            "--out",
            dir.path().join("o").to_str().unwrap(),
        ]);
        assert_clean_error(&o, want);
    }
}

#[test]
fn the_transfer_pipeline_runs_on_the_generic_path() {
    // `mores run` on tiny models, once per device: every stage runs on candle's ops, the
    // manifests say so, and the probes' option probabilities agree with the kernels' run.
    let dir = tempfile::tempdir().unwrap();
    let r = crate::transfer::recipe(dir.path(), "");
    let run = |device: &str| {
        let out = dir.path().join(device);
        let o = mores(&["--device", device, "run", r.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        assert!(o.status.success(), "{device}: {}", crate::common::stderr(&o));
        assert!(out.join("transfer.json").exists(), "{device}: no transfer.json");
        let samples = std::fs::read_to_string(out.join("probe-before/samples.jsonl")).unwrap();
        let probs: Vec<Vec<f64>> = samples
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["probs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
            })
            .collect();
        let manifest = std::fs::read_to_string(out.join("probe-before/manifest.json")).unwrap();
        (probs, manifest)
    };
    let (a, ma) = run("cpu");
    let (b, mb) = run("cpu-generic");
    assert!(!ma.contains("cpu-generic") && mb.contains("\"cpu-generic f32\""), "the manifest does not name the device");
    assert_eq!(a.len(), b.len());
    let gap = a.iter().zip(&b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0f64, f64::max);
    assert!(gap <= 1e-5, "probe-before probabilities differ by {gap}");
}
