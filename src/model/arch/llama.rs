//! Llama-shaped decoder (SmolLM2, Llama 2/3, TinyLlama, and from config.json Mistral, Qwen2/2.5,
//! Qwen3 and Phi-3: see [`super::family`] for what sets each apart): RMSNorm, rotary attention
//! with grouped KV heads, SwiGLU MLP. Built from GGUF (`llama.*` metadata) or a Hugging Face
//! folder (config.json).
use super::batch::{Batch, Kv};
use super::family::{Family, Traits};
use super::layers::{gather, residual, AttnCtx, RmsNorm, RopeStyle};
use super::linear::{layer_slots, Linear, Slot};
use crate::model::kernels::act::Gated;
use crate::model::loading::gguf::GgufFile;
use crate::model::loading::weights::{key, Weights};
use crate::model::mode::Mode;
use crate::util::error::{Error, Result};
use candle_core::quantized::QMatMul;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// A fused weight [sum(parts), in] cut into its row blocks.
fn split_rows(w: &mut Weights, name: &str, parts: &[usize]) -> Result<Vec<Tensor>> {
    let full = w.tensor(key(name, name))?;
    let rows = full.dim(0)?;
    if rows != parts.iter().sum::<usize>() {
        return Err(Error::model(
            w.path(),
            format!("{name} has {rows} rows, expected {}", parts.iter().sum::<usize>()),
        ));
    }
    let mut at = 0;
    parts
        .iter()
        .map(|&n| {
            let t = full.narrow(0, at, n)?.contiguous()?;
            at += n;
            Ok(t)
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    pub vocab_size: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Context length the model was trained for; longer inputs are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_embeddings: Option<usize>,
    /// The family's differences from Llama, resolved from the raw config (see [`super::family`]).
    #[serde(skip)]
    pub traits: Traits,
    /// config.json as read (written back unchanged when a merged model is exported).
    #[serde(skip)]
    pub raw: Option<serde_json::Value>,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10_000.0
}

impl Config {
    /// A GGUF file of architecture `llama`, `qwen2` or `qwen3` (llama.cpp's names; Mistral's
    /// GGUF files say `llama`). RoPE scaling stored in the file (`{arch}.rope.scaling.type`, or
    /// Llama 3.1's `rope_freqs` tensor) is refused by name: mores would otherwise drop it.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let p = g.architecture()?;
        let family = match p.as_str() {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            other => return Err(Error::model(&g.path, format!("internal: {other:?} is not a llama-shaped GGUF"))),
        };
        if let Ok(kind) = g.string(&format!("{p}.rope.scaling.type")) {
            if kind != "none" {
                return Err(Error::model(
                    &g.path,
                    format!("{p}.rope.scaling.type = {kind:?} is not supported in GGUF files: use the model's Hugging Face folder (linear and llama3 scaling are read from config.json)"),
                ));
            }
        }
        if g.content.tensor_infos.contains_key("rope_freqs.weight") {
            return Err(Error::model(
                &g.path,
                "the file carries a rope_freqs tensor (Llama 3.1-style RoPE scaling), which mores does not read from GGUF: use the model's Hugging Face folder",
            ));
        }
        let heads = g.u32(&format!("{p}.attention.head_count"))? as usize;
        let hidden = g.u32(&format!("{p}.embedding_length"))? as usize;
        let head_dim = match g.opt_u32(&format!("{p}.attention.key_length"))? {
            Some(x) => Some(x),
            None => g.opt_u32(&format!("{p}.rope.dimension_count"))?,
        }
        .map(|x| x as usize);
        Ok(Self {
            hidden_size: hidden,
            intermediate_size: g.u32(&format!("{p}.feed_forward_length"))? as usize,
            num_hidden_layers: g.u32(&format!("{p}.block_count"))? as usize,
            num_attention_heads: heads,
            num_key_value_heads: g.opt_u32(&format!("{p}.attention.head_count_kv"))?.map(|x| x as usize),
            head_dim,
            rms_norm_eps: g.opt_f32(&format!("{p}.attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f64,
            rope_theta: g.opt_f32(&format!("{p}.rope.freq_base")).unwrap_or(10_000.0) as f64,
            vocab_size: g.strings("tokenizer.ggml.tokens")?.len(),
            tie_word_embeddings: !g.content.tensor_infos.contains_key("output.weight"),
            max_position_embeddings: g.opt_u32(&format!("{p}.context_length"))?.map(|x| x as usize),
            traits: Traits {
                family,
                qkv_bias: family == Family::Qwen2,
                qk_norm: family == Family::Qwen3,
                ..Traits::default()
            },
            raw: None,
        })
    }

    /// A config.json of family `family`: the shapes, and the family's traits resolved from it.
    pub fn from_hf(family: Family, raw: serde_json::Value, path: &std::path::Path) -> Result<Self> {
        let mut c: Config = serde_json::from_value(raw.clone())
            .map_err(|e| Error::model(path, format!("{} config: {e}", family.name())))?;
        c.traits = super::family::resolve(family, &raw, path)?;
        c.rope_theta = super::family::rope_theta(&raw);
        c.raw = Some(raw);
        Ok(c)
    }

    fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
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
    input_norm: RmsNorm,
    post_norm: RmsNorm,
    /// Qwen3: RMSNorm over each head of Q and K.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
}

pub struct Model {
    pub cfg: Config,
    embed: Tensor,
    layers: Vec<Layer>,
    pub(super) norm: RmsNorm,
    pub(super) lm_head: Linear,
    rope_style: RopeStyle,
    inv_freq: Vec<f32>,
}

impl Model {
    pub fn load(cfg: Config, w: &mut Weights) -> Result<Self> {
        super::config::check(
            &super::config::Dims {
                hidden: cfg.hidden_size,
                intermediate: cfg.intermediate_size,
                layers: cfg.num_hidden_layers,
                heads: cfg.num_attention_heads,
                kv_heads: cfg.kv_heads(),
                head_dim: if cfg.num_attention_heads == 0 { 0 } else { cfg.head_dim() },
                explicit_head_dim: cfg.head_dim.is_some(),
                vocab: cfg.vocab_size,
                eps: cfg.rms_norm_eps,
                rope_theta: cfg.rope_theta,
            },
            w,
        )?;
        let eps = cfg.rms_norm_eps as f32;
        let norm = |w: &mut Weights, hf: &str, gguf: &str| -> Result<RmsNorm> {
            Ok(RmsNorm { weight: w.tensor(key(hf, gguf))?, eps })
        };
        // Embedding and head first: their shapes are checked against the vocabulary before the
        // layers are read.
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
        let head_key = key("lm_head.weight", "output.weight");
        let lm_head = if w.has(head_key) && !cfg.tie_word_embeddings {
            Linear::new(w.linear(head_key)?)
        } else if w.dense() {
            // Tied and dense: share the embedding's memory instead of a second copy, and
            // multiply from its Q8_0 values where the GGUF stores it so.
            Linear::new(candle_core::quantized::QMatMul::Tensor(embed.clone())).with_q8_0(embed_q8)
        } else {
            Linear::new(w.linear(embed_key)?)
        };
        // A head with other rows than the vocabulary would score token ids it does not have.
        let (_, head_rows) = lm_head.dims()?;
        if head_rows != cfg.vocab_size {
            return Err(Error::model(
                w.path(),
                format!(
                    "invalid model configuration: the output head has {head_rows} rows but the vocabulary has {} tokens",
                    cfg.vocab_size
                ),
            ));
        }
        let t = cfg.traits.clone();
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let hf = |s: &str| format!("model.layers.{i}.{s}.weight");
            let gg = |s: &str| format!("blk.{i}.{s}.weight");
            let bias = |w: &mut Weights, s: &str, gguf: &str, on: bool| -> Result<Option<Tensor>> {
                let name = format!("model.layers.{i}.{s}.bias");
                on.then(|| w.tensor(key(&name, &format!("blk.{i}.{gguf}.bias")))).transpose()
            };
            let lin = |w: &mut Weights, a: &str, b: &str| -> Result<Linear> {
                Ok(Linear::new(w.linear(key(&hf(a), &gg(b)))?))
            };
            let (mut q, mut k, mut v, mut o, gate, up, down);
            if t.fused {
                // Phi-3: rows of qkv_proj are Q, K, V; rows of gate_up_proj are gate, up.
                let qkv = split_rows(w, &hf("self_attn.qkv_proj"), &[nh * hd, nkv * hd, nkv * hd])?;
                let gu = split_rows(w, &hf("mlp.gate_up_proj"), &[cfg.intermediate_size, cfg.intermediate_size])?;
                let mut it = qkv.into_iter().chain(gu).map(|t| Linear::new(QMatMul::Tensor(t)));
                (q, k, v) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
                (gate, up) = (it.next().unwrap(), it.next().unwrap());
                o = lin(w, "self_attn.o_proj", "attn_output")?;
                down = lin(w, "mlp.down_proj", "ffn_down")?;
            } else {
                q = lin(w, "self_attn.q_proj", "attn_q")?;
                k = lin(w, "self_attn.k_proj", "attn_k")?;
                v = lin(w, "self_attn.v_proj", "attn_v")?;
                o = lin(w, "self_attn.o_proj", "attn_output")?;
                gate = lin(w, "mlp.gate_proj", "ffn_gate")?;
                up = lin(w, "mlp.up_proj", "ffn_up")?;
                down = lin(w, "mlp.down_proj", "ffn_down")?;
            }
            q.bias = bias(w, "self_attn.q_proj", "attn_q", t.qkv_bias)?;
            k.bias = bias(w, "self_attn.k_proj", "attn_k", t.qkv_bias)?;
            v.bias = bias(w, "self_attn.v_proj", "attn_v", t.qkv_bias)?;
            o.bias = bias(w, "self_attn.o_proj", "attn_output", t.o_bias)?;
            let qk_norm = if t.qk_norm {
                Some((
                    norm(w, &hf("self_attn.q_norm"), &gg("attn_q_norm"))?,
                    norm(w, &hf("self_attn.k_norm"), &gg("attn_k_norm"))?,
                ))
            } else {
                None
            };
            let hs = cfg.hidden_size;
            let sizes = (hs, cfg.intermediate_size, nh, nkv, hd);
            Linear::expect_layer(&w.path(), i, [&q, &k, &v, &o, &gate, &up, &down], sizes)?;
            let input_norm = norm(w, &hf("input_layernorm"), &gg("attn_norm"))?;
            let post_norm = norm(w, &hf("post_attention_layernorm"), &gg("ffn_norm"))?;
            for (n, name, width) in [(&input_norm, "input norm", hs), (&post_norm, "post-attention norm", hs)]
                .into_iter()
                .chain(qk_norm.iter().flat_map(|(a, b)| [(a, "q norm", hd), (b, "k norm", hd)]))
            {
                n.expect(&w.path(), &format!("layer {i} {name}"), width)?;
            }
            layers.push(Layer { q, k, v, o, gate, up, down, input_norm, post_norm, qk_norm });
        }
        // llama.cpp permutes Q/K rows for interleaved RoPE in llama files only; its Qwen files
        // keep Hugging Face's order and rotate halves (NEOX style).
        let rope_style =
            if w.is_gguf() && cfg.traits.family == Family::Llama { RopeStyle::Interleaved } else { RopeStyle::Halves };
        let inv_freq = t.rope.inv_freq(hd, cfg.rope_theta);
        let final_norm = norm(w, "model.norm.weight", "output_norm.weight")?;
        final_norm.expect(&w.path(), "final norm", cfg.hidden_size)?;
        Ok(Self { norm: final_norm, cfg, embed, layers, lm_head, rope_style, inv_freq })
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
        let x = self.embed_rows(batch)?;
        let (x, kv) = self.run_layers(batch, prefix, x, 0..self.layers.len(), record, mode)?;
        Ok((self.head(&x, read, mode)?, kv))
    }

    /// The first decoder layer an adapter reaches (the layer count when none does): in training,
    /// the layers below it hold no variable, so they run as inference and their output per row
    /// does not change from step to step.
    pub fn first_adapted(&self) -> usize {
        let adapted = |l: &Layer| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down].iter().any(|x| x.lora.is_some());
        self.layers.iter().position(adapted).unwrap_or(self.layers.len())
    }

    /// The hidden states entering decoder layer `layer` [rows, len, hidden] (inference).
    pub fn hidden_before(&self, batch: &Batch, layer: usize) -> Result<Tensor> {
        let x = self.embed_rows(batch)?;
        Ok(self.run_layers(batch, &[], x, 0..layer, false, Mode::INFER)?.0)
    }

    /// Logits at `read` from hidden states `x` entering decoder layer `layer` (no prefix).
    pub fn forward_from(&self, batch: &Batch, layer: usize, x: Tensor, read: &Tensor, mode: Mode) -> Result<Tensor> {
        let (x, _) = self.run_layers(batch, &[], x, layer..self.layers.len(), false, mode)?;
        Ok(self.head(&x, Some(read), mode)?.expect("read given"))
    }

    pub(super) fn embed_rows(&self, batch: &Batch) -> Result<Tensor> {
        let (b, t) = (batch.rows, batch.len);
        Ok(self.embed.index_select(&batch.ids.flatten_all()?, 0)?.reshape((b, t, self.cfg.hidden_size))?)
    }

    fn head(&self, x: &Tensor, read: Option<&Tensor>, mode: Mode) -> Result<Option<Tensor>> {
        Ok(match read {
            Some(read) => {
                Some(self.lm_head.forward(&self.norm.forward(&gather(x, read)?, mode)?, mode)?.to_dtype(DType::F32)?)
            }
            None => None,
        })
    }

    /// Decoder layers `range` on hidden states `x`; layers below the first adapted one run as
    /// inference even in training (nothing below them needs a gradient).
    pub(super) fn run_layers(
        &self,
        batch: &Batch,
        prefix: &[&Kv],
        mut x: Tensor,
        range: std::ops::Range<usize>,
        record: bool,
        mode: Mode,
    ) -> Result<(Tensor, Kv)> {
        let dev = batch.ids.device();
        let t = batch.len;
        let (hd, nh, nkv) = (self.cfg.head_dim(), self.cfg.num_attention_heads, self.cfg.kv_heads());
        let window = self.cfg.traits.window;
        let frozen = if mode.grad { self.first_adapted() } else { 0 };
        let ctx = AttnCtx::new(batch, prefix, &[window], mode)?;
        let ctx_frozen =
            if range.start < frozen { Some(AttnCtx::new(batch, prefix, &[window], Mode::INFER)?) } else { None };
        let (cos, sin) = batch.rope_tables_from(&self.inv_freq, dev)?;
        // Half-precision activations (generic devices) take the tables in their own type.
        let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
        let scale = 1.0 / (hd as f64).sqrt();
        let mut kv = Kv { len: t, ..Kv::new() };
        let heads = (nh, nkv, hd);
        for li in range {
            let l = &self.layers[li];
            let (mode, ctx) = match &ctx_frozen {
                Some(c) if li < frozen => (Mode::INFER, c),
                _ => (mode, &ctx),
            };
            let parts = super::block::AttnParts {
                batch,
                heads,
                rope: (&cos, &sin),
                style: self.rope_style,
                window,
                scale,
                qk_norm: l.qk_norm.as_ref().map(|(q, k)| [q, k]),
                post: None,
            };
            let plain = prefix.is_empty() && !record;
            let lins = [&l.q, &l.k, &l.v, &l.o];
            let fused = plain.then(|| super::block::attention(&x, &l.input_norm, lins, &parts, mode));
            x = match fused.transpose()?.flatten() {
                Some(y) => y,
                None => super::block::attention_composed(
                    &x,
                    &l.input_norm,
                    lins,
                    &parts,
                    (ctx, li),
                    (&mut kv, record),
                    mode,
                )?,
            };
            let mlp = [&l.gate, &l.up, &l.down];
            if let Some(y) = super::block::gated_mlp(&x, &l.post_norm, mlp, Gated::Silu, None, mode)? {
                x = y;
                continue;
            }
            let h = l.post_norm.forward(&x, mode)?;
            let m = Linear::forward_gated(&l.gate, &l.up, &h, mode, Gated::Silu)?;
            x = residual(&x, &l.down.forward(&m, mode)?, mode)?;
        }
        Ok((x, kv))
    }

    /// The projections LoRA can adapt, in layer order.
    pub fn lora_slots(&mut self) -> Vec<Slot<'_>> {
        // GGUF llama files store Q and K rows permuted for interleaved RoPE; adapters in PEFT
        // layout use the Hugging Face order and are permuted on the way in and out.
        let permuted_heads =
            (self.rope_style == RopeStyle::Interleaved).then(|| (self.cfg.num_attention_heads, self.cfg.kv_heads()));
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let linears = [&mut l.q, &mut l.k, &mut l.v, &mut l.o, &mut l.gate, &mut l.up, &mut l.down];
            out.extend(layer_slots(i, linears, permuted_heads));
        }
        out
    }

    /// Every weight under its Hugging Face name and layout (Q/K rows back in HF order).
    pub fn hf_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let permuted = self.rope_style == RopeStyle::Interleaved;
        let (nh, nkv) = (self.cfg.num_attention_heads, self.cfg.kv_heads());
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.clone())];
        for (i, l) in self.layers.iter().enumerate() {
            let p = |s: &str| format!("model.layers.{i}.{s}.weight");
            let (q, k) = (l.q.dense_weight()?, l.k.dense_weight()?);
            let (q, k) = if permuted {
                (crate::model::lora::rows_to_hf(&q, nh)?, crate::model::lora::rows_to_hf(&k, nkv)?)
            } else {
                (q, k)
            };
            let (v, gate, up) = (l.v.dense_weight()?, l.gate.dense_weight()?, l.up.dense_weight()?);
            if self.cfg.traits.fused {
                // Phi-3 checkpoints keep Q, K, V (and gate, up) as one weight: fuse them back.
                out.push((p("self_attn.qkv_proj"), Tensor::cat(&[q, k, v], 0)?));
                out.push((p("mlp.gate_up_proj"), Tensor::cat(&[gate, up], 0)?));
            } else {
                out.push((p("self_attn.q_proj"), q));
                out.push((p("self_attn.k_proj"), k));
                out.push((p("self_attn.v_proj"), v));
                out.push((p("mlp.gate_proj"), gate));
                out.push((p("mlp.up_proj"), up));
            }
            out.push((p("self_attn.o_proj"), l.o.dense_weight()?));
            out.push((p("mlp.down_proj"), l.down.dense_weight()?));
            out.push((p("input_layernorm"), l.input_norm.weight.clone()));
            out.push((p("post_attention_layernorm"), l.post_norm.weight.clone()));
            for (name, lin) in [("q_proj", &l.q), ("k_proj", &l.k), ("v_proj", &l.v), ("o_proj", &l.o)] {
                if let Some(b) = &lin.bias {
                    out.push((format!("model.layers.{i}.self_attn.{name}.bias"), b.clone()));
                }
            }
            if let Some((qn, kn)) = &l.qk_norm {
                out.push((p("self_attn.q_norm"), qn.weight.clone()));
                out.push((p("self_attn.k_norm"), kn.weight.clone()));
            }
        }
        out.push(("model.norm.weight".into(), self.norm.weight.clone()));
        if !self.cfg.tie_word_embeddings {
            out.push(("lm_head.weight".into(), self.lm_head.dense_weight()?));
        }
        Ok(out)
    }

    pub fn hf_config(&self) -> serde_json::Value {
        if let Some(raw) = &self.cfg.raw {
            return raw.clone();
        }
        let mut v = serde_json::to_value(&self.cfg).expect("config serialises");
        let o = v.as_object_mut().expect("object");
        let (class, model_type) = match self.cfg.traits.family {
            Family::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
            Family::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
            _ => ("LlamaForCausalLM", "llama"),
        };
        o.insert("architectures".into(), serde_json::json!([class]));
        o.insert("model_type".into(), model_type.into());
        o.insert("num_key_value_heads".into(), self.cfg.kv_heads().into());
        o.insert("head_dim".into(), self.cfg.head_dim().into());
        o.insert("hidden_act".into(), "silu".into());
        o.insert("torch_dtype".into(), "float32".into());
        v
    }
}
