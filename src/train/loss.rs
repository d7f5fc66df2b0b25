//! Fused token cross-entropy. Composed from candle ops, log-softmax over a [tokens, vocab] block
//! (49,152 or 262,144 columns) materialises five or six full-size tensors forward and as many
//! backward, single-threaded; this op makes one parallel pass per row each way and keeps only the
//! gradient. Measured on SmolLM2 (batch 4 x 128 tokens): see the LoRA benchmark in docs/benchmarks.md.
use crate::model::kernels::head_ops::logsumexp;
use crate::util::error::Result;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Per-row negative log-likelihood of `targets` under softmax(`logits` [n, vocab]).
pub fn nll_rows(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    if !crate::model::kernels::cpu_kernels(logits.device()) {
        let logp = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
        let idx = Tensor::from_vec(targets.to_vec(), (targets.len(), 1), logits.device())?;
        return Ok(logp.gather(&idx, 1)?.squeeze(1)?.neg()?);
    }
    Ok(logits.contiguous()?.apply_op1(Nll { targets: targets.to_vec() })?)
}

struct Nll {
    targets: Vec<u32>,
}

fn rows<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<(&'a [f32], usize, usize)> {
    let (n, v) = l.shape().dims2()?;
    let CpuStorage::F32(data) = s else { candle_core::bail!("nll: logits must be f32") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("nll: logits must be contiguous") };
    Ok((&data[a..b], n, v))
}

impl CustomOp1 for Nll {
    fn name(&self) -> &'static str {
        "token-nll"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (data, n, v) = rows(s, l)?;
        if self.targets.len() != n {
            candle_core::bail!("nll: {} targets for {n} rows", self.targets.len())
        }
        let out: Vec<f32> =
            data.par_chunks(v).zip(self.targets.par_iter()).map(|(row, &t)| logsumexp(row) - row[t as usize]).collect();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g: Vec<f32> = grad.to_vec1()?;
        let (s, l) = arg.storage_and_layout();
        let Storage::Cpu(cpu) = &*s else { candle_core::bail!("nll: CPU only") };
        let (data, n, v) = rows(cpu, l)?;
        let mut out = vec![0f32; n * v];
        out.par_chunks_mut(v).zip(data.par_chunks(v)).enumerate().for_each(|(i, (o, row))| {
            let lse = logsumexp(row);
            for (oj, xj) in o.iter_mut().zip(row) {
                *oj = g[i] * (xj - lse).exp();
            }
            o[self.targets[i] as usize] -= g[i];
        });
        drop(s);
        Ok(Some(Tensor::from_vec(out, (n, v), arg.device())?))
    }
}
