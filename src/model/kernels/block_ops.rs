//! A gated MLP block in training as one candle node on the CPU: x + down(silu(gate(h)) * up(h))
//! with h = RMSNorm(x), each projection frozen or with its LoRA factors and dropout; Gemma's form
//! x + RMSNorm'(down(gelu_tanh(gate(h)) * up(h))) with its norm after the block too. Composed,
//! the block is about a dozen nodes (the norm, three products and their reshapes, the
//! activation, the residual sum), and candle's backward adds every node's gradient into a fresh
//! zero tensor over the activations; here one node keeps its intermediates and computes the
//! block's gradients with the composed path's arithmetic, operation for operation: the same
//! products ([`linear_fwd`], [`linear_bwd`]), the norm's and SwiGLU's expressions, and the
//! two-term gradient sums that candle would form (an f32 sum of two terms does not depend on
//! their order), so the results are the composed path's bits.
use super::act::Gated;
use super::gemm::Packed;
use super::linear_ops::{linear_bwd, linear_fwd, LoraPart};
use candle_core::{CpuStorage, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// One projection of the block: its frozen weight [out, in] as stored and packed, its frozen
/// bias [out] (Qwen2's Q/K/V) and its adapter if any.
pub(crate) struct Proj {
    pub(crate) w: Tensor,
    pub(crate) packed: Arc<Packed>,
    pub(crate) bias: Option<Vec<f32>>,
    pub(crate) lora: Option<ProjLora>,
}

/// Where a projection's LoRA factors sit in the block's flat parameter input (a [r, in] at
/// `a_at`, b [out, r] at `b_at`), their scale and the dropout factors for its input.
pub(crate) struct ProjLora {
    pub(crate) a_at: usize,
    pub(crate) b_at: usize,
    pub(crate) r: usize,
    pub(crate) scale: f32,
    pub(crate) mask: Option<Vec<f32>>,
}

impl Proj {
    /// The projection of x [m, in]: the product with its adapter's path ([`linear_fwd`]), then
    /// the bias added, as the composed `Linear::forward` orders them.
    pub(crate) fn fwd(&self, x: &[f32], m: usize, p: &[f32]) -> Vec<f32> {
        let mut y = linear_fwd(x, m, &self.packed, self.part(p).as_ref());
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(b.len()) {
                for (v, b) in row.iter_mut().zip(b) {
                    *v += b;
                }
            }
        }
        y
    }

    /// The adapter's operands in the flat parameters `p`.
    pub(crate) fn part<'a>(&'a self, p: &'a [f32]) -> Option<LoraPart<'a>> {
        self.lora.as_ref().map(|l| LoraPart {
            a: &p[l.a_at..][..l.r * self.packed.k],
            b: &p[l.b_at..][..self.packed.n * l.r],
            r: l.r,
            scale: l.scale,
            mask: l.mask.as_deref(),
        })
    }

    /// The adapter's gradients (da, db) written to their places in the flat gradient `dp`.
    pub(crate) fn put(&self, dp: &mut [f32], grads: Option<(Vec<f32>, Vec<f32>)>) {
        if let (Some(l), Some((da, db))) = (&self.lora, grads) {
            dp[l.a_at..][..da.len()].copy_from_slice(&da);
            dp[l.b_at..][..db.len()].copy_from_slice(&db);
        }
    }
}

/// The block's op on (x [.., hidden], p): p holds every adapter's a and b flattened (one unused
/// element when none has one). Output: x's shape.
pub(crate) struct GatedMlp {
    pub(crate) norm: Vec<f32>,
    pub(crate) eps: f32,
    pub(crate) gate: Proj,
    pub(crate) up: Proj,
    pub(crate) down: Proj,
    pub(crate) act: Gated,
    /// A norm on the block's output before the residual sum (Gemma's post-feedforward norm):
    /// its weight and epsilon.
    pub(crate) post: Option<(Vec<f32>, f32)>,
    saved: Mutex<Option<Saved>>,
}

/// The forward's intermediates: the normed input, the gate and up products, the activation and,
/// with a post norm, the down product it normed.
struct Saved {
    h: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    act: Vec<f32>,
    d: Option<Vec<f32>>,
}

impl GatedMlp {
    pub(crate) fn new(
        norm: Vec<f32>,
        eps: f32,
        [gate, up, down]: [Proj; 3],
        act: Gated,
        post: Option<(Vec<f32>, f32)>,
    ) -> Self {
        Self { norm, eps, gate, up, down, act, post, saved: Mutex::new(None) }
    }
}

/// Rows per parallel task of the elementwise passes (a multiple of the activation's chunk).
const ROWS: usize = 4;

/// candle's RMSNorm over rows of `x`: the squares summed in order, then / m * alpha.
pub(crate) fn rms_norm(x: &[f32], alpha: &[f32], eps: f32) -> Vec<f32> {
    let d = alpha.len();
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(o, src)| {
        let sum2 = src.iter().map(|&v| v * v).sum::<f32>();
        let m = (sum2 / d as f32 + eps).sqrt();
        for ((o, &s), &a) in o.iter_mut().zip(src).zip(alpha) {
            *o = s / m * a;
        }
    });
    out
}

/// The norm's input gradient: y = x r w with r = (mean(x^2) + eps)^-1/2 gives
/// dx = r g w - x r^3 mean(g w x).
pub(crate) fn rms_norm_bwd(x: &[f32], g: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(d).zip(x.par_chunks(d)).zip(g.par_chunks(d)).for_each(|((dx, x), g)| {
        let ms = x.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let r = 1.0 / (ms + eps).sqrt();
        let m = x.iter().zip(g).zip(w).map(|((x, g), w)| g * w * x).sum::<f32>() / d as f32;
        let c = m * r * r * r;
        for (((o, x), g), w) in dx.iter_mut().zip(x).zip(g).zip(w) {
            *o = r * g * w - x * c;
        }
    });
    dx
}

/// The block's output x + post(d) (post the identity when None), and d itself where the post
/// norm's backward will need it ([`post_norm_grad`]).
pub(crate) fn post_residual(x: &[f32], d: Vec<f32>, post: &Option<(Vec<f32>, f32)>) -> (Vec<f32>, Option<Vec<f32>>) {
    match post {
        Some((w, eps)) => {
            let dn = rms_norm(&d, w, *eps);
            (x.iter().zip(&dn).map(|(a, b)| a + b).collect(), Some(d))
        }
        None => (x.iter().zip(&d).map(|(a, b)| a + b).collect(), None),
    }
}

/// The gradient reaching d for the block's output gradient dy: through the post norm where
/// there is one (d as [`post_residual`] kept it), else dy itself (None).
pub(crate) fn post_norm_grad(post: &Option<(Vec<f32>, f32)>, d: &Option<Vec<f32>>, dy: &[f32]) -> Option<Vec<f32>> {
    match (post, d) {
        (Some((w, eps)), Some(d)) => Some(rms_norm_bwd(d, dy, w, *eps)),
        _ => None,
    }
}

/// silu(g) * u, in parallel runs of rows.
fn swiglu(g: &[f32], u: &[f32], width: usize) -> Vec<f32> {
    let mut y = vec![0f32; g.len()];
    let n = ROWS * width;
    y.par_chunks_mut(n)
        .zip(g.par_chunks(n))
        .zip(u.par_chunks(n))
        .for_each(|((y, g), u)| super::act::silu_mul_slice(g, u, y));
    y
}

/// A gated activation's gradients (dg, du) for dy, `one` applied to parallel runs of rows:
/// one(g, u, dy, dg, du).
fn gated_bwd(
    g: &[f32],
    u: &[f32],
    dy: &[f32],
    width: usize,
    one: impl Fn(&[f32], &[f32], &[f32], &mut [f32], &mut [f32]) + Sync,
) -> (Vec<f32>, Vec<f32>) {
    let (mut dg, mut du) = (vec![0f32; g.len()], vec![0f32; g.len()]);
    let n = ROWS * width;
    dg.par_chunks_mut(n)
        .zip(du.par_chunks_mut(n))
        .zip(g.par_chunks(n).zip(u.par_chunks(n)).zip(dy.par_chunks(n)))
        .for_each(|((dg, du), ((g, u), dy))| one(g, u, dy, dg, du));
    (dg, du)
}

/// SwiGLU's gradients (dg, du) for dy: with s = sigmoid(g), d/dg [g s(g)] = s (1 + g (1 - s)).
fn swiglu_bwd(g: &[f32], u: &[f32], dy: &[f32], width: usize) -> (Vec<f32>, Vec<f32>) {
    gated_bwd(g, u, dy, width, |g, u, dy, dg, du| {
        // e^-g, vectorised with expf's bits.
        for (o, &g) in du.iter_mut().zip(g) {
            *o = -g;
        }
        super::exp::exp_in_place(du);
        for ((((dg, du), &g), &u), &d) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(dy) {
            let s = 1.0 / (1.0 + *du);
            *dg = d * u * s * (1.0 + g * (1.0 - s));
            *du = d * g * s;
        }
    })
}

/// candle's GELU (tanh form) of one f32, as its unary op computes it (its constant sqrt(2 / pi)
/// rounded to f32).
fn gelu(v: f32) -> f32 {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    0.5 * v * (1.0 + f32::tanh(SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v)))
}

/// gelu(g) * u as candle's GELU and product compute it, in parallel runs of rows.
fn geglu(g: &[f32], u: &[f32], width: usize) -> Vec<f32> {
    let mut y = vec![0f32; g.len()];
    let n = ROWS * width;
    y.par_chunks_mut(n).zip(g.par_chunks(n)).zip(u.par_chunks(n)).for_each(|((y, g), u)| {
        for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
            *y = gelu(g) * u;
        }
    });
    y
}

/// candle's backward of its GELU at v, its expressions as its tensor ops evaluate them (each
/// constant factor an affine map `x * m + 0`, `1 - t` as `t * -1 + 1`, `+ 0.5` as `x * 1 + 0.5`).
fn gelu_grad(v: f32) -> f32 {
    let aff = |x: f32, m: f64, a: f64| x * m as f32 + a as f32;
    let cube = v.powf(3.0);
    let tanh = (aff(cube, 0.0356774, 0.0) + aff(v, 0.797885, 0.0)).tanh();
    let poly = aff(cube, 0.0535161, 0.0) + aff(v, 0.398942, 0.0);
    aff(aff(tanh, 0.5, 0.0) + poly * aff(tanh.powf(2.0), -1.0, 1.0), 1.0, 0.5)
}

/// GeGLU's gradients (dg, du) for dy, as candle's backward of gelu(g) * u forms them:
/// dg = (dy * u) * gelu'(g), du = dy * gelu(g).
fn geglu_bwd(g: &[f32], u: &[f32], dy: &[f32], width: usize) -> (Vec<f32>, Vec<f32>) {
    gated_bwd(g, u, dy, width, |g, u, dy, dg, du| {
        for ((((dg, du), &g), &u), &d) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(dy) {
            *dg = (d * u) * gelu_grad(g);
            *du = d * gelu(g);
        }
    })
}

impl candle_core::CustomOp2 for GatedMlp {
    fn name(&self) -> &'static str {
        "gated-mlp"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, p) = (super::cpu_f32(xs, xl)?, super::cpu_f32(ps, pl)?);
        let hidden = self.norm.len();
        let inter = self.gate.packed.n;
        if hidden == 0 || x.len() % hidden != 0 || self.gate.packed.k != hidden || self.down.packed.k != inter {
            candle_core::bail!("gated-mlp: input width or projection shapes disagree")
        }
        let m = x.len() / hidden;
        let h = rms_norm(x, &self.norm, self.eps);
        let g = self.gate.fwd(&h, m, p);
        let u = self.up.fwd(&h, m, p);
        let act = match self.act {
            Gated::Silu => swiglu(&g, &u, inter),
            Gated::Gelu => geglu(&g, &u, inter),
        };
        let (y, d) = post_residual(x, self.down.fwd(&act, m, p), &self.post);
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(Saved { h, g, u, act, d });
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
        let Some(s) = saved.as_ref() else { candle_core::bail!("gated-mlp: backward before forward") };
        let (hidden, inter) = (self.norm.len(), self.gate.packed.n);
        let m = x.elem_count() / hidden;
        let (dy, x_, p_) = (dy.contiguous()?, x.contiguous()?, p.contiguous()?);
        let (wg, wu, wd) = (self.gate.w.contiguous()?, self.up.w.contiguous()?, self.down.w.contiguous()?);
        let (want_x, want_p) = (x.track_op(), p.track_op());
        let (dx, dp) = super::with_f32s(&[&dy, &x_, &p_, &wg, &wu, &wd], |v| {
            let (dy, x, p) = (v[0], v[1], v[2]);
            let post_grad = post_norm_grad(&self.post, &s.d, dy);
            let dd = post_grad.as_deref().unwrap_or(dy);
            let (dact, ld) = linear_bwd(dd, &s.act, (m, hidden, inter), v[5], self.down.part(p).as_ref(), true);
            let dact = dact.expect("asked for");
            let (dg, du) = match self.act {
                Gated::Silu => swiglu_bwd(&s.g, &s.u, &dact, inter),
                Gated::Gelu => geglu_bwd(&s.g, &s.u, &dact, inter),
            };
            let (dh_g, lg) = linear_bwd(&dg, &s.h, (m, inter, hidden), v[3], self.gate.part(p).as_ref(), want_x);
            let (dh_u, lu) = linear_bwd(&du, &s.h, (m, inter, hidden), v[4], self.up.part(p).as_ref(), want_x);
            let dx = dh_g.zip(dh_u).map(|(a, b)| {
                let dh: Vec<f32> = a.iter().zip(&b).map(|(a, b)| a + b).collect();
                let dn = rms_norm_bwd(x, &dh, &self.norm, self.eps);
                dy.iter().zip(&dn).map(|(a, b)| a + b).collect::<Vec<f32>>()
            });
            let dp = want_p.then(|| {
                let mut dp = vec![0f32; p.len()];
                for (proj, grads) in [(&self.gate, lg), (&self.up, lu), (&self.down, ld)] {
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
