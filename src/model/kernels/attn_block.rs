//! A llama attention block in training as one candle node on the CPU:
//! x + o(attention(rope(q(h)), rope(k(h)), v(h))) with h = RMSNorm(x), each projection frozen or
//! with its LoRA factors and dropout, batch-invariant attention ([`attend`],
//! [`attend_backward`]). Composed, the block is about 25 nodes (the norm, four products and their
//! reshapes, transposing copies, two rotations, the attention, the residual sum), each adding its
//! gradient into a fresh zero tensor; here one node keeps its intermediates and computes the
//! composed path's numbers operation for operation (the same products, candle's rotation
//! arithmetic, the norm's expressions), summing h's three gradients in the order candle's
//! backward reaches them (v, k, q). Gemma's and Qwen3's per-head RMSNorm of the queries and keys
//! before the rotation, and Gemma's norm of the block's output before the residual sum, are
//! optional parts of the same node.
use super::attention::{attend, AttnShape};
use super::attn_backward::attend_backward;
use super::block_ops::{post_norm_grad, post_residual, rms_norm, rms_norm_bwd, Proj};
use super::linear_ops::linear_bwd;
use candle_core::{CpuStorage, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// The block's op on (x [b, t, hidden], p): p holds every adapter's a and b flattened (one unused
/// element when none has one). Output: x's shape.
pub(crate) struct AttnBlock {
    pub(crate) norm: Vec<f32>,
    pub(crate) eps: f32,
    /// q, k, v, o.
    pub(crate) proj: [Proj; 4],
    pub(crate) shape: AttnShape,
    /// Per-row rotation tables [b, t, dim / 2].
    pub(crate) cos: Vec<f32>,
    pub(crate) sin: Vec<f32>,
    /// Pairs (2i, 2i+1) when set, else (i, i + dim/2).
    pub(crate) interleaved: bool,
    /// Per-head norms of the queries and of the keys (weight [dim], epsilon) before the rotation.
    pub(crate) qk_norm: Option<[(Vec<f32>, f32); 2]>,
    /// A norm on the output projection's result before the residual sum (weight [hidden], eps).
    pub(crate) post: Option<(Vec<f32>, f32)>,
    saved: Mutex<Option<Saved>>,
}

/// The forward's intermediates: the normed input, rotated queries and keys and the values
/// ([b, heads, t, dim]) and the attention's output [b, t, heads * dim]; with Q/K norms the
/// projections they normed, with a post norm the output projection's result.
struct Saved {
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    a: Vec<f32>,
    qk_raw: Option<(Vec<f32>, Vec<f32>)>,
    d: Option<Vec<f32>>,
}

/// The optional norms of a block: per-head Q and K norms, and the norm after the block.
pub(crate) struct ExtraNorms {
    pub(crate) qk: Option<[(Vec<f32>, f32); 2]>,
    pub(crate) post: Option<(Vec<f32>, f32)>,
}

impl AttnBlock {
    pub(crate) fn new(
        norm: Vec<f32>,
        eps: f32,
        proj: [Proj; 4],
        shape: AttnShape,
        (cos, sin): (Vec<f32>, Vec<f32>),
        interleaved: bool,
        extra: ExtraNorms,
    ) -> Self {
        let ExtraNorms { qk: qk_norm, post } = extra;
        Self { norm, eps, proj, shape, cos, sin, interleaved, qk_norm, post, saved: Mutex::new(None) }
    }

    /// x [b, t, heads, dim] to [b, heads, t, dim], each head row rotated by (cos, sin) as candle's
    /// rope and rope_i compute it (`sin` negated: the inverse rotation). Without a rotation (the
    /// values), only the transposition.
    fn to_heads(&self, x: &[f32], heads: usize, sin: Option<&[f32]>) -> Vec<f32> {
        let (b, t, d) = (self.shape.rows, self.shape.len, self.shape.dim);
        let half = d / 2;
        let mut out = vec![0f32; b * heads * t * d];
        out.par_chunks_mut(t * d).enumerate().for_each(|(bh, plane)| {
            let (bi, hi) = (bh / heads, bh % heads);
            for (ti, o) in plane.chunks_exact_mut(d).enumerate() {
                let y = &x[((bi * t + ti) * heads + hi) * d..][..d];
                let Some(sin) = sin else {
                    o.copy_from_slice(y);
                    continue;
                };
                let cs = (bi * t + ti) * half;
                let (c, s) = (&self.cos[cs..][..half], &sin[cs..][..half]);
                rotate(y, c, s, o, self.interleaved);
            }
        });
        out
    }

    /// The inverse of [`AttnBlock::to_heads`]'s layout: g [b, heads, t, dim] back to
    /// [b, t, heads, dim], each row rotated by (cos, `sin`) when given.
    fn heads_to_rows(&self, g: &[f32], heads: usize, sin: Option<&[f32]>) -> Vec<f32> {
        let (b, t, d) = (self.shape.rows, self.shape.len, self.shape.dim);
        let half = d / 2;
        let mut out = vec![0f32; b * t * heads * d];
        out.par_chunks_mut(heads * d).enumerate().for_each(|(bt, row)| {
            let (bi, ti) = (bt / t, bt % t);
            for (hi, o) in row.chunks_exact_mut(d).enumerate() {
                let y = &g[((bi * heads + hi) * t + ti) * d..][..d];
                let Some(sin) = sin else {
                    o.copy_from_slice(y);
                    continue;
                };
                let cs = bt * half;
                let (c, s) = (&self.cos[cs..][..half], &sin[cs..][..half]);
                rotate(y, c, s, o, self.interleaved);
            }
        });
        out
    }
}

/// One head row rotated, candle's arithmetic (rope / rope_i).
fn rotate(y: &[f32], c: &[f32], s: &[f32], o: &mut [f32], interleaved: bool) {
    let half = c.len();
    if interleaved {
        for i in 0..half {
            o[2 * i] = y[2 * i] * c[i] - y[2 * i + 1] * s[i];
            o[2 * i + 1] = y[2 * i] * s[i] + y[2 * i + 1] * c[i];
        }
    } else {
        let (y1, y2) = y.split_at(half);
        let (o1, o2) = o.split_at_mut(half);
        for i in 0..half {
            o1[i] = y1[i] * c[i] - y2[i] * s[i];
            o2[i] = y1[i] * s[i] + y2[i] * c[i];
        }
    }
}

impl candle_core::CustomOp2 for AttnBlock {
    fn name(&self) -> &'static str {
        "attention-block"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, p) = (super::cpu_f32(xs, xl)?, super::cpu_f32(ps, pl)?);
        let s = &self.shape;
        let (hidden, m) = (self.norm.len(), s.rows * s.len);
        let [pq, pk, pv, po] = &self.proj;
        let (qw, kvw) = (s.heads * s.dim, s.kv_heads * s.dim);
        if x.len() != m * hidden
            || pq.packed.k != hidden
            || pk.packed.k != hidden
            || pv.packed.k != hidden
            || (pq.packed.n, pk.packed.n, pv.packed.n) != (qw, kvw, kvw)
            || (po.packed.k, po.packed.n) != (qw, hidden)
            || self.cos.len() != m * s.dim / 2
        {
            candle_core::bail!("attention-block: input, projections and heads disagree")
        }
        let h = rms_norm(x, &self.norm, self.eps);
        let (q, k, v) = (pq.fwd(&h, m, p), pk.fwd(&h, m, p), pv.fwd(&h, m, p));
        let (qn, kn, qk_raw) = match &self.qk_norm {
            Some([(wq, eq), (wk, ek)]) => (rms_norm(&q, wq, *eq), rms_norm(&k, wk, *ek), Some((q, k))),
            None => (q, k, None),
        };
        let q = self.to_heads(&qn, s.heads, Some(&self.sin));
        let k = self.to_heads(&kn, s.kv_heads, Some(&self.sin));
        drop((qn, kn));
        let v = self.to_heads(&v, s.kv_heads, None);
        let a = attend(s, &q, &k, &v, &[]);
        let (y, d) = post_residual(x, po.fwd(&a, m, p), &self.post);
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(Saved { h, q, k, v, a, qk_raw, d });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let Some(sv) = saved.as_ref() else { candle_core::bail!("attention-block: backward before forward") };
        let s = &self.shape;
        let (hidden, m) = (self.norm.len(), s.rows * s.len);
        let (qw, kvw) = (s.heads * s.dim, s.kv_heads * s.dim);
        let (dy, x_, p_) = (dy.contiguous()?, x.contiguous()?, p.contiguous()?);
        let ws: Vec<Tensor> = self.proj.iter().map(|pr| pr.w.contiguous()).collect::<candle_core::Result<_>>()?;
        let (want_x, want_p) = (x.track_op(), p.track_op());
        let [pq, pk, pv, po] = &self.proj;
        let (dx, dp) = super::with_f32s(&[&dy, &x_, &p_, &ws[0], &ws[1], &ws[2], &ws[3]], |t| {
            let (dy, x, p) = (t[0], t[1], t[2]);
            let post_grad = post_norm_grad(&self.post, &sv.d, dy);
            let dd = post_grad.as_deref().unwrap_or(dy);
            let (da, lo) = linear_bwd(dd, &sv.a, (m, hidden, qw), t[6], po.part(p).as_ref(), true);
            let [dq, dk, dv] = attend_backward(s, &sv.q, &sv.k, &sv.v, &da.expect("asked for"));
            // The transpose of a rotation is the rotation by the opposite angle.
            let neg: Vec<f32> = self.sin.iter().map(|v| -v).collect();
            let dq = self.heads_to_rows(&dq, s.heads, Some(&neg));
            let dk = self.heads_to_rows(&dk, s.kv_heads, Some(&neg));
            let (dq, dk) = match (&self.qk_norm, &sv.qk_raw) {
                (Some([(wq, eq), (wk, ek)]), Some((q, k))) => {
                    (rms_norm_bwd(q, &dq, wq, *eq), rms_norm_bwd(k, &dk, wk, *ek))
                }
                _ => (dq, dk),
            };
            let dv = self.heads_to_rows(&dv, s.kv_heads, None);
            let (dh_q, lq) = linear_bwd(&dq, &sv.h, (m, qw, hidden), t[3], pq.part(p).as_ref(), want_x);
            let (dh_k, lk) = linear_bwd(&dk, &sv.h, (m, kvw, hidden), t[4], pk.part(p).as_ref(), want_x);
            let (dh_v, lv) = linear_bwd(&dv, &sv.h, (m, kvw, hidden), t[5], pv.part(p).as_ref(), want_x);
            let dx = match (dh_q, dh_k, dh_v) {
                (Some(q), Some(k), Some(v)) => {
                    let dh: Vec<f32> = v.iter().zip(&k).zip(&q).map(|((v, k), q)| (v + k) + q).collect();
                    let dn = rms_norm_bwd(x, &dh, &self.norm, self.eps);
                    Some(dy.iter().zip(&dn).map(|(a, b)| a + b).collect::<Vec<f32>>())
                }
                _ => None,
            };
            let dp = want_p.then(|| {
                let mut dp = vec![0f32; p.len()];
                for (proj, grads) in self.proj.iter().zip([lq, lk, lv, lo]) {
                    proj.put(&mut dp, grads);
                }
                dp
            });
            (dx, dp)
        })
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let dev = x.device();
        Ok((
            dx.map(|d| Tensor::from_vec(d, x.shape(), dev)).transpose()?,
            dp.map(|d| Tensor::from_vec(d, p.shape(), dev)).transpose()?,
        ))
    }
}
