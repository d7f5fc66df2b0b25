//! Batch-invariant CPU kernels for the forward pass (inference, and training through [`AttnOp`]).
//!
//! A prompt's probabilities must not depend on what else is in its batch, how the batch is padded
//! or whether a shared prefix was run as a separate forward. Two things broke that, both measured:
//!
//! - **GEMM shape paths.** candle's CPU matmul calls the `gemm` crate, whose per-element sums run
//!   in one order on its main path (one FMA chain per output element over the depth, cut into
//!   depth blocks chosen from the depth and the cache sizes) but in another on three special
//!   paths picked by the shape: a GEMV for a single row (sums in SIMD lanes over the depth), a
//!   "horizontal" kernel when rows x columns <= 256, and depth blocks of min(depth, 512) instead of
//!   the cache-derived size when both rows and columns are <= 64. A one-token row (the label
//!   branch after a shared prefix) took the GEMV, the same row inside a batch the main path.
//!   Products without gradients now run mores' own GEMM (`gemm.rs`: one fma chain per element
//!   whatever the shape); for the differentiable ones (LoRA factors in training) [`matmul_nt`]
//!   still pads the rows (with zeros, sliced off again) until `gemm`'s main path is taken, so
//!   every row is computed by the same chain whatever the row count.
//! - **Attention over padded keys.** Scores and softmax ran over each row's padded key range;
//!   candle's softmax sums with SIMD lanes anchored at the start of the padded row, so the left
//!   padding moved every real key to another lane. [`attend`] reads each query's visible keys in
//!   absolute-position order, shared prefix first, never touching padding, with one fixed
//!   summation pattern.
//!
//! The tests in this file pin both properties bit for bit; `tests/it/batch.rs` pins the model.
use crate::util::error::{Error, Result};
use candle_core::{Storage, Tensor};
use rayon::prelude::*;

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

/// CPU f32 tensors outside any gradient graph: what mores' own GEMM takes.
pub fn plain_cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && !t.track_op())
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

/// Dot product with eight partial sums folded in a fixed tree: it vectorises on any x86 level
/// without reassociation, and its order depends only on the length.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n8 = a.len() / 8 * 8;
    let mut acc = [0f32; 8];
    for (ca, cb) in a[..n8].chunks_exact(8).zip(b[..n8].chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += ca[l] * cb[l];
        }
    }
    fold8(&acc, a[n8..].iter().zip(&b[n8..]))
}

/// The end of a [`dot`]: eight lane sums folded in a fixed tree, plus the tail's products summed
/// in order. [`dot4`] ends the same way, so its sums are [`dot`]'s bit for bit.
#[inline]
fn fold8<'a>(acc: &[f32; 8], tail: impl Iterator<Item = (&'a f32, &'a f32)>) -> f32 {
    let mut t = 0f32;
    for (x, y) in tail {
        t += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + t
}

/// o += a * x, element by element (no reduction, so the order cannot change a result), in
/// lanes of eight that compile to vector instructions (the plain zip loop stayed scalar).
#[inline]
fn axpy(o: &mut [f32], a: f32, x: &[f32]) {
    let n8 = o.len().min(x.len()) / 8 * 8;
    let (oh, ot) = o.split_at_mut(n8);
    let (xh, xt) = x.split_at(n8);
    for (co, cx) in oh.chunks_exact_mut(8).zip(xh.chunks_exact(8)) {
        for l in 0..8 {
            co[l] += a * cx[l];
        }
    }
    for (oe, xe) in ot.iter_mut().zip(xt) {
        *oe += a * xe;
    }
}

/// Shape of one attention call. Queries q [rows, heads, len, dim]; the batch's own keys and
/// values k, v [rows, kv_heads, len, dim], left-padded by `pad[row]`; each row continues a prefix
/// of `prefix[row]` tokens whose keys and values [kv_heads, prefix[row], dim] are given apart
/// (one prefix shared by every row, or each row its own).
#[derive(Debug, Clone)]
pub struct AttnShape {
    pub rows: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub len: usize,
    pub dim: usize,
    pub prefix: Vec<usize>,
    pub pad: Vec<usize>,
    /// Sliding window: a query sees keys at most `window - 1` positions back.
    pub window: Option<usize>,
    pub scale: f32,
}

/// [`dot`] of one query with four keys at once: each key's sum is exactly [`dot`]'s (the same
/// lanes, the same fold), but the four dependency chains run side by side instead of one after
/// the other, which hides the adds' latency (a 256-wide head is a chain of 32 adds per lane).
#[inline]
fn dot4(a: &[f32], k: [&[f32]; 4]) -> [f32; 4] {
    let n = a.len();
    let n8 = n / 8 * 8;
    let (a8, k8) = (&a[..n8], [&k[0][..n8], &k[1][..n8], &k[2][..n8], &k[3][..n8]]);
    let mut acc = [[0f32; 8]; 4];
    for c in (0..n8).step_by(8) {
        let x: &[f32; 8] = a8[c..c + 8].try_into().expect("eight lanes");
        for (j, kj) in k8.iter().enumerate() {
            let y: &[f32; 8] = kj[c..c + 8].try_into().expect("eight lanes");
            for l in 0..8 {
                acc[j][l] += x[l] * y[l];
            }
        }
    }
    std::array::from_fn(|j| fold8(&acc[j], a[n8..].iter().zip(&k[j][n8..n])))
}

/// Softmax weights of query `qi` over the keys at absolute positions `lo..=qa` (`key(a)` gives
/// each key), written to `w`: scores, max, exponentials and their sum in one fixed order. The
/// forward and the backward both call this, so the backward sees exactly the forward's weights.
#[inline]
fn softmax_weights<'k>(
    qi: &[f32],
    lo: usize,
    qa: usize,
    scale: f32,
    key: impl Fn(usize) -> &'k [f32],
    w: &mut Vec<f32>,
) {
    w.clear();
    let mut a = lo;
    while a + 3 <= qa {
        w.extend(dot4(qi, [key(a), key(a + 1), key(a + 2), key(a + 3)]).map(|x| x * scale));
        a += 4;
    }
    for b in a..=qa {
        w.push(dot(qi, key(b)) * scale);
    }
    normalise(w);
}

/// Scores to softmax weights in place: max, exponentials and their sum in key order.
#[inline]
fn normalise(w: &mut [f32]) {
    // The max is order-free; the sum below runs in key order as before.
    let max = w.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for x in w.iter_mut() {
        *x -= max;
    }
    // expf's bits, vectorised.
    super::exp::exp_in_place(w);
    let mut sum = 0f32;
    for &x in w.iter() {
        sum += x;
    }
    for x in w.iter_mut() {
        *x /= sum;
    }
}

/// Query heads that share one KV head, taken together by [`attend`] and [`attend_tree`]: every
/// key and value row is loaded once for up to this many heads instead of once per head (four
/// heads' 4 x 4 score sums, or 4 x 32 output sums, fill 16 of the AVX registers).
const HEADS_TOGETHER: usize = 4;

/// [`dot4`] for `H` queries (heads of one KV group) against the same four keys: each of the
/// H x 4 sums is exactly [`dot`]'s (same lanes, same fold), with each key chunk loaded once for
/// all H queries. The eight lanes are one 256-bit vector where the CPU has AVX (a multiply, then
/// an add: no fused multiply-add, as in [`dot`]), plain arrays elsewhere: the same bits.
#[inline]
fn dot_heads4<const H: usize>(qs: [&[f32]; H], k: [&[f32]; 4]) -> [[f32; 4]; H] {
    let n = k[0].len();
    assert!(qs.iter().all(|q| q.len() == n) && k.iter().all(|kj| kj.len() == n), "dot_heads4: lengths differ");
    let n8 = n / 8 * 8;
    #[cfg(target_arch = "x86_64")]
    let acc = if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: AVX is present; every load reads 8 values at c < n8 <= the slices' length.
        unsafe { lanes_heads4_avx(qs, k, n8) }
    } else {
        lanes_heads4(qs, k, n8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let acc = lanes_heads4(qs, k, n8);
    std::array::from_fn(|h| std::array::from_fn(|j| fold8(&acc[h][j], qs[h][n8..n].iter().zip(&k[j][n8..n]))))
}

/// The eight lane sums of [`dot_heads4`] over the first `n8` values, portable form.
#[inline]
fn lanes_heads4<const H: usize>(qs: [&[f32]; H], k: [&[f32]; 4], n8: usize) -> [[[f32; 8]; 4]; H] {
    let mut acc = [[[0f32; 8]; 4]; H];
    for c in (0..n8).step_by(8) {
        for (h, acc) in acc.iter_mut().enumerate() {
            for (j, acc) in acc.iter_mut().enumerate() {
                for l in 0..8 {
                    acc[l] += qs[h][c + l] * k[j][c + l];
                }
            }
        }
    }
    acc
}

/// [`lanes_heads4`] in AVX registers (the portable form does not vectorise: its H x 4
/// accumulators stayed on the stack).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn lanes_heads4_avx<const H: usize>(qs: [&[f32]; H], k: [&[f32]; 4], n8: usize) -> [[[f32; 8]; 4]; H] {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 4]; H];
    let mut c = 0;
    while c < n8 {
        // SAFETY (whole block): c + 8 <= n8 <= every slice's length.
        let y: [__m256; 4] = std::array::from_fn(|j| unsafe { _mm256_loadu_ps(k[j].as_ptr().add(c)) });
        for (h, acc) in acc.iter_mut().enumerate() {
            let x = unsafe { _mm256_loadu_ps(qs[h].as_ptr().add(c)) };
            for (a, &yj) in acc.iter_mut().zip(&y) {
                *a = _mm256_add_ps(*a, _mm256_mul_ps(x, yj));
            }
        }
        c += 8;
    }
    let mut out = [[[0f32; 8]; 4]; H];
    for (o, a) in out.iter_mut().zip(&acc) {
        for (o, &a) in o.iter_mut().zip(a) {
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), a) };
        }
    }
    out
}

/// [`softmax_weights`] for `H` query heads at the same position (so the same keys `lo..=qa`):
/// each head's weights are exactly what [`softmax_weights`] gives it alone.
#[inline]
fn softmax_weights_heads<'k, const H: usize>(
    qs: [&[f32]; H],
    lo: usize,
    qa: usize,
    scale: f32,
    key: impl Fn(usize) -> &'k [f32],
    w: &mut [Vec<f32>],
) {
    for wj in w.iter_mut() {
        wj.clear();
    }
    let mut a = lo;
    while a + 3 <= qa {
        let sc = dot_heads4(qs, [key(a), key(a + 1), key(a + 2), key(a + 3)]);
        for (wj, sj) in w.iter_mut().zip(sc) {
            wj.extend(sj.map(|x| x * scale));
        }
        a += 4;
    }
    for b in a..=qa {
        let kb = key(b);
        for (wj, qj) in w.iter_mut().zip(qs) {
            wj.push(dot(qj, kb) * scale);
        }
    }
    for wj in w.iter_mut().take(H) {
        normalise(wj);
    }
}

/// [`weighted_sum`] for `H` heads at once: head j's output starts at `o[j * stride + at]` and
/// gets sum over m of w[j][m] * value(lo + m), each element in key order exactly as
/// [`weighted_sum`] adds it (a multiply, then an add); each value chunk is loaded once for all
/// H heads, and the H x 32 running sums stay in AVX registers where the CPU has AVX.
#[inline]
fn weighted_sum_heads<'v, const H: usize>(
    o: &mut [f32],
    stride: usize,
    at: usize,
    d: usize,
    w: &[Vec<f32>],
    lo: usize,
    value: impl Fn(usize) -> &'v [f32],
) {
    const C: usize = 32;
    let dc = d / C * C;
    let keys = w[0].len();
    assert!(w.len() >= H && w.iter().take(H).all(|wj| wj.len() == keys), "weighted_sum_heads: weights");
    assert!((H - 1) * stride + at + d <= o.len(), "weighted_sum_heads: output");
    for c in (0..dc).step_by(C) {
        let mut acc: [[f32; C]; H] =
            std::array::from_fn(|j| o[j * stride + at + c..][..C].try_into().expect("a chunk"));
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: AVX is present; each value row holds at least c + C <= d values.
            unsafe { chunk_heads_avx(&mut acc, w, lo, c, &value) };
        } else {
            chunk_heads(&mut acc, w, lo, c, &value);
        }
        #[cfg(not(target_arch = "x86_64"))]
        chunk_heads(&mut acc, w, lo, c, &value);
        for (j, acc) in acc.iter().enumerate() {
            o[j * stride + at + c..][..C].copy_from_slice(acc);
        }
    }
    if dc < d {
        for (j, wj) in w.iter().enumerate().take(H) {
            for (m, &wm) in wj.iter().enumerate() {
                axpy(&mut o[j * stride + at + dc..][..d - dc], wm, &value(lo + m)[dc..d]);
            }
        }
    }
}

/// One 32-wide chunk of [`weighted_sum_heads`], portable form.
#[inline]
#[allow(clippy::needless_range_loop)] // key m indexes every head's weights
fn chunk_heads<'v, const H: usize>(
    acc: &mut [[f32; 32]; H],
    w: &[Vec<f32>],
    lo: usize,
    c: usize,
    value: &impl Fn(usize) -> &'v [f32],
) {
    for m in 0..w[0].len() {
        let x = &value(lo + m)[c..c + 32];
        for (j, acc) in acc.iter_mut().enumerate() {
            let wm = w[j][m];
            for l in 0..32 {
                acc[l] += wm * x[l];
            }
        }
    }
}

/// [`chunk_heads`] in AVX registers.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // key m indexes every head's weights
#[target_feature(enable = "avx")]
unsafe fn chunk_heads_avx<'v, const H: usize>(
    acc: &mut [[f32; 32]; H],
    w: &[Vec<f32>],
    lo: usize,
    c: usize,
    value: &impl Fn(usize) -> &'v [f32],
) {
    use std::arch::x86_64::*;
    let mut r: [[__m256; 4]; H] =
        std::array::from_fn(|j| std::array::from_fn(|q| unsafe { _mm256_loadu_ps(acc[j].as_ptr().add(8 * q)) }));
    for m in 0..w[0].len() {
        let x = &value(lo + m)[c..c + 32];
        let xv: [__m256; 4] = std::array::from_fn(|q| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * q)) });
        for (j, r) in r.iter_mut().enumerate() {
            let wm = _mm256_set1_ps(w[j][m]);
            for (rq, &xq) in r.iter_mut().zip(&xv) {
                *rq = _mm256_add_ps(*rq, _mm256_mul_ps(wm, xq));
            }
        }
    }
    for (j, r) in r.iter().enumerate() {
        for (q, &rq) in r.iter().enumerate() {
            unsafe { _mm256_storeu_ps(acc[j].as_mut_ptr().add(8 * q), rq) };
        }
    }
}

/// o += sum over m of w[m] * value(lo + m), each element summed in key order exactly as
/// repeated [`axpy`] calls would (one add per key onto the running value, no reassociation),
/// but 32 elements at a time held in registers across every key instead of loaded and stored
/// once per key.
#[inline]
#[cfg(test)]
fn weighted_sum<'v>(o: &mut [f32], w: &[f32], lo: usize, value: impl Fn(usize) -> &'v [f32]) {
    const C: usize = 32;
    let d = o.len();
    let dc = d / C * C;
    for c in (0..dc).step_by(C) {
        let mut acc: [f32; C] = o[c..c + C].try_into().expect("a chunk");
        for (m, &wm) in w.iter().enumerate() {
            let x: &[f32; C] = value(lo + m)[c..c + C].try_into().expect("a chunk");
            for l in 0..C {
                acc[l] += wm * x[l];
            }
        }
        o[c..c + C].copy_from_slice(&acc);
    }
    if dc < d {
        for (m, &wm) in w.iter().enumerate() {
            axpy(&mut o[dc..], wm, &value(lo + m)[dc..d]);
        }
    }
}

/// Runs of up to [`HEADS_TOGETHER`] query heads of one KV group: (first head, heads).
fn head_runs(heads: usize, kv_heads: usize) -> Vec<(usize, usize)> {
    let group = heads / kv_heads;
    let mut runs = Vec::with_capacity(heads);
    for g in 0..kv_heads {
        let mut c = 0;
        while c < group {
            let m = HEADS_TOGETHER.min(group - c);
            runs.push((g * group + c, m));
            c += m;
        }
    }
    runs
}

/// One query position for a run of `w.len()` heads (at most [`HEADS_TOGETHER`]; head j's query
/// is `q(j)`) over the keys `lo..=qa`: softmax weights into `w`, the weighted values added to
/// head j's output at `o[j * stride + at]`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn attend_heads<'k>(
    q: impl Fn(usize) -> &'k [f32],
    lo: usize,
    qa: usize,
    scale: f32,
    key: impl Fn(usize) -> &'k [f32],
    value: impl Fn(usize) -> &'k [f32],
    w: &mut [Vec<f32>],
    o: &mut [f32],
    (stride, at, d): (usize, usize, usize),
) {
    macro_rules! heads {
        ($hn:literal) => {{
            softmax_weights_heads::<$hn>(std::array::from_fn(q), lo, qa, scale, key, w);
            weighted_sum_heads::<$hn>(o, stride, at, d, w, lo, value);
        }};
    }
    match w.len() {
        1 => heads!(1),
        2 => heads!(2),
        3 => heads!(3),
        4 => heads!(4),
        n => unreachable!("attention: {n} heads in one run"),
    }
}

/// One row's prefix keys and values, [kv_heads, prefix, dim] each (empty without a prefix).
pub type PrefixKv<'a> = (&'a [f32], &'a [f32]);

/// Causal softmax attention, returned as [rows, len, heads * dim]. Each real query attends to
/// absolute positions max(0, q - window + 1)..=q in that order; padding queries give zeros. One
/// task per row and run of heads sharing a KV head ([`attend_heads`]); each head's numbers are
/// those of [`softmax_weights`] and `weighted_sum` run for it alone (tested).
/// `pre[row]`: the row's prefix keys and values (may be empty when no row has a prefix).
pub fn attend(s: &AttnShape, q: &[f32], k: &[f32], v: &[f32], pre: &[PrefixKv]) -> Vec<f32> {
    let (t, d, h) = (s.len, s.dim, s.heads);
    let group = h / s.kv_heads;
    let runs = head_runs(h, s.kv_heads);
    let tasks: Vec<(usize, usize, usize)> =
        (0..s.rows).flat_map(|r| runs.iter().map(move |&(h0, hc)| (r, h0, hc))).collect();
    let parts: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(r, h0, hc)| {
            let g = h0 / group;
            let (pad, p) = (s.pad[r], s.prefix[r]);
            let own = (r * s.kv_heads + g) * t * d;
            let (ks, vs) = (&k[own..][..t * d], &v[own..][..t * d]);
            let (pks, pvs): (&[f32], &[f32]) =
                if p > 0 { (&pre[r].0[g * p * d..][..p * d], &pre[r].1[g * p * d..][..p * d]) } else { (&[], &[]) };
            // Absolute key position a: row a of the prefix, or row pad + a - p of this row's own.
            let key = |a: usize| if a < p { &pks[a * d..(a + 1) * d] } else { &ks[(pad + a - p) * d..][..d] };
            let value = |a: usize| if a < p { &pvs[a * d..(a + 1) * d] } else { &vs[(pad + a - p) * d..][..d] };
            // Head j's output for query i at o[(j * t + i) * d].
            let mut o = vec![0f32; hc * t * d];
            let mut w: Vec<Vec<f32>> = (0..hc).map(|_| Vec::with_capacity(p + t)).collect();
            for i in pad..t {
                let qa = p + i - pad;
                let lo = s.window.map_or(0, |win| (qa + 1).saturating_sub(win));
                let qj = |j: usize| &q[((r * h + h0 + j) * t + i) * d..][..d];
                attend_heads(qj, lo, qa, s.scale, key, value, &mut w, &mut o, (t * d, i * d, d));
            }
            o
        })
        .collect();
    let mut out = vec![0f32; s.rows * t * h * d];
    for (&(r, h0, hc), o) in tasks.iter().zip(parts) {
        for j in 0..hc {
            for i in 0..t {
                out[((r * t + i) * h + h0 + j) * d..][..d].copy_from_slice(&o[(j * t + i) * d..][..d]);
            }
        }
    }
    out
}

/// Where a run of keys lives: this batch's own keys (flat token index) or an external prefix
/// (its index in the list given to [`attend_tree`]; row index inside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Own,
    Ext(usize),
}

/// One node of a radix tree run as part of a single flat row ([`attend_tree`]): `len` tokens at
/// flat indices `start..`, absolute positions `pos..`; the keys before `pos` are the runs in
/// `before` (source, first row in it, count), which cover positions 0..pos in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeNode {
    pub start: usize,
    pub len: usize,
    pub pos: usize,
    pub before: Vec<(KeySource, usize, usize)>,
}

/// [`attend`] for a whole radix tree in one pass. q [1, heads, n, dim] and the own keys and
/// values k, v [1, kv_heads, n, dim] hold every node's tokens back to back (no padding); a
/// node's queries attend to its path's keys, which come from earlier nodes of the same row or
/// from external prefixes `ext` ([kv_heads, len, dim] each). Keys are read in absolute-position
/// order with [`attend`]'s arithmetic, so every query gets the bits it would get in its whole
/// row. Returns [n, heads * dim].
pub fn attend_tree(s: &AttnShape, q: &[f32], k: &[f32], v: &[f32], ext: &[PrefixKv], nodes: &[TreeNode]) -> Vec<f32> {
    let (n, d, h) = (s.len, s.dim, s.heads);
    let group = h / s.kv_heads;
    // One task per node and run of heads sharing a KV head: (node, first head, heads).
    let runs = head_runs(h, s.kv_heads);
    let tasks: Vec<(usize, usize, usize)> =
        (0..nodes.len()).flat_map(|ni| runs.iter().map(move |&(h0, hc)| (ni, h0, hc))).collect();
    let parts: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(ni, h0, hc)| {
            let node = &nodes[ni];
            let g = h0 / group;
            // Every key and value row of the node's path, by absolute position.
            let total = node.pos + node.len;
            let (mut keys, mut values): (Vec<&[f32]>, Vec<&[f32]>) =
                (Vec::with_capacity(total), Vec::with_capacity(total));
            let mut push = |src: KeySource, first: usize, count: usize| {
                let (ks, vs, rows) = match src {
                    KeySource::Own => (k, v, n),
                    KeySource::Ext(i) => (ext[i].0, ext[i].1, ext[i].0.len() / (s.kv_heads * d)),
                };
                for a in first..first + count {
                    keys.push(&ks[(g * rows + a) * d..][..d]);
                    values.push(&vs[(g * rows + a) * d..][..d]);
                }
            };
            for &(src, first, count) in &node.before {
                push(src, first, count);
            }
            push(KeySource::Own, node.start, node.len);
            // Head j's output for the node's query i at o[(j * len + i) * d].
            let mut o = vec![0f32; hc * node.len * d];
            let mut w: Vec<Vec<f32>> = (0..hc).map(|_| Vec::with_capacity(total)).collect();
            let stride = node.len * d;
            for i in 0..node.len {
                let qa = node.pos + i;
                let lo = s.window.map_or(0, |win| (qa + 1).saturating_sub(win));
                let qj = |j: usize| &q[((h0 + j) * n + node.start + i) * d..][..d];
                let (key, value) = (|a: usize| keys[a], |a: usize| values[a]);
                attend_heads(qj, lo, qa, s.scale, key, value, &mut w, &mut o, (stride, i * d, d));
            }
            o
        })
        .collect();
    let mut out = vec![0f32; n * h * d];
    for (&(ni, h0, hc), o) in tasks.iter().zip(parts) {
        let node = &nodes[ni];
        for j in 0..hc {
            for i in 0..node.len {
                out[((node.start + i) * h + h0 + j) * d..][..d].copy_from_slice(&o[(j * node.len + i) * d..][..d]);
            }
        }
    }
    out
}

/// Gradients of [`attend`] (no prefix: training batches have none) with respect to q, k and v,
/// given the output gradient `go` [rows, len, heads * dim]. The probabilities are recomputed
/// with the forward's exact arithmetic; one task per (row, KV head) owns that group's key and
/// value gradients and its query heads' query gradients, so nothing is summed across tasks.
pub fn attend_backward(s: &AttnShape, q: &[f32], k: &[f32], v: &[f32], go: &[f32]) -> [Vec<f32>; 3] {
    let (t, d, h, kvh) = (s.len, s.dim, s.heads, s.kv_heads);
    let group = h / kvh;
    let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..s.rows * kvh)
        .into_par_iter()
        .map(|rg| {
            let (r, g) = (rg / kvh, rg % kvh);
            let pad = s.pad[r];
            let ks = &k[rg * t * d..][..t * d];
            let vs = &v[rg * t * d..][..t * d];
            let (mut dq, mut dk, mut dv) = (vec![0f32; group * t * d], vec![0f32; t * d], vec![0f32; t * d]);
            let (mut p, mut dp) = (Vec::with_capacity(t), Vec::with_capacity(t));
            for j in 0..group {
                let hh = g * group + j;
                let qs = &q[(r * h + hh) * t * d..][..t * d];
                for i in pad..t {
                    let qa = i - pad;
                    let lo = s.window.map_or(0, |win| (qa + 1).saturating_sub(win));
                    let qi = &qs[i * d..(i + 1) * d];
                    let gi = &go[((r * t + i) * h + hh) * d..][..d];
                    softmax_weights(qi, lo, qa, s.scale, |a| &ks[(pad + a) * d..][..d], &mut p);
                    dp.clear();
                    let mut dsum = 0f32;
                    for (n, a) in (lo..=qa).enumerate() {
                        let g = dot(gi, &vs[(pad + a) * d..][..d]);
                        dp.push(g);
                        dsum += p[n] * g;
                    }
                    let dqi = &mut dq[(j * t + i) * d..][..d];
                    for (n, a) in (lo..=qa).enumerate() {
                        let ds = p[n] * (dp[n] - dsum) * s.scale;
                        let row = (pad + a) * d;
                        // Three vectorised updates; each element sees the same operations.
                        axpy(dqi, ds, &ks[row..row + d]);
                        axpy(&mut dk[row..row + d], ds, qi);
                        axpy(&mut dv[row..row + d], p[n], gi);
                    }
                }
            }
            (dq, dk, dv)
        })
        .collect();
    let (mut dq, mut dk, mut dv) = (vec![0f32; s.rows * h * t * d], Vec::new(), Vec::new());
    for (rg, (q_part, k_part, v_part)) in parts.into_iter().enumerate() {
        let (r, g) = (rg / kvh, rg % kvh);
        dq[(r * h + g * group) * t * d..][..group * t * d].copy_from_slice(&q_part);
        dk.extend(k_part);
        dv.extend(v_part);
    }
    [dq, dk, dv]
}

/// [`attend`] as a differentiable candle op on (q, k, v) with no shared prefix (`prefix` must be
/// 0): the training path, so that a training example's loss does not depend on the micro-batch it
/// is in either.
pub struct AttnOp(pub AttnShape);

pub fn cpu_f32<'a>(s: &'a candle_core::CpuStorage, l: &candle_core::Layout) -> candle_core::Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(v) = s else { candle_core::bail!("attention: f32 only") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("attention: input not contiguous") };
    Ok(&v[a..b])
}

impl candle_core::CustomOp3 for AttnOp {
    fn name(&self) -> &'static str {
        "batch-invariant-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let s = &self.0;
        if s.prefix.iter().any(|&p| p != 0) {
            candle_core::bail!("attention: the differentiable kernel takes no shared prefix")
        }
        let out = attend(s, cpu_f32(s1, l1)?, cpu_f32(s2, l2)?, cpu_f32(s3, l3)?, &[]);
        Ok((candle_core::CpuStorage::F32(out), (s.rows, s.len, s.heads * s.dim).into()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let [dq, dk, dv] = with_f32s(&[q, k, v, &grad], |x| attend_backward(&self.0, x[0], x[1], x[2], x[3]))
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// Run `f` on the f32 elements of contiguous CPU tensors without copying them.
pub fn with_f32s<R>(ts: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> R) -> Result<R> {
    let held: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(held.len());
    for (storage, layout) in &held {
        let Storage::Cpu(cpu) = &**storage else {
            return Err(Error::Invalid("internal: kernel input is not a CPU tensor".into()));
        };
        slices.push(cpu_f32(cpu, layout)?);
    }
    Ok(f(&slices))
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

    /// One unpadded row of `t` positions without a prefix, scale 0.3.
    fn one_row((h, kv, t, d): (usize, usize, usize, usize), win: Option<usize>) -> AttnShape {
        AttnShape {
            rows: 1,
            heads: h,
            kv_heads: kv,
            len: t,
            dim: d,
            prefix: vec![0],
            pad: vec![0],
            window: win,
            scale: 0.3,
        }
    }

    /// One row's attention, computed alone with no padding and no prefix.
    fn single(qkv: [&[f32]; 3], dims: (usize, usize, usize, usize), win: Option<usize>) -> Vec<f32> {
        attend_per_head(&one_row(dims, win), qkv[0], qkv[1], qkv[2])
    }

    /// The reference: [`attend`] one head at a time with [`softmax_weights`] and
    /// [`weighted_sum`] (no prefix), as it ran before heads were grouped.
    fn attend_per_head(s: &AttnShape, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let (t, d, h) = (s.len, s.dim, s.heads);
        let group = h / s.kv_heads;
        let mut out = vec![0f32; s.rows * t * h * d];
        for r in 0..s.rows {
            for hh in 0..h {
                let own = (r * s.kv_heads + hh / group) * t * d;
                let (ks, vs, pad) = (&k[own..][..t * d], &v[own..][..t * d], s.pad[r]);
                let mut w = Vec::new();
                for i in pad..t {
                    let qa = i - pad;
                    let lo = s.window.map_or(0, |win| (qa + 1).saturating_sub(win));
                    let qi = &q[((r * h + hh) * t + i) * d..][..d];
                    softmax_weights(qi, lo, qa, s.scale, |a| &ks[(pad + a) * d..][..d], &mut w);
                    let o = &mut out[((r * t + i) * h + hh) * d..][..d];
                    weighted_sum(o, &w, lo, |a| &vs[(pad + a) * d..][..d]);
                }
            }
        }
        out
    }

    #[test]
    fn attention_is_the_same_padded_batched_or_after_a_prefix() {
        let (h, kv, d, t) = (4, 2, 12, 9);
        for win in [None, Some(4)] {
            let q = rand_vec(3, h * t * d);
            let k = rand_vec(4, kv * t * d);
            let v = rand_vec(5, kv * t * d);
            let want = single([&q, &k, &v], (h, kv, t, d), win);
            // Row 1 of a batch of two, left-padded by 3 (row 0 is other data, length t + 3).
            let tp = t + 3;
            let pad_rows = |x: &[f32], heads: usize, other: u64| -> Vec<f32> {
                let mut out = rand_vec(other, heads * tp * d);
                for hh in 0..heads {
                    let mut row = vec![0f32; 3 * d];
                    row.extend_from_slice(&x[hh * t * d..(hh + 1) * t * d]);
                    out.extend(row);
                }
                out
            };
            let s = AttnShape {
                rows: 2,
                heads: h,
                kv_heads: kv,
                len: tp,
                dim: d,
                prefix: vec![0, 0],
                pad: vec![0, 3],
                window: win,
                scale: 0.3,
            };
            let got = attend(&s, &pad_rows(&q, h, 6), &pad_rows(&k, kv, 7), &pad_rows(&v, kv, 8), &[]);
            let got_row1 = &got[tp * h * d..];
            assert_eq!(&got_row1[3 * h * d..], &want[..], "window {win:?}: padded batch");
            // The first 5 positions as a shared prefix, the last 4 as the row.
            let split = |x: &[f32], heads: usize, from: usize, to: usize| -> Vec<f32> {
                (0..heads).flat_map(|hh| x[(hh * t + from) * d..(hh * t + to) * d].to_vec()).collect()
            };
            let s = AttnShape {
                rows: 1,
                heads: h,
                kv_heads: kv,
                len: 4,
                dim: d,
                prefix: vec![5],
                pad: vec![0],
                window: win,
                scale: 0.3,
            };
            let (pk, pv) = (split(&k, kv, 0, 5), split(&v, kv, 0, 5));
            let got = attend(&s, &split(&q, h, 5, t), &split(&k, kv, 5, t), &split(&v, kv, 5, t), &[(&pk, &pv)]);
            assert_eq!(&got[..], &want[5 * h * d..], "window {win:?}: after a prefix");
        }
    }

    /// Four keys at once give each key's `dot` bits, for lengths with and without a tail.
    #[test]
    fn dot4_gives_dots_bits() {
        for n in [1, 7, 8, 64, 67, 256] {
            let q = rand_vec(20, n);
            let keys: Vec<Vec<f32>> = (0..4).map(|j| rand_vec(21 + j, n)).collect();
            let four = dot4(&q, [&keys[0], &keys[1], &keys[2], &keys[3]]);
            for (j, k) in keys.iter().enumerate() {
                assert_eq!(four[j].to_bits(), dot(&q, k).to_bits(), "length {n}, key {j}");
            }
        }
    }

    /// The portable forms of the grouped attention loops give the AVX forms' bits, so machines
    /// without AVX score the same probabilities.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn grouped_attention_portable_and_avx_agree() {
        if !std::arch::is_x86_feature_detected!("avx") {
            return;
        }
        let n = 72;
        let qs: Vec<Vec<f32>> = (0..3).map(|j| rand_vec(40 + j, n)).collect();
        let ks: Vec<Vec<f32>> = (0..4).map(|j| rand_vec(50 + j, n)).collect();
        let (q, k) = ([&qs[0][..], &qs[1], &qs[2]], [&ks[0][..], &ks[1], &ks[2], &ks[3]]);
        let portable = lanes_heads4(q, k, 64);
        // SAFETY: AVX checked above; 64 <= every length.
        let avx = unsafe { lanes_heads4_avx(q, k, 64) };
        assert_eq!(portable.map(|h| h.map(|l| l.map(f32::to_bits))), avx.map(|h| h.map(|l| l.map(f32::to_bits))));
        let w: Vec<Vec<f32>> = (0..3).map(|j| rand_vec(60 + j, 5)).collect();
        let values: Vec<Vec<f32>> = (0..7).map(|m| rand_vec(70 + m, 64)).collect();
        let value = |a: usize| &values[a][..];
        let start: [[f32; 32]; 3] = std::array::from_fn(|j| rand_vec(80 + j as u64, 32).try_into().unwrap());
        let (mut a, mut b) = (start, start);
        chunk_heads(&mut a, &w, 2, 32, &value);
        // SAFETY: AVX checked above; every value row holds 64 values.
        unsafe { chunk_heads_avx(&mut b, &w, 2, 32, &value) };
        assert_eq!(a.map(|r| r.map(f32::to_bits)), b.map(|r| r.map(f32::to_bits)));
    }

    /// A radix tree in one flat row (a cached prefix of 2 positions, a shared node of 3, two
    /// branches of 4 and 3) gives every query the bits of its whole row, with and without a
    /// window that cuts into the cached prefix; for KV groups of 1 to 8 query heads (taken up to
    /// four at a time) and head widths with and without a tail past the SIMD chunks.
    #[test]
    fn tree_attention_equals_whole_rows() {
        let (ta, tb) = (9, 8);
        let shapes = [(4, 2, 12), (4, 1, 64), (9, 3, 40), (5, 1, 36), (8, 1, 32), (3, 3, 16)];
        for ((h, kv, d), win) in shapes.into_iter().flat_map(|s| [(s, None), (s, Some(4))]) {
            let (qa, ka, va) = (rand_vec(10, h * ta * d), rand_vec(11, kv * ta * d), rand_vec(12, kv * ta * d));
            // Row b: row a's first 5 positions, then 3 of its own.
            let (qo, ko, vo) = (rand_vec(13, h * 3 * d), rand_vec(14, kv * 3 * d), rand_vec(15, kv * 3 * d));
            let join = |a: &[f32], o: &[f32], heads: usize| -> Vec<f32> {
                (0..heads)
                    .flat_map(|hh| {
                        a[hh * ta * d..(hh * ta + 5) * d].iter().chain(&o[hh * 3 * d..(hh + 1) * 3 * d]).copied()
                    })
                    .collect()
            };
            let (qb, kb, vb) = (join(&qa, &qo, h), join(&ka, &ko, kv), join(&va, &vo, kv));
            let want_a = single([&qa, &ka, &va], (h, kv, ta, d), win);
            let want_b = single([&qb, &kb, &vb], (h, kv, tb, d), win);
            // Per head, positions from..to of x (laid out [heads, len, d]).
            let cut = |x: &[f32], heads: usize, len: usize, from: usize, to: usize| -> Vec<Vec<f32>> {
                (0..heads).map(|hh| x[(hh * len + from) * d..(hh * len + to) * d].to_vec()).collect()
            };
            // Flat row: node P = a[2..5], node A = a[5..9], node B = b[5..8].
            let flat = |x: &[f32], y: &[f32], heads: usize| -> Vec<f32> {
                let parts = [cut(x, heads, ta, 2, 5), cut(x, heads, ta, 5, 9), cut(y, heads, tb, 5, 8)];
                (0..heads).flat_map(|hh| parts.iter().flat_map(move |p| p[hh].clone())).collect()
            };
            let (q, k, v) = (flat(&qa, &qb, h), flat(&ka, &kb, kv), flat(&va, &vb, kv));
            let (pk, pv) = (cut(&ka, kv, ta, 0, 2).concat(), cut(&va, kv, ta, 0, 2).concat());
            let nodes = vec![
                TreeNode { start: 0, len: 3, pos: 2, before: vec![(KeySource::Ext(0), 0, 2)] },
                TreeNode { start: 3, len: 4, pos: 5, before: vec![(KeySource::Ext(0), 0, 2), (KeySource::Own, 0, 3)] },
                TreeNode { start: 7, len: 3, pos: 5, before: vec![(KeySource::Ext(0), 0, 2), (KeySource::Own, 0, 3)] },
            ];
            let got = attend_tree(&one_row((h, kv, 10, d), win), &q, &k, &v, &[(&pk, &pv)], &nodes);
            let row = h * d;
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let at = format!("heads {h}, kv heads {kv}, dim {d}, window {win:?}");
            assert_eq!(bits(&got[..3 * row]), bits(&want_a[2 * row..5 * row]), "{at}: shared node");
            assert_eq!(bits(&got[3 * row..7 * row]), bits(&want_a[5 * row..]), "{at}: branch a");
            assert_eq!(bits(&got[7 * row..]), bits(&want_b[5 * row..]), "{at}: branch b");
        }
    }
}
