//! How numbers are printed in reports and summaries, in one place so every table agrees.

/// A correlation or mean to 3 decimals, or "–" when undefined.
pub fn f(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into())
}

/// "0.123 to 0.456", or "–".
pub fn ci(c: Option<(f64, f64)>) -> String {
    c.map(|(lo, hi)| format!("{lo:.3} to {hi:.3}")).unwrap_or_else(|| "–".into())
}
