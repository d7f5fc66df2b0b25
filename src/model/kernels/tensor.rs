//! The f32 values of candle's CPU tensors, as the kernels read them: which tensors qualify, and
//! their elements borrowed without a copy; and the switch between mores' CPU kernels and the
//! device-generic path ([`cpu_kernels`]).
use crate::util::error::{Error, Result};
use candle_core::{Device, Storage, Tensor};
use std::cell::Cell;

thread_local! {
    static GENERIC: Cell<bool> = const { Cell::new(false) };
}

/// Whether mores' own CPU kernels run for tensors on `dev`: on the CPU, unless this thread runs
/// the device-generic path (candle's tensor ops only: what a GPU runs, here on the CPU so that it
/// can be tested; `--device cpu-generic`). Every kernel call site asks this and otherwise takes
/// candle's ops.
pub fn cpu_kernels(dev: &Device) -> bool {
    dev.is_cpu() && !GENERIC.with(|g| g.get())
}

/// Run the device-generic path on this thread (true) or mores' CPU kernels where they apply.
/// Models loaded for `cpu-generic` set it around their own passes ([`GenericScope`]).
pub fn set_generic(on: bool) {
    GENERIC.with(|g| g.set(on));
}

pub fn generic() -> bool {
    GENERIC.with(|g| g.get())
}

/// The generic path switched on (or left as it is) until dropped, then restored.
pub struct GenericScope(bool);

impl GenericScope {
    pub fn enter(on: bool) -> Self {
        let prev = generic();
        if on {
            set_generic(true);
        }
        GenericScope(prev)
    }
}

impl Drop for GenericScope {
    fn drop(&mut self) {
        set_generic(self.0);
    }
}

/// CPU f32 tensors outside any gradient graph, on a thread running mores' kernels: what mores'
/// own GEMM takes.
pub fn plain_cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| cpu_kernels(t.device()) && t.dtype() == candle_core::DType::F32 && !t.track_op())
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
