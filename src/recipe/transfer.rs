//! `[transfer]`: the before/after experiment `mores run` wraps around generate and train.
use super::{default_batch, yes, OrderMode};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransferSection {
    /// ISO3 codes probed and generated for; empty: [generate] countries, else every country with
    /// at least [generate] min_questions scored questions.
    #[serde(default)]
    pub countries: Vec<String>,
    /// Held-out questions probed (a seeded sample; all when unset).
    #[serde(default)]
    pub max_heldout_questions: Option<usize>,
    /// Training-split questions also probed, to tell memorising from transferring (0: none).
    #[serde(default = "default_train_probe")]
    pub train_questions: usize,
    /// Probe the teacher too, as a reference ceiling.
    #[serde(default = "yes")]
    pub teacher_reference: bool,
    /// Fewest probed countries a question needs for its cross-country r (and swap control) to
    /// count: with 5 countries an r is noise.
    #[serde(default = "default_min_countries")]
    pub min_countries: usize,
    #[serde(default = "default_batch")]
    pub probe_batch: usize,
    #[serde(default = "default_boot")]
    pub bootstrap: usize,
    #[serde(default)]
    pub seed: u64,
    /// Output folder; `mores run --out` overrides. Default runs/NAME.
    #[serde(default)]
    pub out: Option<PathBuf>,
    /// Scoring-cache folder shared with other runs (e.g. `mores probe --cache`); entries are
    /// keyed by model, weight form, adapter and prompt hashes, so sharing never mixes models.
    /// Default: a cache inside each probe stage's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_cache: Option<PathBuf>,
    /// Option orders of the before/after/teacher probes (see [scoring] orders); `reversed`
    /// doubles their cost and cancels position preferences.
    #[serde(default, skip_serializing_if = "OrderMode::is_original")]
    pub probe_orders: OrderMode,
}

fn default_train_probe() -> usize {
    20
}
fn default_min_countries() -> usize {
    8
}
fn default_boot() -> usize {
    1000
}
