//! The numbers of one set of items (one sample per question and country): per country r (raw and
//! scale-normalised, with a bootstrap CI), per category, category group and continent (Fisher
//! means over countries), per question across countries, and the overall means.
use super::correlate::{bootstrap, fisher_mean, js_similarity, mean, pearson, spearman, wasserstein1, Corr};
use super::results::{CountryResult, GroupResult, Overall, QuestionResult, Results, BOOTSTRAP, SCHEMA};
use crate::probe::Sample;
use crate::survey::{Question, Survey};
use crate::util::manifest::ModelInfo;
use std::collections::BTreeMap;

/// One scored item with the numbers every aggregate reads.
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

/// Bootstrap (over the countries) CI of a Fisher mean of r values.
fn fisher_ci(rs: &[f64], what: &str) -> Option<(f64, f64)> {
    if rs.len() < 2 {
        return None;
    }
    bootstrap(rs.len(), BOOTSTRAP, seed_for(&format!("group:{what}")), |idx| {
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

/// W1 over the options that carry a score (renormalised), positions on the [0, 1] scale.
fn wasserstein(q: &Question, s: &Sample) -> Option<f64> {
    let scored: Vec<usize> = (0..q.options.len()).filter(|&i| q.options[i].score.is_some()).collect();
    let pm: Vec<f64> = scored.iter().map(|&i| s.probs.get(i).copied()).collect::<Option<_>>()?;
    let ph: Vec<f64> = scored.iter().map(|&i| s.human_distribution.get(i).copied()).collect::<Option<_>>()?;
    let (zm, zh) = (pm.iter().sum::<f64>(), ph.iter().sum::<f64>());
    if zm <= 0.0 || zh <= 0.0 {
        return None;
    }
    let at: Vec<f64> = scored.iter().map(|&i| q.normalise(q.options[i].score?)).collect::<Option<_>>()?;
    let pm: Vec<f64> = pm.iter().map(|x| x / zm).collect();
    let ph: Vec<f64> = ph.iter().map(|x| x / zh).collect();
    wasserstein1(&pm, &ph, &at)
}

fn points<'a>(samples: &'a [Sample], survey: &Survey) -> Vec<Point<'a>> {
    let mut points = Vec::new();
    for s in samples {
        let Ok(q) = survey.question(&s.question_id) else { continue };
        let (Some(m), Some(h)) = (s.expected_score, s.human_mean) else { continue };
        let (Some(mn), Some(hn)) = (q.normalise(m), q.normalise(h)) else { continue };
        let uniform = q.expected_score(&vec![1.0; q.options.len()]).expect("scored question");
        let js = js_similarity(&s.probs, &s.human_distribution);
        points.push(Point { s, js, w1: wasserstein(q, s), model: m, human: h, model_n: mn, human_n: hn, uniform });
    }
    points
}

/// Raw r, normalised r and the uniform-answer model's raw r over a set of points.
fn corr_set(ps: &[&Point]) -> (Option<Corr>, Option<Corr>, Option<f64>) {
    let col = |f: &dyn Fn(&Point) -> f64| ps.iter().map(|p| f(p)).collect::<Vec<f64>>();
    let (m, h, mn, hn, u) =
        (col(&|p| p.model), col(&|p| p.human), col(&|p| p.model_n), col(&|p| p.human_n), col(&|p| p.uniform));
    (Corr::of(&m, &h), Corr::of(&mn, &hn), Corr::of(&u, &h).map(|c| c.r))
}

fn country_results(points: &[Point], samples: &[Sample], survey: &Survey) -> Vec<CountryResult> {
    let mut countries = Vec::new();
    for (iso, ps) in &group(points, |p| p.s.country.clone()) {
        let c = survey.country(iso).ok();
        let (raw, normalised, uniform_raw_r) = corr_set(ps);
        let masses: Vec<f64> = samples.iter().filter(|s| &s.country == iso).map(|s| s.mass).collect();
        let mn: Vec<f64> = ps.iter().map(|p| p.model_n).collect();
        let hn: Vec<f64> = ps.iter().map(|p| p.human_n).collect();
        let (normalised_ci95, _) = bootstrap(ps.len(), BOOTSTRAP, seed_for(iso), |idx| {
            let x: Vec<f64> = idx.iter().map(|&i| mn[i]).collect();
            let y: Vec<f64> = idx.iter().map(|&i| hn[i]).collect();
            pearson(&x, &y)
        });
        countries.push(CountryResult {
            baselines: None,
            blind_r: None,
            persona_effect: None,
            normalised_ci95,
            spearman: spearman(&mn, &hn),
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
    countries
}

/// A category or category group: r per country over its questions, Fisher means over countries.
fn group_result(name: String, ps: &[&Point]) -> GroupResult {
    let per_country = group(ps.iter().copied(), |p| p.s.country.clone());
    let (mut raw, mut norm, mut uni) = (vec![], vec![], vec![]);
    for cps in per_country.values() {
        let (r, n, u) = corr_set(cps);
        raw.extend(r.map(|c| c.r));
        norm.extend(n.map(|c| c.r));
        uni.extend(u);
    }
    group_of(name, &raw, &norm, &uni, ps.iter().map(|p| p.s.question_id.as_str()))
}

/// A group's Fisher means (and CI) over its countries' r values; `questions` may repeat.
fn group_of<'a>(
    name: String,
    raw: &[f64],
    norm: &[f64],
    uni: &[f64],
    questions: impl Iterator<Item = &'a str>,
) -> GroupResult {
    let mut qs: Vec<&str> = questions.collect();
    qs.sort();
    qs.dedup();
    GroupResult {
        cross_country_r: None,
        normalised_ci95: fisher_ci(norm, &name),
        name,
        n_countries: raw.len(),
        n_questions: qs.len(),
        mean_r_raw: fisher_mean(raw),
        mean_r_normalised: fisher_mean(norm),
        uniform_mean_r_raw: fisher_mean(uni),
    }
}

/// Continent aggregates are over whole-country r values, not within-continent questions.
fn continent_results(countries: &[CountryResult], points: &[Point]) -> Vec<GroupResult> {
    let mut by_continent: BTreeMap<String, Vec<&CountryResult>> = BTreeMap::new();
    for c in countries {
        by_continent.entry(c.continent.clone()).or_default().push(c);
    }
    let mut continents = Vec::new();
    for (name, cs) in by_continent {
        let raw: Vec<f64> = cs.iter().filter_map(|c| c.raw.as_ref().map(|x| x.r)).collect();
        let norm: Vec<f64> = cs.iter().filter_map(|c| c.normalised.as_ref().map(|x| x.r)).collect();
        let uni: Vec<f64> = cs.iter().filter_map(|c| c.uniform_raw_r).collect();
        let qs = points.iter().filter(|p| cs.iter().any(|c| c.iso3 == p.s.country)).map(|p| p.s.question_id.as_str());
        continents.push(group_of(name, &raw, &norm, &uni, qs));
    }
    continents
}

/// Per question, in questionnaire order: r across countries and both spreads.
fn question_results(points: &[Point]) -> Vec<QuestionResult> {
    let by_question = group(points, |p| p.s.question_id.clone());
    let mut qids: Vec<&String> = by_question.keys().collect();
    qids.sort_by_key(|q| crate::survey::question_sort_key(q));
    qids.into_iter()
        .map(|qid| {
            let ps = &by_question[qid];
            let m: Vec<f64> = ps.iter().map(|p| p.model_n).collect();
            let h: Vec<f64> = ps.iter().map(|p| p.human_n).collect();
            QuestionResult {
                id: qid.clone(),
                category: ps[0].s.category.clone(),
                n_countries: ps.len(),
                cross_country: Corr::of(&m, &h),
                model_spread: std_dev(&m),
                human_spread: std_dev(&h),
            }
        })
        .collect()
}

fn overall(samples: &[Sample], countries: &[CountryResult], questions: &[QuestionResult]) -> Overall {
    let raw: Vec<f64> = countries.iter().filter_map(|c| c.raw.as_ref().map(|x| x.r)).collect();
    let norm: Vec<f64> = countries.iter().filter_map(|c| c.normalised.as_ref().map(|x| x.r)).collect();
    let uni: Vec<f64> = countries.iter().filter_map(|c| c.uniform_raw_r).collect();
    let cross: Vec<f64> = questions.iter().filter_map(|q| q.cross_country.as_ref().map(|c| c.r)).collect();
    let over_countries =
        |f: &dyn Fn(&CountryResult) -> Option<f64>| mean(&countries.iter().filter_map(f).collect::<Vec<_>>());
    Overall {
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
        mean_r_normalised_ci95: bootstrap(norm.len(), BOOTSTRAP, seed_for("overall"), |idx| {
            mean(&idx.iter().map(|&i| norm[i]).collect::<Vec<_>>())
        })
        .0,
        mean_js_similarity: over_countries(&|c| c.js_similarity),
        mean_wasserstein: over_countries(&|c| c.wasserstein),
        mean_spearman: over_countries(&|c| c.spearman),
        shuffled_r: None,
        mean_blind_r: None,
        mean_persona_effect: None,
    }
}

pub(super) fn compute_items(
    samples: &[Sample],
    survey: &Survey,
    model: ModelInfo,
    recipe: &str,
    template: &str,
    category_groups: &BTreeMap<String, Vec<String>>,
) -> Results {
    let points = points(samples, survey);
    let countries = country_results(&points, samples, survey);
    let questions = question_results(&points);
    let cross_in = |cats: &[String]| {
        let rs: Vec<f64> = questions
            .iter()
            .filter(|q| cats.contains(&q.category))
            .filter_map(|q| q.cross_country.as_ref().map(|c| c.r))
            .collect();
        fisher_mean(&rs)
    };
    let in_cats = |cats: &[String], name: String| {
        let ps: Vec<&Point> = points.iter().filter(|p| cats.contains(&p.s.category)).collect();
        (!ps.is_empty()).then(|| GroupResult { cross_country_r: cross_in(cats), ..group_result(name, &ps) })
    };
    let categories =
        survey.categories().into_iter().filter_map(|cat| in_cats(std::slice::from_ref(&cat), cat.clone())).collect();
    let groups = category_groups.iter().filter_map(|(name, cats)| in_cats(cats, name.clone())).collect();
    Results {
        schema: SCHEMA.into(),
        model,
        recipe: recipe.into(),
        template: template.into(),
        overall: overall(samples, &countries, &questions),
        continents: continent_results(&countries, &points),
        countries,
        categories,
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
