//! What an r means depends on what it is compared with. From the data alone: each country's
//! humans used as "the model" for another country (the reference-country baseline); from the
//! model's own scores: its answers for persona X scored against country Y's humans (the
//! shuffled-country baseline, and which country a persona matches best: the western-bias table).
//! All on scale-normalised scores, so question scales cannot inflate them.
use crate::analysis::correlate::{fisher_mean, pearson};
use crate::survey::Survey;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Fewer common questions than this and a cross-country r is not computed.
pub const MIN_COMMON: usize = 10;

/// question id -> normalised score, per country.
pub type Scores = BTreeMap<String, BTreeMap<String, f64>>;

/// Normalised human means for every country and scored question in the survey.
pub fn human_scores(survey: &Survey) -> Scores {
    let mut out: Scores = BTreeMap::new();
    for iso in survey.countries.keys() {
        let m = out.entry(iso.clone()).or_default();
        for q in survey.questions_for(iso) {
            if let Some(v) = survey.answers(&q.id, iso).and_then(|h| h.mean).and_then(|h| q.normalise(h)) {
                m.insert(q.id.clone(), v);
            }
        }
    }
    out.retain(|_, m| !m.is_empty());
    out
}

/// Pearson r over the questions both maps have (None under [`MIN_COMMON`]).
pub fn r_common(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> Option<f64> {
    r_common_min(a, b, MIN_COMMON)
}

fn r_common_min(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>, min: usize) -> Option<f64> {
    let (x, y): (Vec<f64>, Vec<f64>) = a.iter().filter_map(|(q, va)| b.get(q).map(|vb| (*va, *vb))).unzip();
    (x.len() >= min).then(|| pearson(&x, &y)).flatten()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CountryBaselines {
    /// Fisher mean over other countries Y of r(model as X, humans of Y).
    pub shuffled_r: Option<f64>,
    /// The country whose humans the model's answers for this persona match best, and that r.
    pub best_match: Option<String>,
    pub best_match_r: Option<f64>,
    /// Rank of the persona's own country among all candidates (1 = best), and how many there were.
    pub own_rank: Option<usize>,
    pub candidates: usize,
}

/// A candidate country must share at least half of the persona's questions (and
/// [`MIN_COMMON`]): an r over a handful of questions is noisy enough to win "best match" by chance.
pub fn for_persona(iso: &str, model: &BTreeMap<String, f64>, humans: &Scores) -> CountryBaselines {
    let need = MIN_COMMON.max(model.len().div_ceil(2));
    let rs: Vec<(&String, f64)> =
        humans.iter().filter_map(|(y, h)| r_common_min(model, h, need).map(|r| (y, r))).collect();
    let others: Vec<f64> = rs.iter().filter(|(y, _)| y.as_str() != iso).map(|(_, r)| *r).collect();
    let best = rs.iter().max_by(|a, b| a.1.total_cmp(&b.1));
    let own = rs.iter().find(|(y, _)| y.as_str() == iso).map(|(_, r)| *r);
    CountryBaselines {
        shuffled_r: fisher_mean(&others),
        best_match: best.map(|b| b.0.clone()),
        best_match_r: best.map(|b| b.1),
        own_rank: own.map(|o| 1 + rs.iter().filter(|(_, r)| *r > o).count()),
        candidates: rs.len(),
    }
}

/// USA, then each continent's country with the most scored questions (ties: ISO3 order).
pub fn reference_countries(survey: &Survey, humans: &Scores) -> Vec<String> {
    let mut out = Vec::new();
    if humans.contains_key("USA") {
        out.push("USA".to_string());
    }
    let mut best: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (iso, m) in humans {
        let Ok(c) = survey.country(iso) else { continue };
        let e = best.entry(c.continent.clone()).or_insert((0, String::new()));
        if m.len() > e.0 {
            *e = (m.len(), iso.clone());
        }
    }
    for (_, (_, iso)) in best {
        if !out.contains(&iso) {
            out.push(iso);
        }
    }
    out
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reference {
    pub iso3: String,
    pub continent: String,
    /// r(humans of this country, humans of X) for each other probed country X.
    pub per_country: BTreeMap<String, f64>,
    /// Fisher mean of `per_country`.
    pub mean_r: Option<f64>,
}

pub fn references(survey: &Survey, humans: &Scores, countries: &[String]) -> Vec<Reference> {
    reference_countries(survey, humans)
        .into_iter()
        .map(|r| {
            let per_country: BTreeMap<String, f64> = countries
                .iter()
                .filter(|x| **x != r)
                .filter_map(|x| Some((x.clone(), r_common(&humans[&r], humans.get(x)?)?)))
                .collect();
            let mean_r = fisher_mean(&per_country.values().copied().collect::<Vec<_>>());
            let continent = survey.country(&r).map(|c| c.continent.clone()).unwrap_or_default();
            Reference { iso3: r, continent, per_country, mean_r }
        })
        .collect()
}

/// Per continent of the persona: where the best matches land.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BiasRow {
    pub continent: String,
    pub personas: usize,
    /// Personas whose best match is their own country.
    pub own_best: usize,
    /// Best-match country -> how many personas of this continent it won.
    pub best_matches: BTreeMap<String, usize>,
    /// Best-match continent -> count.
    pub best_continents: BTreeMap<String, usize>,
}

pub fn bias_table(survey: &Survey, per_country: &[(String, CountryBaselines)]) -> Vec<BiasRow> {
    let continent = |iso: &str| survey.country(iso).map(|c| c.continent.clone()).unwrap_or_default();
    let mut rows: BTreeMap<String, BiasRow> = BTreeMap::new();
    for (iso, b) in per_country {
        let Some(best) = &b.best_match else { continue };
        let c = continent(iso);
        let row = rows.entry(c.clone()).or_insert_with(|| BiasRow {
            continent: c,
            personas: 0,
            own_best: 0,
            best_matches: BTreeMap::new(),
            best_continents: BTreeMap::new(),
        });
        row.personas += 1;
        row.own_best += usize::from(best == iso);
        *row.best_matches.entry(best.clone()).or_default() += 1;
        *row.best_continents.entry(continent(best)).or_default() += 1;
    }
    rows.into_values().collect()
}
