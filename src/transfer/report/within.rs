//! Question-level numbers: per country, r across questions between the student's and the humans'
//! scores, before and after. A shift toward each question's typical answer raises them in every
//! country at once, so they cannot tell country knowledge from question knowledge (see
//! `country.rs` for that).
use super::pairs::{delta_boot, r_of, seed_of, Delta, Pair, MIN_CI_POINTS, MIN_R_CI_POINTS};
use crate::analysis::correlate::{fisher_mean, mean};
use crate::survey::Survey;
use crate::util::error::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CountryDelta {
    pub iso3: String,
    pub continent: String,
    pub n_questions: usize,
    pub r_before_raw: Option<f64>,
    pub r_after_raw: Option<f64>,
    pub r_before: Option<f64>,
    pub r_after: Option<f64>,
    /// Change in scale-normalised r.
    pub delta: Delta,
    pub js_before: Option<f64>,
    pub js_after: Option<f64>,
    pub delta_js: Delta,
    pub r_teacher: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupDelta {
    pub name: String,
    pub n: usize,
    pub r_before: Option<f64>,
    pub r_after: Option<f64>,
    pub delta: Delta,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QuestionLevel {
    pub mean_r_before_raw: Option<f64>,
    pub mean_r_after_raw: Option<f64>,
    pub mean_r_before: Option<f64>,
    pub mean_r_after: Option<f64>,
    pub mean_r_teacher: Option<f64>,
    /// Mean over countries of the change in normalised r; CI from a bootstrap over countries.
    pub mean_delta: Delta,
    pub mean_delta_raw: Delta,
    pub mean_delta_js: Delta,
    pub js_before: Option<f64>,
    pub js_after: Option<f64>,
    pub share_improved: Option<f64>,
    pub countries: Vec<CountryDelta>,
    pub continents: Vec<GroupDelta>,
    pub categories: Vec<GroupDelta>,
}

fn country(c: &str, ps: &[&Pair], s: &Survey, reps: usize, seed: u64, tag: &str) -> CountryDelta {
    let n = ps.len();
    let all: Vec<usize> = (0..n).collect();
    let d = delta_boot(n, MIN_R_CI_POINTS, reps, seed_of(seed, &format!("{tag}-{c}")), |idx| {
        Some(r_of(ps, idx, |p| p.a, |p| p.h)? - r_of(ps, idx, |p| p.b, |p| p.h)?)
    });
    let djs = delta_boot(n, MIN_CI_POINTS, reps, seed_of(seed, &format!("{tag}-js-{c}")), |idx| {
        let a: Vec<f64> = idx.iter().map(|&i| ps[i].js_a).collect();
        let b: Vec<f64> = idx.iter().map(|&i| ps[i].js_b).collect();
        Some(mean(&a)? - mean(&b)?)
    });
    let teach: Vec<&Pair> = ps.iter().copied().filter(|p| p.t.is_some()).collect();
    let tall: Vec<usize> = (0..teach.len()).collect();
    CountryDelta {
        iso3: c.to_string(),
        continent: s.country(c).map(|x| x.continent.clone()).unwrap_or_default(),
        n_questions: n,
        r_before_raw: r_of(ps, &all, |p| p.b_raw, |p| p.h_raw),
        r_after_raw: r_of(ps, &all, |p| p.a_raw, |p| p.h_raw),
        r_before: r_of(ps, &all, |p| p.b, |p| p.h),
        r_after: r_of(ps, &all, |p| p.a, |p| p.h),
        delta: d,
        js_before: mean(&ps.iter().map(|p| p.js_b).collect::<Vec<_>>()),
        js_after: mean(&ps.iter().map(|p| p.js_a).collect::<Vec<_>>()),
        delta_js: djs,
        r_teacher: r_of(&teach, &tall, |p| p.t.unwrap_or(f64::NAN), |p| p.h),
    }
}

/// Per continent: the mean of its countries' changes, CI over countries.
fn continents(countries: &[CountryDelta], reps: usize, seed: u64, tag: &str) -> Vec<GroupDelta> {
    let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for c in countries {
        if let Some(d) = c.delta.value {
            by.entry(c.continent.clone()).or_default().push(d);
        }
    }
    by.into_iter()
        .map(|(name, ds)| {
            let n = ds.len();
            let d = delta_boot(n, MIN_CI_POINTS, reps, seed_of(seed, &format!("{tag}-cont-{name}")), |idx| {
                mean(&idx.iter().map(|&i| ds[i]).collect::<Vec<_>>())
            });
            let members: Vec<&CountryDelta> = countries.iter().filter(|c| c.continent == name).collect();
            GroupDelta {
                name,
                n,
                r_before: fisher_mean(&members.iter().filter_map(|c| c.r_before).collect::<Vec<_>>()),
                r_after: fisher_mean(&members.iter().filter_map(|c| c.r_after).collect::<Vec<_>>()),
                delta: d,
            }
        })
        .collect()
}

/// Per category: (country, question) pairs pooled, normalised scores against human means.
fn categories(pairs: &[Pair], s: &Survey, reps: usize, seed: u64, tag: &str) -> Result<Vec<GroupDelta>> {
    let mut by: BTreeMap<String, Vec<&Pair>> = BTreeMap::new();
    for p in pairs {
        by.entry(s.question(&p.q)?.category.clone()).or_default().push(p);
    }
    Ok(by
        .into_iter()
        .map(|(name, ps)| {
            let all: Vec<usize> = (0..ps.len()).collect();
            let d = delta_boot(ps.len(), MIN_R_CI_POINTS, reps, seed_of(seed, &format!("{tag}-cat-{name}")), |idx| {
                Some(r_of(&ps, idx, |p| p.a, |p| p.h)? - r_of(&ps, idx, |p| p.b, |p| p.h)?)
            });
            GroupDelta {
                name,
                n: ps.len(),
                r_before: r_of(&ps, &all, |p| p.b, |p| p.h),
                r_after: r_of(&ps, &all, |p| p.a, |p| p.h),
                delta: d,
            }
        })
        .collect())
}

pub fn compute(pairs: &[Pair], s: &Survey, reps: usize, seed: u64, tag: &str) -> Result<QuestionLevel> {
    let mut by_country: BTreeMap<&str, Vec<&Pair>> = BTreeMap::new();
    for p in pairs {
        by_country.entry(p.c.as_str()).or_default().push(p);
    }
    let countries: Vec<CountryDelta> = by_country.iter().map(|(c, ps)| country(c, ps, s, reps, seed, tag)).collect();
    let vals = |g: &dyn Fn(&CountryDelta) -> Option<f64>| -> Vec<f64> { countries.iter().filter_map(g).collect() };
    let over_countries = |g: &dyn Fn(&CountryDelta) -> Option<f64>, what: &str| -> Delta {
        let v = vals(g);
        delta_boot(v.len(), MIN_CI_POINTS, reps, seed_of(seed, &format!("{tag}-mean-{what}")), |idx| {
            mean(&idx.iter().map(|&i| v[i]).collect::<Vec<_>>())
        })
    };
    let improved = vals(&|c| c.delta.value);
    Ok(QuestionLevel {
        mean_r_before_raw: fisher_mean(&vals(&|c| c.r_before_raw)),
        mean_r_after_raw: fisher_mean(&vals(&|c| c.r_after_raw)),
        mean_r_before: fisher_mean(&vals(&|c| c.r_before)),
        mean_r_after: fisher_mean(&vals(&|c| c.r_after)),
        mean_r_teacher: fisher_mean(&vals(&|c| c.r_teacher)),
        mean_delta: over_countries(&|c| c.delta.value, "norm"),
        mean_delta_raw: over_countries(&|c| Some(c.r_after_raw? - c.r_before_raw?), "raw"),
        mean_delta_js: over_countries(&|c| c.delta_js.value, "js"),
        js_before: mean(&vals(&|c| c.js_before)),
        js_after: mean(&vals(&|c| c.js_after)),
        share_improved: (!improved.is_empty())
            .then(|| improved.iter().filter(|d| **d > 0.0).count() as f64 / improved.len() as f64),
        continents: continents(&countries, reps, seed, tag),
        categories: categories(pairs, s, reps, seed, tag)?,
        countries,
    })
}
