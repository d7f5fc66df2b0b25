//! Linear layers over dense or quantized weights, with an optional LoRA adapter, and the slots
//! through which an adapter reaches a model's projections.
use super::kernels;
use super::lora::{LoraLayer, Target};
use super::mode::Mode;
use crate::util::error::Result;
use candle_core::quantized::QMatMul;
use candle_core::{DType, Module, Tensor};

/// Linear layer over a possibly quantized weight, with an optional (frozen) bias and an optional
/// LoRA adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    pub base: QMatMul,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraLayer>,
}

impl Linear {
    pub fn new(base: QMatMul) -> Self {
        Self { base, bias: None, lora: None }
    }

    /// Input and output width.
    pub fn dims(&self) -> Result<(usize, usize)> {
        let (out, inp) = match &self.base {
            QMatMul::Tensor(w) | QMatMul::TensorF16(w) => w.dims2()?,
            QMatMul::QTensor(q) => q.shape().dims2()?,
        };
        Ok((inp, out))
    }

    /// The base weight [out, in] as f32 (dequantized if stored quantized), without any adapter.
    pub fn dense_weight(&self) -> Result<Tensor> {
        Ok(match &self.base {
            QMatMul::Tensor(w) => w.clone(),
            QMatMul::TensorF16(w) => w.to_dtype(DType::F32)?,
            QMatMul::QTensor(q) => q.dequantize(&q.device())?,
        })
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut y = self.forward_base(x, mode)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        match &self.lora {
            Some(l) => Ok((y + l.forward(x, mode)?)?),
            None => Ok(y),
        }
    }

    fn forward_base(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match &self.base {
            // One [rows * len, in] x [in, out] product instead of candle's per-row broadcast
            // matmul: a single large GEMM parallelises far better on CPU.
            QMatMul::Tensor(w) => {
                let dims = x.dims().to_vec();
                let (last, lead) = dims.split_last().expect("at least one dim");
                let n: usize = lead.iter().product();
                let x2 = x.reshape((n, *last))?;
                let y = if mode.grad { frozen_matmul(&x2, w)? } else { kernels::matmul_nt(&x2, w)? };
                let mut out = lead.to_vec();
                out.push(w.dim(0)?);
                Ok(y.reshape(out)?)
            }
            _ if mode.grad => Err(crate::util::error::Error::Invalid(
                "training needs f32 base weights: load the model with weights = \"f32\" (quantized matmul has no backward)".into(),
            )),
            q => Ok(q.forward(x)?),
        }
    }
}

/// x [n, in] times a frozen w [out, in] transposed. candle's matmul backward always computes the
/// weight's gradient too (a [out, in] product per layer per step, thrown away for a frozen base);
/// this op returns only the input gradient. Measured in candle-notes: step time and peak memory
/// roughly halved. On devices without the CPU kernel it falls back to a matmul on a detached weight.
fn frozen_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || !x.track_op() {
        return kernels::matmul_nt(x, &w.detach());
    }
    let w = w.contiguous()?;
    kernels::invariant_rows(&x.contiguous()?, w.dim(0)?, |x| Ok(x.apply_op1(FrozenLinear { w: w.clone() })?))
}

struct FrozenLinear {
    w: Tensor,
}

impl candle_core::CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        let (m, k) = l.shape().dims2()?;
        let (ws, wl) = self.w.storage_and_layout();
        let candle_core::Storage::Cpu(wc) = &*ws else { candle_core::bail!("frozen-linear: weight is not on the CPU") };
        let (n, k2) = wl.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("frozen-linear: input width {k} vs weight {n}x{k2}")
        }
        let out = s.matmul(wc, (1, m, n, k), l, &wl.transpose(0, 1)?)?;
        Ok((out, (m, n).into()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

/// One adaptable projection of a loaded model.
pub struct Slot<'a> {
    pub layer: usize,
    pub target: Target,
    pub linear: &'a mut Linear,
    /// GGUF llama Q/K weights have their rows permuted per head (for interleaved RoPE); an
    /// adapter's B rows follow the same order inside mores and are converted at the PEFT boundary.
    pub permuted_heads: Option<usize>,
}

/// The seven projections of decoder layer `layer`, given in `Target::ALL` order. `permuted_heads`:
/// (query heads, KV heads) when Q and K rows are stored permuted (GGUF llama).
pub fn layer_slots<'a>(
    layer: usize,
    linears: [&'a mut Linear; 7],
    permuted_heads: Option<(usize, usize)>,
) -> impl Iterator<Item = Slot<'a>> {
    Target::ALL.into_iter().zip(linears).map(move |(target, linear)| {
        let heads = match (target, permuted_heads) {
            (Target::Q, Some((q, _))) => Some(q),
            (Target::K, Some((_, kv))) => Some(kv),
            _ => None,
        };
        Slot { layer, target, linear, permuted_heads: heads }
    })
}
