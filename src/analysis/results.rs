//! From samples to numbers: per-country correlation of model expected scores with human means
//! across questions (raw, as the paper; and scale-normalised), the uniform-answer baseline beside
//! it, per-question cross-country alignment, category / group / continent aggregates, and what
//! the extra prompts show: templates, option orders, the country-blind persona effect, and the
//! baselines of `baseline.rs`.
use crate::analysis::baseline::{self, BiasRow, CountryBaselines, Reference};
use crate::analysis::combine::{self, OrderSpread, PositionBias};
use crate::analysis::correlate::{fisher_mean, mean, Corr};
use crate::probe::Sample;
use crate::recipe::ProbeRecipe;
use crate::survey::Survey;
use crate::util::error::Result;
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

use super::aggregate::compute_items;
/// Bootstrap resamples for every CI in a probe's results.
pub use super::aggregate::BOOTSTRAP;

pub fn compute(
    samples: &[Sample],
    items: &[Sample],
    survey: &Survey,
    model: ModelInfo,
    recipe: &ProbeRecipe,
) -> Result<Results> {
    let template = if recipe.templates.is_empty() { recipe.prompt.template_name.clone() } else { "ensemble".into() };
    let (groups_map, groups_source) = survey.category_groups(recipe.survey.category_groups.as_ref())?;
    let mut res = compute_items(items, survey, model.clone(), &recipe.name, &template, &groups_map);
    res.category_groups = groups_map;
    res.category_groups_source = groups_source;
    res.orders = format!("{:?}", recipe.scoring.orders).to_lowercase();
    let persona: Vec<Sample> = samples.iter().filter(|s| !s.country.is_empty()).cloned().collect();
    res.position_bias = combine::position_bias(&persona);
    res.order_spread = combine::order_spread(&persona, survey);
    res.overall.mean_mass = mean(&samples.iter().map(|s| s.mass).collect::<Vec<_>>()).unwrap_or(f64::NAN);
    res.overall.n_samples = samples.len();
    if !recipe.templates.is_empty() {
        let names = std::iter::once(&recipe.prompt).chain(&recipe.templates).map(|t| t.template_name.clone());
        for name in names {
            let its = combine::items(samples, survey, Some(&name));
            let r = compute_items(&its, survey, model.clone(), &recipe.name, &name, &BTreeMap::new());
            res.templates.push(TemplateSummary {
                name,
                n_items: its.len(),
                mean_r_raw: r.overall.mean_r_raw,
                mean_r_normalised: r.overall.mean_r_normalised,
                mean_r_normalised_ci95: r.overall.mean_r_normalised_ci95,
                cross_country_r: r.overall.cross_country_r,
                mean_mass: r.overall.mean_mass,
            });
        }
    }
    // Baselines on normalised scores.
    let humans = baseline::human_scores(survey);
    let mut model_scores: baseline::Scores = BTreeMap::new();
    for s in items {
        let Ok(q) = survey.question(&s.question_id) else { continue };
        if let Some(v) = s.expected_score.and_then(|e| q.normalise(e)) {
            model_scores.entry(s.country.clone()).or_default().insert(s.question_id.clone(), v);
        }
    }
    let blind: BTreeMap<String, f64> = combine::blind(samples, survey)
        .iter()
        .filter_map(|s| {
            let q = survey.question(&s.question_id).ok()?;
            Some((s.question_id.clone(), q.normalise(s.expected_score?)?))
        })
        .collect();
    let mut per_country = Vec::new();
    for c in &mut res.countries {
        let Some(m) = model_scores.get(&c.iso3) else { continue };
        let b = baseline::for_persona(&c.iso3, m, &humans);
        per_country.push((c.iso3.clone(), b.clone()));
        c.baselines = Some(b);
        if !blind.is_empty() {
            let own: BTreeMap<String, f64> =
                blind.iter().filter(|(q, _)| m.contains_key(*q)).map(|(q, v)| (q.clone(), *v)).collect();
            c.blind_r = humans.get(&c.iso3).and_then(|h| {
                let (x, y): (Vec<f64>, Vec<f64>) = own.iter().filter_map(|(q, v)| h.get(q).map(|hv| (*v, *hv))).unzip();
                crate::analysis::correlate::pearson(&x, &y)
            });
            c.persona_effect = c.normalised.as_ref().zip(c.blind_r).map(|(n, b)| n.r - b);
        }
    }
    let o = &mut res.overall;
    o.shuffled_r = fisher_mean(&per_country.iter().filter_map(|(_, b)| b.shuffled_r).collect::<Vec<_>>());
    o.mean_blind_r = mean(&res.countries.iter().filter_map(|c| c.blind_r).collect::<Vec<_>>());
    o.mean_persona_effect = mean(&res.countries.iter().filter_map(|c| c.persona_effect).collect::<Vec<_>>());
    let isos: Vec<String> = res.countries.iter().map(|c| c.iso3.clone()).collect();
    res.references = baseline::references(survey, &humans, &isos);
    res.bias = baseline::bias_table(survey, &per_country);
    Ok(res)
}
