//! LoRA maths on tiny random-weight models: gradients against finite differences, B = 0 leaves
//! the base untouched, merged == unmerged, PEFT key names and round trips.
use crate::common::{smollm2, tiny_model};
use candle_core::{Device, Tensor};
use mores::generate::dataset::{Lesson, Record};
use mores::model::adapter::{merge_into, Adapter, LoraSpec};
use mores::model::mode::Mode;
use mores::model::{LoadOptions, Model};
use mores::train::examples::{batch_loss, build, Built, Example, LossSums};
use rand::{Rng, SeedableRng};

pub fn spec(targets: &[&str], rank: usize) -> LoraSpec {
    LoraSpec {
        rank,
        alpha: 2.0 * rank as f64,
        dropout: 0.0,
        targets: targets.iter().map(|s| s.to_string()).collect(),
        rslora: false,
        layers: None,
    }
}

pub const ALL: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

fn randomise_b(ad: &Adapter, seed: u64, std: f32) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for p in &ad.params {
        let dims = p.b.as_tensor().dims().to_vec();
        let v: Vec<f32> =
            (0..dims.iter().product::<usize>()).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * std).collect();
        p.b.set(&Tensor::from_vec(v, dims, &Device::Cpu).unwrap()).unwrap();
    }
}

fn rec(id: &str, json: serde_json::Value) -> Record {
    let mut v = json;
    v["id"] = id.into();
    serde_json::from_value(v).unwrap()
}

pub fn examples(m: &Model) -> Vec<Example> {
    let recs = [
        rec("t", serde_json::json!({"prompt": "How important is family?", "target": "Very important."})),
        rec(
            "k",
            serde_json::json!({"prompt": "Rate 1-10: trust in police?", "answer_prefix": "Answer: ",
            "labels": ["1","2","3","4","5","6","7","8","9","10"],
            "target": [0.02,0.03,0.05,0.1,0.2,0.2,0.15,0.1,0.1,0.05]}),
        ),
    ];
    recs.iter()
        .map(|r| match build(m, r, &r.lesson().unwrap(), false, 256).unwrap() {
            Built::Ok(e) => e,
            Built::TooLong => panic!("too long"),
        })
        .collect()
}

fn loss_value(m: &Model, exs: &[Example]) -> f64 {
    let refs: Vec<&Example> = exs.iter().collect();
    let denom = (
        exs.iter()
            .filter(|e| matches!(e.kind, mores::train::examples::Kind::Tokens(_)))
            .map(|e| e.weight())
            .sum::<usize>() as f64,
        1.0,
    );
    let mut sums = LossSums::default();
    batch_loss(m, &refs, Mode::train(None), denom, &mut sums).unwrap().to_scalar::<f32>().unwrap() as f64
}

#[test]
fn lora_gradients_match_finite_differences() {
    gradients_match_finite_differences("llama");
}

/// Gemma 3 adds per-head Q/K norms on tracked activations and half-split RoPE.
#[test]
fn gemma3_lora_gradients_match_finite_differences() {
    gradients_match_finite_differences("gemma3");
}

fn gradients_match_finite_differences(arch: &str) {
    let dir = tempfile::tempdir().unwrap();
    gradients_match_finite_differences_at(&tiny_model(dir.path(), arch, 3), &ALL);
}

/// LoRA on every projection of the model at `path`: analytic gradients against central finite
/// differences, two coordinates per variable.
pub fn gradients_match_finite_differences_at(path: &std::path::Path, targets: &[&str]) {
    let mut m = Model::load(path, &LoadOptions::default()).unwrap();
    let ad = Adapter::attach_new(&mut m, &spec(targets, 2), 7).unwrap();
    randomise_b(&ad, 8, 0.3);
    let exs = examples(&m);
    let refs: Vec<&Example> = exs.iter().collect();
    // Two micro-batches of one: also checks gradient accumulation.
    let (loss, grads) = mores::train::step_grads(&m, &ad, &refs, 1, None).unwrap();
    assert!((loss - loss_value(&m, &exs)).abs() < 1e-5, "accumulated loss {loss} vs one batch");
    let vars = ad.vars();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut checked = 0;
    for (vi, var) in vars.iter().enumerate() {
        let g = grads[vi].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(g.iter().any(|x| *x != 0.0), "variable {vi} got an all-zero gradient");
        // Two coordinates per variable, one of them the largest-gradient one.
        let big = g.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap().0;
        for idx in [big, rng.random_range(0..g.len())] {
            let orig = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let eps = 3e-3f32; // 1e-2 left a 7% truncation error on the Phi-3 fixture; f32 rounding stays far below the bound
            let at = |d: f32| {
                let mut v = orig.clone();
                v[idx] += d;
                var.set(&Tensor::from_vec(v, var.as_tensor().dims(), &Device::Cpu).unwrap()).unwrap();
                loss_value(&m, &exs)
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            var.set(&Tensor::from_vec(orig, var.as_tensor().dims(), &Device::Cpu).unwrap()).unwrap();
            let an = g[idx] as f64;
            assert!(
                (fd - an).abs() <= 2e-3 + 0.03 * an.abs(),
                "var {vi} idx {idx}: analytic {an} vs finite difference {fd}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, vars.len() * 2);
}

pub fn logits(m: &Model, mode: Mode) -> Vec<f32> {
    let rows = vec![m.tok.encode_prompt("Family is very important").unwrap(), m.tok.encode_prompt("Hi").unwrap()];
    let reads: Vec<(usize, usize)> = vec![(0, 3), (0, rows[0].len() - 1), (1, rows[1].len() - 1)];
    m.logits_rows(&rows, &reads, mode).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// Next-token probabilities at the same reads.
fn probs(m: &Model) -> Vec<f32> {
    let rows = vec![m.tok.encode_prompt("Family is very important").unwrap(), m.tok.encode_prompt("Hi").unwrap()];
    let reads: Vec<(usize, usize)> = vec![(0, 3), (0, rows[0].len() - 1), (1, rows[1].len() - 1)];
    let l = m.logits_rows(&rows, &reads, Mode::INFER).unwrap();
    candle_nn::ops::softmax_last_dim(&l).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn lora_with_zero_b_equals_base_exactly() {
    for arch in ["llama", "gemma3"] {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Model::load(&tiny_model(dir.path(), arch, 5), &LoadOptions::default()).unwrap();
        let base_train = logits(&m, Mode::train(None));
        let base_infer = logits(&m, Mode::INFER);
        Adapter::attach_new(&mut m, &spec(&ALL, 4), 1).unwrap();
        assert_eq!(max_diff(&base_train, &logits(&m, Mode::train(None))), 0.0, "{arch}: training path");
        assert_eq!(max_diff(&base_infer, &logits(&m, Mode::INFER)), 0.0, "{arch}: inference path");
        // The explicit (differentiable) ops agree with the fused kernels.
        assert!(max_diff(&base_train, &base_infer) < 1e-4, "{arch}: explicit vs fused ops");
    }
}

#[test]
fn merged_equals_unmerged_and_export_round_trips() {
    // Also Qwen2 (biases) and Qwen3 (Q/K norms): the export must carry those tensors.
    let fixture = |n: &str| crate::common::root().join("tests/data/arch").join(n);
    for arch in ["llama", "gemma3", "qwen2", "qwen3"] {
        let dir = tempfile::tempdir().unwrap();
        let path = if arch.starts_with("qwen") { fixture(arch) } else { tiny_model(&dir.path().join("base"), arch, 9) };
        let mut m = Model::load(&path, &LoadOptions::default()).unwrap();
        let base = logits(&m, Mode::INFER);
        let ad = Adapter::attach_new(&mut m, &spec(&ALL, 4), 2).unwrap();
        randomise_b(&ad, 3, 0.2);
        let adapted = logits(&m, Mode::INFER);
        assert!(max_diff(&base, &adapted) > 1e-2, "{arch}: the adapter must change the logits");
        let adapted_p = probs(&m);
        assert_eq!(merge_into(&mut m).unwrap(), ad.params.len());
        let merged = probs(&m);
        assert!(max_diff(&adapted_p, &merged) < 1e-5, "{arch}: merged vs unmerged {}", max_diff(&adapted_p, &merged));
        let out = dir.path().join("merged");
        mores::model::export::export_hf(&mut m, &out).unwrap();
        let reloaded = Model::load(&out, &LoadOptions::default()).unwrap();
        let d = max_diff(&merged, &probs(&reloaded));
        assert!(d < 1e-5, "{arch}: exported folder differs by {d}");
    }
}

#[test]
fn peft_keys_shapes_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(&dir.path().join("base"), "llama", 4);
    let mut m = Model::load(&path, &LoadOptions::default()).unwrap();
    let ad = Adapter::attach_new(&mut m, &spec(&["q_proj", "v_proj", "down_proj"], 3), 5).unwrap();
    randomise_b(&ad, 6, 0.1);
    let out = dir.path().join("adapter");
    std::fs::create_dir_all(&out).unwrap();
    ad.save(&out, &m).unwrap();
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap().get("format").map(String::as_str), Some("pt"));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(names.len(), 3 * 3 * 2);
    let q_a = st.tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").unwrap();
    assert_eq!(q_a.shape(), &[3, 32]);
    let q_b = st.tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight").unwrap();
    assert_eq!(q_b.shape(), &[32, 3]);
    let d_b = st.tensor("base_model.model.model.layers.2.mlp.down_proj.lora_B.weight").unwrap();
    assert_eq!(d_b.shape(), &[32, 3]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 3);
    assert_eq!(cfg["target_modules"], serde_json::json!(["q_proj", "v_proj", "down_proj"]));

    let before = logits(&m, Mode::INFER);
    let mut fresh = Model::load(&path, &LoadOptions::default()).unwrap();
    let loaded = Adapter::load(&mut fresh, &out).unwrap();
    assert_eq!(loaded.params.len(), ad.params.len());
    assert_eq!(max_diff(&before, &logits(&fresh, Mode::INFER)), 0.0);
}

/// llama.cpp's converter permutes Q/K rows per head: HF row h*hd + s*hd/2 + i is GGUF row
/// h*hd + 2i + s. PEFT adapters are in HF order; the conversion must be exactly that map.
#[test]
fn gguf_rope_permutation_of_adapter_rows() {
    let (heads, hd, r) = (3usize, 8usize, 2usize);
    let hf: Vec<f32> = (0..heads * hd * r).map(|x| x as f32).collect();
    let hf = Tensor::from_vec(hf, (heads * hd, r), &Device::Cpu).unwrap();
    let gguf = mores::model::lora::rows_from_hf(&hf, heads).unwrap();
    let (hfv, gv) = (hf.to_vec2::<f32>().unwrap(), gguf.to_vec2::<f32>().unwrap());
    for h in 0..heads {
        for s in 0..2 {
            for i in 0..hd / 2 {
                assert_eq!(gv[h * hd + 2 * i + s], hfv[h * hd + s * hd / 2 + i]);
            }
        }
    }
    let back = mores::model::lora::rows_to_hf(&gguf, heads).unwrap();
    assert_eq!(back.to_vec2::<f32>().unwrap(), hfv);
}

#[test]
fn adapter_round_trip_on_smollm2_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LoadOptions { dequantize: true, ..Default::default() };
    let mut m = Model::load(&smollm2(), &opts).unwrap();
    let ad = Adapter::attach_new(&mut m, &spec(&["q_proj", "k_proj", "v_proj"], 4), 1).unwrap();
    randomise_b(&ad, 2, 0.05);
    let ids = m.tok.encode_prompt(crate::common::PROMPT).unwrap();
    let read = [(0usize, ids.len() - 1)];
    let before = m.logits_rows(std::slice::from_ref(&ids), &read, Mode::INFER).unwrap().flatten_all().unwrap();
    ad.save(dir.path(), &m).unwrap();
    let mut fresh = Model::load(&smollm2(), &opts).unwrap();
    Adapter::load(&mut fresh, dir.path()).unwrap();
    let after = fresh.logits_rows(std::slice::from_ref(&ids), &read, Mode::INFER).unwrap().flatten_all().unwrap();
    let d = (before - after).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(d, 0.0);
    assert!(fresh.info.adapter.is_some());
    assert_ne!(fresh.scoring_id(), Model::load(&smollm2(), &opts).unwrap().scoring_id());
}

#[test]
fn adapter_for_another_model_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut gemma = Model::load(&tiny_model(&dir.path().join("g"), "gemma3", 1), &LoadOptions::default()).unwrap();
    let ad = Adapter::attach_new(&mut gemma, &spec(&["q_proj"], 2), 1).unwrap();
    let out = dir.path().join("ad");
    std::fs::create_dir_all(&out).unwrap();
    ad.save(&out, &gemma).unwrap();
    let mut llama = Model::load(&tiny_model(&dir.path().join("l"), "llama", 1), &LoadOptions::default()).unwrap();
    let err = Adapter::load(&mut llama, &out).err().expect("must fail").to_string();
    assert!(err.contains("gemma3") && err.contains("llama"), "{err}");
    // Same architecture, other shapes: SmolLM2's q_proj is 576 wide, the tiny llama's 32.
    let mut big = Model::load(&smollm2(), &LoadOptions { dequantize: true, ..Default::default() }).unwrap();
    let ad = Adapter::attach_new(&mut big, &spec(&["q_proj"], 2), 1).unwrap();
    let out2 = dir.path().join("ad2");
    std::fs::create_dir_all(&out2).unwrap();
    ad.save(&out2, &big).unwrap();
    let err = Adapter::load(&mut llama, &out2).err().expect("must fail").to_string();
    assert!(err.contains("another model"), "{err}");
}

#[test]
fn unknown_target_module_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Model::load(&tiny_model(dir.path(), "llama", 1), &LoadOptions::default()).unwrap();
    let err = Adapter::attach_new(&mut m, &spec(&["qkv_proj"], 2), 1).err().expect("must fail").to_string();
    assert!(err.contains("qkv_proj") && err.contains("q_proj"), "{err}");
}

#[test]
fn label_lesson_matches_the_probe_scorer() {
    // The KL objective's label probabilities are the probe's: at the target equal to the probe's
    // own distribution, the KL is zero.
    let dir = tempfile::tempdir().unwrap();
    let m = Model::load(&tiny_model(dir.path(), "llama", 2), &LoadOptions::default()).unwrap();
    let labels: Vec<String> = (1..=10).map(|i| i.to_string()).collect();
    let prompt = "Rate 1-10: trust?\nAnswer: ";
    let probs = mores::score::Scorer::score_batch(
        &m,
        &[mores::score::ScoreRequest { prompt: prompt.into(), labels: labels.clone() }],
    )
    .unwrap()
    .remove(0)
    .probs;
    let r = rec(
        "x",
        serde_json::json!({"prompt": "Rate 1-10: trust?", "answer_prefix": "Answer: ", "labels": labels, "target": probs}),
    );
    let Lesson::Labels { .. } = r.lesson().unwrap() else { panic!("labels lesson") };
    let Built::Ok(ex) = build(&m, &r, &r.lesson().unwrap(), false, 256).unwrap() else { panic!() };
    let mut sums = LossSums::default();
    batch_loss(&m, &[&ex], Mode::INFER, (1.0, 1.0), &mut sums).unwrap();
    let kl = sums.kl;
    assert!(kl.abs() < 1e-5, "KL to its own distribution: {kl}");
}

/// An adapter written by Python PEFT for SmolLM2 (GGUF: Q/K rows permuted inside mores) gives
/// transformers' logits within 1e-4. Fixture and reference from scripts/make_peft_fixture.py.
#[test]
fn peft_made_adapter_matches_transformers() {
    let dir = crate::common::root().join("tests/data/peft-smollm2");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let mut m = Model::load(&smollm2(), &LoadOptions { dequantize: true, ..Default::default() }).unwrap();
    let ids = m.tok.encode_prompt(r["prompt"].as_str().unwrap()).unwrap();
    let want_ids: Vec<u32> = serde_json::from_value(r["ids"].clone()).unwrap();
    assert_eq!(ids, want_ids, "tokenizer differs from transformers'");
    let sample: Vec<usize> = serde_json::from_value(r["token_ids"].clone()).unwrap();
    let at = |m: &Model| -> Vec<f32> {
        let l = m.logits_rows(std::slice::from_ref(&ids), &[(0, ids.len() - 1)], Mode::INFER).unwrap();
        let l: Vec<f32> = l.flatten_all().unwrap().to_vec1().unwrap();
        sample.iter().map(|&i| l[i]).collect()
    };
    let base: Vec<f32> = serde_json::from_value(r["logits_base"].clone()).unwrap();
    // f32 summation order differs between candle and torch over 30 layers: logits of size ~20
    // agree to about 1.5e-4 (measured) before any adapter is applied.
    let ours_base = at(&m);
    let d = max_diff(&ours_base, &base);
    assert!(d < 3e-4, "base logits differ from transformers' by {d}");
    Adapter::load(&mut m, &dir).unwrap();
    let want: Vec<f32> = serde_json::from_value(r["logits_adapted"].clone()).unwrap();
    let got = at(&m);
    assert!(max_diff(&got, &want) < 3e-4, "adapted logits differ from PEFT's by {}", max_diff(&got, &want));
    // What the adapter adds agrees more tightly than the base noise.
    let delta = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<f32>>();
    let dd = max_diff(&delta(&got, &ours_base), &delta(&want, &base));
    assert!(dd < 1e-4, "the adapter's effect differs from PEFT's by {dd}");
    assert!(max_diff(&want, &base) > 0.1, "the fixture adapter must change the logits");
}

fn rand_var(rng: &mut rand_chacha::ChaCha8Rng, shape: &[usize]) -> candle_core::Var {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 4.0 - 2.0).collect();
    candle_core::Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
}

/// Value and gradient of sum(f(x) * c) for a fixed random c, so every output element matters.
fn value_and_grad(x: &candle_core::Var, c: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> (Vec<f32>, Vec<f32>) {
    let y = f(x.as_tensor());
    let grads = (&y * c).unwrap().sum_all().unwrap().backward().unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (flat(&y), flat(grads.get(x.as_tensor()).expect("x got a gradient")))
}

/// The training path's fused softmax, RMSNorm and RoPE (candle kernels with a hand-written
/// backward) give the values and gradients of the composed elementwise versions that other
/// devices run.
#[test]
fn fused_training_ops_match_composed_gradients() {
    use mores::model::grad_ops::{self, composed};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    let (b, h, t, d) = (2usize, 3usize, 5usize, 8usize);
    let x = rand_var(&mut rng, &[b, h, t, d]);
    let c = rand_var(&mut rng, &[b, h, t, d]).as_tensor().detach();
    let check = |name: &str, fused: (Vec<f32>, Vec<f32>), composed: (Vec<f32>, Vec<f32>)| {
        assert!(max_diff(&fused.0, &composed.0) < 1e-5, "{name}: values differ by {}", max_diff(&fused.0, &composed.0));
        assert!(
            max_diff(&fused.1, &composed.1) < 1e-4,
            "{name}: gradients differ by {}",
            max_diff(&fused.1, &composed.1)
        );
        assert!(fused.1.iter().any(|g| g.abs() > 1e-3), "{name}: gradient is all zero");
    };

    let soft = value_and_grad(&x, &c, |x| grad_ops::softmax_last_dim(x).unwrap());
    let soft_ref = value_and_grad(&x, &c, |x| composed::softmax_last_dim(x).unwrap());
    check("softmax", soft, soft_ref);

    let w = rand_var(&mut rng, &[d]).as_tensor().detach();
    let norm = value_and_grad(&x, &c, |x| grad_ops::rms_norm(x, &w, 1e-5).unwrap());
    let norm_ref = value_and_grad(&x, &c, |x| composed::rms_norm(x, &w, 1e-5).unwrap());
    check("rms_norm", norm, norm_ref);

    let angles = rand_var(&mut rng, &[b, t, d / 2]).as_tensor().detach();
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    for interleaved in [false, true] {
        let fused = value_and_grad(&x, &c, |x| grad_ops::rope(x, &cos, &sin, interleaved).unwrap());
        let reference = value_and_grad(&x, &c, |x| composed::rope(x, &cos, &sin, interleaved).unwrap());
        check(if interleaved { "rope_i" } else { "rope" }, fused, reference);
    }

    // SwiGLU takes two inputs: the gradient of each, the other held fixed.
    let u = rand_var(&mut rng, &[b, h, t, d]);
    let (xs, us) = (x.as_tensor().detach(), u.as_tensor().detach());
    let gate = value_and_grad(&x, &c, |x| grad_ops::swiglu(x, &us).unwrap());
    let gate_ref = value_and_grad(&x, &c, |x| composed::swiglu(x, &us).unwrap());
    check("swiglu (gate)", gate, gate_ref);
    let up = value_and_grad(&u, &c, |u| grad_ops::swiglu(&xs, u).unwrap());
    let up_ref = value_and_grad(&u, &c, |u| composed::swiglu(&xs, u).unwrap());
    check("swiglu (up)", up, up_ref);
}

/// `mores adapter merge` end to end: the merged Hugging Face folder scores a prompt like the base
/// model with the adapter (`mores score --adapter`), and unlike the base model alone.
#[test]
fn adapter_merge_cli_matches_scoring_with_the_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(&dir.path().join("base"), "llama", 4);
    let mut m = Model::load(&path, &LoadOptions::default()).unwrap();
    let ad = Adapter::attach_new(&mut m, &spec(&ALL, 4), 5).unwrap();
    randomise_b(&ad, 6, 0.3);
    let ad_dir = dir.path().join("adapter");
    ad.save(&ad_dir, &m).unwrap();
    let merged = dir.path().join("merged");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let o = crate::common::mores(&[
        "adapter",
        "merge",
        "--model",
        &s(&path),
        "--adapter",
        &s(&ad_dir),
        "--out",
        &s(&merged),
    ]);
    assert!(o.status.success(), "{}", crate::common::stderr(&o));
    let score = |model: &std::path::Path, adapter: Option<&std::path::Path>| -> Vec<f64> {
        let mut args = vec!["score".to_string(), "--model".into(), s(model), "--prompt".into(), "a b a".into()];
        if let Some(a) = adapter {
            args.extend(["--adapter".into(), s(a)]);
        }
        let args: Vec<&str> = args.iter().map(|x| x.as_str()).collect();
        let o = crate::common::mores(&args);
        assert!(o.status.success(), "{}", crate::common::stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["probs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let (with, merged_p, base) = (score(&path, Some(&ad_dir)), score(&merged, None), score(&path, None));
    let diff = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(diff(&with, &merged_p) < 1e-5, "merged {merged_p:?} vs adapter {with:?}");
    assert!(diff(&with, &base) > 1e-4, "the adapter must change the scores: {with:?} vs {base:?}");
}

/// LoRA on the upper layers only: the frozen layers' output kept per row across steps gives the
/// same loss and gradients, bit for bit, as recomputing it (and as the dense path would), over
/// three steps with a changing adapter and dropout; layers outside `lora.layers` get no parameters.
#[test]
fn frozen_lower_layers_kept_per_row_equal_recomputed() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Model::load(&tiny_model(dir.path(), "llama", 21), &LoadOptions::default()).unwrap();
    let mut s = spec(&ALL, 2);
    s.layers = Some(vec![1, 2]);
    let ad = Adapter::attach_new(&mut m, &s, 7).unwrap();
    assert!(ad.params.iter().all(|p| p.layer >= 1) && ad.params.len() == 14);
    randomise_b(&ad, 8, 0.3);
    let exs = examples(&m);
    let refs: Vec<&Example> = exs.iter().collect();
    let mut kept = Vec::new();
    let mut fresh = Vec::new();
    for on in [false, true] {
        m.frozen_rows = on.then(|| std::sync::Mutex::new(mores::model::frozen::FrozenRows::new(64)));
        for step in 0u64..3 {
            randomise_b(&ad, 8 + step, 0.3); // the adapter changes from step to step
            let (loss, grads) = mores::train::step_grads(&m, &ad, &refs, 2, Some(step)).unwrap();
            let g: Vec<Vec<f32>> = grads.iter().map(|g| g.flatten_all().unwrap().to_vec1().unwrap()).collect();
            if on { &mut kept } else { &mut fresh }.push((loss, g));
        }
    }
    let hits = m.frozen_rows.as_ref().unwrap().lock().unwrap().hits;
    assert!(hits > 0, "rows were never reused");
    for (i, ((l0, g0), (l1, g1))) in fresh.iter().zip(&kept).enumerate() {
        assert_eq!(l0.to_bits(), l1.to_bits(), "step {i}: loss {l1} with kept rows vs {l0}");
        assert_eq!(g0, g1, "step {i}: gradients differ with kept rows");
        assert!(g0.iter().all(|v| v.iter().any(|x| *x != 0.0)), "a variable got no gradient");
    }
    // A layer index past the model's end is an error naming it.
    let mut m2 = Model::load(&tiny_model(dir.path(), "llama", 21), &LoadOptions::default()).unwrap();
    s.layers = Some(vec![3]);
    let err = Adapter::attach_new(&mut m2, &s, 7).err().unwrap().to_string();
    assert!(err.contains("layer 3") && err.contains("3 decoder layers"), "{err}");
}

/// One question asked for three countries: labels 1-3, targets at the scale's two ends and middle.
fn country_examples(m: &Model) -> Vec<Example> {
    let targets = [[0.8, 0.1, 0.1], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]];
    targets
        .iter()
        .zip(["Spain", "Japan", "Kenya"])
        .map(|(t, c)| {
            let r = rec(
                c,
                serde_json::json!({"prompt": format!("You live in {c}. Is work important?"), "answer_prefix": "Answer: ",
                    "labels": ["1", "2", "3"], "target": t, "question_id": "Q5"}),
            );
            match build(m, &r, &r.lesson().unwrap(), false, 256).unwrap() {
                Built::Ok(e) => e,
                Built::TooLong => panic!("too long"),
            }
        })
        .collect()
}

/// The deviation term against hand-computed values: targets' expected answers 0.15, 0.5, 0.85
/// (label scale 0, 0.5, 1); a student answering 0.5 everywhere has deviations -0.35, 0, 0.35,
/// all missed: mean squared error 0.0817 over a variance of 0.0817, so the term is 1; a student
/// matching the deviations (shifted by any constant) scores 0; examples of a question with fewer
/// than three countries are left out.
#[test]
fn deviation_term_against_hand_computed_values() {
    let dir = tempfile::tempdir().unwrap();
    let m = Model::load(&tiny_model(dir.path(), "llama", 4), &LoadOptions::default()).unwrap();
    let exs = country_examples(&m);
    let term = |es: [f64; 3]| {
        let pairs: Vec<(&Example, f64)> = exs.iter().zip(es).collect();
        mores::train::deviation_term(&pairs).unwrap()
    };
    let (flat, coef) = term([0.5, 0.5, 0.5]);
    assert!((flat - 1.0).abs() < 1e-9, "{flat}");
    // d/de_c = 2 r_c / (n var): r = (0.35, 0, -0.35), var = 0.0817.
    let var = 2.0 * 0.35f64.powi(2) / 3.0;
    for (c, r) in coef.iter().zip([0.35, 0.0, -0.35]) {
        assert!((c - 2.0 * r / (3.0 * var)).abs() < 1e-9, "{coef:?}");
    }
    assert!(term([0.25, 0.6, 0.95]).0.abs() < 1e-12);
    // Reversed deviations: residuals -0.7, 0, 0.7 -> 4x the variance.
    assert!((term([0.85, 0.5, 0.15]).0 - 4.0).abs() < 1e-9);
    let two: Vec<(&Example, f64)> = exs.iter().take(2).map(|e| (e, 0.5)).collect();
    assert!(mores::train::deviation_term(&two).is_none());
}

/// KL plus the deviation term through the whole model: analytic gradients against finite
/// differences (micro-batches of one, so the term's derivative reaches each micro-batch apart).
#[test]
fn deviation_objective_gradients_match_finite_differences() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Model::load(&tiny_model(dir.path(), "llama", 9), &LoadOptions::default()).unwrap();
    let ad = Adapter::attach_new(&mut m, &spec(&["q_proj", "v_proj", "down_proj"], 2), 7).unwrap();
    randomise_b(&ad, 8, 0.3);
    let exs = country_examples(&m);
    let refs: Vec<&Example> = exs.iter().collect();
    let lambda = 2.0;
    let loss_at = || mores::train::step_grads_with(&m, &ad, &refs, 1, None, lambda).unwrap();
    let (loss, dev, grads) = loss_at();
    let (kl, _) = mores::train::step_grads(&m, &ad, &refs, 3, None).unwrap();
    let dev = dev.expect("three countries of one question");
    assert!(dev > 0.0 && (loss - kl - lambda * dev).abs() < 1e-5, "loss {loss} = kl {kl} + {lambda} x {dev}");
    for (vi, var) in ad.vars().iter().enumerate() {
        let g = grads[vi].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let big = g.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap().0;
        let orig = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let eps = 1e-2f32;
        let at = |d: f32| {
            let mut v = orig.clone();
            v[big] += d;
            var.set(&Tensor::from_vec(v, var.as_tensor().dims(), &Device::Cpu).unwrap()).unwrap();
            loss_at().0
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        var.set(&Tensor::from_vec(orig, var.as_tensor().dims(), &Device::Cpu).unwrap()).unwrap();
        let an = g[big] as f64;
        assert!((fd - an).abs() <= 2e-3 + 0.03 * an.abs(), "var {vi}: analytic {an} vs finite difference {fd}");
    }
}
