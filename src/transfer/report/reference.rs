//! References scored on the same (question, country) pairs as the student, so each number in the
//! report has a yardstick:
//! - *typical answer*: every country gets the question's mean human distribution over the probed
//!   countries. It knows nothing about countries (cross-country r undefined, spread 0) and is an
//!   oracle (it reads the held-out humans): the ceiling of question-level knowledge within
//!   countries.
//! - *lexical neighbour*: for each question, the training-split question most similar in words
//!   (TF-IDF cosine over question text and option labels), and its human country profile as the
//!   prediction: what analogy from the training data alone reaches across countries.
//! - the teacher, probed like the student.
//!
//! The student's own rows (before, after) are computed by the same rule, so the table compares like
//! with like.
use super::country::{profile, Profile};
use super::pairs::{Pair, Samples};
use crate::survey::{Question, Survey};
use crate::util::error::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reference {
    pub name: String,
    #[serde(flatten)]
    pub profile: Profile,
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
    /// The nearest training question of each question (its first choice; a country that did not
    /// answer it takes the next nearest it answered).
    pub neighbours: Vec<Neighbour>,
}

/// Lower-case alphanumeric words.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(|w| w.to_lowercase()).collect()
}

fn document(q: &Question) -> Vec<String> {
    let mut w = words(&q.text);
    for o in &q.options {
        w.extend(words(&o.label));
    }
    w
}

/// L2-normalised TF-IDF vectors (idf = ln((1 + N) / (1 + df)) + 1, as scikit-learn smooths it).
/// Ordered maps: the norm's and the cosine's sums run in word order, so a similarity has the same
/// bits in every run (a HashMap's per-process order moved them in the last digit).
fn tfidf(docs: &[Vec<String>]) -> Vec<BTreeMap<String, f64>> {
    let mut df: BTreeMap<&str, usize> = BTreeMap::new();
    for d in docs {
        let mut seen: Vec<&str> = d.iter().map(|s| s.as_str()).collect();
        seen.sort_unstable();
        seen.dedup();
        for w in seen {
            *df.entry(w).or_default() += 1;
        }
    }
    let n = docs.len() as f64;
    docs.iter()
        .map(|d| {
            let mut v: BTreeMap<String, f64> = BTreeMap::new();
            for w in d {
                *v.entry(w.clone()).or_default() += 1.0;
            }
            for (w, x) in v.iter_mut() {
                *x *= ((1.0 + n) / (1.0 + df[w.as_str()] as f64)).ln() + 1.0;
            }
            let norm = v.values().map(|x| x * x).sum::<f64>().sqrt();
            if norm > 0.0 {
                v.values_mut().for_each(|x| *x /= norm);
            }
            v
        })
        .collect()
}

fn cosine(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> f64 {
    a.iter().map(|(w, x)| x * b.get(w).copied().unwrap_or(0.0)).sum()
}

/// For each of `targets`, the `pool` questions ranked by TF-IDF cosine (ties in questionnaire order).
pub fn ranked_neighbours(
    survey: &Survey,
    targets: &[String],
    pool: &[String],
) -> Result<BTreeMap<String, Vec<(String, f64)>>> {
    let all: Vec<&String> = pool.iter().chain(targets).collect();
    let docs: Vec<Vec<String>> = all.iter().map(|q| Ok(document(survey.question(q)?))).collect::<Result<_>>()?;
    let vecs = tfidf(&docs);
    let mut out = BTreeMap::new();
    for (ti, t) in targets.iter().enumerate() {
        let tv = &vecs[pool.len() + ti];
        let mut ranked: Vec<(String, f64)> =
            pool.iter().enumerate().filter(|(_, p)| *p != t).map(|(i, p)| (p.clone(), cosine(tv, &vecs[i]))).collect();
        ranked.sort_by(|x, y| {
            y.1.total_cmp(&x.1)
                .then_with(|| crate::survey::question_sort_key(&x.0).cmp(&crate::survey::question_sort_key(&y.0)))
        });
        out.insert(t.clone(), ranked);
    }
    Ok(out)
}

/// A country's normalised human mean on a question, when it answered it.
fn human_norm(survey: &Survey, q: &str, c: &str) -> Option<f64> {
    let question = survey.question(q).ok()?;
    question.normalise(survey.answers(q, c)?.mean?)
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

pub fn compute(
    pairs: &[Pair],
    survey: &Survey,
    train_split: &[String],
    teacher: Option<&Samples>,
    min: usize,
) -> Result<References> {
    let (typ, typ_dist) = typical(pairs, survey)?;
    let row = |name: &str, profile: Profile| Reference { name: name.into(), profile };
    let mut rows = vec![
        row("student before", profile(pairs, min, |i| Some(pairs[i].b), |i| Some(&pairs[i].probs_b))),
        row("student after", profile(pairs, min, |i| Some(pairs[i].a), |i| Some(&pairs[i].probs_a))),
        row("typical answer", profile(pairs, min, |i| typ[i], |i| Some(&typ_dist[i]))),
    ];
    let mut neighbours = Vec::new();
    if !train_split.is_empty() {
        let mut qs: Vec<String> = pairs.iter().map(|p| p.q.clone()).collect();
        qs.sort_by_key(|q| crate::survey::question_sort_key(q));
        qs.dedup();
        let ranked = ranked_neighbours(survey, &qs, train_split)?;
        let lex: Vec<Option<f64>> =
            pairs.iter().map(|p| ranked[&p.q].iter().find_map(|(n, _)| human_norm(survey, n, &p.c))).collect();
        rows.push(row("lexical neighbour", profile(pairs, min, |i| lex[i], |_| None)));
        neighbours = qs
            .iter()
            .filter_map(|q| {
                let (n, s) = ranked[q].first()?;
                Some(Neighbour { question: q.clone(), neighbour: n.clone(), similarity: *s })
            })
            .collect();
    }
    if let Some(t) = teacher {
        let dist: Vec<Option<&[f64]>> =
            pairs.iter().map(|p| t.get(&(p.q.clone(), p.c.clone())).map(|s| s.probs.as_slice())).collect();
        rows.push(row("teacher", profile(pairs, min, |i| pairs[i].t, |i| dist[i])));
    }
    Ok(References { rows, neighbours })
}
