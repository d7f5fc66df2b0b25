//! The report's raw material: one row per (question, country) probed before and after, with the
//! scores and distributions every statistic reads, and the bootstrap rule they all share.
use crate::analysis::correlate::{bootstrap, bootstrap_p, js_similarity, pearson};
use crate::probe::Sample;
use crate::survey::Survey;
use crate::util::error::Result;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Averaged samples by (question, country).
pub type Samples = HashMap<(String, String), Sample>;

/// One (question, country) with everything the statistics need. Scores are scale-normalised to
/// [0, 1] unless named raw; distributions are in the question's option order.
pub struct Pair {
    pub q: String,
    pub c: String,
    pub b: f64,
    pub a: f64,
    pub h: f64,
    pub b_raw: f64,
    pub a_raw: f64,
    pub h_raw: f64,
    pub js_b: f64,
    pub js_a: f64,
    pub probs_b: Vec<f64>,
    pub probs_a: Vec<f64>,
    pub human: Vec<f64>,
    pub t: Option<f64>,
}

/// Every pair of `qs` probed before and after with a scored human answer, sorted by country then
/// questionnaire order, so resampling indices mean the same rows on every run.
pub fn collect(
    survey: &Survey,
    qs: &[String],
    before: &Samples,
    after: &Samples,
    teacher: Option<&Samples>,
) -> Result<Vec<Pair>> {
    let mut pairs: Vec<Pair> = Vec::new();
    for ((q, c), sb) in before {
        if !qs.contains(q) {
            continue;
        }
        let Some(sa) = after.get(&(q.clone(), c.clone())) else { continue };
        let question = survey.question(q)?;
        let (Some(b_raw), Some(a_raw), Some(h_raw)) = (sb.expected_score, sa.expected_score, sb.human_mean) else {
            continue;
        };
        let (Some(b), Some(a), Some(h)) =
            (question.normalise(b_raw), question.normalise(a_raw), question.normalise(h_raw))
        else {
            continue;
        };
        let t = teacher
            .and_then(|t| t.get(&(q.clone(), c.clone())))
            .and_then(|x| x.expected_score)
            .and_then(|x| question.normalise(x));
        pairs.push(Pair {
            q: q.clone(),
            c: c.clone(),
            b,
            a,
            h,
            b_raw,
            a_raw,
            h_raw,
            js_b: js_similarity(&sb.probs, &sb.human_distribution).unwrap_or(f64::NAN),
            js_a: js_similarity(&sa.probs, &sb.human_distribution).unwrap_or(f64::NAN),
            probs_b: sb.probs.clone(),
            probs_a: sa.probs.clone(),
            human: sb.human_distribution.clone(),
            t,
        });
    }
    pairs.sort_by(|x, y| {
        (&x.c, crate::survey::question_sort_key(&x.q)).cmp(&(&y.c, crate::survey::question_sort_key(&y.q)))
    });
    Ok(pairs)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Delta {
    pub value: Option<f64>,
    pub ci95: Option<(f64, f64)>,
    pub p: Option<f64>,
}

pub fn seed_of(seed: u64, what: &str) -> u64 {
    crate::util::seed::from_text(&format!("{seed}:{what}"))
}

/// Fewest paired points a bootstrap CI is printed from: below it the resamples repeat a handful
/// of points and the interval says more about the resampling than about the data.
pub const MIN_CI_POINTS: usize = 5;
/// Fewest pairs for the CI of a change in a correlation: resampling 5 pairs of an r swings it
/// between -1 and +1, and the quickstart's category table printed "-2.000 to +2.000".
pub const MIN_R_CI_POINTS: usize = 8;

/// `stat` over all `n` points, with a paired bootstrap CI and p-value when there are at least
/// `min` (and never fewer than `MIN_CI_POINTS`) points.
pub fn delta_boot(n: usize, min: usize, reps: usize, seed: u64, stat: impl Fn(&[usize]) -> Option<f64>) -> Delta {
    let all: Vec<usize> = (0..n).collect();
    let value = stat(&all);
    if n < min.max(MIN_CI_POINTS) {
        return Delta { value, ci95: None, p: None };
    }
    let (ci95, vals) = bootstrap(n, reps, seed, stat);
    Delta { value, ci95, p: bootstrap_p(&vals) }
}

pub fn r_of(pairs: &[&Pair], idx: &[usize], x: impl Fn(&Pair) -> f64, y: impl Fn(&Pair) -> f64) -> Option<f64> {
    let xs: Vec<f64> = idx.iter().map(|&i| x(pairs[i])).collect();
    let ys: Vec<f64> = idx.iter().map(|&i| y(pairs[i])).collect();
    pearson(&xs, &ys)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a change in r resampled from 5 pairs printed "-2.000 to
    /// +2.000". No CI below 5 points, nor below 8 for a change in r.
    #[test]
    fn no_interval_from_too_few_points() {
        let stat = |idx: &[usize]| Some(idx.iter().map(|&i| i as f64).sum::<f64>() / idx.len() as f64);
        assert!(delta_boot(4, MIN_CI_POINTS, 200, 1, stat).ci95.is_none());
        assert!(delta_boot(5, MIN_CI_POINTS, 200, 1, stat).ci95.is_some());
        assert!(delta_boot(7, MIN_R_CI_POINTS, 200, 1, stat).ci95.is_none());
        let d = delta_boot(8, MIN_R_CI_POINTS, 200, 1, stat);
        assert!(d.ci95.is_some() && d.value == Some(3.5));
    }
}
