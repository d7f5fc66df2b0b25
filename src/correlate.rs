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
    2.0 * (1.0 - dist.cdf(t.abs()))
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
