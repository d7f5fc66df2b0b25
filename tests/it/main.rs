//! The one integration-test binary.
//!
//! - `common`: paths to the fetched models, the CLI runner, tiny random-weight model builders
//! - `survey`: shipped data loads; malformed data is rejected with the file and line
//! - `correlate`: statistics against hand-checked values
//! - `debias`: option orders, position bias, prompt variants, baselines, category groups, figures, compare
//! - `tokenizer`: GGUF tokenizers against transformers' ids; round trips
//! - `reference`: option distributions against a stored transformers reference
//! - `batch`: batched scoring equals one-at-a-time scoring
//! - `cli`: bad input gives one clear line and a non-zero exit, never a panic
//! - `probe`: end to end on the real SmolLM2: outputs, resume from cache, shards merge
//! - `generate`: the teacher writes datasets in each mode; seeds, resume, leakage guard
//! - `lora`: LoRA gradients, B = 0 equivalence, merge/export, PEFT key names and round trips
//! - `transfer`: `mores run` end to end on tiny models; stage skipping, resume, bad recipes
//! - `train`: `mores train` resume equivalence, bad input, loss falls on SmolLM2
//! - `layout`: the source tree's imports point down the pipeline, with no cycles
mod arch;
mod batch;
mod cli;
mod common;
mod correlate;
mod debias;
mod generate;
mod layout;
mod lora;
mod probe;
mod reference;
mod survey;
mod tokenizer;
mod train;
mod transfer;
mod transfer_report;
