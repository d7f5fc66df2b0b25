//! The output head and the token cross-entropy in training as one candle node on the CPU:
//! per-row negative log-likelihoods of the targets under softmax(x · wᵀ) for the final-norm
//! hidden rows x [n, hidden] and the head w [vocab, hidden]. Composed (the head's product, its
//! reshape, the cross-entropy node), the [n, vocab] logits' gradient was allocated by the
//! cross-entropy's backward and then added into a fresh zero tensor twice (at the logits and at
//! the reshape), 100 MB each for 512 positions of a 49,152-token vocabulary; here the forward's
//! logits buffer becomes their gradient in place, with the same arithmetic, so the same bits.
use super::gemm::Packed;
use candle_core::{CpuStorage, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// log sum_j e^{row_j}, shifted by the row's maximum.
pub fn logsumexp(row: &[f32]) -> f32 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    m + row.iter().map(|x| (x - m).exp()).sum::<f32>().ln()
}

/// [`logsumexp`] with the exponentials vectorised in `buf` ([`super::exp`]: expf's bits, summed
/// in the same order), so the same value.
fn logsumexp_with(row: &[f32], buf: &mut Vec<f32>) -> f32 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    buf.clear();
    buf.extend(row.iter().map(|x| x - m));
    super::exp::exp_in_place(buf);
    m + buf.iter().sum::<f32>().ln()
}

/// The op on x [n, hidden]: output [n], row i's NLL of `targets[i]`.
pub(crate) struct HeadNll {
    pub(crate) w: Tensor,
    pub(crate) packed: Arc<Packed>,
    pub(crate) targets: Vec<u32>,
    /// The forward's logits and each row's log-sum-exp.
    saved: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

impl HeadNll {
    pub(crate) fn new(w: Tensor, packed: Arc<Packed>, targets: Vec<u32>) -> Self {
        Self { w, packed, targets, saved: Mutex::new(None) }
    }
}

impl candle_core::CustomOp1 for HeadNll {
    fn name(&self) -> &'static str {
        "head-nll"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = l.shape().dims2()?;
        let (v, p) = (self.packed.n, &self.packed);
        if k != p.k || self.targets.len() != n || self.targets.iter().any(|&t| t as usize >= v) {
            candle_core::bail!("head-nll: {n} x {k} rows, {} targets, head {v} x {}", self.targets.len(), p.k)
        }
        let logits = super::linear_ops::linear_fwd(super::cpu_f32(s, l)?, n, p, None);
        let lse: Vec<f32> = logits.par_chunks(v).map_init(Vec::new, |buf, row| logsumexp_with(row, buf)).collect();
        let out = logits.chunks(v).zip(&lse).zip(&self.targets).map(|((row, l), &t)| l - row[t as usize]).collect();
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some((logits, lse));
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g: Vec<f32> = grad.to_vec1()?;
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        // The logits are not needed after this: their buffer becomes their gradient.
        let Some((mut dl, lse)) = saved.take() else { candle_core::bail!("head-nll: backward before forward") };
        let (n, k) = x.dims2()?;
        let v = self.packed.n;
        dl.par_chunks_mut(v).enumerate().for_each(|(i, o)| {
            for oj in o.iter_mut() {
                *oj -= lse[i];
            }
            super::exp::exp_in_place(o);
            for oj in o.iter_mut() {
                *oj *= g[i];
            }
            o[self.targets[i] as usize] -= g[i];
        });
        let w = self.w.contiguous()?;
        let dx = super::with_f32s(&[&w], |t| super::linear_ops::linear_bwd(&dl, &[], (n, v, k), t[0], None, true).0)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .expect("asked for");
        Ok(Some(Tensor::from_vec(dx, (n, k), x.device())?))
    }
}
