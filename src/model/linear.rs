//! Linear layers over dense or quantized weights, with an optional LoRA adapter, and the slots
//! through which an adapter reaches a model's projections.
use super::gemm::Packed;
use super::kernels;
use super::lora::{LoraLayer, Target};
use super::mode::Mode;
use crate::util::error::Result;
use candle_core::quantized::QMatMul;
use candle_core::{DType, Module, Tensor, TensorId};
use std::sync::{Arc, Mutex};

/// Linear layer over a possibly quantized weight, with an optional (frozen) bias and an optional
/// LoRA adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    pub base: QMatMul,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraLayer>,
    /// The f32 base weight packed for mores' GEMM, made at its first CPU use and kept (clones
    /// share it). Keyed by the weight tensor's id, so a replaced `base` is packed anew.
    packed: PackCache,
}

type PackCache = Arc<Mutex<Option<(TensorId, Arc<Packed>)>>>;

impl Linear {
    pub fn new(base: QMatMul) -> Self {
        Self { base, bias: None, lora: None, packed: PackCache::default() }
    }

    /// The packed form of the f32 weight w (this layer's base).
    fn packed(&self, w: &Tensor) -> Result<Arc<Packed>> {
        let mut slot = self.packed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, p)) = &*slot {
            if *id == w.id() {
                return Ok(p.clone());
            }
        }
        let p = Arc::new(kernels::pack(w)?);
        *slot = Some((w.id(), p.clone()));
        Ok(p)
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
                let y = if !kernels::plain_cpu_f32(&[w]) || !x2.device().is_cpu() {
                    // Off the CPU path: candle's matmul on a detached weight, so no weight
                    // gradient is computed for the frozen base.
                    kernels::matmul_nt(&x2, &w.detach())?
                } else if mode.grad && x2.track_op() {
                    x2.contiguous()?.apply_op1(FrozenLinear { w: w.clone(), packed: self.packed(w)? })?
                } else {
                    kernels::matmul_packed(&x2, &*self.packed(w)?)?
                };
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

/// x [n, in] times a frozen w [out, in] transposed on the CPU, returning only the input's
/// gradient: candle's matmul backward always computes the weight's too (a [out, in] product per
/// layer per step, thrown away for a frozen base; measured in candle-notes: step time and peak
/// memory roughly halved without it). Forward on the packed weight, backward g · w on w as stored.
struct FrozenLinear {
    w: Tensor,
    packed: Arc<Packed>,
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
        let (m, k) = l.shape().dims2()?;
        let p = &self.packed;
        if k != p.k {
            candle_core::bail!("frozen-linear: input width {k} vs weight {}x{}", p.n, p.k)
        }
        let x = kernels::cpu_f32(s, l)?;
        let mut y = vec![0f32; m * p.n];
        super::gemm::matmul_packed(x, m, p, &mut y);
        Ok((candle_core::CpuStorage::F32(y), (m, p.n).into()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (m, n) = grad.dims2()?;
        let (_, k) = self.w.dims2()?;
        let (g, w) = (grad.contiguous()?, self.w.contiguous()?);
        let dx = kernels::with_f32s(&[&g, &w], |v| {
            let mut dx = vec![0f32; m * k];
            super::gemm::matmul_nn(v[0], m, n, v[1], k, &mut dx);
            dx
        })
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(Some(Tensor::from_vec(dx, (m, k), grad.device())?))
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
