//! References scored on the same (question, country) pairs as the student, so each number in the
//! report has a yardstick:
//! - *typical answer*: every country gets the question's mean human distribution over the probed
//!   countries. It knows nothing about countries (cross-country r undefined, spread 0) and is an
//!   oracle (it reads the held-out humans): the ceiling of question-level knowledge within
//!   countries.
//! - *lexical neighbour*, from two pools: the whole training split, and only the questions the
//!   student's training data was made from (the distinct source questions of the dataset's
//!   records, less any question the training holds out whole for validation). For each
//!   question, the pool question most similar in words (TF-IDF cosine over question text and
//!   option labels) lends its human country profile as the prediction: what analogy from that
//!   pool alone reaches across countries.
//! - *k neighbours, z-scored*, from the same two pools: the k most similar pool questions' human
//!   profiles, z-scored across countries and averaged (see `neighbour.rs`). It predicts the order
//!   of countries only, so its question-level (within-country) r, and its persona spread, are
//!   not meaningful and are left out: it is reported at the country level only.
//! - the teacher, probed like the student.
//!
//! The student's own rows (before, after) are computed by the same rule, so the table compares like
//! with like. Every row's cross-country r carries a bootstrap CI over questions, and every
//! reference row the student after minus it, with a paired bootstrap CI over the same questions.
use super::country::{cross_by_question, profile, Profile};
use super::neighbour::{lexical, questions_of, ranked_neighbours, z_scored, Ranked};
use super::pairs::{delta_boot, seed_of, Delta, Pair, Samples};
use super::Inputs;
use crate::analysis::correlate::fisher_mean;
use crate::survey::Survey;
use crate::util::error::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The lexical neighbour over the whole training split.
pub const LEXICAL_SPLIT: &str = "lexical neighbour (training split)";
/// The lexical neighbour over the student's training questions only.
pub const LEXICAL_TRAINED: &str = "lexical neighbour (student's questions)";

/// The name of the k-neighbour row over a pool ("training split" or "student's questions").
pub fn k_name(k: usize, pool: &str) -> String {
    format!("{k} neighbours z-scored ({pool})")
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reference {
    pub name: String,
    #[serde(flatten)]
    pub profile: Profile,
    /// 95% CI of `cross_r`: bootstrap over questions of the Fisher mean of their cross-country r.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_r_ci95: Option<(f64, f64)>,
    /// The student after training minus this row in cross-country r: Fisher means over the
    /// questions both have an r for, with a paired bootstrap CI over those questions (each
    /// resample draws the same questions for both). Absent on the student's own rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_minus_reference: Option<Delta>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Neighbour {
    pub question: String,
    pub neighbour: String,
    pub similarity: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct References {
    pub rows: Vec<Reference>,
    /// The nearest training-split question of each question (its first choice; a country that
    /// did not answer it takes the next nearest it answered).
    pub neighbours: Vec<Neighbour>,
    /// The same over the student's training questions only (empty when the dataset names no
    /// source questions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub neighbours_trained: Vec<Neighbour>,
}

/// Per pair, a predicted normalised score and the distribution it comes from.
type Predictions = (Vec<Option<f64>>, Vec<Vec<f64>>);

/// Predictions of the typical-answer reference: per pair, the expected score of the mean human
/// distribution over the pairs of its question, and that distribution.
fn typical(pairs: &[Pair], survey: &Survey) -> Result<Predictions> {
    let mut sums: BTreeMap<&str, (Vec<f64>, usize)> = BTreeMap::new();
    for p in pairs {
        let e = sums.entry(p.q.as_str()).or_insert_with(|| (vec![0.0; p.human.len()], 0));
        if e.0.len() == p.human.len() {
            e.0.iter_mut().zip(&p.human).for_each(|(s, h)| *s += h);
            e.1 += 1;
        }
    }
    let mut preds = Vec::with_capacity(pairs.len());
    let mut dists = Vec::with_capacity(pairs.len());
    for p in pairs {
        let (s, n) = &sums[p.q.as_str()];
        let dist: Vec<f64> = s.iter().map(|x| x / *n as f64).collect();
        let q = survey.question(&p.q)?;
        preds.push(q.expected_score(&dist).and_then(|x| q.normalise(x)));
        dists.push(dist);
    }
    Ok((preds, dists))
}

fn first_choices(qs: &[String], ranked: &Ranked) -> Vec<Neighbour> {
    qs.iter()
        .filter_map(|q| {
            let (n, s) = ranked[q].first()?;
            Some(Neighbour { question: q.clone(), neighbour: n.clone(), similarity: *s })
        })
        .collect()
}

/// One predictor's row: its profile, the CI of its cross-country r and, unless it is the student
/// itself, the student after minus it.
struct Rows<'a> {
    pairs: &'a [Pair],
    inp: &'a Inputs<'a>,
    tag: &'a str,
    after: BTreeMap<&'a str, f64>,
    rows: Vec<Reference>,
}

impl<'a> Rows<'a> {
    fn push<'d>(
        &mut self,
        name: &str,
        pred: impl Fn(usize) -> Option<f64>,
        dist: impl Fn(usize) -> Option<&'d [f64]>,
        country_only: bool,
        student: bool,
    ) {
        let (pairs, min, reps, seed) = (self.pairs, self.inp.min_countries, self.inp.bootstrap, self.inp.seed);
        let mut p = profile(pairs, min, &pred, dist);
        if country_only {
            p.within_r = None;
            p.spread = None;
        }
        let cross = cross_by_question(pairs, min, &pred);
        let rs: Vec<f64> = cross.values().copied().collect();
        let ci_seed = seed_of(seed, &format!("{}-ref-{name}", self.tag));
        let ci =
            delta_boot(rs.len(), 0, reps, ci_seed, |idx| fisher_mean(&idx.iter().map(|&i| rs[i]).collect::<Vec<_>>()));
        let diff = (!student).then(|| {
            let both: Vec<(f64, f64)> = cross.iter().filter_map(|(q, r)| Some((*self.after.get(q)?, *r))).collect();
            let diff_seed = seed_of(seed, &format!("{}-after-minus-{name}", self.tag));
            delta_boot(both.len(), 0, reps, diff_seed, |idx| {
                let a: Vec<f64> = idx.iter().map(|&i| both[i].0).collect();
                let r: Vec<f64> = idx.iter().map(|&i| both[i].1).collect();
                Some(fisher_mean(&a)? - fisher_mean(&r)?)
            })
        });
        let diff = diff.filter(|d| d.value.is_some());
        self.rows.push(Reference { name: name.into(), profile: p, cross_r_ci95: ci.ci95, after_minus_reference: diff });
    }

    /// The lexical neighbour and k-neighbour rows over one pool.
    fn pool(&mut self, ranked: &Ranked, lexical_name: &str, pool: &str) {
        let (pairs, survey) = (self.pairs, self.inp.survey);
        let lex = lexical(pairs, survey, ranked);
        self.push(lexical_name, |i| lex[i], |_| None, false, false);
        let z = z_scored(pairs, survey, ranked, self.inp.neighbours);
        self.push(&k_name(self.inp.neighbours, pool), |i| z[i], |_| None, true, false);
    }
}

pub fn compute(pairs: &[Pair], inp: &Inputs, teacher: Option<&Samples>, tag: &str) -> Result<References> {
    let survey = inp.survey;
    let (typ, typ_dist) = typical(pairs, survey)?;
    let after = cross_by_question(pairs, inp.min_countries, |i| Some(pairs[i].a));
    let mut rows = Rows { pairs, inp, tag, after, rows: Vec::new() };
    rows.push("student before", |i| Some(pairs[i].b), |i| Some(&pairs[i].probs_b), false, true);
    rows.push("student after", |i| Some(pairs[i].a), |i| Some(&pairs[i].probs_a), false, true);
    rows.push("typical answer", |i| typ[i], |i| Some(&typ_dist[i]), false, false);
    let qs = questions_of(pairs);
    let mut neighbours = Vec::new();
    let mut neighbours_trained = Vec::new();
    if !inp.train_split.is_empty() {
        let ranked = ranked_neighbours(survey, &qs, inp.train_split)?;
        rows.pool(&ranked, LEXICAL_SPLIT, "training split");
        neighbours = first_choices(&qs, &ranked);
    }
    if !inp.trained.is_empty() {
        let ranked = ranked_neighbours(survey, &qs, inp.trained)?;
        rows.pool(&ranked, LEXICAL_TRAINED, "student's questions");
        neighbours_trained = first_choices(&qs, &ranked);
    }
    if let Some(t) = teacher {
        let dist: Vec<Option<&[f64]>> =
            pairs.iter().map(|p| t.get(&(p.q.clone(), p.c.clone())).map(|s| s.probs.as_slice())).collect();
        rows.push("teacher", |i| pairs[i].t, |i| dist[i], false, false);
    }
    Ok(References { rows: rows.rows, neighbours, neighbours_trained })
}
