//! f32 matrix products for the CPU: y = x · wᵀ with w packed once per weight, and y = g · w for
//! the input gradient of a frozen weight, in mores' own microkernels.
//!
//! Why not candle's matmul (the `gemm` crate): it packs the weight afresh on every call (measured
//! at 16% of a probe's CPU time with prefix reuse, since the radix tree runs several small passes
//! per batch), runs its 8-lane AVX2 kernel even where the CPU has AVX-512, and sums each output
//! in an order that depends on the product's shape (`matmul.rs` pads rows to keep one order).
//!
//! Here every output element is one fused multiply-add chain over the depth, from zero, in depth
//! order: `c = fma(x[i][p], w[j][p], c)` for p = 0, 1, .... The SIMD kernels only decide how many
//! elements advance side by side, so a row's result does not depend on the row count, the
//! other rows, the thread split, or the instruction set: the AVX-512, AVX2 and scalar kernels give
//! the same bits (tested). The kernel is chosen once per process from the CPU's features.
pub use super::microkernel::Isa;
use super::microkernel::{panel_job, Out, Src, Q8_DEPTH};
use rayon::prelude::*;

/// A weight w [n, k] stored for y = x · wᵀ: panels of `nr` output columns, each panel holding,
/// for every depth p, the `nr` values w[j][p] side by side (zeros past the last column).
pub struct Packed {
    pub n: usize,
    pub k: usize,
    isa: Isa,
    data: Panels,
}

/// The values of a packed weight.
enum Panels {
    /// f32: panel j's depth p, column c at [(j * k + p) * nr + c].
    F32(Vec<f32>),
    /// A GGUF Q8_0 weight as stored (per row, blocks of 32 int8 values along the depth and one
    /// f16 scale): q at [(j * k + p) * nr + c], the scale of depth block p / 32 at
    /// [(j * k / 32 + p / 32) * nr + c]. Each value is q * d, which is exact in f32 (an 11-bit
    /// significand times an 8-bit integer), so it is the f32 weight candle's dequantization
    /// gives, bit for bit, at a quarter of the bytes. Products dequantize a depth block at a time
    /// into a buffer and run the f32 kernel on it: the same fma chains. For a large output head
    /// multiplied at a few read positions, the bytes streamed from memory are the cost.
    Q8 { q: Vec<i8>, d: Vec<f32> },
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed({} x {}, {:?})", self.n, self.k, self.isa)
    }
}

impl Packed {
    /// Pack w [n, k] (row-major) for `isa`'s kernels.
    pub fn new(w: &[f32], n: usize, k: usize, isa: Isa) -> Packed {
        assert_eq!(w.len(), n * k, "packed weight: {} values for {n} x {k}", w.len());
        let nr = isa.nr();
        let panels = n.div_ceil(nr);
        let mut data = vec![0f32; panels * k * nr];
        if k > 0 {
            data.par_chunks_mut(k * nr).enumerate().for_each(|(j, panel)| {
                for c in 0..nr.min(n - j * nr) {
                    let row = &w[(j * nr + c) * k..(j * nr + c + 1) * k];
                    for (p, &v) in row.iter().enumerate() {
                        panel[p * nr + c] = v;
                    }
                }
            });
        }
        Packed { n, k, isa, data: Panels::F32(data) }
    }

    /// Pack a GGUF Q8_0 weight [n, k] from its stored bytes (per row, k / 32 blocks of a
    /// little-endian f16 scale and 32 int8 values), keeping the int8 values (see [`Panels::Q8`]).
    pub fn from_q8_0(blocks: &[u8], n: usize, k: usize, isa: Isa) -> Result<Packed, String> {
        const BLOCK: usize = 2 + Q8_DEPTH;
        if !k.is_multiple_of(Q8_DEPTH) || blocks.len() != n * (k / Q8_DEPTH) * BLOCK {
            return Err(format!(
                "Q8_0 weight of {n} x {k}: {} bytes, expected {} in blocks of {Q8_DEPTH}",
                blocks.len(),
                n * (k / Q8_DEPTH) * BLOCK
            ));
        }
        let (nr, kb) = (isa.nr(), k / Q8_DEPTH);
        let panels = n.div_ceil(nr);
        let mut q = vec![0i8; panels * k * nr];
        let mut d = vec![0f32; panels * kb * nr];
        if k > 0 {
            q.par_chunks_mut(k * nr).zip(d.par_chunks_mut(kb * nr)).enumerate().for_each(|(j, (qp, dp))| {
                for c in 0..nr.min(n - j * nr) {
                    let row = &blocks[(j * nr + c) * kb * BLOCK..][..kb * BLOCK];
                    for (b, block) in row.chunks_exact(BLOCK).enumerate() {
                        dp[b * nr + c] = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                        for (i, &v) in block[2..].iter().enumerate() {
                            qp[(b * Q8_DEPTH + i) * nr + c] = v as i8;
                        }
                    }
                }
            });
        }
        Ok(Packed { n, k, isa, data: Panels::Q8 { q, d } })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Panels::F32(v) => v.len() * 4,
            Panels::Q8 { q, d } => q.len() + d.len() * 4,
        }
    }

    /// Where panel j's values come from, for the microkernels' `panel_job`.
    fn source(&self) -> Src {
        match &self.data {
            Panels::F32(v) => Src::Packed(v.as_ptr() as usize),
            Panels::Q8 { q, d } => Src::Q8(q.as_ptr() as usize, d.as_ptr() as usize),
        }
    }
}

/// Products below this many multiply-adds run on one thread (rayon's hand-off costs more).
const PARALLEL_MIN: usize = 1 << 18;

/// y [m, n] = x [m, k] · wᵀ for a packed w.
pub fn matmul_packed(x: &[f32], m: usize, w: &Packed, y: &mut [f32]) {
    matmul_packed_many(x, m, &[w], &mut [y])
}

/// y [m, n] = x [m, k] · b, b [k, n] row-major (no packing: panels are column ranges of b).
/// Used for the input gradient of a frozen weight: g [m, out] · w [out, in].
pub fn matmul_nn(x: &[f32], m: usize, k: usize, b: &[f32], n: usize, y: &mut [f32]) {
    matmul_nn_on(Isa::best(), x, m, k, b, n, y, true)
}

/// [`matmul_nn`] on the calling thread only, with the same bits: for many small products that
/// the caller already spreads over the threads (attention's backward, one task per row and KV
/// head), where a fork-join per product would cost more than the product.
pub fn matmul_nn_serial(x: &[f32], m: usize, k: usize, b: &[f32], n: usize, y: &mut [f32]) {
    matmul_nn_on(Isa::best(), x, m, k, b, n, y, false)
}

#[allow(clippy::too_many_arguments)]
fn matmul_nn_on(isa: Isa, x: &[f32], m: usize, k: usize, b: &[f32], n: usize, y: &mut [f32], parallel: bool) {
    assert!(x.len() >= m * k && b.len() >= k * n && y.len() >= m * n, "matmul: buffers too small");
    // SAFETY: each panel j writes only columns j*nr..min(n, j*nr+nr) of y's m rows; its loads
    // stay inside b (masked to the columns that exist) and x (m * k values).
    let one = unsafe { panel_job(isa, x.as_ptr(), m, k, n, Src::Rows(b.as_ptr() as usize)) };
    let y = Out(y.as_mut_ptr());
    let job = |j: usize| one(j, Out(y.at(j * isa.nr())), n);
    if parallel {
        run_jobs(n.div_ceil(isa.nr()), m * n * k, job);
    } else {
        (0..n.div_ceil(isa.nr())).for_each(job);
    }
}

/// ys[i] [m, ws[i].n] = x [m, k] · ws[i]ᵀ: several packed weights over the same input (a
/// layer's q, k and v; its gate and up) as one parallel loop over every weight's panels, so one
/// fork-join instead of one per weight, with a small weight's few panels balanced against a
/// large one's. Each output element is one fma chain in depth order, as for a single weight.
pub fn matmul_packed_many(x: &[f32], m: usize, ws: &[&Packed], ys: &mut [&mut [f32]]) {
    assert_eq!(ws.len(), ys.len(), "packed matmuls: one output per weight");
    let k = ws.first().map_or(0, |w| w.k);
    assert!(x.len() >= m * k, "packed matmuls: input too small");
    for (w, y) in ws.iter().zip(ys.iter()) {
        assert!(w.k == k && y.len() >= m * w.n, "packed matmuls: shapes differ");
    }
    let jobs: Vec<_> = ws
        .iter()
        .zip(ys.iter_mut())
        .map(|(w, y)| {
            // SAFETY: each panel j writes only columns j*nr..min(n, j*nr+nr) of its own output's
            // m rows; panel reads stay inside the panel (k * nr values) and x (m * k values).
            let one = unsafe { panel_job(w.isa, x.as_ptr(), m, k, w.n, w.source()) };
            let (y, nr, n) = (Out(y.as_mut_ptr()), w.isa.nr(), w.n);
            move |j: usize| one(j, Out(y.at(j * nr)), n)
        })
        .collect();
    // Panel t of the flat numbering: weight i's panel t - first[i].
    let mut first = Vec::with_capacity(ws.len() + 1);
    first.push(0);
    for w in ws {
        first.push(first[first.len() - 1] + w.n.div_ceil(w.isa.nr()));
    }
    let flops = ws.iter().map(|w| m * w.n * k).sum();
    run_jobs(first[ws.len()], flops, |t| {
        let i = first.partition_point(|&f| f <= t) - 1;
        jobs[i](t - first[i])
    });
}

/// y [m, n] = act(x · gᵀ, x · uᵀ) for two packed weights of one shape (a gated MLP's gate and
/// up): each pair of panels is computed into two [m, nr] buffers on the thread that owns it and
/// combined there by `act` (element by element), so the gate and up activations never make a
/// round trip through memory and the activation needs no pass of its own. Each product element
/// is [`matmul_packed`]'s fma chain, and `act` sees the same values, so the bits are those of
/// the two products followed by `act` over them.
pub fn matmul_gated(
    x: &[f32],
    m: usize,
    (g, u): (&Packed, &Packed),
    act: fn(&[f32], &[f32], &mut [f32]),
    y: &mut [f32],
) {
    assert!(g.n == u.n && g.k == u.k && g.isa == u.isa, "gated matmul: gate {g:?} and up {u:?} differ");
    let (n, k, nr) = (g.n, g.k, g.isa.nr());
    assert!(x.len() >= m * k && y.len() >= m * n, "gated matmul: buffers too small");
    // SAFETY: each job writes panel j's columns of its own buffers, then those columns of y's
    // m rows; loads stay inside the panels and x (m * k values).
    let (gj, uj) = unsafe {
        (panel_job(g.isa, x.as_ptr(), m, k, n, g.source()), panel_job(u.isa, x.as_ptr(), m, k, n, u.source()))
    };
    let y = Out(y.as_mut_ptr());
    run_jobs(n.div_ceil(nr), 2 * m * n * k, |j| {
        let cols = nr.min(n - j * nr);
        let (mut gb, mut ub, mut ab) = (vec![0f32; m * nr], vec![0f32; m * nr], vec![0f32; m * nr]);
        gj(j, Out(gb.as_mut_ptr()), nr);
        uj(j, Out(ub.as_mut_ptr()), nr);
        // Columns past `cols` hold zeros in both buffers (never stored), and are not copied out.
        act(&gb, &ub, &mut ab);
        for i in 0..m {
            // SAFETY: row i, columns j*nr..j*nr+cols of y: this job's alone.
            let row = unsafe { std::slice::from_raw_parts_mut(y.at(i * n + j * nr), cols) };
            row.copy_from_slice(&ab[i * nr..][..cols]);
        }
    });
}

/// Run `job` for 0..count, on rayon's threads unless the whole product is small (`flops`
/// multiply-adds below [`PARALLEL_MIN`]) or there is one job.
fn run_jobs(count: usize, flops: usize, job: impl Fn(usize) + Sync) {
    if flops < PARALLEL_MIN || count == 1 {
        (0..count).for_each(&job);
    } else {
        (0..count).into_par_iter().for_each(&job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rand_vec(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// The definition: one fma chain per element, depth in order, from zero.
    fn chain(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0f32;
                for p in 0..k {
                    acc = x[i * k + p].mul_add(w[j * k + p], acc);
                }
                y[i * n + j] = acc;
            }
        }
        y
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn every_kernel_gives_the_fma_chain_bit_for_bit() {
        // Edges in both directions: rows not a multiple of any tile, columns past the last panel,
        // one row, one column, depth 1; and the default models' shapes.
        for (m, n, k) in [
            (1, 1, 1),
            (7, 33, 5),
            (9, 17, 64),
            (13, 576, 576),
            (3, 1536, 576),
            (17, 40, 1536),
            (40, 70, 600),
            (5, 3, 0),
            (2, 20, 257),
        ] {
            let x = rand_vec(1, m * k);
            let w = rand_vec(2, n * k);
            let want = bits(&chain(&x, &w, m, n, k));
            // w transposed: [k, n] row-major, for the unpacked product.
            let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            for isa in Isa::available() {
                let mut y = vec![f32::NAN; m * n];
                matmul_packed(&x, m, &Packed::new(&w, n, k, isa), &mut y);
                assert_eq!(bits(&y), want, "{isa:?} packed, m {m} n {n} k {k}");
            }
            for isa in Isa::available() {
                let mut y = vec![f32::NAN; m * n];
                matmul_nn_on(isa, &x, m, k, &wt, n, &mut y, true);
                assert_eq!(bits(&y), want, "{isa:?} unpacked, m {m} n {n} k {k}");
            }
        }
    }

    /// Several weights over one input in one parallel loop give each weight's own product, bit
    /// for bit (small and large weights, a last panel cut short, rows past one tile).
    #[test]
    fn many_products_in_one_loop_equal_each_alone() {
        let (m, k) = (37, 300);
        let x = rand_vec(5, m * k);
        let isa = Isa::best();
        let ws: Vec<Packed> = [576, 40, 192]
            .iter()
            .enumerate()
            .map(|(i, &n)| Packed::new(&rand_vec(6 + i as u64, n * k), n, k, isa))
            .collect();
        let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; m * w.n]).collect();
        let refs: Vec<&Packed> = ws.iter().collect();
        let mut ys: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        matmul_packed_many(&x, m, &refs, &mut ys);
        for (w, got) in ws.iter().zip(&outs) {
            let mut want = vec![f32::NAN; m * w.n];
            matmul_packed(&x, m, w, &mut want);
            assert_eq!(bits(got), bits(&want), "n {}", w.n);
        }
    }

    /// A Q8_0 weight kept as int8 gives the product of candle's f32 dequantization of it, bit
    /// for bit, on every kernel: rows past one tile, a last panel cut short, depth past one block.
    #[test]
    fn q8_0_panels_give_the_dequantized_weights_product_bit_for_bit() {
        use candle_core::quantized::{GgmlDType, QTensor};
        use candle_core::{Device, Tensor};
        for (m, n, k) in [(1, 40, 32), (13, 70, 576), (3, 33, 640), (20, 100, 288)] {
            let w = Tensor::from_vec(rand_vec(8, n * k), (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
            let dense: Vec<f32> = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let x = rand_vec(9, m * k);
            let want = bits(&chain(&x, &dense, m, n, k));
            for isa in Isa::available() {
                let packed = Packed::from_q8_0(&q.data().unwrap(), n, k, isa).unwrap();
                assert!(packed.bytes() * 3 < n.next_multiple_of(isa.nr()) * k * 4, "{isa:?}: int8 storage");
                let mut y = vec![f32::NAN; m * n];
                matmul_packed(&x, m, &packed, &mut y);
                assert_eq!(bits(&y), want, "{isa:?} q8, m {m} n {n} k {k}");
            }
        }
        assert!(Packed::from_q8_0(&[0u8; 33], 1, 32, Isa::Scalar).is_err(), "a short block is refused");
        assert!(Packed::from_q8_0(&[], 1, 33, Isa::Scalar).is_err(), "a depth that is not a multiple of 32");
    }

    /// The gated product is act over the two products, bit for bit (a last panel cut short, rows
    /// past a tile).
    #[test]
    fn gated_product_is_act_of_the_two_products() {
        fn act(g: &[f32], u: &[f32], out: &mut [f32]) {
            for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        }
        let (m, n, k) = (19, 70, 96);
        let isa = Isa::best();
        let x = rand_vec(10, m * k);
        let (gw, uw) = (rand_vec(11, n * k), rand_vec(12, n * k));
        let (g, u) = (Packed::new(&gw, n, k, isa), Packed::new(&uw, n, k, isa));
        let (mut yg, mut yu, mut want) = (vec![0f32; m * n], vec![0f32; m * n], vec![0f32; m * n]);
        matmul_packed(&x, m, &g, &mut yg);
        matmul_packed(&x, m, &u, &mut yu);
        act(&yg, &yu, &mut want);
        let mut got = vec![f32::NAN; m * n];
        matmul_gated(&x, m, (&g, &u), act, &mut got);
        assert_eq!(bits(&got), bits(&want));
    }

    #[test]
    fn a_row_comes_out_the_same_whatever_the_row_count() {
        let (n, k) = (200, 96);
        let w = Packed::new(&rand_vec(3, n * k), n, k, Isa::best());
        let x = rand_vec(4, 70 * k);
        let mut alone = vec![0f32; n];
        matmul_packed(&x[..k], 1, &w, &mut alone);
        for m in [1, 2, 5, 8, 9, 16, 33, 70] {
            let mut y = vec![0f32; m * n];
            matmul_packed(&x[..m * k], m, &w, &mut y);
            assert_eq!(bits(&y[..n]), bits(&alone), "m {m}");
        }
    }
}
