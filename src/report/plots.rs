//! The probe's figures (SVG, in OUT/plots/): human vs model scores per category across countries
//! (the paper's Fig. 1), mean r per continent with CIs (Fig. 2/3), model vs human for one
//! country, and one question across countries. Chat vs base side by side is `mores compare`'s.
use crate::analysis::results::Results;
use crate::probe::Sample;
use crate::report::svg::{self, Bar};
use crate::survey::Survey;
use crate::util::error::Result;
use std::collections::BTreeMap;
use std::path::Path;

/// The country shown in the scatter: most scored questions (ties: ISO3 order).
fn scatter_country(r: &Results) -> Option<&str> {
    r.countries.iter().rev().max_by_key(|c| c.n).map(|c| c.iso3.as_str())
}

/// The question shown across countries: asked in the most countries, then the largest human spread.
fn showcase_question(r: &Results) -> Option<&str> {
    r.questions
        .iter()
        .filter(|q| q.n_countries >= 3)
        .max_by(|a, b| a.n_countries.cmp(&b.n_countries).then(a.human_spread.total_cmp(&b.human_spread)))
        .map(|q| q.id.as_str())
}

/// (file name, what it shows) for every figure `write` produces for these results.
pub fn files(r: &Results) -> Vec<(String, String)> {
    let mut out = vec![
        ("categories.svg".to_string(), "scores by category".to_string()),
        ("continents.svg".to_string(), "r by continent".to_string()),
    ];
    if let Some(c) = scatter_country(r) {
        out.push((format!("scatter-{c}.svg"), format!("model vs human, {c}")));
    }
    if let Some(q) = showcase_question(r) {
        out.push((format!("question-{q}.svg"), format!("{q} across countries")));
    }
    out
}

pub fn write(dir: &Path, r: &Results, items: &[Sample], survey: &Survey) -> Result<()> {
    let dir = dir.join("plots");
    std::fs::create_dir_all(&dir).map_err(|e| crate::util::error::Error::io(&dir, e))?;
    // (category, country) -> normalised (model, human) per question.
    let mut by_cat: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    let mut norm = Vec::new();
    for s in items {
        let Ok(q) = survey.question(&s.question_id) else { continue };
        let (Some(m), Some(h)) =
            (s.expected_score.and_then(|e| q.normalise(e)), s.human_mean.and_then(|h| q.normalise(h)))
        else {
            continue;
        };
        by_cat.entry((s.category.clone(), s.country.clone())).or_default().push((m, h));
        norm.push((s, m, h));
    }
    // The survey's categories in its order, then any other category the samples name (a
    // samples file from other survey data).
    let mut cats: Vec<String> = survey.categories().into_iter().filter(|c| by_cat.keys().any(|k| &k.0 == c)).collect();
    for (cat, _) in by_cat.keys() {
        if !cats.contains(cat) {
            cats.push(cat.clone());
        }
    }
    let mut model_boxes = vec![vec![]; cats.len()];
    let mut human_boxes = vec![vec![]; cats.len()];
    for ((cat, _), v) in &by_cat {
        let i = cats.iter().position(|c| c == cat).expect("listed above");
        let n = v.len() as f64;
        model_boxes[i].push(v.iter().map(|p| p.0).sum::<f64>() / n);
        human_boxes[i].push(v.iter().map(|p| p.1).sum::<f64>() / n);
    }
    svg::boxplots(
        &dir.join("categories.svg"),
        &format!("{}: mean score per country by category (0-1 scale)", r.model.name),
        "country mean of normalised scores",
        &cats,
        &["humans".to_string(), "model".to_string()],
        &[human_boxes, model_boxes],
    )?;
    let continents: Vec<String> = r.continents.iter().map(|c| format!("{} ({})", c.name, c.n_countries)).collect();
    let vals: Vec<Bar> =
        r.continents.iter().map(|c| Bar { value: c.mean_r_normalised, ci: c.normalised_ci95 }).collect();
    svg::bars(
        &dir.join("continents.svg"),
        &format!("{}: mean normalised r per continent, 95% CI over countries", r.model.name),
        "Fisher mean of per-country Pearson r (scale-normalised)",
        &continents,
        std::slice::from_ref(&r.model.name),
        &[vals],
    )?;
    if let Some(c) = scatter_country(r) {
        let pts: Vec<(f64, f64)> = norm.iter().filter(|p| p.0.country == c).map(|p| (p.2, p.1)).collect();
        let rr = r.countries.iter().find(|x| x.iso3 == c).and_then(|x| x.normalised.as_ref()).map(|x| x.r);
        svg::scatter(
            &dir.join(format!("scatter-{c}.svg")),
            &format!("{c}: {} questions, normalised r = {}", pts.len(), crate::util::fmt::f(rr)),
            "human mean (0-1)",
            "model expected score (0-1)",
            &pts,
        )?;
    }
    if let Some(qid) = showcase_question(r) {
        let rows: Vec<(String, f64, f64)> =
            norm.iter().filter(|p| p.0.question_id == qid).map(|p| (p.0.country.clone(), p.2, p.1)).collect();
        let text = survey.question(qid).map(|q| q.label.clone()).unwrap_or_default();
        svg::dumbbell(
            &dir.join(format!("question-{qid}.svg")),
            &format!("{qid} ({text}) across countries"),
            "score (0-1 scale)",
            ("humans", "model"),
            &rows,
        )?;
    }
    Ok(())
}
