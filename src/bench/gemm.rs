//! `mores bench gemm`: GFLOP/s of mores' f32 products (`model::gemm`) beside candle's matmul (the
//! `gemm` crate, what candle-transformers models run) on the products of a training step and of
//! a probe batch of the default student, in one process, the two sides taking turns.
//!
//! Why in process, unlike the other benchmarks: this measures one kernel against another on the
//! same buffers and threads, not whole stacks; peak memory is not in question.
use crate::model::gemm::{matmul_nn, matmul_packed, Isa, Packed};
use crate::util::error::{Error, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use std::fmt::Write;
use std::time::Instant;

/// One product: y [m, n] = x [m, k] · wᵀ (`nt`, a frozen weight's forward) or g [m, k] · w [k, n]
/// (`nn`, its input gradient).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub what: &'static str,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub nn: bool,
    /// The weight as Q8_0 int8 values (`Packed::from_q8_0`, the form of a head tied to a Q8_0
    /// embedding); candle multiplies its f32 dequantization.
    pub q8: bool,
}

/// SmolLM2-135M's products (hidden 576, 3 KV heads of 64, MLP 1536) at a training batch of
/// 4 x 128 rows and a probe batch of 8 x ~100 rows' new tokens (64); Gemma-3-270M's (hidden 640,
/// 4 query heads of 256, MLP 2048) at a probe batch's ~216 new tokens, and its 262,144-row output
/// head at a batch's read positions (16 and 32 rows: 671 MB of f32 weight for little arithmetic,
/// so this one measures memory more than the kernel).
pub fn default_shapes() -> Vec<Shape> {
    let s = |what, m, n, k, nn| Shape { what, m, n, k, nn, q8: false };
    vec![
        s("q/o forward", 512, 576, 576, false),
        s("k/v forward", 512, 192, 576, false),
        s("gate/up forward", 512, 1536, 576, false),
        s("down forward", 512, 576, 1536, false),
        s("gate/up input grad", 512, 576, 1536, true),
        s("down input grad", 512, 1536, 576, true),
        s("probe gate/up", 64, 1536, 576, false),
        s("probe down", 64, 576, 1536, false),
        s("Gemma probe q", 216, 1024, 640, false),
        s("Gemma probe gate/up", 216, 2048, 640, false),
        s("Gemma probe down", 216, 640, 2048, false),
        s("Gemma head, 16 reads", 16, 262_144, 640, false),
        s("Gemma head, 32 reads", 32, 262_144, 640, false),
        Shape { q8: true, ..s("Gemma head as Q8_0, 16 reads", 16, 262_144, 640, false) },
        Shape { q8: true, ..s("Gemma head as Q8_0, 32 reads", 32, 262_144, 640, false) },
    ]
}

pub(super) fn values(seed: u64, n: usize) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Seconds per call of `f`, over enough calls to last about `budget` seconds (at least 3).
pub(super) fn time(budget: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm caches and the thread pool
    let t0 = Instant::now();
    f()?;
    let once = t0.elapsed().as_secs_f64().max(1e-6);
    let reps = ((budget / once) as usize).clamp(3, 10_000);
    let t0 = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    Ok(t0.elapsed().as_secs_f64() / reps as f64)
}

pub struct GemmRow {
    pub shape: Shape,
    /// GFLOP/s per round.
    pub mores: Vec<f64>,
    pub candle: Vec<f64>,
    /// Largest |mores - candle| over the output (they sum in different orders).
    pub max_diff: f32,
}

/// Measure every shape `repeat` times, mores and candle in turn.
pub fn measure(shapes: &[Shape], repeat: usize, budget: f64) -> Result<Vec<GemmRow>> {
    if repeat == 0 {
        return Err(Error::Invalid("bench gemm: --repeat must be at least 1".into()));
    }
    if !(budget > 0.0 && budget <= 60.0) {
        return Err(Error::Invalid(format!("bench gemm: --budget {budget} s: give a number of seconds in (0, 60]")));
    }
    let dev = Device::Cpu;
    let mut rows = Vec::new();
    for &sh in shapes {
        let (m, n, k) = (sh.m, sh.n, sh.k);
        let x = values(1, m * k);
        // nt: w [n, k]; nn: b [k, n].
        let mut w = values(2, n * k);
        let packed = if sh.q8 {
            let q = QTensor::quantize(&Tensor::from_slice(&w, (n, k), &dev)?, GgmlDType::Q8_0)?;
            w = q.dequantize(&dev)?.flatten_all()?.to_vec1()?;
            Some(Packed::from_q8_0(&q.data()?, n, k, Isa::best()).map_err(Error::Invalid)?)
        } else {
            (!sh.nn).then(|| Packed::new(&w, n, k, Isa::best()))
        };
        let xt = Tensor::from_slice(&x, (m, k), &dev)?;
        let wt =
            if sh.nn { Tensor::from_slice(&w, (k, n), &dev)? } else { Tensor::from_slice(&w, (n, k), &dev)?.t()? };
        let mut y = vec![0f32; m * n];
        let run_mores = |y: &mut [f32]| match &packed {
            Some(p) => matmul_packed(&x, m, p, y),
            None => matmul_nn(&x, m, k, &w, n, y),
        };
        let run_candle = || xt.matmul(&wt);
        run_mores(&mut y);
        let reference = run_candle()?.flatten_all()?.to_vec1::<f32>()?;
        let max_diff = y.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let flop = 2.0 * (m * n * k) as f64 / 1e9;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..repeat {
            a.push(
                flop / time(budget, || {
                    run_mores(&mut y);
                    Ok(())
                })?,
            );
            b.push(flop / time(budget, || run_candle().map(drop).map_err(Into::into))?);
        }
        rows.push(GemmRow { shape: sh, mores: a, candle: b, max_diff });
    }
    Ok(rows)
}

/// The table: median (range) GFLOP/s per side and the ratio of medians.
pub fn table(rows: &[GemmRow], threads: usize) -> String {
    let cell = |v: &[f64]| {
        let (med, lo, hi) = super::spread(v.to_vec());
        format!("{med:.0} ({lo:.0}-{hi:.0})")
    };
    let mut s = String::new();
    let _ = writeln!(s, "f32 products, {threads} threads, mores kernel {:?}; GFLOP/s median (range)", Isa::best());
    let _ = writeln!(s, "| product | m x n x k | mores | candle (gemm crate) | mores / candle | max abs diff |");
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
    for r in rows {
        let sh = r.shape;
        let _ = writeln!(
            s,
            "| {} | {} x {} x {} | {} | {} | {:.2}x | {:.1e} |",
            sh.what,
            sh.m,
            sh.n,
            sh.k,
            cell(&r.mores),
            cell(&r.candle),
            super::median(r.mores.clone()) / super::median(r.candle.clone()),
            r.max_diff
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bench_gemm_arguments_are_refused_and_a_small_product_agrees_with_candle() {
        let sh = [Shape { what: "small", m: 9, n: 70, k: 33, nn: false, q8: false }];
        assert!(measure(&sh, 0, 0.01).is_err());
        for budget in [0.0, -1.0, f64::NAN, 1e9] {
            let e = measure(&sh, 1, budget).err().expect("refused").to_string();
            assert!(e.contains("--budget"), "{e}");
        }
        let nn = [Shape { nn: true, ..sh[0] }];
        for rows in [measure(&sh, 1, 0.001).unwrap(), measure(&nn, 1, 0.001).unwrap()] {
            assert!(rows[0].max_diff < 1e-4, "max diff {}", rows[0].max_diff);
            assert!(rows[0].mores[0] > 0.0 && rows[0].candle[0] > 0.0);
            assert!(table(&rows, 1).contains("| small | 9 x 70 x 33 |"));
        }
    }
}
