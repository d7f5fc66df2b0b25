//! Attention in training: the differentiable op ([`AttnOp`]) and its backward pass (no shared
//! prefix), as matrix products on mores' GEMM.
//!
//! Per row and query head, over the row's L real positions only (its padding never enters):
//! scores S = Q Kᵀ, probabilities P = softmax(scale S) under the causal mask and window, then
//! dP = dO Vᵀ, dS = P ∘ (dP − rowsum(P ∘ dP)) · scale, dQ = dS K; the heads of one KV group
//! are stacked along the depth so dK = Σ_j dS_jᵀ Q_j and dV = Σ_j P_jᵀ dO_j are one product
//! each. Masked entries of P and dS are zero, which adds nothing to a product's fma chain.
//!
//! Each product element is [`super::gemm`]'s fma chain in depth order, whatever the row count,
//! so a row's gradients depend on its own tokens only: not on the other rows of the batch, its
//! padding, or the instruction set. The products run 64-wide rows at the GEMM's rate where the
//! dot and axpy loops this replaces ran one key at a time (tested equal within rounding).
use super::attention::{attend, AttnShape};
use super::gemm::matmul_nn_serial;
use super::linear_ops::transpose;
use super::sums::normalise;
use super::tensor::{cpu_f32, with_f32s};
use candle_core::Tensor;
use rayon::prelude::*;

/// Gradients of [`super::attention::attend`] (no prefix: training batches have none) with
/// respect to q [rows, heads, len, dim], k and v [rows, kv_heads, len, dim], given the output
/// gradient `go` [rows, len, heads * dim]. One task per (row, KV head) owns that group's key and
/// value gradients and its query heads' query gradients, so nothing is summed across tasks.
/// Padding positions get zero gradients.
pub fn attend_backward(s: &AttnShape, q: &[f32], k: &[f32], v: &[f32], go: &[f32]) -> [Vec<f32>; 3] {
    let (t, d, h, kvh) = (s.len, s.dim, s.heads, s.kv_heads);
    let group = h / kvh;
    let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> =
        (0..s.rows * kvh).into_par_iter().map(|rg| group_backward(s, rg, q, k, v, go)).collect();
    let (mut dq, mut dk, mut dv) = (vec![0f32; s.rows * h * t * d], Vec::new(), Vec::new());
    for (rg, (q_part, k_part, v_part)) in parts.into_iter().enumerate() {
        let (r, g) = (rg / kvh, rg % kvh);
        dq[(r * h + g * group) * t * d..][..group * t * d].copy_from_slice(&q_part);
        dk.extend(k_part);
        dv.extend(v_part);
    }
    [dq, dk, dv]
}

/// One (row, KV head) task of [`attend_backward`]: the group's query gradients [group, len,
/// dim] and the KV head's key and value gradients [len, dim].
fn group_backward(
    s: &AttnShape,
    rg: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    go: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (t, d, h, kvh) = (s.len, s.dim, s.heads, s.kv_heads);
    let group = h / kvh;
    let (r, g) = (rg / kvh, rg % kvh);
    let pad = s.pad[r];
    let (mut dq, mut dk, mut dv) = (vec![0f32; group * t * d], vec![0f32; t * d], vec![0f32; t * d]);
    let l = t - pad;
    if l == 0 || d == 0 {
        return (dq, dk, dv);
    }
    // The row's real keys and values [l, d], and their transposes [d, l] for S and dP.
    let ks = &k[(rg * t + pad) * d..][..l * d];
    let vs = &v[(rg * t + pad) * d..][..l * d];
    let (kt, vt) = (transpose(ks, l, d), transpose(vs, l, d));
    // The group's queries and output gradients stacked by head [group * l, d], and the
    // transposed probabilities and score gradients side by side [l, group * l]: column j * l + i
    // holds query i of head j.
    let wide = group * l;
    let (mut qs, mut gs) = (vec![0f32; wide * d], vec![0f32; wide * d]);
    let (mut pt, mut dst) = (vec![0f32; l * wide], vec![0f32; l * wide]);
    let (mut p, mut ds) = (vec![0f32; l * l], vec![0f32; l * l]);
    for j in 0..group {
        let hh = g * group + j;
        let qj = &mut qs[j * l * d..][..l * d];
        qj.copy_from_slice(&q[((r * h + hh) * t + pad) * d..][..l * d]);
        let gj = &mut gs[j * l * d..][..l * d];
        for (i, gi) in gj.chunks_exact_mut(d).enumerate() {
            gi.copy_from_slice(&go[((r * t + pad + i) * h + hh) * d..][..d]);
        }
        matmul_nn_serial(qj, l, d, &kt, l, &mut p);
        matmul_nn_serial(gj, l, d, &vt, l, &mut ds);
        for i in 0..l {
            let lo = s.window.map_or(0, |win| (i + 1).saturating_sub(win));
            let (pi, di) = (&mut p[i * l..][..l], &mut ds[i * l..][..l]);
            let w = &mut pi[lo..=i];
            for x in w.iter_mut() {
                *x *= s.scale;
            }
            normalise(w);
            let mut dsum = 0f32;
            for a in lo..=i {
                dsum += pi[a] * di[a];
            }
            for a in lo..=i {
                di[a] = pi[a] * (di[a] - dsum) * s.scale;
                pt[a * wide + j * l + i] = pi[a];
                dst[a * wide + j * l + i] = di[a];
            }
            // dS's masked entries enter dQ's product below; P's are read only through `pt`.
            di[..lo].fill(0.0);
            di[i + 1..].fill(0.0);
        }
        matmul_nn_serial(&ds, l, l, ks, d, &mut dq[(j * t + pad) * d..][..l * d]);
    }
    matmul_nn_serial(&dst, l, wide, &qs, d, &mut dk[pad * d..]);
    matmul_nn_serial(&pt, l, wide, &gs, d, &mut dv[pad * d..]);
    (dq, dk, dv)
}

/// [`attend`] as a differentiable candle op on (q, k, v) with no shared prefix (`prefix` must be
/// 0): the training path, so that a training example's loss does not depend on the micro-batch it
/// is in either.
pub struct AttnOp(pub AttnShape);
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

#[cfg(test)]
mod tests {
    use super::super::sums::{axpy, dot, softmax_weights};
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rand_vec(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// The reference: one query at a time, the probabilities recomputed with the forward's
    /// arithmetic, then dot and axpy over each key (the kernel's earlier form): what the
    /// products must equal within rounding.
    fn per_query(s: &AttnShape, q: &[f32], k: &[f32], v: &[f32], go: &[f32]) -> [Vec<f32>; 3] {
        let (t, d, h, kvh) = (s.len, s.dim, s.heads, s.kv_heads);
        let group = h / kvh;
        let (mut dq, mut dk, mut dv) = (vec![0f32; q.len()], vec![0f32; k.len()], vec![0f32; v.len()]);
        let mut p = Vec::new();
        for r in 0..s.rows {
            let pad = s.pad[r];
            for hh in 0..h {
                let rg = r * kvh + hh / group;
                let ks = &k[rg * t * d..][..t * d];
                let vs = &v[rg * t * d..][..t * d];
                for i in pad..t {
                    let qa = i - pad;
                    let lo = s.window.map_or(0, |win| (qa + 1).saturating_sub(win));
                    let qi = &q[((r * h + hh) * t + i) * d..][..d];
                    let gi = &go[((r * t + i) * h + hh) * d..][..d];
                    softmax_weights(qi, lo, qa, s.scale, |a| &ks[(pad + a) * d..][..d], &mut p);
                    let dp: Vec<f32> = (lo..=qa).map(|a| dot(gi, &vs[(pad + a) * d..][..d])).collect();
                    let dsum: f32 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                    for (n, a) in (lo..=qa).enumerate() {
                        let dsn = p[n] * (dp[n] - dsum) * s.scale;
                        let row = (rg * t + pad + a) * d;
                        axpy(&mut dq[((r * h + hh) * t + i) * d..][..d], dsn, &k[row..row + d]);
                        axpy(&mut dk[row..row + d], dsn, qi);
                        axpy(&mut dv[row..row + d], p[n], gi);
                    }
                }
            }
        }
        [dq, dk, dv]
    }

    fn shape(
        rows: usize,
        (h, kv, t, d): (usize, usize, usize, usize),
        pad: Vec<usize>,
        win: Option<usize>,
    ) -> AttnShape {
        AttnShape { rows, heads: h, kv_heads: kv, len: t, dim: d, prefix: vec![0; rows], pad, window: win, scale: 0.3 }
    }

    /// The products give the per-query loops' gradients within rounding, for grouped and
    /// ungrouped heads, with and without a window, padded rows included.
    #[test]
    fn products_equal_the_per_query_gradients() {
        for ((h, kv, t, d), win) in [((4, 2, 9, 12), None), ((3, 3, 7, 64), Some(3)), ((6, 2, 20, 17), None)] {
            let s = shape(2, (h, kv, t, d), vec![0, 3], win);
            let q = rand_vec(1, 2 * h * t * d);
            let (k, v) = (rand_vec(2, 2 * kv * t * d), rand_vec(3, 2 * kv * t * d));
            let go = rand_vec(4, 2 * t * h * d);
            let got = attend_backward(&s, &q, &k, &v, &go);
            let want = per_query(&s, &q, &k, &v, &go);
            for (name, (a, b)) in ["q", "k", "v"].iter().zip(got.iter().zip(&want)) {
                let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                assert!(worst < 1e-5, "heads {h}/{kv}, len {t}, dim {d}, window {win:?}: d{name} differs by {worst}");
            }
        }
    }

    /// A row's gradients are the same bits alone or left-padded in a batch beside other rows.
    #[test]
    fn a_rows_gradients_do_not_depend_on_its_batch() {
        let (h, kv, t, d) = (4, 2, 11, 64);
        let alone = shape(1, (h, kv, t, d), vec![0], None);
        let (q, k, v, go) =
            (rand_vec(5, h * t * d), rand_vec(6, kv * t * d), rand_vec(7, kv * t * d), rand_vec(8, t * h * d));
        let want = attend_backward(&alone, &q, &k, &v, &go);
        // Row 1 of two, padded by 4 on the left; row 0 other data.
        let tp = t + 4;
        let heads_padded = |x: &[f32], heads: usize, other: u64| -> Vec<f32> {
            let mut out = rand_vec(other, heads * tp * d);
            for hh in 0..heads {
                out.extend(vec![0.5f32; 4 * d]);
                out.extend_from_slice(&x[hh * t * d..][..t * d]);
            }
            out
        };
        let mut gp = rand_vec(9, tp * h * d);
        gp.extend(vec![0.25f32; 4 * h * d]);
        gp.extend_from_slice(&go);
        let s = shape(2, (h, kv, tp, d), vec![0, 4], None);
        let got =
            attend_backward(&s, &heads_padded(&q, h, 10), &heads_padded(&k, kv, 11), &heads_padded(&v, kv, 12), &gp);
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for (i, heads) in [h, kv, kv].into_iter().enumerate() {
            let row1 = &got[i][heads * tp * d..];
            for hh in 0..heads {
                let real = &row1[(hh * tp + 4) * d..][..t * d];
                assert_eq!(bits(real), bits(&want[i][hh * t * d..][..t * d]), "gradient {i}, head {hh}");
                assert!(row1[hh * tp * d..][..4 * d].iter().all(|&x| x == 0.0), "gradient {i}: padding");
            }
        }
    }
}
