//! LoRA on a frozen linear layer: y = W x + scale * B (A dropout(x)), A [r, in], B [out, r].
use crate::model::mode::Mode;
use crate::util::error::Result;
use candle_core::{Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use crate::recipe::lora::Target;

#[derive(Debug, Clone)]
pub struct LoraLayer {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
    pub dropout: f64,
    /// Distinguishes this layer's dropout masks from every other layer's in the same step.
    pub id: u64,
}

impl LoraLayer {
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (last, lead) = dims.split_last().expect("at least one dim");
        let n: usize = lead.iter().product();
        let mut x2 = x.reshape((n, *last))?;
        if let (Some(seed), true) = (mode.dropout_seed, self.dropout > 0.0) {
            x2 = x2.broadcast_mul(&dropout_mask(seed, self.id, n * last, self.dropout, x)?.reshape((n, *last))?)?;
        }
        let (a, b) = if mode.grad {
            (self.a.as_tensor().clone(), self.b.as_tensor().clone())
        } else {
            (self.a.as_tensor().detach(), self.b.as_tensor().detach())
        };
        // The same row-count-independent products as the base weights (differentiable). The
        // factors stay f32 under half-precision activations: the product runs in f32 and comes
        // back in the activations' type.
        let dt = x2.dtype();
        let x2 = x2.to_dtype(a.dtype())?;
        let y = (crate::model::kernels::matmul_nt(&crate::model::kernels::matmul_nt(&x2, &a)?, &b)? * self.scale)?;
        let y = y.to_dtype(dt)?;
        let mut out = lead.to_vec();
        out.push(b.dim(0)?);
        Ok(y.reshape(out)?)
    }

    /// B A scaled: the dense update this adapter adds to W [out, in].
    pub fn delta(&self) -> Result<Tensor> {
        Ok((self.b.as_tensor().detach().matmul(&self.a.as_tensor().detach())? * self.scale)?)
    }
}

/// Inverted dropout mask drawn from the run's portable RNG: candle's own CPU RNG cannot be seeded.
fn dropout_mask(seed: u64, id: u64, n: usize, p: f64, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::from_vec(dropout_values(seed, id, n, p), n, like.device())?)
}

/// The mask's n values: 0 with probability p, else 1 / (1 - p).
pub fn dropout_values(seed: u64, id: u64, n: usize, p: f64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let keep = (1.0 / (1.0 - p)) as f32;
    (0..n).map(|_| if rng.random::<f64>() < p { 0.0 } else { keep }).collect()
}

/// A [r, in] initialised as PEFT does (Kaiming-uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in)))
/// from a seed, B [out, r] zeros, so the adapted model starts equal to the base.
pub fn init_pair(seed: u64, rank: usize, inp: usize, out: usize, device: &candle_core::Device) -> Result<(Var, Var)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let bound = 1.0 / (inp as f64).sqrt();
    let a: Vec<f32> = (0..rank * inp).map(|_| rng.random_range(-bound..bound) as f32).collect();
    let a = Var::from_tensor(&Tensor::from_vec(a, (rank, inp), device)?)?;
    let b = Var::zeros((out, rank), candle_core::DType::F32, device)?;
    Ok((a, b))
}

/// B rows from mores' (GGUF) order to Hugging Face order, and back.
pub fn rows_to_hf(b: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, r) = b.dims2()?;
    let hd = out / heads;
    Ok(b.reshape((heads, hd / 2, 2, r))?.transpose(1, 2)?.contiguous()?.reshape((out, r))?)
}

pub fn rows_from_hf(b: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, r) = b.dims2()?;
    let hd = out / heads;
    Ok(b.reshape((heads, 2, hd / 2, r))?.transpose(1, 2)?.contiguous()?.reshape((out, r))?)
}
