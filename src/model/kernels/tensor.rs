//! The f32 values of candle's CPU tensors, as the kernels read them: which tensors qualify, and
//! their elements borrowed without a copy.
use crate::util::error::{Error, Result};
use candle_core::{Storage, Tensor};

/// CPU f32 tensors outside any gradient graph: what mores' own GEMM takes.
pub fn plain_cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && !t.track_op())
}

pub fn cpu_f32<'a>(s: &'a candle_core::CpuStorage, l: &candle_core::Layout) -> candle_core::Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(v) = s else { candle_core::bail!("attention: f32 only") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("attention: input not contiguous") };
    Ok(&v[a..b])
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
