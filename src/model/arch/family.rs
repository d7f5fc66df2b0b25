//! The Llama-shaped families and what sets them apart, resolved from config.json before any
//! weight is read. They share one decoder ([`super::llama`]); each differs in a few places:
//!
//! | family | difference from Llama |
//! |---|---|
//! | llama (SmolLM2, Llama 2/3) | `rope_scaling` type llama3 (Llama 3.1/3.2) |
//! | mistral | sliding-window attention on every layer (`sliding_window`) |
//! | qwen2 (Qwen2, Qwen2.5) | bias on the Q, K and V projections |
//! | qwen3 | RMSNorm over each head of Q and K before RoPE |
//! | phi3 | Q, K, V fused in `qkv_proj`, gate and up in `gate_up_proj` (split at load) |
//!
//! A key that changes the maths is honoured or refused with its name, never ignored: an unknown
//! RoPE scaling type, partial rotary embeddings, MLP biases, an activation other than SiLU, or
//! Qwen's per-layer sliding window.
use crate::util::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    #[default]
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Phi3,
}

impl Family {
    /// The family of a config.json `architectures[0]` or `model_type`.
    pub fn from_hf(arch: &str) -> Option<Self> {
        Some(match arch {
            "LlamaForCausalLM" | "llama" => Family::Llama,
            "MistralForCausalLM" | "mistral" => Family::Mistral,
            "Qwen2ForCausalLM" | "qwen2" => Family::Qwen2,
            "Qwen3ForCausalLM" | "qwen3" => Family::Qwen3,
            "Phi3ForCausalLM" | "phi3" => Family::Phi3,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Phi3 => "phi3",
        }
    }
}

/// What the decoder needs to know beyond the shapes.
#[derive(Debug, Clone, Default)]
pub struct Traits {
    pub family: Family,
    /// Per-frequency divisors from RoPE scaling (empty: none).
    pub rope: RopeScaling,
    /// Bias on Q, K and V (qwen2; llama-like `attention_bias` also on O).
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub qk_norm: bool,
    pub window: Option<usize>,
    pub fused: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum RopeScaling {
    #[default]
    None,
    /// Every frequency divided by the factor.
    Linear(f64),
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max: f64 },
}

impl RopeScaling {
    /// Inverse frequencies of a head of `head_dim` for base `theta`, with the scaling applied.
    pub fn inv_freq(&self, head_dim: usize, theta: f64) -> Vec<f32> {
        (0..head_dim / 2)
            .map(|i| {
                let f = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
                let f = match *self {
                    RopeScaling::None => f,
                    RopeScaling::Linear(k) => f / k,
                    RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max } => {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let (low_wl, high_wl) = (original_max / low_freq_factor, original_max / high_freq_factor);
                        if wavelen < high_wl {
                            f
                        } else if wavelen > low_wl {
                            f / factor
                        } else {
                            let smooth =
                                (original_max / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    }
                };
                f as f32
            })
            .collect()
    }
}

pub(crate) fn num(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(|x| x.as_f64())
}

/// The scaling type of a RoPE entry (`rope_type`, or the older `type`; none: "default").
pub(crate) fn rope_type(v: &Value) -> &str {
    v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()).unwrap_or("default")
}

/// The RoPE base: transformers 5's `rope_parameters.rope_theta`, else the top-level `rope_theta`.
pub fn rope_theta(raw: &Value) -> f64 {
    let params = raw.get("rope_parameters").filter(|v| v.is_object());
    params.and_then(|p| num(p, "rope_theta")).or_else(|| num(raw, "rope_theta")).unwrap_or(10_000.0)
}

/// Resolve a config.json (older top-level `rope_theta` / `rope_scaling`, or transformers 5's
/// `rope_parameters`) into the family's traits, refusing what the decoder cannot honour.
pub fn resolve(family: Family, raw: &Value, path: &Path) -> Result<Traits> {
    let refuse = |what: String| Error::model(path, format!("unsupported {} configuration: {what}", family.name()));
    let params = raw.get("rope_parameters").filter(|v| v.is_object());
    let scaling = raw.get("rope_scaling").filter(|v| v.is_object()).or(params);
    let rope = match scaling {
        None => RopeScaling::None,
        Some(s) => {
            let kind = rope_type(s);
            let need = |k: &str| num(s, k).ok_or_else(|| refuse(format!("rope scaling {kind:?} without {k}")));
            match kind {
                "default" => RopeScaling::None,
                "linear" => RopeScaling::Linear(need("factor")?),
                "llama3" => RopeScaling::Llama3 {
                    factor: need("factor")?,
                    low_freq_factor: need("low_freq_factor")?,
                    high_freq_factor: need("high_freq_factor")?,
                    original_max: need("original_max_position_embeddings")?,
                },
                other => {
                    return Err(refuse(format!("rope scaling type {other:?} (supported: default, linear, llama3)")))
                }
            }
        }
    };
    if let RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max } = rope {
        if !(factor > 0.0 && low_freq_factor > 0.0 && high_freq_factor > low_freq_factor && original_max > 0.0) {
            return Err(refuse(
                "rope_scaling llama3 needs factor > 0 and high_freq_factor > low_freq_factor > 0".into(),
            ));
        }
    }
    let partial = params.and_then(|p| num(p, "partial_rotary_factor")).or_else(|| num(raw, "partial_rotary_factor"));
    if partial.is_some_and(|p| p != 1.0) {
        return Err(refuse(format!(
            "partial_rotary_factor = {} (only full rotary embeddings)",
            partial.unwrap_or(1.0)
        )));
    }
    if let Some(act) = raw.get("hidden_act").and_then(|a| a.as_str()) {
        if act != "silu" {
            return Err(refuse(format!("hidden_act {act:?} (only silu)")));
        }
    }
    if raw.get("mlp_bias").and_then(|b| b.as_bool()) == Some(true) {
        return Err(refuse("mlp_bias = true".into()));
    }
    let attention_bias = raw.get("attention_bias").and_then(|b| b.as_bool()).unwrap_or(false);
    let window = raw.get("sliding_window").and_then(|w| w.as_u64()).map(|w| w as usize);
    let window = match family {
        Family::Mistral | Family::Phi3 => window,
        Family::Qwen2 | Family::Qwen3 => {
            if raw.get("use_sliding_window").and_then(|b| b.as_bool()) == Some(true) {
                return Err(refuse("use_sliding_window = true (per-layer windows are not implemented)".into()));
            }
            None
        }
        Family::Llama => None,
    };
    if window == Some(0) {
        return Err(refuse("sliding_window = 0".into()));
    }
    if let Some(types) = raw.get("layer_types").and_then(|t| t.as_array()) {
        let want = if window.is_some() { "sliding_attention" } else { "full_attention" };
        if let Some(t) = types.iter().filter_map(|t| t.as_str()).find(|t| *t != want) {
            return Err(refuse(format!("layer_types holds {t:?}; mores applies one attention kind to every layer")));
        }
    }
    Ok(Traits {
        family,
        rope,
        qkv_bias: family == Family::Qwen2 || attention_bias,
        o_bias: attention_bias,
        qk_norm: family == Family::Qwen3,
        window,
        fused: family == Family::Phi3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_rope_scaling_matches_the_published_rule() {
        // Llama 3.1 8B: factor 8, low 1, high 4, original 8192, theta 500000, head 128.
        let s = RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max: 8192.0 };
        let plain = RopeScaling::None.inv_freq(128, 500_000.0);
        let scaled = s.inv_freq(128, 500_000.0);
        // Highest frequency (wavelength 2 pi < 2048): unchanged; lowest: divided by 8.
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[63] / plain[63] - 0.125).abs() < 1e-6);
        // In between, a ramp: never below 1/8 of the original, never above it.
        assert!(scaled.iter().zip(&plain).all(|(a, b)| *a <= *b && *a >= b / 8.0 - 1e-12));
    }

    #[test]
    fn keys_that_change_the_maths_are_refused_by_name() {
        let p = Path::new("config.json");
        let bad = [
            (serde_json::json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}), "yarn"),
            (
                serde_json::json!({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}}),
                "partial_rotary_factor",
            ),
            (serde_json::json!({"hidden_act": "gelu"}), "hidden_act"),
            (serde_json::json!({"mlp_bias": true}), "mlp_bias"),
        ];
        for (raw, word) in bad {
            let e = resolve(Family::Llama, &raw, p).unwrap_err().to_string();
            assert!(e.contains(word), "{e}");
        }
        let e = resolve(Family::Qwen2, &serde_json::json!({"use_sliding_window": true}), p).unwrap_err().to_string();
        assert!(e.contains("use_sliding_window"), "{e}");
        let raw = serde_json::json!({"rope_parameters": {"rope_theta": 500000.0}});
        resolve(Family::Llama, &raw, p).unwrap();
        assert_eq!(rope_theta(&raw), 500_000.0, "transformers 5 keeps rope_theta in rope_parameters");
    }
}
