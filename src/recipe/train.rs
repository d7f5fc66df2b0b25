//! `[train]`: the LoRA fine-tune's objective, optimizer, schedule and checkpointing.
use super::{one, one_f};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Whatever the records carry: text targets train "lm", distributions train "kl".
    Auto,
    /// Causal LM, loss on the answer tokens only.
    Lm,
    /// KL(target || student) over the option labels, renormalised as the probe does.
    Kl,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    Linear,
    Constant,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    #[serde(default = "objective_auto")]
    pub objective: Objective,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Stop after this many optimizer steps (overrides `epochs`).
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Examples per forward pass.
    #[serde(default = "default_micro_batch")]
    pub batch: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    #[serde(default = "default_betas")]
    pub betas: (f64, f64),
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Global gradient-norm clip; 0 disables it.
    #[serde(default = "one_f")]
    pub clip: f64,
    #[serde(default)]
    pub seed: u64,
    /// Share of records held out for validation loss (split seeded by record id).
    #[serde(default = "default_val")]
    pub val_fraction: f64,
    #[serde(default = "default_eval_every")]
    pub eval_every: usize,
    #[serde(default = "default_save_every")]
    pub save_every: usize,
    /// Longest training sequence in tokens; longer answers are cut, longer prompts skipped.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// With `lora.layers` leaving the lower layers frozen: MiB kept of their output per training
    /// row, so later epochs skip those layers (SmolLM2: 2.3 KB per token). Rows beyond it rerun
    /// every epoch; results are the same either way. Unset: 1024 (about 4,000 rows of 110
    /// tokens); a full-scale run of ~5,700 rows of ~125 tokens needs about 1,700.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_rows_mib: Option<usize>,
    /// What one optimizer step holds: random records ("none"), every record of
    /// `questions_per_step` source questions ("question": all countries of a question together,
    /// which the deviation term needs), or of `questions_per_step` (question, wording) pairs
    /// ("wording": with several paraphrases per question a step still holds one wording in all
    /// its countries, so steps keep the shape of a one-wording run).
    #[serde(default, skip_serializing_if = "is_default")]
    pub group: Group,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub questions_per_step: usize,
    /// Weight of the country-deviation term (needs `group = "question"`): per question, the mean
    /// squared error between the student's and the humans' deviations of each country's expected
    /// answer from the question's mean over the step's countries, divided by the humans' variance
    /// across those countries. 0: KL only.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deviation: f64,
    /// What the validation share holds out: single records ("record", the default: a question's
    /// other countries and wordings stay in training, so validation measures fit) or whole source
    /// questions ("question": every country and wording of a held-out question, so validation
    /// measures new questions) or whole families ("family": every question of a held-out WVS
    /// battery, grouped as the test split groups them from `[generate]`'s survey and leak
    /// settings, so no validation question has a near-copy in training, as at test).
    #[serde(default, skip_serializing_if = "is_default")]
    pub val_split: ValSplit,
    /// Early stopping: stop after this many validations in a row without improving `select`,
    /// and keep the best validated adapter instead of the last. 0: run every step, keep the last.
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub patience: usize,
    /// What early stopping follows: "loss" (validation loss, lower is better) or "country_r"
    /// (Fisher mean over validation (question, wording) pairs of the Pearson r across countries
    /// between the student's and the humans' expected answers; higher is better).
    #[serde(default, skip_serializing_if = "is_default")]
    pub select: Select,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ValSplit {
    #[default]
    Record,
    Question,
    Family,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Select {
    #[default]
    Loss,
    CountryR,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    #[default]
    None,
    Question,
    Wording,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
fn is_one(v: &usize) -> bool {
    *v == 1
}
fn is_zero_usize(v: &usize) -> bool {
    *v == 0
}
fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn objective_auto() -> Objective {
    Objective::Auto
}
fn default_lr() -> f64 {
    2e-4
}
fn default_epochs() -> usize {
    1
}
fn default_micro_batch() -> usize {
    4
}
fn default_schedule() -> Schedule {
    Schedule::Cosine
}
fn default_wd() -> f64 {
    0.01
}
fn default_betas() -> (f64, f64) {
    (0.9, 0.999)
}
fn default_eps() -> f64 {
    1e-8
}
fn default_val() -> f64 {
    0.1
}
fn default_eval_every() -> usize {
    20
}
fn default_save_every() -> usize {
    50
}
fn default_max_len() -> usize {
    512
}

impl Default for TrainSection {
    fn default() -> Self {
        toml::Value::Table(toml::Table::new()).try_into().expect("all fields have defaults")
    }
}
