//! Linear layers over dense or quantized weights, with an optional LoRA adapter, and the slots
//! through which an adapter reaches a model's projections.
use crate::model::kernels;
use crate::model::kernels::act::Gated;
use crate::model::kernels::gemm::Packed;
use crate::model::kernels::linear_ops::{AdaptedLinear, FrozenLinear};
use crate::model::lora::{LoraLayer, Target};
use crate::model::mode::Mode;
use crate::util::error::Result;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
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
    /// The Q8_0 weight the f32 base was dequantized from, if it was: packed from its int8 values
    /// instead (the same products bit for bit, a quarter of the bytes). Only for the base tensor
    /// it came with (its id); taken when packed.
    q8_0: Q8Source,
}

type PackCache = Arc<Mutex<Option<(TensorId, Arc<Packed>)>>>;
type Q8Source = Arc<Mutex<Option<(TensorId, Arc<QTensor>)>>>;

impl Linear {
    pub fn new(base: QMatMul) -> Self {
        Self { base, bias: None, lora: None, packed: PackCache::default(), q8_0: Default::default() }
    }

    /// This layer's f32 base is the dequantization of the Q8_0 weight `q`: multiply from q's
    /// int8 values. For an output head tied to a Q8_0 embedding (Gemma-3-270M's 262,144 rows:
    /// 671 MB as f32, streamed from memory for a few read positions per forward pass; 189 MB so).
    pub fn with_q8_0(self, q: Option<Arc<QTensor>>) -> Self {
        if let (Some(q), QMatMul::Tensor(w)) = (q, &self.base) {
            if q.dtype() == GgmlDType::Q8_0 && q.shape().dims() == w.dims() {
                *self.q8_0.lock().unwrap_or_else(|e| e.into_inner()) = Some((w.id(), q));
            }
        }
        self
    }

    /// The packed form of the f32 weight w (this layer's base).
    pub(super) fn packed(&self, w: &Tensor) -> Result<Arc<Packed>> {
        let mut slot = self.packed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, p)) = &*slot {
            if *id == w.id() {
                return Ok(p.clone());
            }
        }
        let q8 = self.q8_0.lock().unwrap_or_else(|e| e.into_inner()).take();
        let p = Arc::new(match q8 {
            Some((id, q)) if id == w.id() && kernels::cpu_kernels(w.device()) => {
                let (n, k) = w.dims2()?;
                Packed::from_q8_0(&q.data()?, n, k, crate::model::kernels::gemm::Isa::best())
                    .map_err(|e| crate::util::error::Error::Invalid(format!("internal: {e}")))?
            }
            _ => kernels::pack(w)?,
        });
        *slot = Some((w.id(), p.clone()));
        Ok(p)
    }

    /// [`Linear::packed`], checked against the input width k.
    fn packed_for(&self, w: &Tensor, k: usize) -> Result<Arc<Packed>> {
        let p = self.packed(w)?;
        if p.k != k {
            return Err(crate::util::error::Error::Invalid(format!(
                "internal: matmul of width {k} with a packed {} x {} weight",
                p.n, p.k
            )));
        }
        Ok(p)
    }

    /// Input and output width.
    /// Refuse a weight whose shape is not `[out, inp]` as the model's configuration gives it
    /// (a file that disagrees with its own header would fail deep in a product, or ask for an
    /// impossible allocation). `what` names the weight; `bias` of length `out` when present.
    pub fn expect(&self, path: &std::path::Path, what: &str, inp: usize, out: usize) -> Result<()> {
        let (i, o) = self.dims()?;
        let bias_ok = self.bias.as_ref().is_none_or(|b| b.dims() == [out]);
        if (i, o) != (inp, out) || !bias_ok {
            return Err(crate::util::error::Error::model(
                path,
                format!(
                    "invalid model configuration: {what} is {o} x {i} (with bias {:?}) but the configuration gives {out} x {inp}",
                    self.bias.as_ref().map(|b| b.dims().to_vec())
                ),
            ));
        }
        Ok(())
    }

    /// A decoder layer's seven projections (q, k, v, o, gate, up, down) against the sizes of the
    /// configuration: hidden, intermediate, heads, KV heads, head dimension.
    pub fn expect_layer(
        path: &std::path::Path,
        layer: usize,
        [q, k, v, o, gate, up, down]: [&Linear; 7],
        (hs, is, nh, nkv, hd): (usize, usize, usize, usize, usize),
    ) -> Result<()> {
        for (l, name, inp, out) in [
            (q, "q_proj", hs, nh * hd),
            (k, "k_proj", hs, nkv * hd),
            (v, "v_proj", hs, nkv * hd),
            (o, "o_proj", nh * hd, hs),
            (gate, "gate_proj", hs, is),
            (up, "up_proj", hs, is),
            (down, "down_proj", is, hs),
        ] {
            l.expect(path, &format!("layer {layer} {name}"), inp, out)?;
        }
        Ok(())
    }

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
        if let Some(y) = self.forward_adapted(x, mode)? {
            return Ok(y);
        }
        self.add_bias_and_adapter(self.forward_base(x, mode)?, x, mode)
    }

    /// The base product y of x, completed: plus the bias, plus the adapter's path on x.
    fn add_bias_and_adapter(&self, mut y: Tensor, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        match &self.lora {
            Some(l) => Ok((y + l.forward(x, mode)?)?),
            None => Ok(y),
        }
    }

    /// [`Linear::forward`] of several layers on the same input (a layer's q, k, v; its gate and
    /// up). Without gradients on the CPU with f32 bases, their products run as one parallel loop
    /// over all their weights' panels ([`crate::model::kernels::gemm::matmul_packed_many`]: one fork-join instead
    /// of one per layer); bias and adapter are added after, as `forward` does. The same bits.
    pub fn forward_many<const N: usize>(ls: [&Linear; N], x: &Tensor, mode: Mode) -> Result<[Tensor; N]> {
        let dense: Vec<&Tensor> = ls
            .iter()
            .filter_map(|l| match &l.base {
                QMatMul::Tensor(w) => Some(w),
                _ => None,
            })
            .collect();
        if mode.grad || dense.len() != N || !kernels::plain_cpu_f32(&dense) || !kernels::plain_cpu_f32(&[x]) {
            let ys: Vec<Tensor> = ls.iter().map(|l| l.forward(x, mode)).collect::<Result<_>>()?;
            return Ok(ys.try_into().expect("one output per layer"));
        }
        let (x2, lead) = rows(x)?;
        let x2 = x2.contiguous()?;
        let (m, k) = x2.dims2()?;
        let packed: Vec<Arc<Packed>> = ls.iter().zip(&dense).map(|(l, w)| l.packed_for(w, k)).collect::<Result<_>>()?;
        let mut outs: Vec<Vec<f32>> = packed.iter().map(|p| vec![0f32; m * p.n]).collect();
        kernels::with_f32s(&[&x2], |v| {
            let ws: Vec<&Packed> = packed.iter().map(|p| &**p).collect();
            let mut ys: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            crate::model::kernels::gemm::matmul_packed_many(v[0], m, &ws, &mut ys);
        })?;
        let mut ys = Vec::with_capacity(N);
        for ((l, p), o) in ls.iter().zip(&packed).zip(outs) {
            ys.push(l.add_bias_and_adapter(unrows(&Tensor::from_vec(o, (m, p.n), x.device())?, &lead)?, x, mode)?);
        }
        Ok(ys.try_into().expect("one output per layer"))
    }

    /// act(gate(x), up(x)): a gated MLP's two projections and activation. At inference on the
    /// CPU with f32 bases and neither bias nor adapter, one parallel loop in which each thread
    /// combines the gate and up panels it computed ([`crate::model::kernels::gemm::matmul_gated`]: no [tokens,
    /// intermediate] gate and up tensors written and read back, no separate activation pass);
    /// otherwise [`Linear::forward_many`] and the activation over tensors (in training, candle's
    /// GELU or the SwiGLU node, whose backward it needs). The same bits either way.
    pub fn forward_gated(gate: &Linear, up: &Linear, x: &Tensor, mode: Mode, act: Gated) -> Result<Tensor> {
        let plain = |l: &Linear| match (&l.base, &l.bias, &l.lora) {
            (QMatMul::Tensor(w), None, None) => Some(w.clone()),
            _ => None,
        };
        let fused = plain(gate)
            .zip(plain(up))
            .filter(|(g, u)| !mode.grad && kernels::plain_cpu_f32(&[g, u, x]) && g.dims() == u.dims());
        let Some((gw, uw)) = fused else {
            let [g, u] = Linear::forward_many([gate, up], x, mode)?;
            return match (act, mode.grad) {
                (Gated::Gelu, true) => Ok((g.gelu()? * u)?),
                (Gated::Silu, true) => crate::model::kernels::grad_ops::swiglu(&g, &u),
                (_, false) => act.tensors(&g, &u),
            };
        };
        let (x2, lead) = rows(x)?;
        let x2 = x2.contiguous()?;
        let (m, k) = x2.dims2()?;
        let (pg, pu) = (gate.packed_for(&gw, k)?, up.packed_for(&uw, k)?);
        let n = pg.n;
        let mut out = vec![0f32; m * n];
        kernels::with_f32s(&[&x2], |v| {
            crate::model::kernels::gemm::matmul_gated(v[0], m, (&pg, &pu), act.slice_fn(), &mut out)
        })?;
        unrows(&Tensor::from_vec(out, (m, n), x.device())?, &lead)
    }

    /// Training on the CPU with an f32 base and an adapter: base and LoRA path (its dropout
    /// included) in one graph node ([`AdaptedLinear`]) instead of seven or eight (the mask, two
    /// matmuls, their transposes and padding, the scale, the sum). candle's backward adds every
    /// gradient into a fresh zero tensor, so each node it skips saves a fill and an add over the
    /// activations. None: the composed path applies.
    fn forward_adapted(&self, x: &Tensor, mode: Mode) -> Result<Option<Tensor>> {
        let (Some(l), QMatMul::Tensor(w)) = (&self.lora, &self.base) else { return Ok(None) };
        if !mode.grad || !kernels::plain_cpu_f32(&[w]) || !kernels::cpu_kernels(x.device()) {
            return Ok(None);
        }
        let (x2, lead) = rows(x)?;
        let x2 = x2.contiguous()?;
        // The composed path's mask, value for value (same seed, layer id and order).
        let mask = match mode.dropout_seed {
            Some(seed) if l.dropout > 0.0 => {
                Some(crate::model::lora::dropout_values(seed, l.id, x2.elem_count(), l.dropout))
            }
            _ => None,
        };
        let op = AdaptedLinear { w: w.clone(), packed: self.packed(w)?, scale: l.scale as f32, mask };
        let mut y = unrows(&x2.apply_op3(l.a.as_tensor(), l.b.as_tensor(), op)?, &lead)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        Ok(Some(y))
    }

    fn forward_base(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match &self.base {
            // One [rows * len, in] x [in, out] product instead of candle's per-row broadcast
            // matmul: a single large GEMM parallelises far better on CPU.
            QMatMul::Tensor(w) => {
                let (x2, lead) = rows(x)?;
                let y = if !kernels::plain_cpu_f32(&[w]) || !kernels::cpu_kernels(x2.device()) {
                    // Off the CPU path: candle's matmul on a detached weight, so no weight
                    // gradient is computed for the frozen base.
                    kernels::matmul_nt(&x2, &w.detach())?
                } else if mode.grad && x2.track_op() {
                    x2.contiguous()?.apply_op1(FrozenLinear { w: w.clone(), packed: self.packed(w)? })?
                } else {
                    kernels::matmul_packed(&x2, &*self.packed(w)?)?
                };
                unrows(&y, &lead)
            }
            _ if mode.grad => Err(crate::util::error::Error::Invalid(
                "training needs f32 base weights: load the model with weights = \"f32\" (quantized matmul has no backward)".into(),
            )),
            q => Ok(q.forward(x)?),
        }
    }
}

/// x [.., in] as [rows, in], and its leading dimensions.
fn rows(x: &Tensor) -> Result<(Tensor, Vec<usize>)> {
    let dims = x.dims();
    let (last, lead) = dims.split_last().expect("at least one dim");
    Ok((x.reshape((lead.iter().product::<usize>(), *last))?, lead.to_vec()))
}

/// y [rows, out] back to [.., out] under x's leading dimensions.
fn unrows(y: &Tensor, lead: &[usize]) -> Result<Tensor> {
    let mut shape = lead.to_vec();
    shape.push(y.dim(1)?);
    Ok(y.reshape(shape)?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    fn randn(rng: &mut rand_chacha::ChaCha8Rng, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The one-node adapted projection gives the composed path's values and its gradients for
    /// x, A and B, without and with dropout (edge sizes: rows, widths and rank not multiples of
    /// any tile).
    #[test]
    fn adapted_linear_matches_the_composed_path_and_its_gradients() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (m, inp, out, r) = (7, 37, 45, 3);
        let w = randn(&mut rng, &[out, inp]);
        let (a, b) = (
            Var::from_tensor(&randn(&mut rng, &[r, inp])).unwrap(),
            Var::from_tensor(&randn(&mut rng, &[out, r])).unwrap(),
        );
        let x = Var::from_tensor(&randn(&mut rng, &[2, m, inp])).unwrap();
        let c = randn(&mut rng, &[2, m, out]);
        for (dropout, mode) in [(0.0, Mode::train(None)), (0.3, Mode::train(Some(3)))] {
            let mut lin = Linear::new(QMatMul::Tensor(w.clone()));
            lin.lora = Some(LoraLayer { a: a.clone(), b: b.clone(), scale: 1.7, dropout, id: 1 });
            let run = |fused: bool| {
                let y = if fused {
                    lin.forward_adapted(x.as_tensor(), mode).unwrap().expect("fused path taken")
                } else {
                    let lora = lin.lora.as_ref().unwrap().forward(x.as_tensor(), mode).unwrap();
                    (lin.forward_base(x.as_tensor(), mode).unwrap() + lora).unwrap()
                };
                let g = (&y * &c).unwrap().sum_all().unwrap().backward().unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let vars = [x.as_tensor(), a.as_tensor(), b.as_tensor()];
                (flat(&y), vars.iter().map(|v| flat(g.get(v).unwrap())).collect::<Vec<_>>())
            };
            let ((y1, g1), (y0, g0)) = (run(true), run(false));
            let diff = |p: &[f32], q: &[f32]| p.iter().zip(q).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
            assert!(diff(&y1, &y0) < 1e-4, "dropout {dropout}: values differ by {}", diff(&y1, &y0));
            for (name, (p, q)) in ["x", "a", "b"].iter().zip(g1.iter().zip(&g0)) {
                assert!(diff(p, q) < 1e-3, "dropout {dropout}: d{name} differs by {}", diff(p, q));
                assert!(q.iter().any(|v| v.abs() > 0.1), "d{name} is zero");
            }
        }
    }
}
