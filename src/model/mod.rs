//! Model runtime: load a GGUF file or a Hugging Face folder, with its tokenizer and chat template,
//! into one of mores' own architecture files, and run batched forward passes that return logits
//! at chosen positions.
//!
//! [`Model`] and its forward passes are here, with how a pass runs ([`mode`]) and the rows it keeps
//! between passes ([`radix`] for scoring, [`frozen`] for training). The rest is grouped by job:
//! [`loading`] (files to a model), [`arch`] (the architectures and their layers), [`kernels`]
//! (the CPU maths under them) and [`lora`] (adapters).
pub mod arch;
pub mod frozen;
pub mod kernels;
pub mod loading;
pub mod lora;
pub mod mode;
pub mod radix;

// The module paths the rest of the crate uses.
pub use kernels::{exp, gemm, grad_ops};
pub use loading::load::load_tokenizer;
pub use loading::{chat, gguf, tokenizer};
pub use lora::{adapter, export};

/// Devices and float types live with the recipe keys that name them (`crate::util::device`).
pub use crate::util::device::{self, DeviceSpec, FloatType};
use crate::util::error::{Error, Result};
pub use crate::util::manifest::{AdapterInfo, ModelInfo};
use arch::batch::{Batch, Kv};
use arch::{gemma3, linear, llama};
use candle_core::{Device, Tensor};
use chat::ChatTemplate;
use mode::Mode;
use std::path::Path;
use tokenizer::Tok;

pub const SUPPORTED: &str =
    "llama (SmolLM2, Llama, Mistral), gemma3, qwen2 (Qwen2, Qwen2.5, DeepSeek-R1-Distill-Qwen), qwen3 (GGUF or Hugging Face); mistral, phi3 (Hugging Face folders)";

pub enum Arch {
    Llama(llama::Model),
    Gemma3(gemma3::Model),
}

pub struct LoadOptions {
    /// Where the model runs ([`device`]); the command line's `--device` is applied by
    /// [`LoadOptions::for_section`].
    pub device: DeviceSpec,
    /// The float type of dense weights and activations (f32 on the CPU).
    pub dtype: FloatType,
    pub requantize_slow: bool,
    pub dequantize: bool,
}

impl LoadOptions {
    /// Loading in the recipe's weight form, on the command line's device (`cpu` without one).
    pub fn for_weights(w: crate::recipe::WeightMode) -> Self {
        use crate::recipe::WeightMode;
        Self {
            requantize_slow: w == WeightMode::Q8,
            dequantize: w == WeightMode::F32,
            device: device::resolve(None),
            ..Default::default()
        }
    }

    /// A recipe's model section: its weight form, its device after `--device`, its dtype.
    pub fn for_section(s: &crate::recipe::ModelSection) -> Result<Self> {
        let opts = Self {
            device: device::resolve(s.device),
            dtype: s.dtype.unwrap_or_default(),
            ..Self::for_weights(s.weights)
        };
        device::check(opts.device, opts.dtype, opts.dequantize).map_err(Error::Invalid)?;
        Ok(opts)
    }

    pub fn form(&self) -> &'static str {
        if self.dequantize {
            "f32"
        } else if self.requantize_slow {
            "q8"
        } else {
            "stored"
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { device: DeviceSpec::Cpu, dtype: FloatType::F32, requantize_slow: false, dequantize: false }
    }
}

pub struct Model {
    pub arch: Arch,
    pub tok: Tok,
    pub chat: Option<ChatTemplate>,
    pub info: ModelInfo,
    pub device: Device,
    /// All weights dense (f32): safe to share prefix computation across rows.
    pub dense: bool,
    /// How the weights are held: "f32", "q8" or "stored".
    pub form: &'static str,
    /// Run each distinct prompt prefix once when scoring (dense weights on the CPU; see
    /// [`radix`]). Off, every row runs whole: the same numbers, for benchmarks and tests.
    pub prefix_reuse: bool,
    /// Training with frozen lower layers: their output per row, kept across steps ([`frozen`]).
    pub frozen_rows: Option<std::sync::Mutex<frozen::FrozenRows>>,
    /// The device as asked for: `cpu` runs mores' kernels, every other the generic path.
    pub spec: DeviceSpec,
    /// The float type of the dense weights and activations (logits come out f32).
    pub dtype: FloatType,
}

impl Model {
    /// A loaded model with the defaults every loader shares (prefix reuse on, no kept rows).
    fn assemble(
        arch: Arch,
        tok: Tok,
        chat: Option<ChatTemplate>,
        info: ModelInfo,
        opts: &LoadOptions,
        device: Device,
        (dense, form): (bool, &'static str),
    ) -> Self {
        let (spec, dtype) = (opts.device, opts.dtype);
        let mut info = info;
        info.device = (spec != DeviceSpec::Cpu || dtype != FloatType::F32).then(|| format!("{spec} {}", dtype.name()));
        Model { arch, tok, chat, info, device, dense, form, prefix_reuse: true, frozen_rows: None, spec, dtype }
    }

    /// This model's kernel choice on the calling thread until the guard drops: the generic path
    /// for every device but `cpu`. Every public pass enters it; so do the scoring and training
    /// code that reads the logits.
    pub fn kernel_scope(&self) -> kernels::GenericScope {
        kernels::GenericScope::enter(self.spec.generic())
    }

    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self> {
        if !path.exists() {
            return Err(Error::model(path, "model not found: give a .gguf file or a Hugging Face model folder (run scripts/fetch-models.sh for the defaults)"));
        }
        if path.is_dir() {
            loading::load::load_hf_dir(path, opts)
        } else {
            loading::load::load_gguf(path, opts)
        }
    }

    fn forward(
        &self,
        batch: &Batch,
        prefix: &[&Kv],
        read: Option<&Tensor>,
        record: bool,
        mode: Mode,
    ) -> Result<(Option<Tensor>, Kv)> {
        match &self.arch {
            Arch::Llama(m) => m.forward(batch, prefix, read, record, mode),
            Arch::Gemma3(m) => m.forward(batch, prefix, read, record, mode),
        }
    }

    /// The context length the model declares (GGUF `*.context_length`, config.json
    /// `max_position_embeddings`), if any.
    pub fn context_len(&self) -> Option<usize> {
        match &self.arch {
            Arch::Llama(m) => m.cfg.max_position_embeddings,
            Arch::Gemma3(m) => m.cfg.max_position_embeddings,
        }
    }

    /// Refuse inputs longer than the model's context: positions past it were never trained and a
    /// 12,000-word prompt once took 6 GB before aborting.
    fn check_len(&self, tokens: usize) -> Result<()> {
        match self.context_len() {
            Some(ctx) if tokens > ctx => Err(Error::model(
                &self.info.path,
                format!(
                    "input of {tokens} tokens is longer than the model's context of {ctx} tokens: shorten the prompt"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Logits at `read` = (row, position) pairs, run as one padded batch with no shared-prefix
    /// reuse: the training path, where `mode` decides whether gradients can flow.
    pub fn logits_rows(&self, rows: &[Vec<u32>], read: &[(usize, usize)], mode: Mode) -> Result<Tensor> {
        let _kernels = self.kernel_scope();
        self.check_len(rows.iter().map(|r| r.len()).max().unwrap_or(0))?;
        let batch = Batch::new(rows, &self.device)?;
        let idx: Vec<u32> = read.iter().map(|&(r, p)| batch.flat_index(r, p)).collect();
        let idx = Tensor::from_vec(idx, read.len(), &self.device)?;
        if let (Some(store), Arch::Llama(m)) = (&self.frozen_rows, &self.arch) {
            let layer = m.first_adapted();
            if layer > 0 {
                let mut store = store.lock().expect("frozen rows lock");
                let x = store.assemble(rows, layer, &self.device, &|b| m.hidden_before(b, layer))?;
                return m.forward_from(&batch, layer, x, &idx, mode);
            }
        }
        Ok(self.forward(&batch, &[], Some(&idx), false, mode)?.0.expect("read positions given"))
    }

    /// [`Model::logits_rows`] reduced to each read's NLL of its target (`targets`, one per read)
    /// in training, with the head and the cross-entropy as one node where the architecture
    /// allows it (llama-shaped, CPU); None where it does not (then use `logits_rows`).
    pub fn token_nll_rows(
        &self,
        rows: &[Vec<u32>],
        read: &[(usize, usize)],
        targets: &[u32],
        mode: Mode,
    ) -> Result<Option<Tensor>> {
        let _kernels = self.kernel_scope();
        let Arch::Llama(m) = &self.arch else { return Ok(None) };
        if !m.fused_head(mode) || !kernels::cpu_kernels(&self.device) || targets.len() != read.len() {
            return Ok(None);
        }
        self.check_len(rows.iter().map(|r| r.len()).max().unwrap_or(0))?;
        let batch = Batch::new(rows, &self.device)?;
        let idx: Vec<u32> = read.iter().map(|&(r, p)| batch.flat_index(r, p)).collect();
        let idx = Tensor::from_vec(idx, read.len(), &self.device)?;
        let layer = if self.frozen_rows.is_some() { m.first_adapted() } else { 0 };
        let x = match &self.frozen_rows {
            Some(store) if layer > 0 => {
                let mut store = store.lock().expect("frozen rows lock");
                store.assemble(rows, layer, &self.device, &|b| m.hidden_before(b, layer))?
            }
            _ => m.hidden_before(&batch, 0)?,
        };
        Ok(Some(m.token_nll(&batch, layer, x, &idx, targets, mode)?))
    }

    /// Start a generation: run `ids` and return the last position's logits [vocab] and the cache.
    pub fn prefill(&self, ids: &[u32]) -> Result<(Tensor, Kv)> {
        let _kernels = self.kernel_scope();
        if ids.is_empty() {
            return Err(Error::Invalid("cannot generate from an empty prompt".into()));
        }
        self.check_len(ids.len())?;
        let b = Batch::new(&[ids.to_vec()], &self.device)?;
        let idx = Tensor::from_vec(vec![b.flat_index(0, ids.len() - 1)], 1, &self.device)?;
        let (logits, kv) = self.forward(&b, &[], Some(&idx), true, Mode::INFER)?;
        Ok((logits.expect("read given").squeeze(0)?, kv))
    }

    /// One decoding step after the cached tokens: logits [vocab] for the token after `tok`.
    pub fn decode(&self, kv: &mut Kv, tok: u32) -> Result<Tensor> {
        let _kernels = self.kernel_scope();
        self.check_len(kv.len + 1)?;
        let b = Batch::after_prefix(&[vec![tok]], kv.len, &self.device)?;
        let idx = Tensor::from_vec(vec![0u32], 1, &self.device)?;
        let (logits, new) = self.forward(&b, &[&*kv], Some(&idx), true, Mode::INFER)?;
        for i in 0..new.k.len() {
            kv.k[i] = Tensor::cat(&[&kv.k[i], &new.k[i]], 2)?;
            kv.v[i] = Tensor::cat(&[&kv.v[i], &new.v[i]], 2)?;
        }
        kv.len += 1;
        Ok(logits.expect("read given").squeeze(0)?)
    }

    /// The projections LoRA can adapt.
    pub fn lora_slots(&mut self) -> Vec<linear::Slot<'_>> {
        match &mut self.arch {
            Arch::Llama(m) => m.lora_slots(),
            Arch::Gemma3(m) => m.lora_slots(),
        }
    }

    /// Identifies the numbers this model produces: file, weight form and adapter. Scoring caches
    /// are keyed by it, so f32 and quantized runs, or runs with different adapters, never mix.
    pub fn scoring_id(&self) -> String {
        let form = match (self.spec, self.dtype) {
            (DeviceSpec::Cpu, _) => self.form.to_string(),
            (d, t) => format!("{}@{}-{}", self.form, d.kind(), t.name()),
        };
        let adapter = self.info.adapter.as_ref().map(|a| a.sha256.as_str()).unwrap_or("-");
        crate::util::io::sha256_hex(format!("{}|{form}|{adapter}", self.info.sha256).as_bytes())
    }

    /// Whether this model's checkpoints fuse projections (Phi-3's qkv_proj and gate_up_proj,
    /// split at load): LoRA then adapts the fused modules, as PEFT does.
    pub fn fused_projections(&self) -> bool {
        matches!(&self.arch, Arch::Llama(m) if m.cfg.traits.fused)
    }

    /// Whether any layer carries an unmerged LoRA adapter.
    pub fn lora_attached(&mut self) -> bool {
        self.lora_slots().iter().any(|s| s.linear.lora.is_some())
    }

    pub fn architecture(&self) -> &str {
        &self.info.architecture
    }

    /// Logits [n, vocab] (f32) at `read` = (row, position) pairs of the given token rows.
    pub fn logits_at(&self, rows: &[Vec<u32>], read: &[(usize, usize)]) -> Result<Tensor> {
        self.logits_at_cached(rows, read, &mut radix::PrefixCache::new(0))
    }

    /// [`Self::logits_at`], keeping prefixes in `cache` for later calls.
    ///
    /// With dense weights on the CPU, every distinct prefix of the rows (a chat template's
    /// system prompt, a persona line, a question before its two option orders, a prompt before
    /// its label branches) is run once ([`radix`]). On other devices only the tokens every row
    /// starts with are shared. Quantized kernels are left on whole rows: their results depend
    /// on how rows are grouped.
    pub fn logits_at_cached(
        &self,
        rows: &[Vec<u32>],
        read: &[(usize, usize)],
        cache: &mut radix::PrefixCache,
    ) -> Result<Tensor> {
        let _kernels = self.kernel_scope();
        self.check_len(rows.iter().map(|r| r.len()).max().unwrap_or(0))?;
        if self.dense && kernels::cpu_kernels(&self.device) {
            if !self.prefix_reuse {
                let tokens: u64 = rows.iter().map(|r| r.len() as u64).sum();
                cache.stats.row_tokens += tokens;
                cache.stats.computed += tokens;
                cache.stats.padded += (rows.len() * rows.iter().map(|r| r.len()).max().unwrap_or(0)) as u64;
                return self.logits_rows(rows, read, Mode::INFER);
            }
            return self.logits_radix(rows, read, cache);
        }
        let shared = if self.dense { shared_prefix(rows, read) } else { 0 };
        let prefix = if shared > 0 {
            let b = Batch::new(&[rows[0][..shared].to_vec()], &self.device)?;
            self.forward(&b, &[], None, true, Mode::INFER)?.1
        } else {
            Kv::new()
        };
        let rest: Vec<Vec<u32>> = rows.iter().map(|r| r[shared..].to_vec()).collect();
        let batch = Batch::after_prefix(&rest, shared, &self.device)?;
        let idx: Vec<u32> = read.iter().map(|&(r, p)| batch.flat_index(r, p - shared)).collect();
        let idx = Tensor::from_vec(idx, read.len(), &self.device)?;
        Ok(self.forward(&batch, &[&prefix], Some(&idx), false, Mode::INFER)?.0.expect("read positions given"))
    }

    pub fn is_chat(&self) -> bool {
        self.chat.is_some()
    }

    /// Wrap a user message in the model's chat template (with the generation prompt).
    pub fn render_chat(&self, user: &str) -> Result<String> {
        render_user_turn(self.chat.as_ref(), &self.tok, &self.info.path, user)
    }
}

/// A user message in chat template `chat` (with the generation prompt), the template's BOS and
/// EOS strings taken from `tok`: the one rendering of a chat prompt, for a loaded model and for
/// a served one whose tokenizer is read locally.
pub fn render_user_turn(chat: Option<&ChatTemplate>, tok: &Tok, what: &Path, user: &str) -> Result<String> {
    let tmpl = chat.ok_or_else(|| Error::model(what, "the model has no chat template"))?;
    let bos = tok.bos.as_ref().map(|b| b.1.as_str()).unwrap_or("");
    let eos = tok.eos.as_ref().map(|b| b.1.as_str()).unwrap_or("");
    tmpl.render(&[chat::Message { role: "user".into(), content: user.into() }], bos, eos, true)
}
/// Length of the token prefix common to all rows, leaving every read position after it.
fn shared_prefix(rows: &[Vec<u32>], read: &[(usize, usize)]) -> usize {
    let Some(first) = rows.first() else { return 0 };
    let mut n = rows.iter().map(|r| radix::common_prefix(first, r)).min().unwrap_or(0);
    if let Some(min_read) = read.iter().map(|&(_, p)| p).min() {
        n = n.min(min_read);
    }
    n
}
