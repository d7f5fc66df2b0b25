//! Correlation maths: Pearson r with its two-sided p-value, Fisher-z averaging, and the
//! per-country / per-category / per-continent aggregates of a probe run.
use serde::{Deserialize, Serialize};

/// Pearson's r; `None` when fewer than 3 pairs or either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len();
    if n < 3 || n != y.len() {
        return None;
    }
    let mx = x.iter().sum::<f64>() / n as f64;
    let my = y.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    let den = (sxx * syy).sqrt();
    // Scores rounded to the float grid can leave a "constant" side with tiny nonzero variance.
    if den <= 1e-12 * (1.0 + sxx.max(syy)) {
        return None;
    }
    Some((sxy / den).clamp(-1.0, 1.0))
}

/// Two-sided p-value of r under H0: rho = 0 (t = r sqrt((n-2)/(1-r^2)), n-2 degrees of freedom).
pub fn p_value(r: f64, n: usize) -> f64 {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    if n < 3 {
        return f64::NAN;
    }
    if r.abs() >= 1.0 {
        return 0.0;
    }
    let df = (n - 2) as f64;
    let t = r * (df / (1.0 - r * r)).sqrt();
    let dist = StudentsT::new(0.0, 1.0, df).expect("df > 0");
    // The survival function keeps tiny p-values (1 - cdf underflows to 0 below ~1e-16).
    2.0 * dist.sf(t.abs())
}

/// Mean of correlations through Fisher's z (atanh), back-transformed.
pub fn fisher_mean(rs: &[f64]) -> Option<f64> {
    if rs.is_empty() {
        return None;
    }
    let z: f64 = rs.iter().map(|r| r.clamp(-0.999_999, 0.999_999).atanh()).sum::<f64>() / rs.len() as f64;
    Some(z.tanh())
}

pub fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Corr {
    pub r: f64,
    pub n: usize,
    pub p: f64,
}

impl Corr {
    pub fn of(x: &[f64], y: &[f64]) -> Option<Self> {
        pearson(x, y).map(|r| Corr { r, n: x.len(), p: p_value(r, x.len()) })
    }
}

/// 1 - Jensen-Shannon distance (base 2, so in [0, 1]) between two distributions: 1 means equal.
pub fn js_similarity(p: &[f64], q: &[f64]) -> Option<f64> {
    if p.len() != q.len() || p.is_empty() {
        return None;
    }
    let kl = |a: &[f64], m: &[f64]| -> f64 {
        a.iter().zip(m).filter(|(x, _)| **x > 0.0).map(|(x, y)| x * (x / y).log2()).sum()
    };
    let m: Vec<f64> = p.iter().zip(q).map(|(a, b)| 0.5 * (a + b)).collect();
    let js = (0.5 * kl(p, &m) + 0.5 * kl(q, &m)).max(0.0);
    Some(1.0 - js.sqrt())
}

/// Percentile bootstrap: `stat` over `reps` resamples (with replacement) of indices 0..n, drawn
/// from a seeded portable RNG. Returns the (2.5%, 97.5%) interval and the resampled values
/// (resamples where the statistic is undefined are skipped).
pub fn bootstrap(
    n: usize,
    reps: usize,
    seed: u64,
    stat: impl Fn(&[usize]) -> Option<f64>,
) -> (Option<(f64, f64)>, Vec<f64>) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut vals = Vec::with_capacity(reps);
    let mut idx = vec![0usize; n];
    for _ in 0..reps {
        for i in idx.iter_mut() {
            *i = rng.random_range(0..n.max(1));
        }
        if let Some(v) = stat(&idx) {
            if v.is_finite() {
                vals.push(v);
            }
        }
    }
    if vals.len() < reps / 2 || n == 0 {
        return (None, vals);
    }
    let mut sorted = vals.clone();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| sorted[((p * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)];
    (Some((q(0.025), q(0.975))), vals)
}

/// Two-sided bootstrap p-value for "the statistic is 0": twice the smaller tail share.
pub fn bootstrap_p(vals: &[f64]) -> Option<f64> {
    if vals.is_empty() {
        return None;
    }
    let le = vals.iter().filter(|v| **v <= 0.0).count() as f64 / vals.len() as f64;
    let ge = vals.iter().filter(|v| **v >= 0.0).count() as f64 / vals.len() as f64;
    Some((2.0 * le.min(ge)).min(1.0))
}

/// Ranks with ties given their average rank (1-based).
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            r[idx[k]] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation (Pearson r of average ranks).
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() {
        return None;
    }
    pearson(&ranks(x), &ranks(y))
}

/// Wasserstein-1 distance between two distributions over ordered positions `at` (e.g. option
/// scores mapped to [0, 1]): the integral of |CDF_p - CDF_q|.
pub fn wasserstein1(p: &[f64], q: &[f64], at: &[f64]) -> Option<f64> {
    if p.len() != q.len() || p.len() != at.len() || p.is_empty() {
        return None;
    }
    let mut idx: Vec<usize> = (0..at.len()).collect();
    idx.sort_by(|&a, &b| at[a].total_cmp(&at[b]));
    let (mut cp, mut cq, mut w) = (0.0, 0.0, 0.0);
    for k in 0..idx.len() - 1 {
        cp += p[idx[k]];
        cq += q[idx[k]];
        w += (cp - cq).abs() * (at[idx[k + 1]] - at[idx[k]]);
    }
    Some(w)
}
