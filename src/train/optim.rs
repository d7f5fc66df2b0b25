//! AdamW (PyTorch's decoupled form), learning-rate schedules and gradient clipping. Written here
//! rather than taken from candle-nn because resuming needs the moment estimates saved and restored.
use crate::recipe::Schedule;
use crate::util::error::Result;
use candle_core::{Tensor, Var};

pub struct AdamW {
    pub vars: Vec<Var>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Steps taken (bias correction uses t = step).
    pub step: usize,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, betas: (f64, f64), eps: f64, weight_decay: f64) -> Result<Self> {
        let m = vars.iter().map(|v| v.as_tensor().zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self { vars, m, v, step: 0, betas, eps, weight_decay })
    }

    /// One update with gradients `grads` (same order as `vars`) at learning rate `lr`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.step += 1;
        let (b1, b2) = self.betas;
        let c1 = 1.0 - b1.powi(self.step as i32);
        let c2 = 1.0 - b2.powi(self.step as i32);
        for (i, g) in grads.iter().enumerate().take(self.vars.len()) {
            self.m[i] = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let w = self.vars[i].as_tensor();
            let w = (w * (1.0 - lr * self.weight_decay))?;
            let update = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + self.eps)?)?;
            self.vars[i].set(&(w - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// Learning rate at optimizer step `step` (0-based) of `total`: linear warmup, then decay to 0.
pub fn lr_at(base: f64, schedule: Schedule, warmup: usize, step: usize, total: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    match schedule {
        Schedule::Constant => base,
        Schedule::Linear => base * (1.0 - progress),
        Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

/// Scale gradients so their global L2 norm is at most `max` (0 = no clipping). Returns the norm
/// before clipping.
pub fn clip(grads: &mut [Tensor], max: f64) -> Result<f64> {
    let mut sq = 0.0;
    for g in grads.iter() {
        sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = sq.sqrt();
    if max > 0.0 && norm > max {
        let s = max / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * s)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against torch.optim.AdamW's documented update (decoupled decay, then the bias-corrected
    /// Adam step), lr 0.1, betas (0.9, 0.999), eps 1e-8, weight decay 0.01, w0 = 1 and gradients
    /// 0.5, -0.2, 0.3, computed in f64 by that formula (PyTorch is not installed here):
    /// 0.899000002, 0.8635404181145108, 0.8082328432610408.
    #[test]
    fn adamw_follows_pytorch_decoupled_update() {
        let w = Var::from_slice(&[1.0f32], 1, &candle_core::Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![w.clone()], (0.9, 0.999), 1e-8, 0.01).unwrap();
        for (g, want) in [(0.5f32, 0.899000002), (-0.2, 0.8635404181145108), (0.3, 0.8082328432610408)] {
            let g = Tensor::from_slice(&[g], 1, &candle_core::Device::Cpu).unwrap();
            opt.step(&[g], 0.1).unwrap();
            let got = w.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert_eq!(opt.step, 3);
    }

    #[test]
    fn lr_schedules_warm_up_then_decay_to_zero() {
        let at = |s, step| lr_at(1.0, s, 2, step, 10);
        // Warmup: (step + 1) / warmup.
        assert_eq!((at(Schedule::Cosine, 0), at(Schedule::Cosine, 1)), (0.5, 1.0));
        // After warmup, progress (step - 2) / 8: 0 at step 2, 0.5 at step 6, 1 at step 10.
        for s in [Schedule::Cosine, Schedule::Linear, Schedule::Constant] {
            assert_eq!(at(s, 2), 1.0);
        }
        assert!((at(Schedule::Cosine, 6) - 0.5).abs() < 1e-12);
        assert!((at(Schedule::Linear, 6) - 0.5).abs() < 1e-12);
        assert!((at(Schedule::Cosine, 4) - 0.5 * (1.0 + (std::f64::consts::PI * 0.25).cos())).abs() < 1e-12);
        assert!(at(Schedule::Cosine, 10).abs() < 1e-12 && at(Schedule::Linear, 12) == 0.0);
        assert_eq!(at(Schedule::Constant, 9), 1.0);
    }

    #[test]
    fn clipping_scales_to_the_max_norm_and_reports_the_norm_before() {
        let d = candle_core::Device::Cpu;
        let mut g = vec![Tensor::from_slice(&[3.0f32], 1, &d).unwrap(), Tensor::from_slice(&[4.0f32], 1, &d).unwrap()];
        assert!((clip(&mut g, 1.0).unwrap() - 5.0).abs() < 1e-6);
        let after: f32 = g.iter().map(|t| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()).sum();
        assert!((after.sqrt() - 1.0).abs() < 1e-5);
        assert!((clip(&mut g, 0.0).unwrap() - 1.0).abs() < 1e-5, "0 = no clipping");
    }
}
