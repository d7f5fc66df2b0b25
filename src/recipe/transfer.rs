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
    /// How many nearest training questions (by TF-IDF word similarity) the report's k-neighbour
    /// references average, each neighbour's human country profile z-scored across countries
    /// (1 to 50).
    #[serde(default = "default_neighbours")]
    pub neighbours: usize,
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
    /// Option orders of the before/after/teacher probes (see [scoring] orders). Default
    /// `reversed`: each item in the original and the reversed order, averaged, as the main probe
    /// does, so a student that learned a position preference does not read as one that learned
    /// the answers; it doubles the probes' prompts. `original` is the study's single order.
    #[serde(default = "both_orders")]
    pub probe_orders: OrderMode,
}

fn both_orders() -> OrderMode {
    OrderMode::Reversed
}

impl TransferSection {
    pub fn validate(&self) -> std::result::Result<(), String> {
        use super::in_range;
        // A bootstrap needs resamples to have a spread; a correlation needs three points.
        in_range("transfer.bootstrap", self.bootstrap, 100, 1_000_000)?;
        in_range("transfer.min_countries", self.min_countries, 3, 100_000)?;
        in_range("transfer.neighbours", self.neighbours, 1, 50)?;
        in_range("transfer.probe_batch", self.probe_batch, 1, 4096)?;
        in_range("transfer.train_questions", self.train_questions, 0, 1_000_000)?;
        if let Some(n) = self.max_heldout_questions {
            in_range("transfer.max_heldout_questions", n, 1, 1_000_000)?;
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(c) = self.countries.iter().find(|c| !seen.insert(c.as_str())) {
            return Err(format!("transfer.countries names {c} twice"));
        }
        Ok(())
    }
}

fn default_train_probe() -> usize {
    20
}
fn default_min_countries() -> usize {
    8
}
fn default_neighbours() -> usize {
    3
}
fn default_boot() -> usize {
    1000
}
