//! Text generation with a KV cache: the prompt runs once, then one token at a time continues
//! from the cached keys and values. Greedy at temperature 0; otherwise Hugging Face's order of
//! logits processing (temperature, then top-k, then top-p) and a seeded draw.

use crate::error::{Error, Result};
use crate::loader::TextTokenizer;
use crate::model::{LlamaModel, Past};
use candle_core::{DType, Tensor};
use llmprune_shared::jobs::JobError;
use llmprune_shared::PyRandom;

#[derive(Debug, Clone)]
pub struct Sampling {
    pub max_new_tokens: usize,
    /// 0: greedy.
    pub temperature: f64,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1: all).
    pub top_p: f64,
    pub seed: u64,
}

impl Sampling {
    pub fn validate(&self) -> Result<()> {
        if self.temperature.is_nan() || self.temperature < 0.0 {
            return Err(JobError::at("temperature", self.temperature, "must be ≥ 0").into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(JobError::at("top_p", self.top_p, "must be in (0, 1]").into());
        }
        Ok(())
    }
}

/// The next token from one position's logits.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut PyRandom) -> u32 {
    let argmax = || logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as u32;
    if s.temperature == 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if s.top_k > 0 {
        order.truncate(s.top_k);
    }
    let max = logits[order[0]] as f64 / s.temperature;
    let weights: Vec<f64> = order.iter().map(|&i| (logits[i] as f64 / s.temperature - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    // The smallest prefix of the sorted tokens whose mass reaches top_p (at least one).
    let mut keep = 0;
    let mut mass = 0.0;
    while keep < order.len() && (keep == 0 || mass < s.top_p * total) {
        mass += weights[keep];
        keep += 1;
    }
    let mut draw = rng.random() * mass;
    for (i, w) in weights[..keep].iter().enumerate() {
        if draw < *w {
            return order[i] as u32;
        }
        draw -= w;
    }
    order[keep - 1] as u32
}

/// The generated tokens after `prompt` (stopping at EOS, which is not returned).
pub fn generate_ids(model: &LlamaModel, prompt: &[u32], s: &Sampling) -> Result<Vec<u32>> {
    s.validate()?;
    if prompt.is_empty() {
        return Err(Error::Invalid("an empty prompt".into()));
    }
    let device = model.device();
    let mut rng = PyRandom::new(s.seed);
    let ids = Tensor::from_slice(prompt, (1, prompt.len()), device)?;
    let (mut hidden, cache) = model.forward_cached(&ids, &[prompt.len()], None, true)?;
    let mut cache = cache.ok_or_else(|| Error::Invalid("no cache came back".into()))?;
    let mut out = Vec::with_capacity(s.max_new_tokens);
    while out.len() < s.max_new_tokens {
        let last = hidden.narrow(1, hidden.dim(1)? - 1, 1)?;
        let logits = model.logits_from_hidden(&last)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let next = sample(&logits, s, &mut rng);
        if Some(next) == model.spec.eos_token_id {
            break;
        }
        out.push(next);
        if out.len() == s.max_new_tokens {
            break;
        }
        let ids = Tensor::from_slice(&[next], (1, 1), device)?;
        let (h, c) = model.forward_cached(&ids, &[1], Some(Past { cache: &cache, rows: &[0] }), true)?;
        hidden = h;
        cache = c.ok_or_else(|| Error::Invalid("no cache came back".into()))?;
    }
    Ok(out)
}

/// `prompt`'s continuation as text.
pub fn generate(model: &LlamaModel, tok: &TextTokenizer, prompt: &str, s: &Sampling) -> Result<String> {
    let ids = tok.encode(prompt)?;
    tok.decode(&generate_ids(model, &ids, s)?)
}
