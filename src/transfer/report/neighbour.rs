//! Predictions borrowed from similar questions: TF-IDF word similarity (question text and option
//! labels) ranks a pool of questions for each question, and the nearest ones lend their human
//! country profiles.
//! - *lexical neighbour*: per country, the normalised human mean of the nearest pool question
//!   that country answered. It predicts scores, so it counts at both levels.
//! - *k neighbours, z-scored*: the k nearest pool questions' human profiles, each z-scored across
//!   the question's probed countries that answered it, averaged per country over the neighbours
//!   it answered. A z-score keeps only the order and spacing of countries, not the level of the
//!   answers, so it counts at the country level only.
use super::country::by_question;
use super::pairs::Pair;
use crate::analysis::correlate::mean;
use crate::survey::{question_sort_key, Question, Survey};
use crate::util::error::Result;
use std::collections::BTreeMap;

/// Per question, the pool questions ranked by similarity (most similar first).
pub type Ranked = BTreeMap<String, Vec<(String, f64)>>;

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

/// For each of `targets`, the `pool` questions ranked by TF-IDF cosine (ties in questionnaire
/// order); a target is never its own neighbour.
pub fn ranked_neighbours(survey: &Survey, targets: &[String], pool: &[String]) -> Result<Ranked> {
    let all: Vec<&String> = pool.iter().chain(targets).collect();
    let docs: Vec<Vec<String>> = all.iter().map(|q| Ok(document(survey.question(q)?))).collect::<Result<_>>()?;
    let vecs = tfidf(&docs);
    let mut out = BTreeMap::new();
    for (ti, t) in targets.iter().enumerate() {
        let tv = &vecs[pool.len() + ti];
        let mut ranked: Vec<(String, f64)> =
            pool.iter().enumerate().filter(|(_, p)| *p != t).map(|(i, p)| (p.clone(), cosine(tv, &vecs[i]))).collect();
        ranked.sort_by(|x, y| y.1.total_cmp(&x.1).then_with(|| question_sort_key(&x.0).cmp(&question_sort_key(&y.0))));
        out.insert(t.clone(), ranked);
    }
    Ok(out)
}

/// The distinct questions of `pairs`, in questionnaire order.
pub fn questions_of(pairs: &[Pair]) -> Vec<String> {
    let mut qs: Vec<String> = pairs.iter().map(|p| p.q.clone()).collect();
    qs.sort_by_key(|q| question_sort_key(q));
    qs.dedup();
    qs
}

/// A country's normalised human mean on a question, when it answered it.
fn human_norm(survey: &Survey, q: &str, c: &str) -> Option<f64> {
    let question = survey.question(q).ok()?;
    question.normalise(survey.answers(q, c)?.mean?)
}

/// Per pair, the normalised human mean of the nearest pool question its country answered.
pub fn lexical(pairs: &[Pair], survey: &Survey, ranked: &Ranked) -> Vec<Option<f64>> {
    pairs.iter().map(|p| ranked[&p.q].iter().find_map(|(n, _)| human_norm(survey, n, &p.c))).collect()
}

/// Per pair, the mean z-score of its country over its question's `k` nearest pool questions: each
/// neighbour's normalised human means are z-scored (population SD) across the question's probed
/// countries that answered it, and a country averages the neighbours it answered. A neighbour
/// answered by fewer than 2 of the countries, or by all alike, says nothing about their order and
/// is skipped; a country with no usable neighbour gets no prediction.
pub fn z_scored(pairs: &[Pair], survey: &Survey, ranked: &Ranked, k: usize) -> Vec<Option<f64>> {
    let mut out = vec![None; pairs.len()];
    for (q, idx) in by_question(pairs) {
        let mut sums = vec![(0.0, 0usize); idx.len()];
        for (n, _) in ranked[q].iter().take(k) {
            let vals: Vec<(usize, f64)> =
                idx.iter().enumerate().filter_map(|(j, &i)| Some((j, human_norm(survey, n, &pairs[i].c)?))).collect();
            let xs: Vec<f64> = vals.iter().map(|v| v.1).collect();
            let Some(m) = mean(&xs) else { continue };
            let sd = (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64).sqrt();
            if xs.len() < 2 || !sd.is_finite() || sd <= 0.0 {
                continue;
            }
            for (j, x) in vals {
                sums[j].0 += (x - m) / sd;
                sums[j].1 += 1;
            }
        }
        for (&i, (sum, n)) in idx.iter().zip(sums) {
            if n > 0 {
                out[i] = Some(sum / n as f64);
            }
        }
    }
    out
}
