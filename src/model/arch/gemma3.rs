//! Gemma 3 text decoder (Gemma-3-270M and up). Differs from llama in ways that matter for
//! correctness: GELU-tanh MLP (candle-transformers' quantized_gemma3 uses SiLU, which doubles
//! perplexity), RMSNorm before and after both attention and MLP, per-head Q/K norms, embeddings
//! scaled by sqrt(hidden), and local sliding-window layers with their own RoPE base.
//! GGUF norm weights already include Gemma's "+1"; Hugging Face checkpoints store w and need 1 + w.
use super::batch::{Batch, Kv};
use super::block::{self, AttnParts};
use super::layers::{gather, residual, AttnCtx, RmsNorm, RopeStyle};
use super::linear::{layer_slots, Linear, Slot};
use crate::model::kernels::act::Gated;
use crate::model::loading::gguf::GgufFile;
use crate::model::loading::weights::{key, Weights};
use crate::model::mode::Mode;
use crate::util::error::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_local_theta")]
    pub rope_local_base_freq: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default = "default_window")]
    pub sliding_window: usize,
    #[serde(default = "default_pattern")]
    pub sliding_window_pattern: usize,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
    pub vocab_size: usize,
    /// Context length the model was trained for; longer inputs are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_embeddings: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RopeScaling {
    #[serde(default)]
    pub factor: Option<f64>,
}

impl Config {
    /// A config.json: the shapes, and RoPE from the older top-level keys (`rope_theta`,
    /// `rope_local_base_freq`, `rope_scaling`) or transformers 5's `rope_parameters` (one entry
    /// per layer kind). Scaling other than linear is refused by name, never ignored: Gemma 3 4B
    /// and up scale their global layers by 8, and a dropped factor gives wrong logits.
    pub fn from_hf(raw: serde_json::Value, path: &std::path::Path) -> Result<Self> {
        use super::family::{num, rope_type};
        use serde_json::Value;
        let mut c: Config =
            serde_json::from_value(raw.clone()).map_err(|e| Error::model(path, format!("gemma3 config: {e}")))?;
        let refuse = |m: String| Error::model(path, format!("unsupported gemma3 configuration: {m}"));
        // The linear factor of a RoPE entry, None without scaling.
        let factor = |v: &Value, which: &str| -> Result<Option<f64>> {
            match rope_type(v) {
                "default" => Ok(None),
                "linear" => num(v, "factor")
                    .filter(|f| *f > 0.0)
                    .map(Some)
                    .ok_or_else(|| refuse(format!("{which}: linear RoPE scaling without a positive factor"))),
                other => Err(refuse(format!("{which}: RoPE scaling type {other:?} (supported: default, linear)"))),
            }
        };
        if let Some(p) = raw.get("rope_parameters").filter(|v| v.is_object()) {
            let (full, local) = (p.get("full_attention"), p.get("sliding_attention"));
            let full = full.unwrap_or(p);
            if let Some(t) = num(full, "rope_theta") {
                c.rope_theta = t;
            }
            c.rope_scaling = factor(full, "rope_parameters.full_attention")?.map(|f| RopeScaling { factor: Some(f) });
            if let Some(l) = local {
                if let Some(t) = num(l, "rope_theta") {
                    c.rope_local_base_freq = t;
                }
                if factor(l, "rope_parameters.sliding_attention")?.is_some() {
                    return Err(refuse("RoPE scaling on the sliding-window layers".into()));
                }
            }
        } else if let Some(s) = raw.get("rope_scaling").filter(|v| v.is_object()) {
            c.rope_scaling = factor(s, "rope_scaling")?.map(|f| RopeScaling { factor: Some(f) });
        }
        Ok(c)
    }
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    1_000_000.0
}
fn default_local_theta() -> f64 {
    10_000.0
}
fn default_window() -> usize {
    512
}
fn default_pattern() -> usize {
    6
}

impl Config {
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let p = "gemma3";
        let u = |k: &str| g.u32(&format!("{p}.{k}")).map(|x| x as usize);
        Ok(Self {
            hidden_size: u("embedding_length")?,
            intermediate_size: u("feed_forward_length")?,
            num_hidden_layers: u("block_count")?,
            num_attention_heads: u("attention.head_count")?,
            num_key_value_heads: u("attention.head_count_kv")?,
            head_dim: u("attention.key_length")?,
            rms_norm_eps: g.opt_f32(&format!("{p}.attention.layer_norm_rms_epsilon")).unwrap_or(1e-6) as f64,
            rope_theta: g.opt_f32(&format!("{p}.rope.freq_base")).unwrap_or(1e6) as f64,
            rope_local_base_freq: g.opt_f32(&format!("{p}.rope.local_freq_base")).unwrap_or(1e4) as f64,
            rope_scaling: g
                .opt_f32(&format!("{p}.rope.scaling.factor"))
                .map(|f| RopeScaling { factor: Some(f as f64) }),
            sliding_window: u("attention.sliding_window").unwrap_or(512),
            sliding_window_pattern: g.opt_u32(&format!("{p}.attention.sliding_window_pattern"))?.unwrap_or(6) as usize,
            layer_types: None,
            query_pre_attn_scalar: None,
            vocab_size: g.strings("tokenizer.ggml.tokens")?.len(),
            max_position_embeddings: g.opt_u32(&format!("{p}.context_length"))?.map(|x| x as usize),
        })
    }

    fn is_sliding(&self, layer: usize) -> bool {
        match &self.layer_types {
            Some(t) => t.get(layer).map(|s| s == "sliding_attention").unwrap_or(false),
            None => !(layer + 1).is_multiple_of(self.sliding_window_pattern),
        }
    }
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    input_norm: RmsNorm,
    post_attn_norm: RmsNorm,
    pre_ffn_norm: RmsNorm,
    post_ffn_norm: RmsNorm,
    sliding: bool,
}

pub struct Model {
    pub cfg: Config,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
}

impl Model {
    pub fn load(cfg: Config, w: &mut Weights) -> Result<Self> {
        super::config::check(
            &super::config::Dims {
                hidden: cfg.hidden_size,
                intermediate: cfg.intermediate_size,
                layers: cfg.num_hidden_layers,
                heads: cfg.num_attention_heads,
                kv_heads: cfg.num_key_value_heads,
                head_dim: cfg.head_dim,
                explicit_head_dim: true,
                vocab: cfg.vocab_size,
                eps: cfg.rms_norm_eps,
                rope_theta: cfg.rope_theta.min(cfg.rope_local_base_freq),
            },
            w,
        )?;
        if cfg.sliding_window == 0 || cfg.sliding_window_pattern == 0 {
            return Err(crate::util::error::Error::model(
                w.path(),
                "invalid model configuration: sliding window and its layer pattern must be at least 1",
            ));
        }
        let eps = cfg.rms_norm_eps as f32;
        let plus_one = !w.is_gguf();
        let norm = |w: &mut Weights, hf: &str, gguf: &str| -> Result<RmsNorm> {
            let t = w.tensor(key(hf, gguf))?;
            Ok(RmsNorm { weight: if plus_one { (t + 1.0)? } else { t }, eps })
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let hf = |s: &str| format!("model.layers.{i}.{s}.weight");
            let gg = |s: &str| format!("blk.{i}.{s}.weight");
            let mut lin = |a: &str, b: &str| -> Result<Linear> { Ok(Linear::new(w.linear(key(&hf(a), &gg(b)))?)) };
            let (q, k, v, o) = (
                lin("self_attn.q_proj", "attn_q")?,
                lin("self_attn.k_proj", "attn_k")?,
                lin("self_attn.v_proj", "attn_v")?,
                lin("self_attn.o_proj", "attn_output")?,
            );
            let (gate, up, down) =
                (lin("mlp.gate_proj", "ffn_gate")?, lin("mlp.up_proj", "ffn_up")?, lin("mlp.down_proj", "ffn_down")?);
            let (hs, is, nh, nkv, hd) = (
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.num_attention_heads,
                cfg.num_key_value_heads,
                cfg.head_dim,
            );
            Linear::expect_layer(&w.path(), i, [&q, &k, &v, &o, &gate, &up, &down], (hs, is, nh, nkv, hd))?;
            let layer = Layer {
                q,
                k,
                v,
                o,
                gate,
                up,
                down,
                q_norm: norm(w, &hf("self_attn.q_norm"), &gg("attn_q_norm"))?,
                k_norm: norm(w, &hf("self_attn.k_norm"), &gg("attn_k_norm"))?,
                input_norm: norm(w, &hf("input_layernorm"), &gg("attn_norm"))?,
                post_attn_norm: norm(w, &hf("post_attention_layernorm"), &gg("post_attention_norm"))?,
                pre_ffn_norm: norm(w, &hf("pre_feedforward_layernorm"), &gg("ffn_norm"))?,
                post_ffn_norm: norm(w, &hf("post_feedforward_layernorm"), &gg("post_ffw_norm"))?,
                sliding: cfg.is_sliding(i),
            };
            for (n, name, width) in [
                (&layer.q_norm, "q norm", hd),
                (&layer.k_norm, "k norm", hd),
                (&layer.input_norm, "input norm", hs),
                (&layer.post_attn_norm, "post-attention norm", hs),
                (&layer.pre_ffn_norm, "pre-feedforward norm", hs),
                (&layer.post_ffn_norm, "post-feedforward norm", hs),
            ] {
                n.expect(&w.path(), &format!("layer {i} {name}"), width)?;
            }
            layers.push(layer);
        }
        let embed_key = key("model.embed_tokens.weight", "token_embd.weight");
        let (embed, embed_q8) = w.tensor_and_q8_0(embed_key)?;
        if embed.dims2()? != (cfg.vocab_size, cfg.hidden_size) {
            return Err(Error::model(
                w.path(),
                format!(
                    "embedding shape {:?} does not match vocab {} x hidden {}",
                    embed.shape(),
                    cfg.vocab_size,
                    cfg.hidden_size
                ),
            ));
        }
        // Gemma ties the output projection to the embedding.
        // When dense, the head shares the embedding's memory (671 MB for Gemma-3-270M's vocabulary)
        // and multiplies from the embedding's Q8_0 values where the GGUF stores it so.
        let lm_head = if w.dense() {
            Linear::new(candle_core::quantized::QMatMul::Tensor(embed.clone())).with_q8_0(embed_q8)
        } else {
            Linear::new(w.linear(embed_key)?)
        };
        let final_norm = norm(w, "model.norm.weight", "output_norm.weight")?;
        final_norm.expect(&w.path(), "final norm", cfg.hidden_size)?;
        Ok(Self { norm: final_norm, cfg, embed, layers, lm_head })
    }

    /// Run `batch` after `prefix` (none, one for every row, or one per row). Returns logits [n, vocab] at the flat positions
    /// `read` (if given) and, when `record`, the batch's own keys and values per layer.
    pub fn forward(
        &self,
        batch: &Batch,
        prefix: &[&Kv],
        read: Option<&Tensor>,
        record: bool,
        mode: Mode,
    ) -> Result<(Option<Tensor>, Kv)> {
        let dev = batch.ids.device();
        let c = &self.cfg;
        let (b, t) = (batch.rows, batch.len);
        let (hd, nh, nkv) = (c.head_dim, c.num_attention_heads, c.num_key_value_heads);
        let window = Some(c.sliding_window);
        let ctx = AttnCtx::new(batch, prefix, &[None, window], mode)?;
        let factor = c.rope_scaling.as_ref().and_then(|r| r.factor).unwrap_or(1.0);
        // Half-precision activations (generic devices) take the tables in the weights' type.
        let dt = self.embed.dtype();
        let in_dt = |(c, s): (Tensor, Tensor)| -> Result<(Tensor, Tensor)> { Ok((c.to_dtype(dt)?, s.to_dtype(dt)?)) };
        let global_rope = in_dt(batch.rope_tables(hd, c.rope_theta, factor, dev)?)?;
        let local_rope = in_dt(batch.rope_tables(hd, c.rope_local_base_freq, 1.0, dev)?)?;
        let scale = 1.0 / c.query_pre_attn_scalar.unwrap_or(hd as f64).sqrt();
        let ids = batch.ids.flatten_all()?;
        let mut x =
            (self.embed.index_select(&ids, 0)?.reshape((b, t, c.hidden_size))? * (c.hidden_size as f64).sqrt())?;
        let mut kv = Kv { len: t, ..Kv::new() };
        for (li, l) in self.layers.iter().enumerate() {
            let (win, (cos, sin)) = if l.sliding { (window, &local_rope) } else { (None, &global_rope) };
            let parts = AttnParts {
                batch,
                heads: (nh, nkv, hd),
                rope: (cos, sin),
                style: RopeStyle::Halves,
                window: win,
                scale,
                qk_norm: Some([&l.q_norm, &l.k_norm]),
                post: Some(&l.post_attn_norm),
            };
            // Training: each block as one node where it qualifies ([`block`]).
            let lins = [&l.q, &l.k, &l.v, &l.o];
            let fused = if prefix.is_empty() && !record {
                block::attention(&x, &l.input_norm, lins, &parts, mode)?
            } else {
                None
            };
            x = match fused {
                Some(y) => y,
                None => {
                    block::attention_composed(&x, &l.input_norm, lins, &parts, (&ctx, li), (&mut kv, record), mode)?
                }
            };
            let mlp = [&l.gate, &l.up, &l.down];
            x = match block::gated_mlp(&x, &l.pre_ffn_norm, mlp, Gated::Gelu, Some(&l.post_ffn_norm), mode)? {
                Some(y) => y,
                None => self.mlp_composed(l, &x, mode)?,
            };
        }
        let logits = match read {
            Some(read) => Some(
                self.lm_head
                    .forward(&self.norm.forward(&gather(&x, read)?, mode)?, mode)?
                    .to_dtype(candle_core::DType::F32)?,
            ),
            None => None,
        };
        Ok((logits, kv))
    }

    /// A layer's MLP block from composed ops: x + post(down(gelu(gate(h)) * up(h))), h = pre(x).
    fn mlp_composed(&self, l: &Layer, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let h = l.pre_ffn_norm.forward(x, mode)?;
        let m = Linear::forward_gated(&l.gate, &l.up, &h, mode, Gated::Gelu)?;
        residual(x, &l.post_ffn_norm.forward(&l.down.forward(&m, mode)?, mode)?, mode)
    }

    /// The projections LoRA can adapt, in layer order.
    pub fn lora_slots(&mut self) -> Vec<Slot<'_>> {
        let permuted_heads = None;
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let linears = [&mut l.q, &mut l.k, &mut l.v, &mut l.o, &mut l.gate, &mut l.up, &mut l.down];
            out.extend(layer_slots(i, linears, permuted_heads));
        }
        out
    }

    /// Every weight under its Hugging Face name and layout (norms stored as w, not 1 + w).
    pub fn hf_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let norm = |n: &RmsNorm| -> Result<Tensor> { Ok((&n.weight - 1.0)?) };
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.clone())];
        for (i, l) in self.layers.iter().enumerate() {
            let p = |s: &str| format!("model.layers.{i}.{s}.weight");
            for (name, lin) in [
                ("self_attn.q_proj", &l.q),
                ("self_attn.k_proj", &l.k),
                ("self_attn.v_proj", &l.v),
                ("self_attn.o_proj", &l.o),
                ("mlp.gate_proj", &l.gate),
                ("mlp.up_proj", &l.up),
                ("mlp.down_proj", &l.down),
            ] {
                out.push((p(name), lin.dense_weight()?));
            }
            for (name, n) in [
                ("self_attn.q_norm", &l.q_norm),
                ("self_attn.k_norm", &l.k_norm),
                ("input_layernorm", &l.input_norm),
                ("post_attention_layernorm", &l.post_attn_norm),
                ("pre_feedforward_layernorm", &l.pre_ffn_norm),
                ("post_feedforward_layernorm", &l.post_ffn_norm),
            ] {
                out.push((p(name), norm(n)?));
            }
        }
        out.push(("model.norm.weight".into(), norm(&self.norm)?));
        Ok(out)
    }

    pub fn hf_config(&self) -> serde_json::Value {
        let c = &self.cfg;
        let mut v = serde_json::to_value(c).expect("config serialises");
        let o = v.as_object_mut().expect("object");
        let types: Vec<&str> = (0..c.num_hidden_layers)
            .map(|i| if c.is_sliding(i) { "sliding_attention" } else { "full_attention" })
            .collect();
        o.insert("layer_types".into(), serde_json::json!(types));
        o.insert("architectures".into(), serde_json::json!(["Gemma3ForCausalLM"]));
        o.insert("model_type".into(), "gemma3_text".into());
        o.insert("hidden_activation".into(), "gelu_pytorch_tanh".into());
        o.insert("query_pre_attn_scalar".into(), c.query_pre_attn_scalar.unwrap_or(c.head_dim as f64).into());
        o.insert("torch_dtype".into(), "float32".into());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> serde_json::Value {
        let mut v = serde_json::json!({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 99});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v
    }

    #[test]
    fn rope_from_transformers_5_parameters_and_unknown_scaling_refused() {
        let p = std::path::Path::new("config.json");
        // Gemma 3 4B as transformers 5 writes it: global layers linear x8, local base 10k.
        let c = Config::from_hf(
            config(serde_json::json!({"rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}})),
            p,
        )
        .unwrap();
        assert_eq!(c.rope_scaling.and_then(|r| r.factor), Some(8.0));
        assert_eq!((c.rope_theta, c.rope_local_base_freq), (1_000_000.0, 10_000.0));
        for bad in [
            serde_json::json!({"rope_scaling": {"rope_type": "yarn", "factor": 8.0}}),
            serde_json::json!({"rope_parameters": {"full_attention": {"rope_type": "dynamic", "factor": 2.0}}}),
        ] {
            let e = Config::from_hf(config(bad), p).unwrap_err().to_string();
            assert!(e.contains("RoPE scaling type"), "{e}");
        }
    }
}
