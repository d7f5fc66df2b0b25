//! Training-mode softmax, RMSNorm and RoPE: candle's fused forward kernels with a hand-written
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
    if !x.device().is_cpu() {
        return composed::softmax_last_dim(x);
    }
    let y = candle_nn::ops::softmax_last_dim(&x.detach().contiguous()?)?;
    tie(x, y, Backward::Softmax)
}

/// x / sqrt(mean(x^2) + eps) * w over the last dimension, differentiable in x (and in w only on
/// the composed path: LoRA never trains norms).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if !x.device().is_cpu() || w.track_op() {
        return composed::rms_norm(x, w, eps);
    }
    let y = candle_nn::ops::rms_norm(&x.detach().contiguous()?, w, eps)?;
    tie(x, y, Backward::RmsNorm { w: w.clone(), eps })
}

/// Rotary embedding of x [b, h, t, d] with per-row tables cos/sin [b, t, d/2], differentiable
/// in x. `interleaved`: pairs (2i, 2i+1), else (i, i + d/2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
    if !x.device().is_cpu() {
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
            Backward::RmsNorm { w, eps } => {
                let r = (x.sqr()?.mean_keepdim(D::Minus1)? + *eps as f64)?.sqrt()?.recip()?;
                let gw = g.broadcast_mul(w)?;
                let m = (&gw * x)?.mean_keepdim(D::Minus1)?;
                (gw.broadcast_mul(&r)? - x.broadcast_mul(&(m * r.powf(3.0)?)?)?)?
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
