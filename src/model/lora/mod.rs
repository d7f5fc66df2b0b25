//! LoRA adapters: the low-rank layer on a frozen projection ([`layer`], re-exported here),
//! attaching, saving, loading and merging an adapter ([`adapter`]) in PEFT's on-disk format
//! ([`peft`]), and exporting a merged model as a Hugging Face folder ([`export`]).
//!
//! An adapter reaches a model's projections through the architectures' slots
//! (`super::arch::linear::Slot`); training (`crate::train`) optimises its variables, and scoring
//! loads one with `--adapter`.
pub mod adapter;
pub mod export;
pub mod layer;
pub mod peft;

pub use layer::{dropout_values, init_pair, rows_from_hf, rows_to_hf, LoraLayer, Target};
