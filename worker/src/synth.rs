//! Models of a real architecture with seeded random weights (`llmprune synth`), for speed and
//! memory tests at 7B/13B scale where no real checkpoint is at hand. Never for quality: the
//! config says so. Weights are drawn N(0, 0.02²) (transformers' `initializer_range`), norms are
//! ones; each tensor has its own stream of the seed, so a shard's bytes do not depend on how
//! the model is sharded, and the model is written shard by shard (memory: one shard).

use crate::error::{Error, Result};
use crate::export::{cut_by_bytes, index_error, ModelDir};
use crate::model::candle_dtype;
use candle_core::{Device, Tensor};
use llmprune_shared::dtype::WeightDtype;
use llmprune_shared::safetensors_index::name_as_model;
use llmprune_shared::ModelSpec;
use rayon::prelude::*;
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

/// The architectures `synth` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// SmolLM2-135M: 30 layers, hidden 576, GQA 9/3 heads, tied embeddings.
    Smollm2,
    /// LLaMA-7B: 32 layers, hidden 4096, 32 heads, MLP 11008.
    #[value(name = "llama-7b")]
    Llama7b,
    /// LLaMA-13B: 40 layers, hidden 5120, 40 heads, MLP 13824.
    #[value(name = "llama-13b")]
    Llama13b,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Smollm2 => "smollm2",
            Shape::Llama7b => "llama-7b",
            Shape::Llama13b => "llama-13b",
        }
    }

    /// The Hugging Face config of the architecture.
    pub fn config(self) -> serde_json::Value {
        let (hidden, layers, heads, kv_heads, mlp, vocab, tied, theta, eps, positions) = match self {
            Shape::Smollm2 => (576, 30, 9, 3, 1536, 49152, true, 100000.0, 1e-5, 8192),
            Shape::Llama7b => (4096, 32, 32, 32, 11008, 32000, false, 10000.0, 1e-6, 2048),
            Shape::Llama13b => (5120, 40, 40, 40, 13824, 32000, false, 10000.0, 1e-6, 2048),
        };
        json!({
            "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "intermediate_size": mlp, "vocab_size": vocab,
            "tie_word_embeddings": tied, "rope_theta": theta, "rms_norm_eps": eps, "max_position_embeddings": positions,
            "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
        })
    }

    pub fn spec(self) -> Result<ModelSpec> {
        Ok(ModelSpec::from_hf_config(&self.config(), Path::new(self.name()))?)
    }
}

/// Every tensor of a LLaMA-layout model in file order, with its shape.
fn tensor_shapes(spec: &ModelSpec) -> Vec<(String, Vec<usize>)> {
    let (h, v) = (spec.hidden_size, spec.vocab_size);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for (i, l) in spec.layers.iter().enumerate() {
        let (q, kv) = (l.n_heads * spec.head_dim, l.n_kv_heads * spec.head_dim);
        let p = |name: &str| format!("model.layers.{i}.{name}.weight");
        out.extend([
            (p("input_layernorm"), vec![h]),
            (p("self_attn.q_proj"), vec![q, h]),
            (p("self_attn.k_proj"), vec![kv, h]),
            (p("self_attn.v_proj"), vec![kv, h]),
            (p("self_attn.o_proj"), vec![h, q]),
            (p("post_attention_layernorm"), vec![h]),
            (p("mlp.gate_proj"), vec![l.intermediate_size, h]),
            (p("mlp.up_proj"), vec![l.intermediate_size, h]),
            (p("mlp.down_proj"), vec![h, l.intermediate_size]),
        ]);
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !spec.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, h]));
    }
    out
}

/// splitmix64: a 64-bit stream from any seed, good enough for test weights and fast.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` values N(0, std²) from the stream `(seed, tensor)`, drawn in blocks of 64 Ki in
/// parallel, each block with its own sub-stream (the result does not depend on the threads).
fn normals(n: usize, std: f32, seed: u64, tensor: u64) -> Vec<f32> {
    const BLOCK: usize = 1 << 16;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(BLOCK).enumerate().for_each(|(b, chunk)| {
        let mut state = seed ^ tensor.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ (b as u64).wrapping_mul(0x8CB9_2BA7_2F3D_8DD7);
        for pair in chunk.chunks_mut(2) {
            // Box–Muller from two uniforms in (0, 1].
            let u1 = ((splitmix(&mut state) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            let u2 = (splitmix(&mut state) >> 11) as f64 / (1u64 << 53) as f64;
            let r = (-2.0 * u1.ln()).sqrt() * std as f64;
            let t = std::f64::consts::TAU * u2;
            pair[0] = (r * t.cos()) as f32;
            if let Some(second) = pair.get_mut(1) {
                *second = (r * t.sin()) as f32;
            }
        }
    });
    out
}

/// A word-level tokenizer of `n` tokens `w0` … `w{n-1}` (the model has no real vocabulary).
pub fn word_tokenizer(n: usize) -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..n).map(|i| (format!("w{i}"), json!(i))).collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}
    })
}

/// Writes `shape` with seeded random weights in `dtype` into `out` (which must not exist):
/// `config.json` (marked synthetic), the weights in shards of at most `max_shard_bytes`, and a
/// word-level `tokenizer.json`. Returns the number of parameters.
pub fn synthesize(out: &Path, shape: Shape, dtype: WeightDtype, seed: u64, max_shard_bytes: u64) -> Result<usize> {
    let spec = shape.spec()?;
    let dir = ModelDir::create(out)?;
    let tensors = tensor_shapes(&spec);
    let bytes_per = candle_dtype(dtype).size_in_bytes() as u64;
    let numel = |dims: &[usize]| dims.iter().product::<usize>();
    let index: HashMap<&str, (usize, &[usize])> = tensors.iter().enumerate().map(|(k, (name, dims))| (name.as_str(), (k, dims.as_slice()))).collect();
    let shards = cut_by_bytes(tensors.iter().map(|(name, dims)| (name.clone(), numel(dims) as u64 * bytes_per)), max_shard_bytes);
    let mut parts = Vec::with_capacity(shards.len());
    for (s, names) in shards.into_iter().enumerate() {
        let mut part: HashMap<String, Tensor> = HashMap::new();
        for name in &names {
            let (k, dims) = index[name.as_str()];
            let values = if dims.len() == 1 { vec![1f32; numel(dims)] } else { normals(numel(dims), 0.02, seed, k as u64) };
            part.insert(name.clone(), Tensor::from_vec(values, dims, &Device::Cpu)?.to_dtype(candle_dtype(dtype))?);
        }
        let file = format!("part-{:05}.safetensors", s + 1);
        let path = dir.path().join(&file);
        candle_core::safetensors::save(&part, &path).map_err(|e| Error::file(&path, e))?;
        tracing::info!(file = %file, tensors = names.len(), "shard written");
        let bytes = names.iter().map(|n| numel(index[n.as_str()].1) as u64 * bytes_per).sum();
        parts.push((file, names, bytes));
    }
    name_as_model(dir.path(), &parts).map_err(index_error)?;
    let mut config = spec.to_hf_config();
    config["torch_dtype"] = json!(dtype.torch_name());
    config["llmprune_synthetic"] = json!({
        "shape": shape.name(), "seed": seed, "init": "normal(0, 0.02), norms 1",
        "note": "random weights for speed and memory tests only; the outputs are meaningless",
    });
    dir.write_json("config.json", &config)?;
    dir.write_json("tokenizer.json", &word_tokenizer(spec.vocab_size))?;
    dir.commit()?;
    Ok(spec.n_params())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_have_the_asked_spread_and_do_not_depend_on_threads() {
        let v = normals(200_001, 0.02, 7, 3);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 2e-4 && (var.sqrt() - 0.02).abs() < 2e-4, "mean {mean}, std {}", var.sqrt());
        assert_eq!(v, normals(200_001, 0.02, 7, 3));
        assert_ne!(v[..8], normals(8, 0.02, 8, 3)[..]);
    }

    #[test]
    fn the_shapes_have_their_published_sizes() {
        assert_eq!(Shape::Smollm2.spec().unwrap().n_params(), 134_515_008);
        assert_eq!(Shape::Llama7b.spec().unwrap().n_params(), 6_738_415_616);
        assert_eq!(Shape::Llama13b.spec().unwrap().n_params(), 13_015_864_320);
        let spec = Shape::Smollm2.spec().unwrap();
        let listed: usize = tensor_shapes(&spec).iter().map(|(_, d)| d.iter().product::<usize>()).sum();
        assert_eq!(listed, spec.n_params());
    }
}
