use crate::common::{gemma3, smollm2, PROMPT};
use mores::model::{LoadOptions, Model};
use mores::score::{ScoreRequest, Scorer};

// Reference distributions for common::PROMPT with labels 1-4, computed independently by
// the peer script probe_bench.py --backend hf (transformers 5.24, torch 2.15, GGUF dequantized to
// f32, P("k") + P(" k") renormalised), on 2026-11-28.
//
// A tolerance, not equality: other software sums in other orders, and so does mores' GEMM on
// machines with and without AVX-512. Measured on an AVX-512 machine (2026-12-01): max |dp| 6.3e-6
// (SmolLM2) and 4.5e-7 (Gemma) from these references; 1e-4 leaves an order of magnitude for the
// other instruction set.
const SMOLLM2_REF: [f64; 4] = [0.2524531452058013, 0.38394784388799735, 0.11312238069154705, 0.2504766302146543];
const SMOLLM2_REF_MASS: f64 = 0.9925153567726562;
const GEMMA3_REF: [f64; 4] = [0.4583256681607268, 0.1269998817366409, 0.09876659656944045, 0.31590785353319195];
const GEMMA3_REF_MASS: f64 = 0.9045297049532703;

fn score(model: &std::path::Path, dequantize: bool) -> mores::score::OptionScores {
    let m = Model::load(model, &LoadOptions { dequantize, ..Default::default() }).unwrap();
    let req = ScoreRequest { prompt: PROMPT.into(), labels: ["1", "2", "3", "4"].map(String::from).to_vec() };
    m.score_batch(&[req]).unwrap().remove(0)
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn smollm2_f32_matches_transformers_reference() {
    let s = score(&smollm2(), true);
    assert!(max_diff(&s.probs, &SMOLLM2_REF) < 1e-4, "{:?}", s.probs);
    assert!((s.mass - SMOLLM2_REF_MASS).abs() < 1e-4, "{}", s.mass);
    assert_eq!(s.n_tokens, 59);
}

#[test]
fn gemma3_f32_matches_transformers_reference() {
    let s = score(&gemma3(), true);
    assert!(max_diff(&s.probs, &GEMMA3_REF) < 1e-4, "{:?}", s.probs);
    assert!((s.mass - GEMMA3_REF_MASS).abs() < 1e-4, "{}", s.mass);
    assert_eq!(s.n_tokens, 60);
}

#[test]
fn quantized_weights_stay_close_to_reference() {
    // Quantized kernels also quantize activations to 8 bits: llama.cpp-like numerics, which the
    // peers measured at up to 0.03 (SmolLM2) and 0.06 (Gemma) from f32. The 8-bit rounding makes
    // Gemma's Q4_K_M path chaotic: changing only how attention adds its weighted values (a fused
    // multiply-add instead of multiply then add, a 1e-7 relative change) moved its P(1) here by
    // 0.016 while the f32 path moved by 4e-6, and its distance to f32 was 0.053 or 0.076
    // depending on such details (measured 2026-12-01). AVX2 and AVX-512 GEMMs differ by as much,
    // so the bound is set well above that spread; a wrong quantized path is off by far more (the
    // SiLU-for-GELU bug put 0.94 on one option).
    let s = score(&smollm2(), false);
    assert!(max_diff(&s.probs, &SMOLLM2_REF) < 0.03, "{:?}", s.probs);
    let s = score(&gemma3(), false);
    assert!(max_diff(&s.probs, &GEMMA3_REF) < 0.12, "{:?}", s.probs);
}

#[test]
fn smollm2_chat_template_renders_like_jinja2() {
    // Rendered by Python jinja2 (trim_blocks, lstrip_blocks) from the same GGUF's template.
    let m = Model::load(&smollm2(), &LoadOptions::default()).unwrap();
    assert_eq!(
        m.render_chat("How important is family?").unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHow important is family?<|im_end|>\n<|im_start|>assistant\n"
    );
    let g = Model::load(&gemma3(), &LoadOptions::default()).unwrap();
    assert!(!g.is_chat(), "Gemma 3 270M is a base model without a chat template");
}
