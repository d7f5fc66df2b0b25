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

/// Bootstrap resamples for every CI in a probe's results.
pub const BOOTSTRAP: usize = 1000;

struct Point<'a> {
    s: &'a Sample,
    js: Option<f64>,
    w1: Option<f64>,
    model: f64,
    human: f64,
    model_n: f64,
    human_n: f64,
    uniform: f64,
}

fn std_dev(xs: &[f64]) -> f64 {
    let m = mean(xs).unwrap_or(0.0);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len().max(1) as f64).sqrt()
}

/// Everything in results.json from every scored prompt of a run (`samples`) and their
/// per-item averages (`items`, from `combine::items(samples, survey, None)`).
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

/// The numbers of one set of items (one sample per question and country).
fn compute_items(
    samples: &[Sample],
    survey: &Survey,
    model: ModelInfo,
    recipe: &str,
    template: &str,
    category_groups: &BTreeMap<String, Vec<String>>,
) -> Results {
    let mut points: Vec<Point> = Vec::new();
    for s in samples {
        let Ok(q) = survey.question(&s.question_id) else { continue };
        let (Some(m), Some(h)) = (s.expected_score, s.human_mean) else { continue };
        let (Some(mn), Some(hn)) = (q.normalise(m), q.normalise(h)) else { continue };
        let uniform = q.expected_score(&vec![1.0; q.options.len()]).expect("scored question");
        let js = crate::analysis::correlate::js_similarity(&s.probs, &s.human_distribution);
        // W1 over the options that carry a score (renormalised), positions on the [0, 1] scale.
        let scored: Vec<usize> = (0..q.options.len()).filter(|&i| q.options[i].score.is_some()).collect();
        let w1 = (|| {
            let pm: Vec<f64> = scored.iter().map(|&i| s.probs.get(i).copied()).collect::<Option<_>>()?;
            let ph: Vec<f64> = scored.iter().map(|&i| s.human_distribution.get(i).copied()).collect::<Option<_>>()?;
            let (zm, zh) = (pm.iter().sum::<f64>(), ph.iter().sum::<f64>());
            if zm <= 0.0 || zh <= 0.0 {
                return None;
            }
            let at: Vec<f64> = scored.iter().map(|&i| q.normalise(q.options[i].score?)).collect::<Option<_>>()?;
            let pm: Vec<f64> = pm.iter().map(|x| x / zm).collect();
            let ph: Vec<f64> = ph.iter().map(|x| x / zh).collect();
            crate::analysis::correlate::wasserstein1(&pm, &ph, &at)
        })();
        points.push(Point { s, js, w1, model: m, human: h, model_n: mn, human_n: hn, uniform });
    }
    let by_country = group(&points, |p| p.s.country.clone());
    let corr_set = |ps: &[&Point]| {
        let m: Vec<f64> = ps.iter().map(|p| p.model).collect();
        let h: Vec<f64> = ps.iter().map(|p| p.human).collect();
        let mn: Vec<f64> = ps.iter().map(|p| p.model_n).collect();
        let hn: Vec<f64> = ps.iter().map(|p| p.human_n).collect();
        let u: Vec<f64> = ps.iter().map(|p| p.uniform).collect();
        (Corr::of(&m, &h), Corr::of(&mn, &hn), Corr::of(&u, &h).map(|c| c.r))
    };
    let mut countries = Vec::new();
    for (iso, ps) in &by_country {
        let c = survey.country(iso).ok();
        let (raw, normalised, uniform_raw_r) = corr_set(ps);
        let masses: Vec<f64> = samples.iter().filter(|s| &s.country == iso).map(|s| s.mass).collect();
        let mn: Vec<f64> = ps.iter().map(|p| p.model_n).collect();
        let hn: Vec<f64> = ps.iter().map(|p| p.human_n).collect();
        let (normalised_ci95, _) = crate::analysis::correlate::bootstrap(ps.len(), BOOTSTRAP, seed_for(iso), |idx| {
            let x: Vec<f64> = idx.iter().map(|&i| mn[i]).collect();
            let y: Vec<f64> = idx.iter().map(|&i| hn[i]).collect();
            crate::analysis::correlate::pearson(&x, &y)
        });
        countries.push(CountryResult {
            baselines: None,
            blind_r: None,
            persona_effect: None,
            normalised_ci95,
            spearman: crate::analysis::correlate::spearman(&mn, &hn),
            js_similarity: mean(&ps.iter().filter_map(|p| p.js).collect::<Vec<_>>()),
            wasserstein: mean(&ps.iter().filter_map(|p| p.w1).collect::<Vec<_>>()),
            iso3: iso.clone(),
            name: c.map(|c| c.name.clone()).unwrap_or_default(),
            continent: c.map(|c| c.continent.clone()).unwrap_or_default(),
            n: ps.len(),
            raw,
            normalised,
            uniform_raw_r,
            mean_mass: mean(&masses).unwrap_or(f64::NAN),
        });
    }
    let group_result = |name: String, ps: &[&Point]| -> GroupResult {
        let per_country = group(ps.iter().copied(), |p| p.s.country.clone());
        let (mut raw, mut norm, mut uni) = (vec![], vec![], vec![]);
        for cps in per_country.values() {
            let (r, n, u) = corr_set(cps);
            raw.extend(r.map(|c| c.r));
            norm.extend(n.map(|c| c.r));
            uni.extend(u);
        }
        let mut qs: Vec<&str> = ps.iter().map(|p| p.s.question_id.as_str()).collect();
        qs.sort();
        qs.dedup();
        GroupResult {
            cross_country_r: None,
            normalised_ci95: fisher_ci(&norm, &name),
            name,
            n_countries: raw.len(),
            n_questions: qs.len(),
            mean_r_raw: fisher_mean(&raw),
            mean_r_normalised: fisher_mean(&norm),
            uniform_mean_r_raw: fisher_mean(&uni),
        }
    };
    let categories = survey
        .categories()
        .into_iter()
        .filter_map(|cat| {
            let ps: Vec<&Point> = points.iter().filter(|p| p.s.category == cat).collect();
            (!ps.is_empty()).then(|| group_result(cat, &ps))
        })
        .collect();
    let groups = category_groups
        .iter()
        .filter_map(|(name, cats)| {
            let ps: Vec<&Point> = points.iter().filter(|p| cats.contains(&p.s.category)).collect();
            (!ps.is_empty()).then(|| group_result(name.clone(), &ps))
        })
        .collect();
    // Continent aggregates are over whole-country r values, not within-continent questions.
    let mut continents = Vec::new();
    let mut by_continent: BTreeMap<String, Vec<&CountryResult>> = BTreeMap::new();
    for c in &countries {
        by_continent.entry(c.continent.clone()).or_default().push(c);
    }
    for (name, cs) in by_continent {
        let raw: Vec<f64> = cs.iter().filter_map(|c| c.raw.as_ref().map(|x| x.r)).collect();
        let norm: Vec<f64> = cs.iter().filter_map(|c| c.normalised.as_ref().map(|x| x.r)).collect();
        let uni: Vec<f64> = cs.iter().filter_map(|c| c.uniform_raw_r).collect();
        let mut qs: Vec<&str> = points
            .iter()
            .filter(|p| cs.iter().any(|c| c.iso3 == p.s.country))
            .map(|p| p.s.question_id.as_str())
            .collect();
        qs.sort();
        qs.dedup();
        continents.push(GroupResult {
            cross_country_r: None,
            normalised_ci95: fisher_ci(&norm, &name),
            name,
            n_countries: raw.len(),
            n_questions: qs.len(),
            mean_r_raw: fisher_mean(&raw),
            mean_r_normalised: fisher_mean(&norm),
            uniform_mean_r_raw: fisher_mean(&uni),
        });
    }
    let mut questions = Vec::new();
    let by_question = group(&points, |p| p.s.question_id.clone());
    let mut qids: Vec<&String> = by_question.keys().collect();
    qids.sort_by_key(|q| crate::survey::question_sort_key(q));
    for qid in qids {
        let ps = &by_question[qid];
        let m: Vec<f64> = ps.iter().map(|p| p.model_n).collect();
        let h: Vec<f64> = ps.iter().map(|p| p.human_n).collect();
        questions.push(QuestionResult {
            id: qid.clone(),
            category: ps[0].s.category.clone(),
            n_countries: ps.len(),
            cross_country: Corr::of(&m, &h),
            model_spread: std_dev(&m),
            human_spread: std_dev(&h),
        });
    }
    let cross_in = |cats: &[String]| {
        let rs: Vec<f64> = questions
            .iter()
            .filter(|q| cats.contains(&q.category))
            .filter_map(|q| q.cross_country.as_ref().map(|c| c.r))
            .collect();
        fisher_mean(&rs)
    };
    let mut categories: Vec<GroupResult> = categories;
    for g in categories.iter_mut() {
        g.cross_country_r = cross_in(std::slice::from_ref(&g.name));
    }
    let mut groups: Vec<GroupResult> = groups;
    for g in groups.iter_mut() {
        g.cross_country_r = category_groups.get(&g.name).and_then(|cats| cross_in(cats));
    }
    let raw: Vec<f64> = countries.iter().filter_map(|c| c.raw.as_ref().map(|x| x.r)).collect();
    let norm: Vec<f64> = countries.iter().filter_map(|c| c.normalised.as_ref().map(|x| x.r)).collect();
    let uni: Vec<f64> = countries.iter().filter_map(|c| c.uniform_raw_r).collect();
    let cross: Vec<f64> = questions.iter().filter_map(|q| q.cross_country.as_ref().map(|c| c.r)).collect();
    let overall = Overall {
        n_countries: countries.len(),
        n_samples: samples.len(),
        mean_mass: mean(&samples.iter().map(|s| s.mass).collect::<Vec<_>>()).unwrap_or(f64::NAN),
        mean_r_raw: mean(&raw),
        fisher_r_raw: fisher_mean(&raw),
        mean_r_normalised: mean(&norm),
        fisher_r_normalised: fisher_mean(&norm),
        uniform_mean_r_raw: mean(&uni),
        cross_country_r: fisher_mean(&cross),
        cross_country_questions: cross.len(),
        cross_country_positive: cross.iter().filter(|r| **r > 0.0).count(),
        mean_r_normalised_ci95: crate::analysis::correlate::bootstrap(
            norm.len(),
            BOOTSTRAP,
            seed_for("overall"),
            |idx| mean(&idx.iter().map(|&i| norm[i]).collect::<Vec<_>>()),
        )
        .0,
        mean_js_similarity: mean(&countries.iter().filter_map(|c| c.js_similarity).collect::<Vec<_>>()),
        mean_wasserstein: mean(&countries.iter().filter_map(|c| c.wasserstein).collect::<Vec<_>>()),
        mean_spearman: mean(&countries.iter().filter_map(|c| c.spearman).collect::<Vec<_>>()),
        shuffled_r: None,
        mean_blind_r: None,
        mean_persona_effect: None,
    };
    Results {
        schema: SCHEMA.into(),
        model,
        recipe: recipe.into(),
        template: template.into(),
        overall,
        countries,
        categories,
        continents,
        questions,
        groups,
        category_groups: BTreeMap::new(),
        category_groups_source: String::new(),
        templates: vec![],
        orders: String::new(),
        position_bias: vec![],
        order_spread: None,
        references: vec![],
        bias: vec![],
    }
}

/// Bootstrap (over the countries) CI of a Fisher mean of r values.
fn fisher_ci(rs: &[f64], what: &str) -> Option<(f64, f64)> {
    if rs.len() < 2 {
        return None;
    }
    crate::analysis::correlate::bootstrap(rs.len(), BOOTSTRAP, seed_for(&format!("group:{what}")), |idx| {
        fisher_mean(&idx.iter().map(|&i| rs[i]).collect::<Vec<_>>())
    })
    .0
}

/// A fixed seed per bootstrap, so results.json is the same from run to run.
fn seed_for(what: &str) -> u64 {
    crate::util::seed::from_text(&format!("mores-bootstrap:{what}"))
}

fn group<'a, 'b: 'a>(
    points: impl IntoIterator<Item = &'a Point<'b>>,
    key: impl Fn(&Point<'b>) -> String,
) -> BTreeMap<String, Vec<&'a Point<'b>>> {
    let mut m: BTreeMap<String, Vec<&Point>> = BTreeMap::new();
    for p in points {
        m.entry(key(p)).or_default().push(p);
    }
    m
}
