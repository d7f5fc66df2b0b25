//! Training-mode softmax, RMSNorm, RoPE and SwiGLU: candle's fused forward kernels with a hand-written
//! backward. candle 0.11's fused versions have no backward, so training had to build these from
//! five to ten elementwise ops each, whose forward and backward graphs cost more than the
//! matmuls around them (measured with `mores bench lora`). Here the forward runs the fused kernel
//! on a detached input and a [`WithGrad`] node ties its result back to the input, so backprop sees
//! one node whose gradient is a few tensor ops. CPU only (the node copies a CPU buffer); other
//! devices get the composed versions in [`composed`].
use crate::util::error::Result;
use candle_core::{CpuStorage, Layout, Shape, Tensor, D};

/// softmax over the last dimension, differentiable in x.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !super::cpu_kernels(x.device()) {
        return composed::softmax_last_dim(x);
    }
    let y = candle_nn::ops::softmax_last_dim(&x.detach().contiguous()?)?;
    tie(x, y, Backward::Softmax)
}

/// x / sqrt(mean(x^2) + eps) * w over the last dimension, differentiable in x (and in w only on
/// the composed path: LoRA never trains norms).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if !super::cpu_kernels(x.device()) || w.track_op() {
        return composed::rms_norm(x, w, eps);
    }
    let y = candle_nn::ops::rms_norm(&x.detach().contiguous()?, w, eps)?;
    tie(x, y, Backward::RmsNorm { w: w.contiguous()?, eps })
}

/// Rotary embedding of x [b, h, t, d] with per-row tables cos/sin [b, t, d/2], differentiable
/// in x. `interleaved`: pairs (2i, 2i+1), else (i, i + d/2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
    if !super::cpu_kernels(x.device()) {
        return composed::rope(x, cos, sin, interleaved);
    }
    let xd = x.detach().contiguous()?;
    let y = if interleaved {
        candle_nn::rotary_emb::rope_i(&xd, cos, sin)?
    } else {
        candle_nn::rotary_emb::rope(&xd, cos, sin)?
    };
    tie(x, y, Backward::Rope { cos: cos.clone(), sin: sin.clone(), interleaved })
}

/// silu(gate) * up, differentiable in both: one node whose backward is one pass over the
/// intermediate activations (the widest of a layer), where candle's silu and mul were two nodes
/// with six elementwise passes and two zero-fill-and-add gradient sums behind them.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !super::cpu_kernels(gate.device()) || gate.dtype() != candle_core::DType::F32 || gate.shape() != up.shape() {
        return composed::swiglu(gate, up);
    }
    Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)?)
}

/// The same functions from differentiable elementwise ops: the path on devices without the
/// CPU node, and the reference the fused backward is tested against.
pub mod composed {
    use crate::util::error::Result;
    use candle_core::{Tensor, D};

    pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
        // The row max only shifts, so it needs no gradient.
        let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?.exp()?;
        Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
    }

    pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        Ok(x.broadcast_div(&(ms + eps as f64)?.sqrt()?)?.broadcast_mul(w)?)
    }

    pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        Ok((candle_nn::ops::silu(gate)? * up)?)
    }

    pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
        let (b, h, t, d) = x.dims4()?;
        let half = d / 2;
        let cos = cos.unsqueeze(1)?;
        let sin = sin.unsqueeze(1)?;
        let (x0, x1) = if interleaved {
            let p = x.reshape((b, h, t, half, 2))?;
            (p.narrow(4, 0, 1)?.squeeze(4)?, p.narrow(4, 1, 1)?.squeeze(4)?)
        } else {
            (x.narrow(3, 0, half)?, x.narrow(3, half, half)?)
        };
        let y0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
        let y1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
        Ok(if interleaved { Tensor::stack(&[y0, y1], 4)?.reshape((b, h, t, d))? } else { Tensor::cat(&[y0, y1], 3)? })
    }
}

fn tie(x: &Tensor, y: Tensor, bwd: Backward) -> Result<Tensor> {
    // A fresh kernel output owns exactly its elements, which lets the node copy the buffer whole.
    let y = y.contiguous()?;
    Ok(x.apply_op2(&y, WithGrad(bwd))?)
}

enum Backward {
    Softmax,
    RmsNorm { w: Tensor, eps: f32 },
    Rope { cos: Tensor, sin: Tensor, interleaved: bool },
}

/// Forward: returns `y` (arg 2) unchanged. Backward: the gradient of the op that produced `y`
/// from `x` (arg 1); `y` itself gets none.
struct WithGrad(Backward);

impl candle_core::CustomOp2 for WithGrad {
    fn name(&self) -> &'static str {
        "with-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        y: &CpuStorage,
        l: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let n = match y {
            CpuStorage::F32(v) => v.len(),
            _ => candle_core::bail!("with-grad: training runs in f32"),
        };
        if !l.is_contiguous() || l.start_offset() != 0 || n != l.shape().elem_count() {
            candle_core::bail!("with-grad: the result must be a whole contiguous buffer")
        }
        Ok((y.try_clone(l)?, l.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = match &self.0 {
            // dx = y * (g - sum(g * y))
            Backward::Softmax => {
                let gy = (g * y)?;
                (gy.clone() - y.broadcast_mul(&gy.sum_keepdim(D::Minus1)?)?)?
            }
            // y = x * r * w with r = (mean(x^2) + eps)^-1/2:
            // dx = r * gw - x * r^3 * mean(gw * x), gw = g * w.
            // One pass per row, where the same sums as tensor ops were ten passes and ten
            // buffers over the activations.
            Backward::RmsNorm { w, eps } => {
                let (x, g) = (x.contiguous()?, g.contiguous()?);
                let d = w.elem_count();
                let dx = super::with_f32s(&[&x, &g, w], |t| {
                    let (x, g, w) = (t[0], t[1], t[2]);
                    let mut dx = vec![0f32; x.len()];
                    for ((dx, x), g) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                        let ms = x.iter().map(|v| v * v).sum::<f32>() / d as f32;
                        let r = 1.0 / (ms + eps).sqrt();
                        let m = x.iter().zip(g).zip(w).map(|((x, g), w)| g * w * x).sum::<f32>() / d as f32;
                        let c = m * r * r * r;
                        for (((o, x), g), w) in dx.iter_mut().zip(x).zip(g).zip(w) {
                            *o = r * g * w - x * c;
                        }
                    }
                    dx
                })
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                Tensor::from_vec(dx, x.shape(), x.device())?
            }
            // A rotation's transpose is the rotation by the opposite angle.
            Backward::Rope { cos, sin, interleaved } => {
                let g = g.contiguous()?;
                let neg = sin.neg()?;
                if *interleaved {
                    candle_nn::rotary_emb::rope_i(&g, cos, &neg)?
                } else {
                    candle_nn::rotary_emb::rope(&g, cos, &neg)?
                }
            }
        };
        Ok((Some(dx), None))
    }
}

/// [`swiglu`]'s node: y = g * sigmoid(g) * u.
struct SwiGlu;

fn sigmoid(g: f32) -> f32 {
    1.0 / (1.0 + (-g).exp())
}

impl candle_core::CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        lg: &Layout,
        u: &CpuStorage,
        lu: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = (super::cpu_f32(g, lg)?, super::cpu_f32(u, lu)?);
        // The same expression as candle's silu (x / (1 + e^-x)), so training reads what
        // inference computes.
        let mut y = vec![0f32; g.len()];
        super::act::silu_mul_slice(g, u, &mut y);
        Ok((CpuStorage::F32(y), lg.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        // d/dg [g s(g)] = s (1 + g (1 - s)).
        let (dg, du): (Vec<f32>, Vec<f32>) = super::with_f32s(&[g, u, &dy], |x| {
            x[0].iter()
                .zip(x[1])
                .zip(x[2])
                .map(|((&g, &u), &d)| {
                    let s = sigmoid(g);
                    (d * u * s * (1.0 + g * (1.0 - s)), d * g * s)
                })
                .unzip()
        })
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let dev = g.device();
        Ok((Some(Tensor::from_vec(dg, g.shape(), dev)?), Some(Tensor::from_vec(du, u.shape(), dev)?)))
    }
}
