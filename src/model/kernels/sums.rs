//! The fixed-order sums under [`super::attention`]: dot products with eight partial sums folded
//! in a fixed tree, softmax weights, and weighted sums of values, for one query head or for up to
//! [`HEADS_TOGETHER`] heads of a KV group at once (in AVX registers where the CPU has AVX, plain
//! arrays elsewhere: the same bits). Each sum's order depends only on its length, never on the
//! batch, the padding or the instruction set.
/// Dot product with eight partial sums folded in a fixed tree: it vectorises on any x86 level
/// without reassociation, and its order depends only on the length.
#[inline]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
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
/// in order. `dot4` ends the same way, so its sums are [`dot`]'s bit for bit.
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
pub(super) fn axpy(o: &mut [f32], a: f32, x: &[f32]) {
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

/// [`dot`] of one query with four keys at once: each key's sum is exactly [`dot`]'s (the same
/// lanes, the same fold), but the four dependency chains run side by side instead of one after
/// the other, which hides the adds' latency (a 256-wide head is a chain of 32 adds per lane).
/// Kept for [`softmax_weights`], the single-head reference of the tests.
#[cfg(test)]
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
/// single-head reference that the grouped kernels ([`softmax_weights_heads`]) are tested to equal
/// bit for bit.
#[cfg(test)]
#[inline]
pub(super) fn softmax_weights<'k>(
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
pub(super) fn normalise(w: &mut [f32]) {
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
pub(super) const HEADS_TOGETHER: usize = 4;

/// `dot4` for `H` queries (heads of one KV group) against the same four keys: each of the
/// H x 4 sums is exactly [`dot`]'s (same lanes, same fold), with each key chunk loaded once for
/// all H queries. The eight lanes are one 256-bit vector where the CPU has AVX (a multiply, then
/// an add: no fused multiply-add, as in [`dot`]), plain arrays elsewhere: the same bits.
#[inline]
pub(super) fn dot_heads4<const H: usize>(qs: [&[f32]; H], k: [&[f32]; 4]) -> [[f32; 4]; H] {
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

/// `softmax_weights` for `H` query heads at the same position (so the same keys `lo..=qa`):
/// each head's weights are exactly what `softmax_weights` gives it alone.
#[inline]
pub(super) fn softmax_weights_heads<'k, const H: usize>(
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
pub(super) fn weighted_sum_heads<'v, const H: usize>(
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
pub(super) fn weighted_sum<'v>(o: &mut [f32], w: &[f32], lo: usize, value: impl Fn(usize) -> &'v [f32]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rand_vec(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
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
}
