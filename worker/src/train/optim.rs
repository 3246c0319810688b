//! The optimizer side of recovery, as the reference's Hugging Face Trainer runs it: torch's
//! AdamW (decoupled weight decay, bias-corrected moments), the linear warmup-then-decay
//! schedule (`get_linear_schedule_with_warmup`) and gradient-norm clipping
//! (`clip_grad_norm_`). State is plain tensors so checkpoints can save and restore it.

use crate::error::{Error, Result};
use candle_core::{Tensor, Var};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// `optim="adamw_torch"` with the Trainer's defaults.
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// AdamW over a fixed list of variables; `m` and `v` per variable, one step counter.
pub struct AdamW {
    pub config: AdamWConfig,
    vars: Vec<Var>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Steps taken.
    pub step: u64,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, config: AdamWConfig) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        let m = vars.iter().map(zeros).collect::<candle_core::Result<Vec<_>>>()?;
        let v = vars.iter().map(zeros).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { config, vars, m, v, step: 0 })
    }

    /// One update with learning rate `lr` from `grads` (one per variable, in order).
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.vars.len() {
            return Err(Error::Invalid(format!("{} gradients for {} variables", grads.len(), self.vars.len())));
        }
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let step_size = lr / (1.0 - c.beta1.powi(t));
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        for (i, g) in grads.iter().enumerate() {
            let p = self.vars[i].as_tensor();
            let decayed = (p * (1.0 - lr * c.weight_decay))?;
            self.m[i] = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            self.v[i] = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((self.v[i].sqrt()? / bias2_sqrt)? + c.eps)?;
            let update = ((&self.m[i] / denom)? * step_size)?;
            self.vars[i].set(&(decayed - update)?)?;
        }
        Ok(())
    }

    /// Restores moments and step from a checkpoint.
    pub fn restore(&mut self, m: Vec<Tensor>, v: Vec<Tensor>, step: u64) -> Result<()> {
        let fits = |ts: &[Tensor]| ts.len() == self.vars.len() && ts.iter().zip(&self.vars).all(|(t, v)| t.dims() == v.as_tensor().dims());
        if !fits(&m) || !fits(&v) {
            return Err(Error::Invalid("the optimizer state does not fit the adapters".into()));
        }
        (self.m, self.v, self.step) = (m, v, step);
        Ok(())
    }
}

/// The learning rate of step `step` (0-based) under linear warmup over `warmup` steps, then
/// linear decay to 0 at `total`: Hugging Face's `get_linear_schedule_with_warmup`, whose
/// first step has rate 0 when there is warmup.
pub fn linear_schedule(peak: f64, step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    peak * (total.saturating_sub(step) as f64 / total.saturating_sub(warmup).max(1) as f64).max(0.0)
}

/// Scales `grads` in place so that their joint L2 norm is at most `max_norm` (torch's
/// `clip_grad_norm_`, which divides by `norm + 1e-6`); returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = squared_norms(grads)?.iter().map(|&s| s as f64).sum::<f64>().sqrt();
    clip_to_norm(grads, norm, max_norm)?;
    Ok(norm)
}

/// Each gradient's squared L2 norm (summed in f32, as torch sums a tensor).
pub fn squared_norms(grads: &[Tensor]) -> Result<Vec<f32>> {
    grads.iter().map(|g| Ok(g.sqr()?.sum_all()?.to_scalar::<f32>()?)).collect()
}

/// Scales `grads` whose joint norm is `norm` down to `max_norm` if above it.
pub fn clip_to_norm(grads: &mut [Tensor], norm: f64, max_norm: f64) -> Result<()> {
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut() {
            *g = (&*g * coef)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_hugging_face() {
        // get_linear_schedule_with_warmup(warmup=2, total=6) multipliers: 0, .5, 1, .75, .5, .25, 0.
        let got: Vec<f64> = (0..7).map(|s| linear_schedule(1.0, s, 2, 6)).collect();
        assert_eq!(got, [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]);
        // No warmup starts at the peak.
        assert_eq!(linear_schedule(3e-4, 0, 0, 10), 3e-4);
        assert_eq!(linear_schedule(3e-4, 12, 0, 10), 0.0);
    }

    #[test]
    fn clipping_scales_to_the_limit_only_when_above_it() {
        let dev = candle_core::Device::Cpu;
        let mut g = vec![Tensor::new(&[3f32, 0.0], &dev).unwrap(), Tensor::new(&[4f32], &dev).unwrap()];
        let norm = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-12);
        let scaled = g[0].to_vec1::<f32>().unwrap()[0];
        assert!((scaled - 3.0 / (5.0 + 1e-6) as f32).abs() < 1e-7, "{scaled}");
        let mut small = vec![Tensor::new(&[0.3f32], &dev).unwrap()];
        clip_grad_norm(&mut small, 1.0).unwrap();
        assert_eq!(small[0].to_vec1::<f32>().unwrap(), [0.3]);
    }

    #[test]
    fn one_adamw_step_by_hand() {
        // p=1, g=0.5, lr=0.1, wd=0.01: m=0.05, v=0.00025, m̂=0.5, v̂=0.25,
        // p = 1·(1−0.001) − 0.1·0.5/(0.5+1e-8) = 0.899 (+2e-9).
        let dev = candle_core::Device::Cpu;
        let var = Var::new(&[1f32], &dev).unwrap();
        let mut opt = AdamW::new(vec![var.clone()], AdamWConfig { weight_decay: 0.01, ..Default::default() }).unwrap();
        opt.step(&[Tensor::new(&[0.5f32], &dev).unwrap()], 0.1).unwrap();
        let p = var.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((p - 0.899).abs() < 1e-6, "{p}");
    }
}
