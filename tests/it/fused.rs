//! The fused training blocks against the composed graph they replace (the thread's switch in
//! `mores::model::arch::block`): a step's loss and every LoRA gradient at each of 20 optimizer
//! steps, with token and label examples, with and without dropout, on the tiny llama and gemma3
//! models, the phi3, qwen2, qwen3 and mistral fixtures and SmolLM2.
use crate::arch::{fixture, PHI3_TARGETS};
use crate::common::{smollm2, tiny_model};
use crate::lora::{examples, spec, ALL};
use mores::model::adapter::Adapter;
use mores::model::arch::block::set_fused_blocks;
use mores::model::{LoadOptions, Model};
use mores::train::examples::Example;
use mores::train::optim::AdamW;

/// Largest absolute difference between the fused and composed step over `steps` steps, each
/// step's gradients taken from both paths on the same parameters and the fused ones applied.
fn fused_vs_composed(path: &std::path::Path, opts: &LoadOptions, targets: &[&str], dropout: f64, steps: usize) -> f64 {
    let mut m = Model::load(path, opts).unwrap();
    let mut sp = spec(targets, 4);
    sp.dropout = dropout;
    let ad = Adapter::attach_new(&mut m, &sp, 7).unwrap();
    let exs = examples(&m);
    let refs: Vec<&Example> = exs.iter().collect();
    let mut opt = AdamW::new(ad.vars(), (0.9, 0.999), 1e-8, 0.01).unwrap();
    let mut worst = 0f64;
    for step in 0..steps {
        let seed = (dropout > 0.0).then_some(step as u64 + 1);
        set_fused_blocks(false);
        let (l0, g0) = mores::train::step_grads(&m, &ad, &refs, 1, seed).unwrap();
        set_fused_blocks(true);
        let (l1, g1) = mores::train::step_grads(&m, &ad, &refs, 1, seed).unwrap();
        worst = worst.max((l0 - l1).abs());
        for (a, b) in g0.iter().zip(&g1) {
            let (a, b) = (
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            worst = worst.max(d as f64);
        }
        opt.step(&g1, 1e-2).unwrap();
    }
    eprintln!("{}: {targets:?}, dropout {dropout}: largest difference {worst:e}", path.display());
    worst
}

#[test]
fn fused_blocks_equal_the_composed_graph_on_tiny_models() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LoadOptions::default();
    for arch in ["llama", "gemma3"] {
        let path = tiny_model(&dir.path().join(arch), arch, 3);
        for (targets, dropout) in [(&ALL[..], 0.1), (&["q_proj", "v_proj"][..], 0.0)] {
            let d = fused_vs_composed(&path, &opts, targets, dropout, 20);
            assert!(d <= 1e-5, "{arch} {targets:?} dropout {dropout}: fused and composed differ by {d}");
        }
    }
    // Qwen2's Q/K/V biases and Qwen3's Q/K norms keep the composed attention beside the fused MLP;
    // Mistral's window goes through the fused attention.
    for (name, targets) in
        [("phi3", &PHI3_TARGETS[..]), ("qwen2", &ALL[..]), ("qwen3", &ALL[..]), ("mistral", &ALL[..])]
    {
        let d = fused_vs_composed(&fixture(name), &opts, targets, 0.1, 20);
        assert!(d <= 1e-5, "{name}: fused and composed differ by {d}");
    }
}

#[test]
fn fused_blocks_equal_the_composed_graph_on_smollm2() {
    let opts = LoadOptions { dequantize: true, ..Default::default() };
    for (targets, dropout) in [(&ALL[..], 0.1), (&["q_proj", "v_proj"][..], 0.0)] {
        let d = fused_vs_composed(&smollm2(), &opts, targets, dropout, 20);
        assert!(d <= 1e-5, "SmolLM2 {targets:?} dropout {dropout}: fused and composed differ by {d}");
    }
}
