//! Benchmarks that print ratios against the reference Python stack measured in the same run:
//! probe throughput ([`probe`]), teacher decoding ([`generate`]) and LoRA training steps ([`lora`]);
//! and mores' f32 products beside candle's ([`gemm`]).
pub mod gemm;
pub mod generate;
pub mod lora;
pub mod probe;

use crate::util::error::{Error, Result};
use std::path::Path;
use std::process::Command;

/// Run one mores measurement in a fresh process (so its peak memory is its own) and parse the
/// JSON it prints.
pub fn child<T: serde::de::DeserializeOwned>(cmd: &mut Command, exe: &Path) -> Result<T> {
    let o = cmd.output().map_err(|e| Error::io(exe, e))?;
    if !o.status.success() {
        return Err(Error::Invalid(format!("bench child failed: {}", String::from_utf8_lossy(&o.stderr))));
    }
    Ok(serde_json::from_slice(&o.stdout)?)
}

/// Run a peer reference script (from `--peers DIR`) with `python`; a failure names `what` and the last
/// line of the script's stderr.
pub fn peer(cmd: &mut Command, script: &Path, python: &str, what: &str) -> Result<()> {
    let o = cmd.output().map_err(|e| Error::Invalid(format!("cannot run {} with {python}: {e}", script.display())))?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        return Err(Error::Invalid(format!("{what} failed ({}): {}", o.status, err.lines().last().unwrap_or(""))));
    }
    Ok(())
}

/// The median of repeated measurements (NaN for none).
pub fn median(v: Vec<f64>) -> f64 {
    use statrs::statistics::{Data, Median};
    if v.is_empty() {
        return f64::NAN;
    }
    Data::new(v).median()
}

/// Median, min and max of repeated measurements (NaN and infinities for none).
pub fn spread(v: Vec<f64>) -> (f64, f64, f64) {
    let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    (median(v), lo, hi)
}

/// One backend's repeated measurements in a benchmark with rounds.
pub struct Series<T> {
    pub runs: Vec<T>,
}

impl<T> Series<T> {
    /// Median, min and max of a figure over the runs.
    pub fn spread(&self, f: impl Fn(&T) -> f64) -> (f64, f64, f64) {
        spread(self.runs.iter().map(f).collect())
    }

    pub fn last(&self) -> &T {
        self.runs.last().expect("a series holds at least one run")
    }
}

/// Add a run to its backend's series, found by the backend's name (a peer that fails in a later
/// round must not shift the other backends' runs into its row), or start a series, in the order
/// the backends first ran.
pub fn add_run<T>(series: &mut Vec<Series<T>>, run: T, backend: fn(&T) -> &str) {
    match series.iter_mut().find(|s| backend(s.last()) == backend(&run)) {
        Some(s) => s.runs.push(run),
        None => series.push(Series { runs: vec![run] }),
    }
}
