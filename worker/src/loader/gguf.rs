//! GGUF files of the `llama` architecture (llama.cpp's format).
//!
//! Tensors are dequantised to f32 on load by candle's kernels (F32, F16, BF16, Q4_0, Q4_1,
//! Q5_0, Q5_1, Q8_0 and the K-quants). llama.cpp's converter permutes the rows of
//! `attn_q`/`attn_k` so that its interleaved rotary kernel works; we undo that permutation
//! so the weights are in the Hugging Face layout and use the rotate-half rotary embedding.

use super::tokenizer::TextTokenizer;
use super::WeightSource;
use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use llmprune_shared::{Architecture, LayerShape, ModelSpec};
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct GgufModel {
    pub spec: ModelSpec,
    pub weights: GgufWeights,
    pub tokenizer: TextTokenizer,
}

pub struct GgufWeights {
    path: PathBuf,
    content: Content,
    reader: Mutex<BufReader<File>>,
    /// Hugging Face name → GGUF name.
    names: HashMap<String, String>,
    /// Heads per layer, for undoing the q/k permutation.
    layers: Vec<LayerShape>,
}

impl GgufModel {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| Error::file(path, format!("not a valid GGUF file: {e}")))?;
        let meta = Metadata { path, content: &content };
        let spec = meta.spec()?;
        let tokenizer = TextTokenizer::from_gguf(path, &content.metadata)?;
        let names = hf_names(&content, spec.n_layers());
        for name in names.values() {
            let info = &content.tensor_infos[name];
            let end = content.tensor_data_offset + info.offset + tensor_bytes(info)?;
            let size = reader.get_ref().metadata().map_err(|e| Error::io(path, e))?.len();
            if end > size {
                return Err(Error::Tensor {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    reason: format!("data ends at byte {end} but the file has {size} bytes (truncated?)"),
                });
            }
        }
        let weights = GgufWeights { path: path.to_path_buf(), content, reader: Mutex::new(reader), names, layers: spec.layers.clone() };
        Ok(Self { spec, weights, tokenizer })
    }
}

fn tensor_bytes(info: &candle_core::quantized::gguf_file::TensorInfo) -> Result<u64> {
    let elems = info.shape.elem_count();
    let block = info.ggml_dtype.block_size();
    Ok((elems / block * info.ggml_dtype.type_size()) as u64)
}

/// Maps every GGUF tensor we understand to its Hugging Face name.
fn hf_names(content: &Content, n_layers: usize) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let fixed = [("token_embd.weight", "model.embed_tokens.weight"), ("output_norm.weight", "model.norm.weight"), ("output.weight", "lm_head.weight")];
    for (g, h) in fixed {
        if content.tensor_infos.contains_key(g) {
            map.insert(h.to_string(), g.to_string());
        }
    }
    let per_layer = [
        ("attn_norm.weight", "input_layernorm.weight"),
        ("attn_q.weight", "self_attn.q_proj.weight"),
        ("attn_k.weight", "self_attn.k_proj.weight"),
        ("attn_v.weight", "self_attn.v_proj.weight"),
        ("attn_output.weight", "self_attn.o_proj.weight"),
        ("attn_q.bias", "self_attn.q_proj.bias"),
        ("attn_k.bias", "self_attn.k_proj.bias"),
        ("attn_v.bias", "self_attn.v_proj.bias"),
        ("attn_output.bias", "self_attn.o_proj.bias"),
        ("ffn_gate.bias", "mlp.gate_proj.bias"),
        ("ffn_up.bias", "mlp.up_proj.bias"),
        ("ffn_down.bias", "mlp.down_proj.bias"),
        ("ffn_norm.weight", "post_attention_layernorm.weight"),
        ("ffn_gate.weight", "mlp.gate_proj.weight"),
        ("ffn_up.weight", "mlp.up_proj.weight"),
        ("ffn_down.weight", "mlp.down_proj.weight"),
    ];
    for i in 0..n_layers {
        for (g, h) in per_layer {
            let g = format!("blk.{i}.{g}");
            if content.tensor_infos.contains_key(&g) {
                map.insert(format!("model.layers.{i}.{h}"), g);
            }
        }
    }
    map
}

/// Inverse of llama.cpp's `permute(w, n_head)`: rows grouped per head as
/// `(head, pair, 2)` go back to `(head, 2, pair)`.
fn unpermute_rows(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let d = rows / n_head;
    w.reshape((n_head, d / 2, 2, cols))?.transpose(1, 2)?.reshape((rows, cols))
}

impl WeightSource for GgufWeights {
    fn path(&self) -> &Path {
        &self.path
    }

    fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let tensor_err = |reason: String| Error::Tensor { path: self.path.clone(), name: name.into(), reason };
        let gguf_name = self.names.get(name).ok_or_else(|| tensor_err("not found".into()))?;
        let qt = {
            let mut reader = self.reader.lock().map_err(|_| tensor_err("reader poisoned by a panic".into()))?;
            self.content.tensor(&mut *reader, gguf_name, device).map_err(|e| tensor_err(e.to_string()))?
        };
        let t = qt.dequantize(device).map_err(|e| tensor_err(format!("dequantize {:?}: {e}", qt.dtype())))?;
        let layer = name.strip_prefix("model.layers.").and_then(|r| r.split('.').next()).and_then(|i| i.parse::<usize>().ok());
        let heads = match (layer, name) {
            (Some(i), n) if n.ends_with("q_proj.weight") || n.ends_with("q_proj.bias") => self.layers.get(i).map(|l| l.n_heads),
            (Some(i), n) if n.ends_with("k_proj.weight") || n.ends_with("k_proj.bias") => self.layers.get(i).map(|l| l.n_kv_heads),
            _ => None,
        };
        match heads {
            Some(n_head) if t.rank() == 2 => unpermute_rows(&t, n_head).map_err(|e| tensor_err(e.to_string())),
            Some(n_head) => unpermute_rows(&t.unsqueeze(1)?, n_head).and_then(|t| t.squeeze(1)).map_err(|e| tensor_err(e.to_string())),
            None => Ok(t),
        }
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.names.keys().cloned().collect();
        v.sort();
        v
    }
}

/// Any non-negative integer value.
fn as_uint(v: &Value) -> Option<usize> {
    let x: i128 = match v {
        Value::U8(x) => *x as i128,
        Value::U16(x) => *x as i128,
        Value::U32(x) => *x as i128,
        Value::U64(x) => *x as i128,
        Value::I8(x) => *x as i128,
        Value::I16(x) => *x as i128,
        Value::I32(x) => *x as i128,
        Value::I64(x) => *x as i128,
        _ => return None,
    };
    usize::try_from(x).ok()
}

/// Typed access to GGUF metadata with errors that name the key.
struct Metadata<'a> {
    path: &'a Path,
    content: &'a Content,
}

impl Metadata<'_> {
    fn err(&self, key: &str, reason: impl std::fmt::Display) -> Error {
        Error::file(self.path, format!("metadata `{key}`: {reason}"))
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn string(&self, key: &str) -> Result<&str> {
        match self.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(self.err(key, format!("expected a string, found {other:?}"))),
            None => Err(self.err(key, "missing")),
        }
    }

    fn uint(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => as_uint(v).map(Some).ok_or_else(|| self.err(key, format!("expected an integer, found {v:?}"))),
        }
    }

    fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x as f64)),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(other) => Err(self.err(key, format!("expected a float, found {other:?}"))),
        }
    }

    /// A per-layer count stored either as one integer or as an array (one per layer).
    fn per_layer(&self, key: &str, n_layers: usize) -> Result<Option<Vec<usize>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => {
                if a.len() != n_layers {
                    return Err(self.err(key, format!("{} entries for {n_layers} layers", a.len())));
                }
                a.iter().map(|v| as_uint(v).ok_or_else(|| self.err(key, "expected integers"))).collect::<Result<Vec<_>>>().map(Some)
            }
            Some(_) => Ok(self.uint(key)?.map(|x| vec![x; n_layers])),
        }
    }

    fn spec(&self) -> Result<ModelSpec> {
        let arch = self.string("general.architecture")?;
        if arch != "llama" {
            return Err(self.err("general.architecture", format!("`{arch}` is not supported (supported: llama)")));
        }
        let key = |k: &str| format!("llama.{k}");
        let req = |k: &str| -> Result<usize> { self.uint(&key(k))?.ok_or_else(|| self.err(&key(k), "missing")) };
        let hidden = req("embedding_length")?;
        let n_layers = req("block_count")?;
        let heads = self.per_layer(&key("attention.head_count"), n_layers)?.ok_or_else(|| self.err(&key("attention.head_count"), "missing"))?;
        let kv_heads = self.per_layer(&key("attention.head_count_kv"), n_layers)?.unwrap_or_else(|| heads.clone());
        let ffn = self.per_layer(&key("feed_forward_length"), n_layers)?.ok_or_else(|| self.err(&key("feed_forward_length"), "missing"))?;
        let head_dim = match self.uint(&key("rope.dimension_count"))? {
            Some(d) => d,
            None => hidden / heads[0].max(1),
        };
        if self.get(&key("rope.scaling.type")).is_some_and(|v| !matches!(v, Value::String(s) if s == "none"))
            || self.content.tensor_infos.contains_key("rope_freqs.weight")
        {
            return Err(self.err(&key("rope.scaling.type"), "GGUF rope scaling is not supported; use the Hugging Face checkpoint"));
        }
        let embd = self.content.tensor_infos.get("token_embd.weight").ok_or_else(|| Error::Tensor {
            path: self.path.into(),
            name: "token_embd.weight".into(),
            reason: "missing".into(),
        })?;
        let vocab = embd.shape.dims()[0];
        let spec = ModelSpec {
            architecture: Architecture::Llama,
            vocab_size: vocab,
            hidden_size: hidden,
            head_dim,
            layers: (0..n_layers).map(|i| LayerShape { n_heads: heads[i], n_kv_heads: kv_heads[i], intermediate_size: ffn[i] }).collect(),
            rms_norm_eps: self.float(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
            rope_theta: self.float(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_scaling: None,
            rotary_dim: head_dim,
            max_position_embeddings: self.uint(&key("context_length"))?.unwrap_or(2048),
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            attention_bias: self.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            o_bias: self.content.tensor_infos.contains_key("blk.0.attn_output.bias"),
            mlp_bias: self.content.tensor_infos.contains_key("blk.0.ffn_down.bias"),
            // llama.cpp's llama architecture stores no window (and applies none).
            sliding_window: None,
            bos_token_id: self.uint("tokenizer.ggml.bos_token_id")?.map(|x| x as u32),
            eos_token_id: self.uint("tokenizer.ggml.eos_token_id")?.map(|x| x as u32),
            pad_token_id: None,
        };
        spec.validate().map_err(|(field, reason)| Error::file(self.path, format!("{field}: {reason}")))?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's convert script: `w.reshape(n_head, 2, d/2, cols).swapaxes(1, 2)`.
    fn permute_like_llama_cpp(w: &Tensor, n_head: usize) -> Tensor {
        let (rows, cols) = w.dims2().unwrap();
        w.reshape((n_head, 2, rows / n_head / 2, cols)).unwrap().transpose(1, 2).unwrap().reshape((rows, cols)).unwrap()
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        let w = Tensor::arange(0f32, 48.0, &Device::Cpu).unwrap().reshape((12, 4)).unwrap();
        let p = permute_like_llama_cpp(&w, 2);
        // Head 0 has rows 0..6 = pairs (0,3), (1,4), (2,5) interleaved: 0,3,1,4,2,5.
        let first_col: Vec<f32> = p.narrow(1, 0, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(&first_col[..6], &[0.0, 12.0, 4.0, 16.0, 8.0, 20.0]);
        let back = unpermute_rows(&p, 2).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    }
}
