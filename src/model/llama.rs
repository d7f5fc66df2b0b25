//! Llama-family decoder (SmolLM2, Llama 2/3, TinyLlama): RMSNorm, rotary attention with grouped KV
//! heads, SwiGLU MLP. Built from GGUF (`llama.*` metadata) or a Hugging Face folder (config.json).
use super::gguf::GgufFile;
use super::layers::{gather, rope, AttnCtx, Batch, Kv, RmsNorm, RopeStyle};
use super::linear::{layer_slots, Linear, Slot};
use super::mode::Mode;
use super::weights::{key, Weights};
use crate::util::error::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

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
}

fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10_000.0
}

impl Config {
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let p = "llama";
        let heads = g.u32(&format!("{p}.attention.head_count"))? as usize;
        let hidden = g.u32(&format!("{p}.embedding_length"))? as usize;
        Ok(Self {
            hidden_size: hidden,
            intermediate_size: g.u32(&format!("{p}.feed_forward_length"))? as usize,
            num_hidden_layers: g.u32(&format!("{p}.block_count"))? as usize,
            num_attention_heads: heads,
            num_key_value_heads: g.opt_u32(&format!("{p}.attention.head_count_kv")).map(|x| x as usize),
            head_dim: g.opt_u32(&format!("{p}.rope.dimension_count")).map(|x| x as usize),
            rms_norm_eps: g.opt_f32(&format!("{p}.attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f64,
            rope_theta: g.opt_f32(&format!("{p}.rope.freq_base")).unwrap_or(10_000.0) as f64,
            vocab_size: g.strings("tokenizer.ggml.tokens")?.len(),
            tie_word_embeddings: !g.content.tensor_infos.contains_key("output.weight"),
            max_position_embeddings: g.opt_u32(&format!("{p}.context_length")).map(|x| x as usize),
        })
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
}

pub struct Model {
    pub cfg: Config,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope_style: RopeStyle,
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
        let embed = w.tensor(embed_key)?;
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
        let lm_head = Linear::new(if w.has(head_key) && !cfg.tie_word_embeddings {
            w.linear(head_key)?
        } else if w.dense() {
            // Tied and dense: share the embedding's memory instead of a second copy.
            candle_core::quantized::QMatMul::Tensor(embed.clone())
        } else {
            w.linear(embed_key)?
        });
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
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let hf = |s: &str| format!("model.layers.{i}.{s}.weight");
            let gg = |s: &str| format!("blk.{i}.{s}.weight");
            let mut lin = |a: &str, b: &str| -> Result<Linear> { Ok(Linear::new(w.linear(key(&hf(a), &gg(b)))?)) };
            layers.push(Layer {
                q: lin("self_attn.q_proj", "attn_q")?,
                k: lin("self_attn.k_proj", "attn_k")?,
                v: lin("self_attn.v_proj", "attn_v")?,
                o: lin("self_attn.o_proj", "attn_output")?,
                gate: lin("mlp.gate_proj", "ffn_gate")?,
                up: lin("mlp.up_proj", "ffn_up")?,
                down: lin("mlp.down_proj", "ffn_down")?,
                input_norm: norm(w, &hf("input_layernorm"), &gg("attn_norm"))?,
                post_norm: norm(w, &hf("post_attention_layernorm"), &gg("ffn_norm"))?,
            });
        }
        let rope_style = if w.is_gguf() { RopeStyle::Interleaved } else { RopeStyle::Halves };
        Ok(Self { norm: norm(w, "model.norm.weight", "output_norm.weight")?, cfg, embed, layers, lm_head, rope_style })
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
        let (b, t) = (batch.rows, batch.len);
        let (hd, nh, nkv) = (self.cfg.head_dim(), self.cfg.num_attention_heads, self.cfg.kv_heads());
        let ctx = AttnCtx::new(batch, prefix, &[None], mode)?;
        let (cos, sin) = batch.rope_tables(hd, self.cfg.rope_theta, 1.0, dev)?;
        let mut x = self.embed.index_select(&batch.ids.flatten_all()?, 0)?.reshape((b, t, self.cfg.hidden_size))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut kv = Kv { len: t, ..Kv::new() };
        for (li, l) in self.layers.iter().enumerate() {
            let h = l.input_norm.forward(&x, mode)?;
            let q = l.q.forward(&h, mode)?.reshape((b, t, nh, hd))?.transpose(1, 2)?;
            let k = l.k.forward(&h, mode)?.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
            let v = l.v.forward(&h, mode)?.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
            let q = rope(&q, &cos, &sin, self.rope_style, mode)?;
            let k = rope(&k, &cos, &sin, self.rope_style, mode)?;
            if record {
                kv.k.push(k.clone());
                kv.v.push(v.clone());
            }
            let a = ctx.attend(li, &q, &k, &v, None, scale)?;
            x = (x + l.o.forward(&a, mode)?)?;
            let h = l.post_norm.forward(&x, mode)?;
            let m = (candle_nn::ops::silu(&l.gate.forward(&h, mode)?)? * l.up.forward(&h, mode)?)?;
            x = (x + l.down.forward(&m, mode)?)?;
        }
        let logits = match read {
            Some(read) => Some(self.lm_head.forward(&self.norm.forward(&gather(&x, read)?, mode)?, mode)?),
            None => None,
        };
        Ok((logits, kv))
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
            let (q, k) =
                if permuted { (super::lora::rows_to_hf(&q, nh)?, super::lora::rows_to_hf(&k, nkv)?) } else { (q, k) };
            out.push((p("self_attn.q_proj"), q));
            out.push((p("self_attn.k_proj"), k));
            out.push((p("self_attn.v_proj"), l.v.dense_weight()?));
            out.push((p("self_attn.o_proj"), l.o.dense_weight()?));
            out.push((p("mlp.gate_proj"), l.gate.dense_weight()?));
            out.push((p("mlp.up_proj"), l.up.dense_weight()?));
            out.push((p("mlp.down_proj"), l.down.dense_weight()?));
            out.push((p("input_layernorm"), l.input_norm.weight.clone()));
            out.push((p("post_attention_layernorm"), l.post_norm.weight.clone()));
        }
        out.push(("model.norm.weight".into(), self.norm.weight.clone()));
        if !self.cfg.tie_word_embeddings {
            out.push(("lm_head.weight".into(), self.lm_head.dense_weight()?));
        }
        Ok(out)
    }

    pub fn hf_config(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.cfg).expect("config serialises");
        let o = v.as_object_mut().expect("object");
        o.insert("architectures".into(), serde_json::json!(["LlamaForCausalLM"]));
        o.insert("model_type".into(), "llama".into());
        o.insert("num_key_value_heads".into(), self.cfg.kv_heads().into());
        o.insert("head_dim".into(), self.cfg.head_dim().into());
        o.insert("hidden_act".into(), "silu".into());
        o.insert("torch_dtype".into(), "float32".into());
        v
    }
}
