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
//! - `hostile`: endless and oversized files, sizes out of range, the faults a fuzzer finds first
//! - `probe`: end to end on the real SmolLM2: outputs, resume from cache, shards merge
//! - `served`: a model behind llama.cpp's OpenAI-compatible server: probe agreement, served teacher, faults
//! - `generate`: the teacher writes datasets in each mode; seeds, resume, leakage guard
//! - `lora`: LoRA gradients, B = 0 equivalence, merge/export, PEFT key names and round trips
//! - `transfer`: `mores run` end to end on tiny models; stage skipping, resume, bad recipes
//! - `transfer_report`, `transfer_refs`, `transfer_compare`: the transfer report's numbers and references on
//!   tiny hand-made surveys; `mores compare` over transfer runs (the variants table)
//! - `train`: `mores train` resume equivalence, bad input, loss falls on SmolLM2
//! - `fused`: the fused training blocks equal the composed graph over training steps
//! - `generic`: the device-generic path (candle's ops: what a GPU runs) on the CPU against mores' kernels
//! - `fuzz`: seeded structure-aware mutation of every format mores reads; no panic, hang or huge allocation
//! - `layout`: the source tree's imports point down the pipeline, with no cycles
mod arch;
mod batch;
mod cli;
mod common;
mod correlate;
mod debias;
mod dry_run;
mod export;
mod fused;
mod fuzz;
mod generate;
mod generic;
mod hostile;
mod layout;
mod lora;
mod probe;
mod reference;
mod served;
mod survey;
mod tokenizer;
mod train;
mod transfer;
mod transfer_compare;
mod transfer_refs;
mod transfer_report;

// The binary's allocator, so the fuzz harness can cap single allocations while a reader runs.
#[global_allocator]
static ALLOC: mores::util::alloc::Guarded = mores::util::alloc::Guarded;
