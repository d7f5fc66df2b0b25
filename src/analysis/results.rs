//! The typed results of a probe (results.json): per-country correlation of model expected scores
//! with human means across questions (raw, as the paper; and scale-normalised), the uniform-answer
//! baseline beside it, per-question cross-country alignment, category / group / continent
//! aggregates, templates, option orders, the country-blind persona effect and the baselines.
//! Computed by `compute.rs` (from `aggregate.rs` and `baseline.rs`).
use crate::analysis::baseline::{BiasRow, CountryBaselines, Reference};
use crate::analysis::combine::{OrderSpread, PositionBias};
use crate::analysis::correlate::Corr;
use crate::util::manifest::ModelInfo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const SCHEMA: &str = "mores.probe.results/1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CountryResult {
    pub iso3: String,
    pub name: String,
    pub continent: String,
    /// Scored questions (with both a model score and a human mean).
    pub n: usize,
    /// Pearson r across questions on raw WVS scores (the paper's metric).
    pub raw: Option<Corr>,
    /// Pearson r after mapping each question's scores to [0, 1] with its option range.
    pub normalised: Option<Corr>,
    /// Raw r of a model answering every question uniformly at random: what scale alone gives.
    pub uniform_raw_r: Option<f64>,
    pub mean_mass: f64,
    /// 95% bootstrap CI of the normalised r (resampling questions; seeded).
    #[serde(default)]
    pub normalised_ci95: Option<(f64, f64)>,
    /// Spearman rank correlation on normalised scores.
    #[serde(default)]
    pub spearman: Option<f64>,
    /// Mean over questions of 1 - Jensen-Shannon distance between model and human distributions.
    #[serde(default)]
    pub js_similarity: Option<f64>,
    /// Mean over ordinal questions of the Wasserstein-1 distance on the [0, 1] option scale.
    #[serde(default)]
    pub wasserstein: Option<f64>,
    /// Shuffled-country baseline and best-matching country (normalised scores).
    #[serde(default)]
    pub baselines: Option<CountryBaselines>,
    /// Normalised r of the country-blind answers against this country's humans, and the
    /// persona effect: normalised r minus that.
    #[serde(default)]
    pub blind_r: Option<f64>,
    #[serde(default)]
    pub persona_effect: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupResult {
    pub name: String,
    /// Countries whose r is defined within the group (at least 3 questions).
    pub n_countries: usize,
    pub n_questions: usize,
    /// Fisher-z mean over countries.
    pub mean_r_raw: Option<f64>,
    pub mean_r_normalised: Option<f64>,
    pub uniform_mean_r_raw: Option<f64>,
    /// 95% CI of the Fisher mean normalised r, bootstrapping countries.
    #[serde(default)]
    pub normalised_ci95: Option<(f64, f64)>,
    /// Fisher mean of the group's per-question cross-country r (categories and groups only).
    #[serde(default)]
    pub cross_country_r: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QuestionResult {
    pub id: String,
    pub category: String,
    pub n_countries: usize,
    /// r across countries between model scores and human means for this one question.
    pub cross_country: Option<Corr>,
    /// Standard deviation across countries of normalised scores: model, humans.
    pub model_spread: f64,
    pub human_spread: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Overall {
    pub n_countries: usize,
    pub n_samples: usize,
    pub mean_mass: f64,
    pub mean_r_raw: Option<f64>,
    pub fisher_r_raw: Option<f64>,
    pub mean_r_normalised: Option<f64>,
    pub fisher_r_normalised: Option<f64>,
    pub uniform_mean_r_raw: Option<f64>,
    /// Fisher-z mean of per-question cross-country r (questions with at least 3 countries).
    pub cross_country_r: Option<f64>,
    pub cross_country_questions: usize,
    pub cross_country_positive: usize,
    /// 95% CI of the mean normalised r, bootstrapping countries (seeded).
    #[serde(default)]
    pub mean_r_normalised_ci95: Option<(f64, f64)>,
    #[serde(default)]
    pub mean_js_similarity: Option<f64>,
    #[serde(default)]
    pub mean_wasserstein: Option<f64>,
    #[serde(default)]
    pub mean_spearman: Option<f64>,
    /// Fisher mean over countries of the shuffled-country baseline r.
    #[serde(default)]
    pub shuffled_r: Option<f64>,
    #[serde(default)]
    pub mean_blind_r: Option<f64>,
    #[serde(default)]
    pub mean_persona_effect: Option<f64>,
}

/// One template's numbers when a recipe probes several (a prompt ensemble).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TemplateSummary {
    pub name: String,
    pub n_items: usize,
    pub mean_r_raw: Option<f64>,
    pub mean_r_normalised: Option<f64>,
    pub mean_r_normalised_ci95: Option<(f64, f64)>,
    pub cross_country_r: Option<f64>,
    pub mean_mass: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Results {
    pub schema: String,
    pub model: ModelInfo,
    pub recipe: String,
    pub template: String,
    pub overall: Overall,
    pub countries: Vec<CountryResult>,
    pub categories: Vec<GroupResult>,
    pub continents: Vec<GroupResult>,
    pub questions: Vec<QuestionResult>,
    /// Category groups (see `category_groups`) and where the mapping came from.
    #[serde(default)]
    pub groups: Vec<GroupResult>,
    #[serde(default)]
    pub category_groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub category_groups_source: String,
    /// Per template, when there are several; the main numbers are the ensemble's.
    #[serde(default)]
    pub templates: Vec<TemplateSummary>,
    /// Option orders asked ("original", "reversed", "cyclic").
    #[serde(default)]
    pub orders: String,
    #[serde(default)]
    pub position_bias: Vec<PositionBias>,
    #[serde(default)]
    pub order_spread: Option<OrderSpread>,
    /// Reference-country baselines: one country's humans used as the model for the others.
    #[serde(default)]
    pub references: Vec<Reference>,
    /// Best-matching countries of the model's personas, per persona continent.
    #[serde(default)]
    pub bias: Vec<BiasRow>,
}

/// Bootstrap resamples for every CI in a probe's results.
/// Bootstrap resamples behind every CI of a probe's results.
pub const BOOTSTRAP: usize = 1000;
