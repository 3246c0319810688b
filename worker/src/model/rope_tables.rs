//! cos/sin tables for rotary embeddings, computed as transformers computes them (f32
//! inverse frequencies, f32 angle products) so positions far out agree to the last bits.

use candle_core::{Device, Result, Tensor};
use llmprune_shared::{ModelSpec, RopeScaling};

pub struct RopeTables {
    /// `[max_positions, rotary_dim / 2]`
    pub cos: Tensor,
    pub sin: Tensor,
}

/// Inverse frequencies `1 / θ^(2i/d)` over the `d` rotated channels of a head, then the
/// config's scaling.
pub fn inverse_frequencies(spec: &ModelSpec) -> Vec<f32> {
    let d = spec.rotary_dim;
    let theta = spec.rope_theta as f32;
    let base: Vec<f32> = (0..d).step_by(2).map(|i| 1.0 / theta.powf(i as f32 / d as f32)).collect();
    match &spec.rope_scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / *factor as f32).collect(),
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
            let (factor, low, high) = (*factor as f32, *low_freq_factor as f32, *high_freq_factor as f32);
            let old_ctx = *original_max_position_embeddings as f32;
            let low_freq_wavelen = old_ctx / low;
            let high_freq_wavelen = old_ctx / high;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

impl RopeTables {
    pub fn new(spec: &ModelSpec, max_positions: usize, device: &Device) -> Result<Self> {
        let inv = inverse_frequencies(spec);
        let half = inv.len();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for &f in &inv {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(Self { cos: Tensor::from_vec(cos, (max_positions, half), device)?, sin: Tensor::from_vec(sin, (max_positions, half), device)? })
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmprune_shared::{Architecture, LayerShape};

    fn spec(scaling: Option<RopeScaling>) -> ModelSpec {
        ModelSpec {
            architecture: Architecture::Llama,
            vocab_size: 10,
            hidden_size: 8,
            head_dim: 8,
            layers: vec![LayerShape { n_heads: 1, n_kv_heads: 1, intermediate_size: 4 }],
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: scaling,
            rotary_dim: 8,
            max_position_embeddings: 16,
            tie_word_embeddings: true,
            attention_bias: false,
            o_bias: false,
            mlp_bias: false,
            sliding_window: None,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
        }
    }

    #[test]
    fn frequencies_by_hand() {
        // θ^(-i/d) for i = 0, 2, 4, 6 and d = 8: 1, 0.1, 0.01, 0.001.
        let f = inverse_frequencies(&spec(None));
        for (a, b) in f.iter().zip([1.0, 0.1, 0.01, 0.001]) {
            assert!((a - b).abs() < 1e-6, "{f:?}");
        }
        let lin = inverse_frequencies(&spec(Some(RopeScaling::Linear { factor: 4.0 })));
        assert!((lin[1] - 0.025).abs() < 1e-7);
    }

    #[test]
    fn llama3_scaling_by_hand() {
        // Old context 16, low 1, high 2: the wavelength 2π is below 16/2 (kept), 62.8 is
        // above 16/1 (divided by 8).
        let s = RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 2.0, original_max_position_embeddings: 16 };
        let f = inverse_frequencies(&spec(Some(s)));
        assert!((f[0] - 1.0).abs() < 1e-7);
        assert!((f[1] - 0.1 / 8.0).abs() < 1e-7);
        // A medium wavelength: old context 100, wavelength 2π/0.1 = 62.8 lies in [25, 100].
        let s = RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 100 };
        let f = inverse_frequencies(&spec(Some(s)));
        let smooth = (100.0 / (2.0 * std::f32::consts::PI / 0.1) - 1.0) / 3.0;
        let want = (1.0 - smooth) * 0.1 / 8.0 + smooth * 0.1;
        assert!((f[1] - want).abs() < 1e-7, "{} vs {want}", f[1]);
    }
}
