//! mores: how language models judge cultural values across countries.
//!
//! The folders read as the pipeline, and imports point one way, down this list (a module never
//! imports one listed after it; `tests/it/layout.rs` fails if an import cycle comes back):
//!
//! - [`util`]: errors, atomic files and JSONL logs, hashing, seeds, shards, number formatting,
//!   progress bars, run manifests.
//! - [`recipe`]: experiment files (TOML with `include` and overrides) and their sections.
//! - [`survey`]: WVS-7 questions, countries and human answers; the official CSV import.
//! - [`model`]: GGUF / Hugging Face models in candle: architectures, tokenizer, chat template,
//!   batch-invariant kernels, LoRA, PEFT adapter files, export.
//! - [`score`]: next-token probabilities of the option labels, in process.
//! - [`lm`]: the seam every later stage uses: the in-process model or a model served over an
//!   OpenAI-compatible API, behind one trait (rendering, scoring, completion, an id).
//! - [`prompt`]: one multiple-choice prompt per question and country persona, in the model's chat
//!   format.
//! - [`probe`]: every (question, country) prompt of a recipe scored, cached and resumable.
//! - [`analysis`]: correlations with the humans, baselines, order and template combination,
//!   typed results.
//! - [`report`]: markdown and SVG figures.
//! - [`evaluate`]: the probe stage end to end (recipe -> samples -> results -> files), shard
//!   merge and run comparison.
//! - [`generate`] -> [`train`] -> [`transfer`]: teacher data, LoRA training, before/after.
//! - [`plan`]: `--dry-run`: the resolved recipe, each stage's work and an estimated time.
//! - [`export`]: probe and transfer runs as long-format CSV or Parquet tables.
//! - [`bench`]: throughput against the reference Python stack.
pub mod util;

pub mod recipe;

pub mod survey;

pub mod model;

pub mod score;

pub mod lm;

pub mod prompt;

pub mod probe;

pub mod analysis;

pub mod report;

pub mod evaluate;

pub mod generate;

pub mod train;

pub mod transfer;

pub mod plan;

pub mod export;

pub mod bench;
