//! A probe's results end to end: the items' aggregates, then what needs every sample (option
//! orders, templates, position bias) and the baselines each number is read against.
use super::aggregate::compute_items;
use super::baseline;
use super::combine;
use super::correlate::{fisher_mean, mean};
use super::results::{Results, TemplateSummary};
use crate::probe::Sample;
use crate::recipe::ProbeRecipe;
use crate::survey::Survey;
use crate::util::error::Result;
use crate::util::manifest::ModelInfo;
use std::collections::BTreeMap;

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
