//! Country-level numbers: does the student tell countries apart on a question? Per held-out
//! question, Pearson r across countries between the student's and the humans' normalised scores
//! (only questions probed in enough countries: with 5 it is noise), the country-swap control
//! (Cao et al. 2025: the same answers scored against the wrong country's humans), and the persona
//! spread (how much the student's answers vary across countries, relative to the humans').
use super::pairs::{delta_boot, seed_of, Delta, Pair};
use crate::analysis::correlate::{fisher_mean, js_similarity, mean, pearson};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Fewest countries a question must be probed in for its cross-country r to count.
pub const DEFAULT_MIN_COUNTRIES: usize = 8;

/// Row indices of `pairs` per question (rows in country order).
pub fn by_question(pairs: &[Pair]) -> BTreeMap<&str, Vec<usize>> {
    let mut by: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in pairs.iter().enumerate() {
        by.entry(p.q.as_str()).or_default().push(i);
    }
    by
}

fn sd(xs: &[f64]) -> Option<f64> {
    let m = mean(xs)?;
    (xs.len() >= 2).then(|| (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64).sqrt())
}

/// How one predictor of normalised scores does at both levels: within countries (r across
/// questions per country, Fisher mean over countries), across countries (r per question over its
/// countries, Fisher mean over the questions with at least `min` countries), 1 - JSD where it
/// predicts distributions, and its persona spread (SD across countries over the humans' SD, mean
/// over the same questions).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Profile {
    pub within_r: Option<f64>,
    pub cross_r: Option<f64>,
    pub js: Option<f64>,
    pub spread: Option<f64>,
}

/// Per question probed in at least `min` countries with a prediction in at least `min` of them
/// (in id order): its id, the predictions and the humans' scores, in country order.
fn question_points<'p>(
    pairs: &'p [Pair],
    min: usize,
    pred: &impl Fn(usize) -> Option<f64>,
) -> Vec<(&'p str, Vec<f64>, Vec<f64>)> {
    by_question(pairs)
        .into_iter()
        .filter(|(_, v)| v.len() >= min)
        .filter_map(|(q, idx)| {
            let (x, h): (Vec<f64>, Vec<f64>) = idx.iter().filter_map(|&i| Some((pred(i)?, pairs[i].h))).unzip();
            (x.len() >= min).then_some((q, x, h))
        })
        .collect()
}

/// The cross-country r of each question `profile` counts, by question id.
pub fn cross_by_question(pairs: &[Pair], min: usize, pred: impl Fn(usize) -> Option<f64>) -> BTreeMap<&str, f64> {
    question_points(pairs, min, &pred).into_iter().filter_map(|(q, x, h)| Some((q, pearson(&x, &h)?))).collect()
}

pub fn profile<'d>(
    pairs: &[Pair],
    min: usize,
    pred: impl Fn(usize) -> Option<f64>,
    dist: impl Fn(usize) -> Option<&'d [f64]>,
) -> Profile {
    let mut by_c: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for (i, p) in pairs.iter().enumerate() {
        if let Some(x) = pred(i) {
            let e = by_c.entry(p.c.as_str()).or_default();
            e.0.push(x);
            e.1.push(p.h);
        }
    }
    let within: Vec<f64> = by_c.values().filter_map(|(x, h)| pearson(x, h)).collect();
    let (mut cross, mut spread) = (Vec::new(), Vec::new());
    for (_, x, h) in question_points(pairs, min, &pred) {
        if let Some(r) = pearson(&x, &h) {
            cross.push(r);
        }
        if let (Some(sx), Some(sh)) = (sd(&x), sd(&h)) {
            if sh > 0.0 {
                spread.push(sx / sh);
            }
        }
    }
    let js: Vec<f64> =
        (0..pairs.len()).filter_map(|i| js_similarity(dist(i)?, &pairs[i].human)).filter(|v| v.is_finite()).collect();
    Profile { within_r: fisher_mean(&within), cross_r: fisher_mean(&cross), js: mean(&js), spread: mean(&spread) }
}

/// A seeded derangement of 0..n (no index maps to itself), uniform over derangements: shuffles
/// are drawn until one has no fixed point (about e draws on average). None for n < 2.
pub fn derangement(n: usize, seed: u64) -> Option<Vec<usize>> {
    if n < 2 {
        return None;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut p: Vec<usize> = (0..n).collect();
    loop {
        p.shuffle(&mut rng);
        if p.iter().enumerate().all(|(i, &j)| i != j) {
            return Some(p);
        }
    }
}

/// The country-swap control in 1 - JSD: the answers given under the right country's persona minus
/// those given under another probed country's persona, both scored against the right country's
/// humans. Re-pairing probed samples is the swapped probe exactly: a prompt depends only on the
/// question and the persona, never on whose humans it is scored against.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SwapControl {
    pub n_pairs: usize,
    pub js_true_before: Option<f64>,
    pub js_swapped_before: Option<f64>,
    pub js_true_after: Option<f64>,
    pub js_swapped_after: Option<f64>,
    /// Mean true-minus-swapped 1 - JSD; CIs from a paired bootstrap over questions.
    pub gap_before: Delta,
    pub gap_after: Delta,
    pub gap_change: Delta,
}

/// Per question, (true - swapped) 1 - JSD before and after for each of its countries.
fn swap_gaps(pairs: &[Pair], qs: &[&Vec<usize>], seed: u64) -> Vec<Vec<[f64; 4]>> {
    qs.iter()
        .filter_map(|idx| {
            let d = derangement(idx.len(), seed_of(seed, &format!("swap-{}", pairs[idx[0]].q)))?;
            let rows: Vec<[f64; 4]> = idx
                .iter()
                .zip(&d)
                .filter_map(|(&i, &j)| {
                    let (p, other) = (&pairs[i], &pairs[idx[j]]);
                    Some([
                        p.js_b,
                        js_similarity(&other.probs_b, &p.human)?,
                        p.js_a,
                        js_similarity(&other.probs_a, &p.human)?,
                    ])
                })
                .filter(|r| r.iter().all(|v| v.is_finite()))
                .collect();
            (!rows.is_empty()).then_some(rows)
        })
        .collect()
}

pub fn swap_control(pairs: &[Pair], qs: &[&Vec<usize>], reps: usize, seed: u64) -> SwapControl {
    let per_q = swap_gaps(pairs, qs, seed);
    let col = |idx: &[usize], k: usize| -> Option<f64> {
        mean(&idx.iter().flat_map(|&q| per_q[q].iter().map(move |r| r[k])).collect::<Vec<_>>())
    };
    let gap = |idx: &[usize], after: bool| -> Option<f64> {
        let k = if after { 2 } else { 0 };
        Some(col(idx, k)? - col(idx, k + 1)?)
    };
    let n = per_q.len();
    let boot = |what: &str, stat: &dyn Fn(&[usize]) -> Option<f64>| delta_boot(n, 0, reps, seed_of(seed, what), stat);
    let all: Vec<usize> = (0..n).collect();
    SwapControl {
        n_pairs: per_q.iter().map(|r| r.len()).sum(),
        js_true_before: col(&all, 0),
        js_swapped_before: col(&all, 1),
        js_true_after: col(&all, 2),
        js_swapped_after: col(&all, 3),
        gap_before: boot("swap-before", &|i| gap(i, false)),
        gap_after: boot("swap-after", &|i| gap(i, true)),
        gap_change: boot("swap-change", &|i| Some(gap(i, true)? - gap(i, false)?)),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QuestionCross {
    pub id: String,
    pub n_countries: usize,
    pub r_before: Option<f64>,
    pub r_after: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CountryLevel {
    /// Questions probed in fewer countries than this are left out of everything below.
    pub min_countries: usize,
    pub n_questions: usize,
    /// Questions left out for having fewer than `min_countries` countries.
    pub n_questions_few_countries: usize,
    pub mean_countries_per_question: Option<f64>,
    /// Fisher-z means over questions of the cross-country r.
    pub r_before: Option<f64>,
    pub r_after: Option<f64>,
    /// Change in the Fisher mean; paired bootstrap CI over questions.
    pub delta: Delta,
    pub share_improved: Option<f64>,
    pub spread_before: Option<f64>,
    pub spread_after: Option<f64>,
    pub swap: SwapControl,
    pub questions: Vec<QuestionCross>,
}

pub fn compute(pairs: &[Pair], min: usize, reps: usize, seed: u64, tag: &str) -> CountryLevel {
    let by_q = by_question(pairs);
    let kept: Vec<(&str, &Vec<usize>)> = by_q.iter().filter(|(_, v)| v.len() >= min).map(|(q, v)| (*q, v)).collect();
    let r_at = |idx: &[usize], after: bool| -> Option<f64> {
        let x: Vec<f64> = idx.iter().map(|&i| if after { pairs[i].a } else { pairs[i].b }).collect();
        pearson(&x, &idx.iter().map(|&i| pairs[i].h).collect::<Vec<_>>())
    };
    let questions: Vec<QuestionCross> = kept
        .iter()
        .map(|(q, idx)| QuestionCross {
            id: q.to_string(),
            n_countries: idx.len(),
            r_before: r_at(idx, false),
            r_after: r_at(idx, true),
        })
        .collect();
    let both: Vec<(f64, f64)> = questions.iter().filter_map(|q| Some((q.r_before?, q.r_after?))).collect();
    let delta = delta_boot(both.len(), 0, reps, seed_of(seed, &format!("{tag}-cross")), |idx| {
        let a: Vec<f64> = idx.iter().map(|&i| both[i].1).collect();
        let b: Vec<f64> = idx.iter().map(|&i| both[i].0).collect();
        Some(fisher_mean(&a)? - fisher_mean(&b)?)
    });
    let before = profile(pairs, min, |i| Some(pairs[i].b), |_| None);
    let after = profile(pairs, min, |i| Some(pairs[i].a), |_| None);
    let idx_sets: Vec<&Vec<usize>> = kept.iter().map(|(_, v)| *v).collect();
    CountryLevel {
        min_countries: min,
        n_questions: kept.len(),
        n_questions_few_countries: by_q.len() - kept.len(),
        mean_countries_per_question: mean(&kept.iter().map(|(_, v)| v.len() as f64).collect::<Vec<_>>()),
        r_before: fisher_mean(&both.iter().map(|x| x.0).collect::<Vec<_>>()),
        r_after: fisher_mean(&both.iter().map(|x| x.1).collect::<Vec<_>>()),
        delta,
        share_improved: (!both.is_empty())
            .then(|| both.iter().filter(|(b, a)| a > b).count() as f64 / both.len() as f64),
        spread_before: before.spread,
        spread_after: after.spread,
        swap: swap_control(pairs, &idx_sets, reps, seed_of(seed, tag)),
        questions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derangement_is_seeded_and_has_no_fixed_point() {
        for n in 2..40 {
            for seed in 0..20 {
                let d = derangement(n, seed).unwrap();
                assert!(d.iter().enumerate().all(|(i, &j)| i != j), "{d:?}");
                let mut sorted = d.clone();
                sorted.sort();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "a permutation");
                assert_eq!(derangement(n, seed), Some(d), "same seed, same derangement");
            }
        }
        assert_ne!(derangement(10, 1), derangement(10, 2));
        assert_eq!(derangement(1, 0), None);
        assert_eq!(derangement(2, 5), Some(vec![1, 0]));
    }
}
