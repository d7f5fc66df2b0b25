//! The gated MLP activations as one pass for inference: Gemma's gelu_tanh(gate) * up
//! (vectorised, below) and the Llama family's silu(gate) * up ([`silu_mul`], candle's arithmetic).
//!
//! Why: candle's GELU calls libm's scalar `tanhf` per element, and with the product it makes two
//! passes and an intermediate tensor over the widest activation of a layer; on the Gemma probe
//! that was 13% of the scoring time (perf, 2026-12-04). Here 0.5 (1 + tanh(u)) is written as the
//! logistic 1 / (1 + e^(-2u)) and e^z is evaluated with plain float operations in an order that
//! does not depend on the element's place, so LLVM vectorises the loop at any x86 level and every
//! element gets the same bits on every machine (no FMA contraction: Rust never fuses a
//! multiply and an add by itself). It agrees with GELU in f64 to 2.4e-6 relative where the
//! logistic is not saturated (test).
use crate::util::error::Result;
use candle_core::Tensor;

const LOG2E: f32 = std::f32::consts::LOG2_E;
// ln 2 split so that k * LN2_HI is exact for the k that occur (|k| < 2^8).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// 1.5 x 2^23: adding and subtracting it rounds to the nearest integer without a rounding
/// instruction (SSE2 has none for packed floats).
const ROUND: f32 = 12_582_912.0;

/// e^z for z in about [-87, 88] (clamped there: below it the result is subnormal or zero, above
/// it infinite), relative error about 2e-7.
#[inline(always)]
fn exp(z: f32) -> f32 {
    let z = z.clamp(-87.0, 88.0);
    let k = (z * LOG2E + ROUND) - ROUND;
    let r = (z - k * LN2_HI) - k * LN2_LO;
    // Taylor series to degree 7 on |r| <= ln2/2 (remainder below 6e-9).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    p * f32::from_bits(((k as i32 + 127) << 23) as u32)
}

/// gelu_tanh(g) * u, with gelu_tanh(g) = g / (1 + e^(-2 sqrt(2/pi) (g + 0.044715 g^3))).
#[inline(always)]
fn gelu_mul_one(g: f32, u: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    let inner = C * g * (1.0 + 0.044715 * g * g);
    g / (1.0 + exp(-2.0 * inner)) * u
}

#[inline(always)]
fn gelu_mul_plain(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = gelu_mul_one(g, u);
    }
}

fn gelu_mul_slice(g: &[f32], u: &[f32], out: &mut [f32]) {
    // The same loop compiled for 16 lanes where the CPU has them (4 at the x86-64 baseline):
    // each element's operations are the same plain float operations in the same order, so the
    // bits do not depend on the width (unit test).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn wide(g: &[f32], u: &[f32], out: &mut [f32]) {
        gelu_mul_plain(g, u, out)
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { wide(g, u, out) };
    }
    gelu_mul_plain(g, u, out)
}

/// The activation of a gated MLP: act(gate) * up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gated {
    /// Gemma: gelu_tanh(gate) * up ([`gelu_mul`]).
    Gelu,
    /// The Llama family: silu(gate) * up ([`silu_mul`]).
    Silu,
}

impl Gated {
    /// The element-wise form over slices.
    pub fn slice_fn(self) -> fn(&[f32], &[f32], &mut [f32]) {
        match self {
            Gated::Gelu => gelu_mul_slice,
            Gated::Silu => silu_mul_slice,
        }
    }

    /// Over tensors (inference).
    pub fn tensors(self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        match self {
            Gated::Gelu => gelu_mul(gate, up),
            Gated::Silu => silu_mul(gate, up),
        }
    }
}

/// gelu_tanh(gate) * up for CPU f32 tensors without gradients (same shape); candle's composed
/// ops elsewhere (other devices, training, which needs their backward).
pub fn gelu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !super::plain_cpu_f32(&[gate, up]) || gate.shape() != up.shape() {
        return Ok((gate.gelu()? * up)?);
    }
    gated(gate, up, gelu_mul_slice)
}

/// `f(gate, up)` element by element over CPU f32 tensors of one shape, in parallel chunks; each
/// element's value does not depend on the chunking.
fn gated(gate: &Tensor, up: &Tensor, f: fn(&[f32], &[f32], &mut [f32])) -> Result<Tensor> {
    let (g, u) = (gate.contiguous()?, up.contiguous()?);
    let out = super::with_f32s(&[&g, &u], |x| {
        use rayon::prelude::*;
        let mut out = vec![0f32; x[0].len()];
        // Chunks of whole cache lines.
        const CHUNK: usize = 1 << 14;
        out.par_chunks_mut(CHUNK)
            .zip(x[0].par_chunks(CHUNK).zip(x[1].par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| f(g, u, o));
        out
    })?;
    Ok(Tensor::from_vec(out, g.shape(), g.device())?)
}

/// silu(g) * u into `out`: candle's SiLU (`v / (1 + e^-v)`, the C library's expf) and then its
/// product, the same bits as `silu(gate) * up` without the intermediate tensor and its second
/// pass; the exponentials vectorised ([`super::exp`], the same bits as expf).
pub fn silu_mul_slice(g: &[f32], u: &[f32], out: &mut [f32]) {
    const CHUNK: usize = 256;
    for ((o, g), u) in out.chunks_mut(CHUNK).zip(g.chunks(CHUNK)).zip(u.chunks(CHUNK)) {
        for (o, &g) in o.iter_mut().zip(g) {
            *o = -g;
        }
        super::exp::exp_in_place(o);
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + *o) * u;
        }
    }
}

/// silu(gate) * up for CPU f32 tensors without gradients (same shape), bit for bit candle's
/// `silu(gate) * up`; candle's composed ops elsewhere.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !super::plain_cpu_f32(&[gate, up]) || gate.shape() != up.shape() {
        return Ok((candle_nn::ops::silu(gate)? * up)?);
    }
    gated(gate, up, silu_mul_slice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn exp_matches_std_to_a_few_ulps() {
        for i in -8700..=8800 {
            let z = i as f32 * 0.01;
            let (a, b) = (exp(z), z.exp());
            assert!(((a - b) / b).abs() < 4e-7, "exp({z}) = {a} vs {b}");
        }
        // Clamped, never infinite or NaN.
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 1e38);
    }

    #[test]
    fn silu_mul_is_candles_silu_times_up_bit_for_bit() {
        let n = 40_003;
        let g: Vec<f32> = (0..n).map(|i| (i as f32 / n as f32 - 0.5) * 40.0).collect();
        let u: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect();
        let gt = Tensor::from_vec(g, n, &Device::Cpu).unwrap();
        let ut = Tensor::from_vec(u, n, &Device::Cpu).unwrap();
        let ours = silu_mul(&gt, &ut).unwrap().to_vec1::<f32>().unwrap();
        let candle = (candle_nn::ops::silu(&gt).unwrap() * &ut).unwrap().to_vec1::<f32>().unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&ours), bits(&candle));
    }

    /// The loop compiled for AVX-512 (where the CPU has it) and at the baseline give the same
    /// bits, saturated tails and NaN included.
    #[test]
    fn gelu_mul_is_the_same_at_every_vector_width() {
        let n = 40_003;
        let mut g: Vec<f32> = (0..n).map(|i| (i as f32 / n as f32 - 0.5) * 60.0).collect();
        g[17] = f32::NAN;
        g[18] = f32::INFINITY;
        g[19] = f32::NEG_INFINITY;
        let u: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect();
        let (mut wide, mut plain) = (vec![0f32; n], vec![0f32; n]);
        gelu_mul_slice(&g, &u, &mut wide);
        gelu_mul_plain(&g, &u, &mut plain);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&wide), bits(&plain));
    }

    /// Against GELU in f64 (in the logistic form; relative 2.4e-6 where the logistic is not
    /// saturated, more in the tails as e^z's conditioning allows) and candle's GELU (absolute
    /// 5e-6: candle's 1 + tanh(u) loses precision where tanh is near -1), times up, over the
    /// range activations take and a length that is not a multiple of any vector width or chunk.
    #[test]
    fn gelu_mul_matches_f64_and_candle() {
        let n = 40_003;
        let g: Vec<f32> = (0..n).map(|i| (i as f32 / n as f32 - 0.5) * 24.0).collect();
        let u: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect();
        let gt = Tensor::from_vec(g.clone(), n, &Device::Cpu).unwrap();
        let ut = Tensor::from_vec(u.clone(), n, &Device::Cpu).unwrap();
        let ours = gelu_mul(&gt, &ut).unwrap().to_vec1::<f32>().unwrap();
        let candle = (gt.gelu().unwrap() * &ut).unwrap().to_vec1::<f32>().unwrap();
        for i in 0..n {
            let (x, y) = (g[i] as f64, u[i] as f64);
            // 0.5 (1 + tanh(v)) as 1 / (1 + e^(-2v)): f64 without the cancellation near tanh = -1.
            let v = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            let exact = x / (1.0 + (-2.0 * v).exp()) * y;
            let a = ours[i] as f64;
            // e^z's condition number is |z|: an f32 argument carries |z| x 6e-8 of relative error.
            assert!(
                (a - exact).abs() <= 3e-7 * (8.0 + 2.0 * v.abs()) * exact.abs() + 1e-30,
                "element {i}: {a} vs exact {exact}"
            );
            assert!((a - candle[i] as f64).abs() <= 5e-6, "element {i}: {a} vs candle {}", candle[i]);
        }
    }
}
