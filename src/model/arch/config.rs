//! Checks on an architecture's hyperparameters before anything is allocated from them. GGUF
//! metadata and config.json come from anywhere: a head count of 0 divided by zero, a block count
//! of 2^32 - 1 asked for a 100 GB vector, a RoPE dimension of 2^32 - 1 built 8.7 GB of tables.
use crate::model::loading::weights::{key, Weights};
use crate::util::error::{Error, Result};

/// The numbers every decoder architecture here is built from.
pub struct Dims {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Whether head_dim was given explicitly (else hidden / heads).
    pub explicit_head_dim: bool,
    pub vocab: usize,
    pub eps: f64,
    pub rope_theta: f64,
}

/// Every problem found, in one error naming the model file.
pub fn check(d: &Dims, w: &Weights) -> Result<()> {
    let mut bad: Vec<String> = Vec::new();
    let mut range = |name: &str, v: usize, lo: usize, hi: usize| {
        if v < lo || v > hi {
            bad.push(format!("{name} = {v} (expected {lo}..={hi})"));
        }
    };
    range("hidden size", d.hidden, 1, 1 << 16);
    range("intermediate size", d.intermediate, 1, 1 << 20);
    range("layer count", d.layers, 1, 1024);
    range("attention heads", d.heads, 1, 1024);
    range("KV heads", d.kv_heads, 1, 1024);
    range("vocabulary", d.vocab, 1, 1 << 22);
    if d.heads > 0 && d.kv_heads > 0 && !d.heads.is_multiple_of(d.kv_heads) {
        bad.push(format!("attention heads {} not a multiple of KV heads {}", d.heads, d.kv_heads));
    }
    if !d.explicit_head_dim && d.heads > 0 && !d.hidden.is_multiple_of(d.heads) {
        bad.push(format!("hidden size {} not divisible by attention heads {}", d.hidden, d.heads));
    }
    if d.head_dim == 0 || d.head_dim > 1024 || !d.head_dim.is_multiple_of(2) {
        bad.push(format!("head dimension {} (RoPE needs an even size up to 1024)", d.head_dim));
    }
    if !(d.eps.is_finite() && d.eps > 0.0) {
        bad.push(format!("RMSNorm epsilon {} (must be positive and finite)", d.eps));
    }
    if !(d.rope_theta.is_finite() && d.rope_theta > 0.0) {
        bad.push(format!("RoPE base {} (must be positive and finite)", d.rope_theta));
    }
    if bad.is_empty() {
        // The file must hold exactly the layers the header claims.
        // Q, or Phi-3's fused QKV.
        let has_layer = |i: usize| {
            ["q_proj", "qkv_proj"].iter().zip(["attn_q", "attn_qkv"]).any(|(h, g)| {
                w.has(key(&format!("model.layers.{i}.self_attn.{h}.weight"), &format!("blk.{i}.{g}.weight")))
            })
        };
        if !has_layer(d.layers - 1) || has_layer(d.layers) {
            bad.push(format!("layer count {} does not match the layers stored in the file", d.layers));
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    Err(Error::model(w.path(), format!("invalid model configuration: {}", bad.join("; "))))
}
