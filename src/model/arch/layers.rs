//! Pieces shared by the architecture files: RMSNorm, rotary embeddings with per-row positions
//! (fused with the norm where they meet), residual sums and grouped-query attention over a
//! [`Batch`] (padded batches and their masks are in [`super::batch`]).
use super::batch::{Batch, Kv};
use crate::model::kernels::{self, grad_ops};
use crate::model::mode::Mode;
use crate::util::error::Result;
use candle_core::Tensor;

#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f32,
}

impl RmsNorm {
    /// Refuse a norm weight that is not a vector of `width` (see `Linear::expect`).
    pub fn expect(&self, path: &std::path::Path, what: &str, width: usize) -> Result<()> {
        if self.weight.dims() != [width] {
            return Err(crate::util::error::Error::model(
                path,
                format!(
                    "invalid model configuration: {what} has shape {:?} but the configuration gives [{width}]",
                    self.weight.dims()
                ),
            ));
        }
        Ok(())
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if !mode.grad || !x.track_op() {
            return Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)?);
        }
        grad_ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// The residual sum x + y. Without gradients on the CPU it is one pass on the calling thread:
/// candle's elementwise add hands a [tokens, hidden] sum to its own thread pool and waits at a
/// barrier for it, which cost about 5% of Gemma's probe (perf) for a few microseconds of adds.
/// An f32 sum has one correct answer, so the bits are candle's.
pub fn residual(x: &Tensor, y: &Tensor, mode: Mode) -> Result<Tensor> {
    if mode.grad || x.shape() != y.shape() || !kernels::plain_cpu_f32(&[x, y]) {
        return Ok((x + y)?);
    }
    let (x, y) = (x.contiguous()?, y.contiguous()?);
    let sum = kernels::with_f32s(&[&x, &y], |v| v[0].iter().zip(v[1]).map(|(a, b)| a + b).collect::<Vec<f32>>())?;
    Ok(Tensor::from_vec(sum, x.shape(), x.device())?)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): GGUF llama files, whose converter permuted Q and K.
    Interleaved,
    /// Pairs (i, i + d/2): Hugging Face checkpoints, and Gemma in GGUF.
    Halves,
}

/// A q or k projection x [b, t, h * d] to [b, h, t, d]: per-head RMS norm (if given), then
/// [`rope`]. Without gradients on the CPU this is one pass (each head row normed and rotated in
/// a local buffer and written to its place), with the arithmetic of the composed ops: candle's
/// `rms_norm` and `rope`/`rope_i`, so the same bits (unit test). The composed ops made three
/// passes over the activations, a transposing copy among them (6% of Gemma's probe).
#[allow(clippy::too_many_arguments)]
pub fn norm_rope(
    x: &Tensor,
    (b, t, h, d): (usize, usize, usize, usize),
    norm: Option<&RmsNorm>,
    cos: &Tensor,
    sin: &Tensor,
    style: RopeStyle,
    mode: Mode,
) -> Result<Tensor> {
    let alpha_ok = norm.is_none_or(|n| n.weight.dims() == [d] && kernels::plain_cpu_f32(&[&n.weight]));
    let fused = !mode.grad
        && d % 2 == 0
        && alpha_ok
        && kernels::plain_cpu_f32(&[x, cos, sin])
        && x.elem_count() == b * t * h * d
        && cos.dims() == [b, t, d / 2]
        && sin.dims() == [b, t, d / 2];
    if !fused {
        let mut x = x.reshape((b, t, h, d))?;
        if let Some(n) = norm {
            x = n.forward(&x, mode)?;
        }
        return rope(&x.transpose(1, 2)?, cos, sin, style, mode);
    }
    let (x, cos, sin) = (x.contiguous()?, cos.contiguous()?, sin.contiguous()?);
    let weight = match norm {
        Some(n) => Some(n.weight.contiguous()?),
        None => None,
    };
    let mut inputs = vec![&x, &cos, &sin];
    if let Some(w) = &weight {
        inputs.push(w);
    }
    let eps = norm.map_or(0.0, |n| n.eps);
    let out = kernels::with_f32s(&inputs, |v| {
        use rayon::prelude::*;
        let (x, cos, sin, alpha) = (v[0], v[1], v[2], v.get(3).copied());
        let mut out = vec![0f32; b * h * t * d];
        // Tasks: (row and head plane) x runs of up to 32 positions. A decoding step's few heads
        // of one position run on the calling thread: a fork-join costs more than that work
        // (candle's rope also runs one position serially).
        const RUN: usize = 32;
        const PARALLEL_MIN: usize = 1 << 15;
        let one = |(c, part): (usize, &mut [f32]), (bi, hi): (usize, usize)| {
            let mut y = vec![0f32; d];
            for (k, o) in part.chunks_exact_mut(d).enumerate() {
                let ti = c * RUN + k;
                let src = &x[((bi * t + ti) * h + hi) * d..][..d];
                match alpha {
                    // candle's rms_norm: the squares summed in order, then / m * alpha.
                    Some(alpha) => {
                        let mut sum = 0f32;
                        for &v in src {
                            sum += v * v;
                        }
                        let m = (sum / d as f32 + eps).sqrt();
                        for ((yi, &v), &a) in y.iter_mut().zip(src).zip(alpha) {
                            *yi = v / m * a;
                        }
                    }
                    None => y.copy_from_slice(src),
                }
                let cs = (bi * t + ti) * (d / 2);
                let (c, s) = (&cos[cs..][..d / 2], &sin[cs..][..d / 2]);
                match style {
                    RopeStyle::Halves => {
                        let (y1, y2) = y.split_at(d / 2);
                        let (o1, o2) = o.split_at_mut(d / 2);
                        for i in 0..d / 2 {
                            o1[i] = y1[i] * c[i] - y2[i] * s[i];
                            o2[i] = y1[i] * s[i] + y2[i] * c[i];
                        }
                    }
                    RopeStyle::Interleaved => {
                        for i in 0..d / 2 {
                            o[2 * i] = y[2 * i] * c[i] - y[2 * i + 1] * s[i];
                            o[2 * i + 1] = y[2 * i] * s[i] + y[2 * i + 1] * c[i];
                        }
                    }
                }
            }
        };
        if out.len() < PARALLEL_MIN {
            for (bh, plane) in out.chunks_mut(t * d).enumerate() {
                plane.chunks_mut(RUN * d).enumerate().for_each(|cp| one(cp, (bh / h, bh % h)));
            }
        } else {
            out.par_chunks_mut(t * d).enumerate().for_each(|(bh, plane)| {
                plane.par_chunks_mut(RUN * d).enumerate().for_each(|cp| one(cp, (bh / h, bh % h)));
            });
        }
        out
    })?;
    Ok(Tensor::from_vec(out, (b, h, t, d), x.device())?)
}

/// Rotate x [b, h, t, d] by the per-row tables cos/sin [b, t, d/2].
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, style: RopeStyle, mode: Mode) -> Result<Tensor> {
    let x = x.contiguous()?;
    if mode.grad && x.track_op() {
        return grad_ops::rope(&x, cos, sin, style == RopeStyle::Interleaved);
    }
    Ok(match style {
        RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, cos, sin)?,
        RopeStyle::Halves => candle_nn::rotary_emb::rope(&x, cos, sin)?,
    })
}

/// What every attention layer of one forward pass shares: the batch layout, the prefix keys and
/// values the rows continue (none or one; a tree-shaped batch: the external runs its nodes
/// name), and whether the batch-invariant CPU kernel runs ([`kernels::attend`], and
/// [`kernels::AttnOp`] when training). Other devices, and a training batch after a shared prefix
/// (which never happens), take the composed ops over padded keys, with additive masks built once
/// per window size.
pub struct AttnCtx<'a> {
    batch: &'a Batch,
    prefix: &'a [&'a Kv],
    kernel: bool,
    masks: Vec<(Option<usize>, Tensor)>,
    mode: Mode,
}

impl<'a> AttnCtx<'a> {
    /// `windows`: the window sizes the model's layers use (None: full causal attention).
    /// `prefix`: empty or one [`Kv`] every row continues; for a tree-shaped batch, the external
    /// prefixes its nodes' `KeySource::Ext` runs index.
    pub fn new(batch: &'a Batch, prefix: &'a [&'a Kv], windows: &[Option<usize>], mode: Mode) -> Result<Self> {
        let dev = batch.ids.device();
        if batch.tree.is_none() && prefix.len() > 1 {
            return Err(crate::util::error::Error::Invalid(
                "internal: rows of a padded batch continue at most one prefix".into(),
            ));
        }
        // Training batches have no prefix; the differentiable kernel assumes none.
        let kernel = kernels::cpu_kernels(dev) && (!mode.grad || prefix.iter().all(|p| p.len == 0));
        if batch.tree.is_some() && (!kernel || mode.grad) {
            return Err(crate::util::error::Error::Invalid(
                "internal: a tree-shaped batch needs the CPU inference attention kernel".into(),
            ));
        }
        let masks = if kernel {
            Vec::new()
        } else {
            windows.iter().map(|&w| Ok((w, batch.mask(w, dev)?))).collect::<Result<_>>()?
        };
        Ok(Self { batch, prefix, kernel, masks, mode })
    }

    /// Scaled dot-product attention of layer `layer` with grouped KV heads. q: [b, h, t, d],
    /// the batch's own k/v: [b, kv, t, d]. Returns [b, t, h * d].
    pub fn attend(
        &self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        window: Option<usize>,
        scale: f64,
    ) -> Result<Tensor> {
        let mode = self.mode;
        let (b, h, t, d) = q.dims4()?;
        if !self.kernel {
            let mask = &self.masks.iter().find(|(w, _)| *w == window).expect("mask built for every window").1;
            let (k, v) = match self.prefix.first() {
                None => (k.clone(), v.clone()),
                Some(p) => p.extend(layer, k.clone(), v.clone())?,
            };
            return attention(q, &k, &v, mask, scale, mode);
        }
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        if self.batch.tree.is_some() {
            return self.attend_tree(layer, &q, &k, &v, window, scale);
        }
        // The prefix every row continues, if any, read once for all rows.
        let shared = self.prefix.first().filter(|p| p.len > 0);
        let mut tensors: Vec<Tensor> = vec![q.clone(), k.clone(), v.clone()];
        if let Some(p) = shared {
            tensors.push(p.k[layer].contiguous()?);
            tensors.push(p.v[layer].contiguous()?);
        }
        let shape = kernels::AttnShape {
            rows: b,
            heads: h,
            kv_heads: k.dim(1)?,
            len: t,
            dim: d,
            prefix: vec![shared.map_or(0, |p| p.len); b],
            pad: self.batch.pad.clone(),
            window,
            scale: scale as f32,
        };
        if mode.grad {
            return Ok(q.apply_op3(&k, &v, kernels::AttnOp(shape))?);
        }
        let refs: Vec<&Tensor> = tensors.iter().collect();
        let out = kernels::with_f32s(&refs, |x| {
            let pre: Vec<kernels::PrefixKv> = if shared.is_some() { vec![(x[3], x[4]); b] } else { Vec::new() };
            kernels::attend(&shape, x[0], x[1], x[2], &pre)
        })?;
        Ok(Tensor::from_vec(out, (b, t, h * d), q.device())?)
    }

    /// [`AttnCtx::attend`] for a tree-shaped batch: `prefix` holds the external runs' keys and
    /// values, in the order the nodes' `KeySource::Ext` indices name them.
    fn attend_tree(
        &self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        window: Option<usize>,
        scale: f64,
    ) -> Result<Tensor> {
        let nodes = self.batch.tree.as_deref().unwrap_or_default();
        let (_, h, t, d) = q.dims4()?;
        let mut tensors: Vec<Tensor> = vec![q.clone(), k.clone(), v.clone()];
        for p in self.prefix {
            tensors.push(p.k[layer].contiguous()?);
            tensors.push(p.v[layer].contiguous()?);
        }
        let shape = kernels::AttnShape {
            rows: 1,
            heads: h,
            kv_heads: k.dim(1)?,
            len: t,
            dim: d,
            prefix: vec![0],
            pad: vec![0],
            window,
            scale: scale as f32,
        };
        let refs: Vec<&Tensor> = tensors.iter().collect();
        let out = kernels::with_f32s(&refs, |x| {
            let ext: Vec<kernels::PrefixKv> = (0..self.prefix.len()).map(|i| (x[3 + 2 * i], x[4 + 2 * i])).collect();
            kernels::attend_tree(&shape, x[0], x[1], x[2], &ext, nodes)
        })?;
        Ok(Tensor::from_vec(out, (1, t, h * d), q.device())?)
    }
}

/// Scaled dot-product attention over padded keys from composed tensor ops, with grouped KV
/// heads. q: [b, h, t, d], k/v: [b, kv, s, d], mask: [b, 1, t, s]. Returns [b, t, h * d].
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64, mode: Mode) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let kv = k.dim(1)?;
    let k = candle_transformers::utils::repeat_kv(k.clone(), h / kv)?.contiguous()?;
    let v = candle_transformers::utils::repeat_kv(v.clone(), h / kv)?.contiguous()?;
    let scores = (q.contiguous()?.matmul(&k.t()?)? * scale)?;
    let scores = scores.broadcast_add(&mask.to_dtype(scores.dtype())?)?;
    let probs = if mode.grad && scores.track_op() {
        grad_ops::softmax_last_dim(&scores)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores)?
    };
    let out = probs.matmul(&v)?;
    Ok(out.transpose(1, 2)?.reshape((b, t, h * d))?)
}

/// Rows `index` of a [rows, len, hidden] activation, as [n, hidden].
pub fn gather(x: &Tensor, index: &Tensor) -> Result<Tensor> {
    let (b, t, hdim) = x.dims3()?;
    Ok(x.reshape((b * t, hdim))?.index_select(index, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    fn var(seed: u64, shape: (usize, usize, usize, usize)) -> Var {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    /// The one-pass norm and rope give the composed ops' bits (candle's rms_norm, transpose,
    /// rope or rope_i): both pair styles, with and without a per-head norm, two rows.
    #[test]
    fn norm_rope_equals_norm_transpose_rope_bit_for_bit() {
        let (b, t, h, d) = (2, 37, 3, 64);
        let batch = Batch::new(&[(0..t as u32).collect(), (5..t as u32 + 5).collect()], &Device::Cpu).unwrap();
        let (cos, sin) = batch.rope_tables(d, 10_000.0, 1.0, &Device::Cpu).unwrap();
        let x = var(4, (b, t, h, d)).as_tensor().reshape((b, t, h * d)).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let w: Vec<f32> = (0..d).map(|_| rng.random_range(0.5f32..1.5)).collect();
        let norm = RmsNorm { weight: Tensor::from_vec(w, d, &Device::Cpu).unwrap(), eps: 1e-6 };
        let bits = |x: &Tensor| {
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        for style in [RopeStyle::Halves, RopeStyle::Interleaved] {
            for n in [None, Some(&norm)] {
                let fused = norm_rope(&x, (b, t, h, d), n, &cos, &sin, style, Mode::INFER).unwrap();
                let mut y = x.reshape((b, t, h, d)).unwrap();
                if let Some(n) = n {
                    y = candle_nn::ops::rms_norm(&y, &n.weight, n.eps).unwrap();
                }
                let y = y.transpose(1, 2).unwrap().contiguous().unwrap();
                let composed = match style {
                    RopeStyle::Halves => candle_nn::rotary_emb::rope(&y, &cos, &sin).unwrap(),
                    RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&y, &cos, &sin).unwrap(),
                };
                assert_eq!(fused.dims(), [b, h, t, d]);
                assert_eq!(bits(&fused), bits(&composed), "{style:?}, norm {}", n.is_some());
            }
        }
    }

    /// The training attention kernel and its hand-written backward against the composed ops
    /// (the path other devices run) on a left-padded batch, with and without a sliding window.
    #[test]
    fn attention_kernel_matches_composed_ops_forward_and_backward() {
        let (h, kv, d) = (4, 2, 8);
        let batch = Batch::new(&[vec![1, 2, 3, 4, 5, 6, 7], vec![3, 4, 5]], &Device::Cpu).unwrap();
        let t = batch.len;
        for window in [None, Some(3)] {
            let (q, k, v) = (var(1, (2, h, t, d)), var(2, (2, kv, t, d)), var(3, (2, kv, t, d)));
            let mode = Mode::train(None);
            let ctx = AttnCtx::new(&batch, &[], &[window], mode).unwrap();
            let fused = ctx.attend(0, q.as_tensor(), k.as_tensor(), v.as_tensor(), window, 0.35).unwrap();
            let mask = batch.mask(window, &Device::Cpu).unwrap();
            let composed = attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), &mask, 0.35, mode).unwrap();
            // Padding queries (row 1, first 4 positions) are never read: compare real ones only.
            let real = |x: &Tensor| -> Vec<f32> {
                let r0 = x.get(0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let r1 = x.get(1).unwrap().narrow(0, 4, 3).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                r0.into_iter().chain(r1).collect()
            };
            for (a, b) in real(&fused).iter().zip(real(&composed)) {
                assert!((a - b).abs() < 1e-5, "window {window:?}: forward {a} vs {b}");
            }
            // A loss that weights every real output differently.
            let weights = var(4, (2, t, h, d)).as_tensor().reshape((2, t, h * d)).unwrap();
            let keep = Tensor::from_vec(
                (0..2 * t).map(|i| if i >= t && i < t + 4 { 0f32 } else { 1.0 }).collect::<Vec<_>>(),
                (2, t, 1),
                &Device::Cpu,
            )
            .unwrap();
            let loss = |y: &Tensor| y.broadcast_mul(&keep).unwrap().mul(&weights).unwrap().sum_all().unwrap();
            let (gf, gc) = (loss(&fused).backward().unwrap(), loss(&composed).backward().unwrap());
            for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
                let a = gf.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let b = gc.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                    assert!((p - q).abs() < 1e-4, "window {window:?}: d{name}[{i}] {p} vs {q}");
                }
            }
        }
    }
}
