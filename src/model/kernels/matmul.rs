//! Matrix products whose rows do not depend on the row count.
//!
//! candle's CPU matmul calls the `gemm` crate, whose per-element sums run in one order on its
//! main path (one FMA chain per output element over the depth, cut into depth blocks chosen from
//! the depth and the cache sizes) but in another on three special paths picked by the shape: a
//! GEMV for a single row (sums in SIMD lanes over the depth), a "horizontal" kernel when rows x
//! columns <= 256, and depth blocks of min(depth, 512) instead of the cache-derived size when both
//! rows and columns are <= 64. A one-token row (the label branch after a shared prefix) took the
//! GEMV, the same row inside a batch the main path. Products without gradients now run mores' own
//! GEMM ([`super::gemm`]: one fma chain per element whatever the shape); for the differentiable
//! ones (LoRA factors in training) [`matmul_nt`] still pads the rows (with zeros, sliced off
//! again) until `gemm`'s main path is taken, so every row is computed by the same chain whatever
//! the row count. The test in this file pins that bit for bit; `tests/it/batch.rs` pins the model.
use super::tensor::{plain_cpu_f32, with_f32s};
use crate::util::error::{Error, Result};
use candle_core::Tensor;

/// Smallest row count for which `gemm` takes its main path for a [rows, k] x [k, n] product.
fn min_rows(n: usize, k: usize) -> usize {
    let mut m = 2; // one row goes to the GEMV
    while m * n <= 256 {
        m += 1; // the horizontal kernel
    }
    if n <= 64 && k > 512 {
        m = m.max(65); // small-size depth blocks differ from the main path's when depth > 512
    }
    m
}

/// x [m, k] times w [n, k] transposed, each output row computed exactly as it would be alone.
/// Without gradients on the CPU this is mores' own GEMM (w packed for this one call; a model's
/// weights keep theirs, see `Linear`); with gradients, candle's differentiable matmul on rows
/// padded until `gemm` takes its main path.
pub fn matmul_nt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if plain_cpu_f32(&[x, w]) {
        return matmul_packed(x, &pack(w)?);
    }
    invariant_rows(x, w.dim(0)?, |x| Ok(x.matmul(&w.t()?)?))
}

/// w [n, k] (CPU f32) packed for mores' GEMM with this CPU's best kernel.
pub fn pack(w: &Tensor) -> Result<super::gemm::Packed> {
    let (n, k) = w.dims2()?;
    let w = w.contiguous()?;
    with_f32s(&[&w], |v| super::gemm::Packed::new(v[0], n, k, super::gemm::Isa::best()))
}

/// x [m, k] times a packed w [n, k] transposed: [m, n], no gradient.
pub fn matmul_packed(x: &Tensor, w: &super::gemm::Packed) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    if k != w.k {
        return Err(Error::Invalid(format!("internal: matmul of width {k} with a packed {} x {} weight", w.n, w.k)));
    }
    let x = x.contiguous()?;
    let y = with_f32s(&[&x], |v| {
        let mut y = vec![0f32; m * w.n];
        super::gemm::matmul_packed(v[0], m, w, &mut y);
        y
    })?;
    Ok(Tensor::from_vec(y, (m, w.n), x.device())?)
}

/// Apply `f`, a [m, k] -> [m, n] product that calls `gemm`, to x padded with zero rows until
/// `gemm` takes its main path, and cut the result back to x's rows. Differentiable when `f` is.
pub fn invariant_rows(x: &Tensor, n: usize, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    let need = min_rows(n, k);
    if m >= need || !x.device().is_cpu() {
        return f(x);
    }
    let pad = Tensor::zeros((need - m, k), x.dtype(), x.device())?;
    Ok(f(&Tensor::cat(&[x, &pad], 0)?)?.narrow(0, 0, m)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    fn rand_vec(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn matmul_rows_do_not_depend_on_the_row_count() {
        // The default models' projection shapes, a LoRA rank-8 down projection and tiny-model
        // shapes: row 0 and the last row must come out bit-identical for every row count.
        let dev = Device::Cpu;
        for (n, k) in [(192, 576), (576, 1536), (8, 576), (8, 2048), (16, 32), (48, 16), (2, 16), (1, 40)] {
            let w = Tensor::from_vec(rand_vec(1, n * k), (n, k), &dev).unwrap();
            let rows = Tensor::from_vec(rand_vec(2, 140 * k), (140, k), &dev).unwrap();
            let alone = bits(&matmul_nt(&rows.narrow(0, 0, 1).unwrap(), &w).unwrap());
            for m in [1usize, 2, 3, 4, 5, 8, 17, 31, 32, 33, 63, 64, 65, 66, 100, 129, 140] {
                let y = matmul_nt(&rows.narrow(0, 0, m).unwrap(), &w).unwrap();
                assert_eq!(bits(&y.narrow(0, 0, 1).unwrap()), alone, "n {n} k {k} m {m}: row 0");
                let last = matmul_nt(&rows.narrow(0, m - 1, 1).unwrap(), &w).unwrap();
                assert_eq!(bits(&y.narrow(0, m - 1, 1).unwrap()), bits(&last), "n {n} k {k} m {m}: last row");
            }
        }
    }
}
