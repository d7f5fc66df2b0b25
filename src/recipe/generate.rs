//! The `[generate]` section: what the teacher writes (mode, countries, categories, split and
//! leakage guard, paraphrasing, few-shot examples) and how it samples.
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum GenMode {
    Qa,
    SoftLabels,
    SurveyGrounded,
}

impl GenMode {
    pub fn name(self) -> &'static str {
        match self {
            GenMode::Qa => "qa",
            GenMode::SoftLabels => "soft-labels",
            GenMode::SurveyGrounded => "survey-grounded",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FewShot {
    pub country: String,
    pub category: String,
    pub question: String,
    pub options: Vec<String>,
    pub answer: usize,
    #[serde(default)]
    pub rationale: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GenerateSection {
    pub mode: GenMode,
    /// Seeds the split, the question sample and, unless `sample_seed` is set, the teacher's draws.
    #[serde(default)]
    pub seed: u64,
    /// Seeds the teacher's draws (paraphrases, QA) alone, keeping the split and the questions:
    /// the same experiment with other teacher samples. Default: `seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_seed: Option<u64>,
    #[serde(default = "super::default_data")]
    pub data: PathBuf,
    /// ISO3 codes; empty: every country with at least `min_questions` scored questions.
    #[serde(default)]
    pub countries: Vec<String>,
    #[serde(default = "super::default_min_questions")]
    pub min_questions: usize,
    /// WVS categories to cover; empty: all.
    #[serde(default)]
    pub categories: Vec<String>,
    /// qa: items per (country, category).
    #[serde(default = "super::one")]
    pub per_pair: usize,
    /// Cap on work items: a seeded sample of them (all when unset).
    #[serde(default)]
    pub max_items: Option<usize>,
    /// soft-labels / survey-grounded: a seeded sample of this many training questions (each is
    /// paraphrased once and asked for every country).
    #[serde(default)]
    pub max_questions: Option<usize>,
    #[serde(default = "default_heldout")]
    pub heldout_fraction: f64,
    /// Word n-gram size and containment threshold of the leakage guard.
    #[serde(default = "default_ngram")]
    pub leak_ngram: usize,
    #[serde(default = "default_leak")]
    pub leak_threshold: f64,
    #[serde(default)]
    pub sampling: Sampling,
    /// qa: the text before the few-shot examples.
    #[serde(default = "default_qa_header")]
    pub qa_header: String,
    #[serde(default)]
    pub few_shot: Vec<FewShot>,
    /// soft-labels / survey-grounded: paraphrase each question with the teacher (semantic
    /// augmentation); false keeps the survey's own wording.
    #[serde(default = "super::yes")]
    pub paraphrase: bool,
    /// soft-labels / survey-grounded: few-shot paraphrase prompt ending in `{question}`'s rewrite.
    #[serde(default = "default_paraphrase")]
    pub paraphrase_prompt: String,
    /// survey-grounded: each target is the question's mean human distribution over the generated
    /// countries plus `contrast` times the country's deviation from it (clipped at 0,
    /// renormalised). 1 keeps the humans' own distribution; above 1 amplifies what makes the
    /// countries differ, so the KL gradient carries (contrast - 1) times more of the country
    /// difference than the typical answer alone would.
    #[serde(default = "super::one_f", skip_serializing_if = "is_one")]
    pub contrast: f64,
    /// soft-labels / survey-grounded: how many paraphrases of each question (each drawn with its
    /// own seed and shared by every country). Needs `paraphrase = true` beyond 1.
    #[serde(default = "super::one", skip_serializing_if = "is_one_usize")]
    pub paraphrases: usize,
    /// soft-labels / survey-grounded with `paraphrase = true`: the first of the `paraphrases`
    /// copies keeps the survey's own wording (CultureLLM's seed question beside its
    /// augmentations), so no question is lost to a rejected paraphrase.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub original: bool,
    /// soft-labels / survey-grounded: the option orders each record is written in. `original`
    /// (the default): the questionnaire's. `reversed`: also a copy with the options listed in
    /// reverse, labels renumbered and the target reversed with them (id suffix `~rev`, same
    /// wording, so `[train] group = "wording"` puts both orders in one step): a student cannot
    /// fit the targets by position and must read the options.
    #[serde(default, skip_serializing_if = "super::OrderMode::is_original")]
    pub orders: super::OrderMode,
}

fn is_one_usize(x: &usize) -> bool {
    *x == 1
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

fn default_heldout() -> f64 {
    0.3
}
fn default_ngram() -> usize {
    3
}
fn default_leak() -> f64 {
    0.5
}
fn default_qa_header() -> String {
    "The following are survey questions about values and beliefs, each with the answer a typical person from the named country would give, and why.\n\n".into()
}
fn default_paraphrase() -> String {
    "Rewrite each survey question in different words, keeping its meaning.\n\nOriginal: How important is leisure time in your life?\nRewrite: How much does free time matter in your life?\n\nOriginal: Do you think that homosexuality is justifiable?\nRewrite: In your view, can homosexuality be justified?\n\nOriginal: {question}\nRewrite:".into()
}

impl GenerateSection {
    /// The seed of the teacher's draws.
    pub fn draw_seed(&self) -> u64 {
        self.sample_seed.unwrap_or(self.seed)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.orders == super::OrderMode::Cyclic {
            return Err("generate.orders = \"cyclic\" is not a training order: use \"original\" or \"reversed\"".into());
        }
        if self.orders != super::OrderMode::Original && self.mode == GenMode::Qa {
            return Err(
                "generate.orders applies to soft-labels and survey-grounded questions; qa writes its own options"
                    .into(),
            );
        }
        if self.mode == GenMode::Qa && self.few_shot.is_empty() {
            return Err("generate.few_shot: qa mode needs at least one example".into());
        }
        if self.mode != GenMode::Qa && !self.paraphrase_prompt.contains("{question}") {
            return Err("generate.paraphrase_prompt must contain {question}".into());
        }
        if self.paraphrases == 0 {
            return Err("generate.paraphrases must be at least 1".into());
        }
        if self.original && !self.paraphrase {
            return Err(
                "generate.original = true needs paraphrase = true (without it every copy is the survey's own wording)"
                    .into(),
            );
        }
        if self.paraphrases > 1 && !self.paraphrase {
            return Err(format!(
                "generate.paraphrases = {} needs paraphrase = true (without it every copy is the survey's own wording)",
                self.paraphrases
            ));
        }
        if !(self.contrast.is_finite() && self.contrast >= 0.0) {
            return Err(format!("generate.contrast = {} must be a finite number >= 0", self.contrast));
        }
        if self.contrast != 1.0 && self.mode != GenMode::SurveyGrounded {
            return Err("generate.contrast applies to the survey-grounded mode only".into());
        }
        if !(0.0..=1.0).contains(&self.leak_threshold) || self.leak_ngram == 0 {
            return Err("generate.leak_threshold must be in [0, 1] and leak_ngram at least 1".into());
        }
        if self.per_pair == 0 || self.sampling.max_new_tokens == 0 {
            return Err("generate.per_pair and sampling.max_new_tokens must be at least 1".into());
        }
        use super::in_range;
        in_range("generate.per_pair", self.per_pair, 1, 100_000)?;
        in_range("generate.paraphrases", self.paraphrases, 1, 1_000)?;
        in_range("generate.leak_ngram", self.leak_ngram, 1, 64)?;
        in_range("generate.sampling.max_new_tokens", self.sampling.max_new_tokens, 1, 1 << 20)?;
        in_range("generate.sampling.top_k", self.sampling.top_k, 0, 1 << 24)?;
        let s = &self.sampling;
        if !(s.temperature.is_finite() && s.temperature >= 0.0) {
            return Err(format!("generate.sampling.temperature = {} must be a finite number >= 0", s.temperature));
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err(format!("generate.sampling.top_p = {} must be in (0, 1]", s.top_p));
        }
        if !(s.repetition_penalty.is_finite() && s.repetition_penalty > 0.0) {
            return Err(format!("generate.sampling.repetition_penalty = {} must be above 0", s.repetition_penalty));
        }
        if !(0.0..1.0).contains(&self.heldout_fraction) {
            return Err(format!("generate.heldout_fraction = {} must be in [0, 1)", self.heldout_fraction));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    /// 0 = greedy.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    /// 0 = no limit.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// > 1 discourages tokens already in the prompt or output (CTRL-style).
    #[serde(default = "default_rep")]
    pub repetition_penalty: f64,
    #[serde(default = "default_max_new")]
    pub max_new_tokens: usize,
    /// Generation stops before the first occurrence of any of these.
    #[serde(default)]
    pub stop: Vec<String>,
}

fn default_temperature() -> f64 {
    0.7
}
fn default_top_p() -> f64 {
    0.95
}
fn default_top_k() -> usize {
    50
}
fn default_rep() -> f64 {
    1.1
}
fn default_max_new() -> usize {
    128
}

impl Default for Sampling {
    fn default() -> Self {
        toml::Value::Table(toml::Table::new()).try_into().expect("all fields have defaults")
    }
}
