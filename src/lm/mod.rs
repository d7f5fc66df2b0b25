//! The seam between mores and a language model: one trait, [`Lm`], with the in-process model
//! ([`crate::model::Model`], `local.rs`) and a model served over an OpenAI-compatible API
//! ([`served::Served`]) behind it. The probe, the teacher's generation and its soft labels see only
//! this trait: rendering a prompt in the model's chat format, scoring option labels, continuing a
//! prompt, and an id that keys caches and manifests.
//!
//! - `local.rs`: the trait for the in-process model (candle, CPU kernels).
//! - `sample.rs`: autoregressive decoding with seeded sampling, in process.
//! - `served/`: the HTTP client, label scoring from prompt or top-k log-probabilities, completion.
pub mod local;
pub mod sample;
pub mod served;

use crate::model::radix::PrefixCache;
use crate::recipe::generate::Sampling;
use crate::recipe::ModelSection;
use crate::score::{OptionScores, ScoreRequest};
use crate::util::error::{Error, Result};
use crate::util::manifest::ModelInfo;
use rand_chacha::ChaCha8Rng;

/// A continuation of a prompt.
pub struct Generated {
    pub text: String,
    pub n_tokens: usize,
    /// Why it stopped: "eos", "stop", or "length".
    pub finish: &'static str,
}

/// A language model as mores uses it.
pub trait Lm: Sync {
    /// Name, file or endpoint, tokenizer and chat template, for manifests and cards.
    fn info(&self) -> &ModelInfo;

    /// Identifies the numbers this model produces (weights, weight form, adapter; for a served
    /// model its id, tokenizer and log-probability mode): scoring caches are keyed by it.
    fn scoring_id(&self) -> String;

    /// Whether the model has a chat template.
    fn is_chat(&self) -> bool;

    /// A user message in the model's chat template, with the generation prompt.
    fn render_chat(&self, user: &str) -> Result<String>;

    /// Option-label probabilities after each prompt, by the one rule in [`crate::score`]. `cache`
    /// keeps prompt prefixes between batches where the backend can reuse them.
    fn score(&self, items: &[ScoreRequest], cache: &mut PrefixCache) -> Result<Vec<OptionScores>>;

    /// Continue `prompt` (the exact text) with seeded sampling.
    fn complete(&self, prompt: &str, s: &Sampling, rng: &mut ChaCha8Rng) -> Result<Generated>;

    /// Requests worth having in flight at once (1 in process, where the batch is the
    /// parallelism; a server's `in_flight`).
    fn parallelism(&self) -> usize {
        1
    }
}

/// The model a recipe section names: loaded in process from `path`, or reached at its `endpoint`.
pub fn open(section: &ModelSection, what: &str) -> Result<Box<dyn Lm>> {
    if section.endpoint.is_some() {
        return Ok(Box::new(served::Served::connect(section)?));
    }
    let path = section.path.as_deref().ok_or_else(|| {
        Error::Invalid(format!("no {what} model: set [{what}] path (a GGUF file or model folder) or endpoint"))
    })?;
    let m = crate::model::Model::load(path, &crate::model::LoadOptions::for_section(section)?)?;
    Ok(Box::new(m))
}

/// One line naming a model for logs: `NAME (ARCH, FORMAT), tokenizer: SOURCE`.
pub fn describe(m: &dyn Lm) -> String {
    let i = m.info();
    format!("model {} ({}, {}), tokenizer: {}", i.name, i.architecture, i.format, i.tokenizer)
}
