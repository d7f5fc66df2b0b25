//! mores: how language models judge cultural values across countries.
//!
//! The probe pipeline reads in stage order:
//! [`survey`] (WVS-7 questions, countries, human answers) -> [`prompt`] (one multiple-choice
//! prompt per question and country persona) -> [`model`] (GGUF / Hugging Face models in candle)
//! -> [`score`] (next-token probabilities of the option labels) -> [`probe`] (expected scores,
//! cached and resumable) -> [`correlate`] (per-country Pearson r and aggregates) -> [`report`].
pub mod adapter;
pub mod baseline;
pub mod bench;
pub mod bench_lora;
pub mod combine;
pub mod commands;
pub mod correlate;
pub mod dataset;
pub mod error;
pub mod export;
pub mod generate;
pub mod io;
pub mod manifest;
pub mod model;
pub mod plot;
pub mod probe;
pub mod progress;
pub mod prompt;
pub mod recipe;
pub mod report;
pub mod report_plots;
pub mod results;
pub mod score;
pub mod seed;
pub mod survey;
pub mod survey_import;
pub mod train;
pub mod transfer;
