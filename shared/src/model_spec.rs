//! The shape of a LLaMA-family decoder, layer by layer.
//!
//! Pruning makes layers differ from each other, so every layer carries its own number of
//! query heads, KV heads and MLP width; `head_dim` and the hidden size stay global.
//! A Hugging Face `config.json` is parsed into this, and written back from it.

use crate::family::{self, Family, QkvBias};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// Config keys that carry per-layer widths when the layers are not uniform.
pub const HEADS_PER_LAYER_KEY: &str = "num_attention_heads_per_layer";
pub const KV_HEADS_PER_LAYER_KEY: &str = "num_key_value_heads_per_layer";
pub const INTERMEDIATE_PER_LAYER_KEY: &str = "intermediate_size_per_layer";
/// The `model_type` of a LLaMA with per-layer widths: transformers refuses it unless loaded
/// with the exported `modeling_llmprune.py` (`trust_remote_code=True`), never silently with
/// re-initialised layers.
pub const NONUNIFORM_LLAMA_MODEL_TYPE: &str = "llmprune_llama";
/// The Python module beside such a model that defines it for transformers.
pub const NONUNIFORM_LLAMA_MODULE: &str = "modeling_llmprune";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: field `{field}`: {reason}")]
    Field { path: PathBuf, field: String, reason: String },
    #[error("{path}: unsupported model_type `{model_type}` (supported: llama, mistral, qwen2, qwen3, glm, smollm)")]
    UnsupportedModelType { path: PathBuf, model_type: String },
}

/// Which family the weights come from; its [`Family`] descriptor says how it differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Glm,
}

impl Architecture {
    pub const ALL: [Architecture; 5] = [Architecture::Llama, Architecture::Mistral, Architecture::Qwen2, Architecture::Qwen3, Architecture::Glm];

    pub fn family(self) -> &'static Family {
        match self {
            Architecture::Llama => &family::LLAMA,
            Architecture::Mistral => &family::MISTRAL,
            Architecture::Qwen2 => &family::QWEN2,
            Architecture::Qwen3 => &family::QWEN3,
            Architecture::Glm => &family::GLM,
        }
    }

    pub fn model_type(self) -> &'static str {
        self.family().model_type
    }

    fn hf_class(self) -> &'static str {
        self.family().hf_class
    }

    /// The family a config's `model_type` names (`smollm` is LLaMA's layout).
    fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "smollm" | NONUNIFORM_LLAMA_MODEL_TYPE => Some(Architecture::Llama),
            t => Self::ALL.into_iter().find(|a| a.model_type() == t),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub intermediate_size: usize,
}

impl LayerShape {
    /// Query heads sharing one KV head.
    pub fn n_rep(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}

/// RoPE frequency scaling, as in the `rope_scaling` field of Hugging Face configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's piecewise wavelength-dependent scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub head_dim: usize,
    pub layers: Vec<LayerShape>,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// Channels of each head the rotary embedding rotates (the first ones; `head_dim` unless
    /// the config's `partial_rotary_factor` says less).
    pub rotary_dim: usize,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections (Qwen2, GLM; LLaMA's and Qwen3's `attention_bias`).
    pub attention_bias: bool,
    /// A bias on o_proj (with q/k/v's, as LLaMA's and Qwen3's `attention_bias` puts them;
    /// bias compensation writes them, q/k/v's zero, where the model had none).
    #[serde(default)]
    pub o_bias: bool,
    /// Biases on gate, up and down (LLaMA's `mlp_bias`; bias compensation writes them).
    #[serde(default)]
    pub mlp_bias: bool,
    /// Mistral's (or Qwen2's, when enabled) attention window. llmprune attends to every
    /// earlier position, which equals windowed attention only for sequences up to this long;
    /// longer ones are refused.
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// Written back so that transformers does not fall back to its class default (GLM's
    /// default pad id lies outside a pruned or small vocabulary).
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

fn field_err(path: &Path, field: &str, reason: impl Into<String>) -> SpecError {
    SpecError::Field { path: path.to_path_buf(), field: field.to_string(), reason: reason.into() }
}

fn get_usize(obj: &Map<String, Value>, path: &Path, key: &str) -> Result<Option<usize>, SpecError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| field_err(path, key, format!("expected a non-negative integer, found {v}"))),
    }
}

fn req_usize(obj: &Map<String, Value>, path: &Path, key: &str) -> Result<usize, SpecError> {
    get_usize(obj, path, key)?.ok_or_else(|| field_err(path, key, "missing"))
}

fn get_f64(obj: &Map<String, Value>, path: &Path, key: &str) -> Result<Option<f64>, SpecError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| field_err(path, key, format!("expected a number, found {v}"))),
    }
}

fn get_usize_array(obj: &Map<String, Value>, path: &Path, key: &str, n_layers: usize) -> Result<Option<Vec<usize>>, SpecError> {
    let Some(v) = obj.get(key) else { return Ok(None) };
    let arr = v.as_array().ok_or_else(|| field_err(path, key, "expected an array of integers"))?;
    if arr.len() != n_layers {
        return Err(field_err(path, key, format!("has {} entries but num_hidden_layers is {n_layers}", arr.len())));
    }
    arr.iter()
        .map(|x| x.as_u64().map(|x| x as usize).ok_or_else(|| field_err(path, key, format!("expected integers, found {x}"))))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// `eos_token_id` may be an integer or a list (Llama 3); the first entry is the one we use.
fn get_token_id(obj: &Map<String, Value>, path: &Path, key: &str) -> Result<Option<u32>, SpecError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => Ok(a.first().and_then(|x| x.as_u64()).map(|x| x as u32)),
        Some(v) => v.as_u64().map(|x| Some(x as u32)).ok_or_else(|| field_err(path, key, format!("expected a token id, found {v}"))),
    }
}

fn parse_rope_scaling(v: &Value, path: &Path) -> Result<Option<RopeScaling>, SpecError> {
    const KEY: &str = "rope_scaling";
    let obj = match v {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        other => return Err(field_err(path, KEY, format!("expected an object, found {other}"))),
    };
    let kind = obj.get("rope_type").or_else(|| obj.get("type")).and_then(|t| t.as_str()).ok_or_else(|| field_err(path, KEY, "missing `rope_type`"))?;
    let num = |k: &str| -> Result<f64, SpecError> { get_f64(obj, path, k)?.ok_or_else(|| field_err(path, &format!("{KEY}.{k}"), "missing")) };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear { factor: num("factor")? })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        })),
        other => Err(field_err(path, &format!("{KEY}.rope_type"), format!("`{other}` is not supported (supported: default, linear, llama3)"))),
    }
}

impl ModelSpec {
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn is_uniform(&self) -> bool {
        self.layers.windows(2).all(|w| w[0] == w[1])
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_config_file(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io { path: path.to_path_buf(), source })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| SpecError::Json { path: path.to_path_buf(), source })?;
        Self::from_hf_config(&value, path)
    }

    /// Parses a Hugging Face config. `path` only names the source in errors.
    pub fn from_hf_config(value: &Value, path: &Path) -> Result<Self, SpecError> {
        let obj = value.as_object().ok_or_else(|| field_err(path, "(root)", "expected a JSON object"))?;
        let model_type = obj.get("model_type").and_then(|v| v.as_str()).ok_or_else(|| field_err(path, "model_type", "missing"))?;
        let architecture = Architecture::from_model_type(model_type)
            .ok_or_else(|| SpecError::UnsupportedModelType { path: path.to_path_buf(), model_type: model_type.to_string() })?;
        let family = architecture.family();
        let hidden_size = req_usize(obj, path, "hidden_size")?;
        let n_layers = req_usize(obj, path, "num_hidden_layers")?;
        let n_heads = req_usize(obj, path, "num_attention_heads")?;
        let n_kv_heads = get_usize(obj, path, "num_key_value_heads")?.unwrap_or(n_heads);
        let intermediate = req_usize(obj, path, "intermediate_size")?;
        if n_heads == 0 {
            return Err(field_err(path, "num_attention_heads", "must be positive"));
        }
        let head_dim = match get_usize(obj, path, "head_dim")? {
            Some(d) => d,
            None => {
                if hidden_size % n_heads != 0 {
                    return Err(field_err(
                        path,
                        "num_attention_heads",
                        format!("hidden_size {hidden_size} is not a multiple of {n_heads} heads and no head_dim is given"),
                    ));
                }
                hidden_size / n_heads
            }
        };
        let heads = get_usize_array(obj, path, HEADS_PER_LAYER_KEY, n_layers)?.unwrap_or_else(|| vec![n_heads; n_layers]);
        let kv_heads = get_usize_array(obj, path, KV_HEADS_PER_LAYER_KEY, n_layers)?.unwrap_or_else(|| vec![n_kv_heads; n_layers]);
        let widths = get_usize_array(obj, path, INTERMEDIATE_PER_LAYER_KEY, n_layers)?.unwrap_or_else(|| vec![intermediate; n_layers]);
        let layers = (0..n_layers).map(|i| LayerShape { n_heads: heads[i], n_kv_heads: kv_heads[i], intermediate_size: widths[i] }).collect();
        // transformers 5 writes `rope_parameters` (theta, type, partial share); older configs
        // `rope_theta`, `rope_scaling` and `partial_rotary_factor` at the top.
        let rope = match obj.get("rope_parameters") {
            Some(Value::Object(r)) => r,
            Some(Value::Null) | None => obj,
            Some(v) => return Err(field_err(path, "rope_parameters", format!("expected an object, found {v}"))),
        };
        let rope_scaling = match (obj.get("rope_parameters"), obj.get("rope_scaling")) {
            (Some(v @ Value::Object(_)), _) => parse_rope_scaling(v, path)?,
            (_, Some(v)) => parse_rope_scaling(v, path)?,
            _ => None,
        };
        let partial = get_f64(rope, path, "partial_rotary_factor")?.unwrap_or(1.0);
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(field_err(path, "partial_rotary_factor", format!("{partial} is outside (0, 1]")));
        }
        if partial < 1.0 && !family.partial_rotary {
            return Err(field_err(path, "partial_rotary_factor", format!("{model_type} rotates every channel of a head")));
        }
        let rotary_dim = (head_dim as f64 * partial) as usize;
        // Biases are where the family puts them: on q/k/v always (Qwen2), on q/k/v as
        // configured (GLM), on q/k/v and o_proj as configured (LLaMA, Qwen3), or never; and on
        // the MLP's three projections as LLaMA's `mlp_bias` says. A config asking for biases its
        // family's transformers class does not have is refused rather than loaded without them.
        let configured = match obj.get("attention_bias") {
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::Null) | None => None,
            Some(v) => return Err(field_err(path, "attention_bias", format!("expected a boolean, found {v}"))),
        };
        let (attention_bias, o_bias) = match family.qkv_bias {
            QkvBias::Always => (true, false),
            QkvBias::FromConfig => (configured.unwrap_or(true), false),
            QkvBias::WithOutput => (configured.unwrap_or(false), configured.unwrap_or(false)),
            QkvBias::Never if configured == Some(true) => return Err(field_err(path, "attention_bias", format!("{model_type} has no attention biases"))),
            QkvBias::Never => (false, false),
        };
        let mlp_bias = match obj.get("mlp_bias") {
            Some(Value::Bool(false)) | Some(Value::Null) | None => false,
            Some(Value::Bool(true)) if family.mlp_bias => true,
            Some(Value::Bool(true)) => return Err(field_err(path, "mlp_bias", format!("{model_type} has no MLP biases"))),
            Some(v) => return Err(field_err(path, "mlp_bias", format!("expected a boolean, found {v}"))),
        };
        let tie_word_embeddings = match obj.get("tie_word_embeddings") {
            Some(Value::Bool(b)) => *b,
            Some(Value::Null) | None => false,
            Some(v) => return Err(field_err(path, "tie_word_embeddings", format!("expected a boolean, found {v}"))),
        };
        let spec = ModelSpec {
            architecture,
            vocab_size: req_usize(obj, path, "vocab_size")?,
            hidden_size,
            head_dim,
            layers,
            rms_norm_eps: get_f64(obj, path, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: get_f64(rope, path, "rope_theta")?.or(get_f64(obj, path, "rope_theta")?).unwrap_or(10_000.0),
            rope_scaling,
            rotary_dim,
            max_position_embeddings: get_usize(obj, path, "max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings,
            attention_bias,
            o_bias,
            mlp_bias,
            sliding_window: match architecture {
                Architecture::Mistral => get_usize(obj, path, "sliding_window")?,
                Architecture::Qwen2 if obj.get("use_sliding_window") == Some(&Value::Bool(true)) => get_usize(obj, path, "sliding_window")?,
                _ => None,
            },
            bos_token_id: get_token_id(obj, path, "bos_token_id")?,
            eos_token_id: get_token_id(obj, path, "eos_token_id")?,
            pad_token_id: get_token_id(obj, path, "pad_token_id")?,
        };
        spec.validate().map_err(|(field, reason)| field_err(path, &field, reason))?;
        Ok(spec)
    }

    /// Checks internal consistency; returns the offending field and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let positive =
            [("vocab_size", self.vocab_size), ("hidden_size", self.hidden_size), ("head_dim", self.head_dim), ("num_hidden_layers", self.layers.len())];
        for (name, v) in positive {
            if v == 0 {
                return Err((name.into(), "must be positive".into()));
            }
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(("head_dim".into(), format!("{} is odd; rotary embeddings need an even head_dim", self.head_dim)));
        }
        if self.rotary_dim == 0 || !self.rotary_dim.is_multiple_of(2) || self.rotary_dim > self.head_dim {
            return Err((
                "partial_rotary_factor".into(),
                format!("rotates {} of {} channels; need an even number, at least 2", self.rotary_dim, self.head_dim),
            ));
        }
        for (i, l) in self.layers.iter().enumerate() {
            if l.n_heads == 0 || l.n_kv_heads == 0 {
                return Err((format!("layer {i} heads"), format!("{} query / {} KV heads: every layer needs at least one of each", l.n_heads, l.n_kv_heads)));
            }
            if l.n_heads % l.n_kv_heads != 0 {
                return Err((format!("layer {i} heads"), format!("{} query heads are not a multiple of {} KV heads", l.n_heads, l.n_kv_heads)));
            }
            if l.intermediate_size == 0 {
                return Err((format!("layer {i} intermediate_size"), "must be positive".into()));
            }
        }
        let family = self.architecture.family();
        let attention = match family.qkv_bias {
            QkvBias::WithOutput => self.o_bias == self.attention_bias,
            QkvBias::Always => self.attention_bias && !self.o_bias,
            QkvBias::FromConfig => !self.o_bias,
            QkvBias::Never => !self.o_bias && !self.attention_bias,
        };
        if !attention {
            return Err((
                "attention_bias".into(),
                format!("{} cannot hold q/k/v biases {} with an o_proj bias {}", self.architecture.model_type(), self.attention_bias, self.o_bias),
            ));
        }
        if self.mlp_bias && !family.mlp_bias {
            return Err(("mlp_bias".into(), format!("{} has no MLP biases", self.architecture.model_type())));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return Err(("rms_norm_eps".into(), "must be positive".into()));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(("rope_theta".into(), "must be positive".into()));
        }
        Ok(())
    }

    /// A Hugging Face `config.json` for this spec. Uniform models get a stock config that
    /// transformers loads as is; non-uniform ones add the per-layer arrays.
    pub fn to_hf_config(&self) -> Value {
        let first = self.layers[0];
        let max_heads = self.layers.iter().map(|l| l.n_heads).max().unwrap_or(0);
        let max_kv = self.layers.iter().map(|l| l.n_kv_heads).max().unwrap_or(0);
        let max_inter = self.layers.iter().map(|l| l.intermediate_size).max().unwrap_or(0);
        let uniform = self.is_uniform();
        let mut cfg = json!({
            "architectures": [self.architecture.hf_class()],
            "model_type": self.architecture.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "head_dim": self.head_dim,
            "num_hidden_layers": self.layers.len(),
            "num_attention_heads": if uniform { first.n_heads } else { max_heads },
            "num_key_value_heads": if uniform { first.n_kv_heads } else { max_kv },
            "intermediate_size": if uniform { first.intermediate_size } else { max_inter },
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        let obj = cfg.as_object_mut().expect("json! of an object literal is an object");
        let family = self.architecture.family();
        if family.mlp_bias {
            obj.insert("mlp_bias".into(), json!(self.mlp_bias));
        }
        if family.rope_parameters {
            let mut rope = json!({"rope_type": "default", "rope_theta": self.rope_theta});
            if family.partial_rotary {
                rope["partial_rotary_factor"] = json!(self.rotary_dim as f64 / self.head_dim as f64);
            }
            obj.insert("rope_parameters".into(), rope);
        } else {
            obj.insert("rope_theta".into(), json!(self.rope_theta));
        }
        if let Some(b) = self.bos_token_id {
            obj.insert("bos_token_id".into(), json!(b));
        }
        if let Some(e) = self.eos_token_id {
            obj.insert("eos_token_id".into(), json!(e));
        }
        if let Some(p) = self.pad_token_id {
            obj.insert("pad_token_id".into(), json!(p));
        }
        if let Some(w) = self.sliding_window {
            obj.insert("sliding_window".into(), json!(w));
            obj.insert("use_sliding_window".into(), json!(true));
        }
        if let Some(s) = &self.rope_scaling {
            let v = match s {
                RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
                RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => json!({
                    "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": original_max_position_embeddings,
                }),
            };
            obj.insert("rope_scaling".into(), v);
        }
        if !uniform && self.architecture == Architecture::Llama {
            let module = NONUNIFORM_LLAMA_MODULE;
            obj.insert("model_type".into(), json!(NONUNIFORM_LLAMA_MODEL_TYPE));
            obj.insert("architectures".into(), json!(["LlmpruneLlamaForCausalLM"]));
            obj.insert(
                "auto_map".into(),
                json!({"AutoConfig": format!("{module}.LlmpruneLlamaConfig"), "AutoModelForCausalLM": format!("{module}.LlmpruneLlamaForCausalLM")}),
            );
        }
        if !uniform {
            let per = |f: fn(&LayerShape) -> usize| json!(self.layers.iter().map(f).collect::<Vec<_>>());
            obj.insert(HEADS_PER_LAYER_KEY.into(), per(|l| l.n_heads));
            obj.insert(KV_HEADS_PER_LAYER_KEY.into(), per(|l| l.n_kv_heads));
            obj.insert(INTERMEDIATE_PER_LAYER_KEY.into(), per(|l| l.intermediate_size));
        }
        cfg
    }

    /// Weights of a layer's seven projections (q, k, v, o, gate, up, down).
    fn projection_weights(&self, l: &LayerShape) -> usize {
        let (h, q, kv) = (self.hidden_size, l.n_heads * self.head_dim, l.n_kv_heads * self.head_dim);
        h * (q + 2 * kv) + q * h + 3 * h * l.intermediate_size
    }

    /// Parameters of decoder layer `i`: projections, norms, biases.
    pub fn layer_params(&self, i: usize) -> usize {
        let l = &self.layers[i];
        let mut n = self.projection_weights(l) + 2 * self.hidden_size;
        if self.architecture.family().qk_norm {
            n += 2 * self.head_dim;
        }
        if self.attention_bias {
            n += (l.n_heads + 2 * l.n_kv_heads) * self.head_dim;
        }
        if self.o_bias {
            n += self.hidden_size;
        }
        if self.mlp_bias {
            n += 2 * l.intermediate_size + self.hidden_size;
        }
        n
    }

    /// Parameters of the full model (embedding counted once when tied).
    pub fn n_params(&self) -> usize {
        let h = self.hidden_size;
        let mut n = self.vocab_size * h + h; // embedding + final norm
        if !self.tie_word_embeddings {
            n += self.vocab_size * h;
        }
        n + (0..self.n_layers()).map(|i| self.layer_params(i)).sum::<usize>()
    }

    /// Multiply-add FLOPs (2 per MAC) of one forward pass over `batch` sequences of `seq`
    /// tokens with logits at every position: every projection, the head, and the attention
    /// products `QKᵀ` and `PV` over the full square (as dense kernels compute them, causal
    /// mask or not). A backward pass costs twice this.
    pub fn forward_flops(&self, batch: usize, seq: usize) -> f64 {
        let tokens = (batch * seq) as f64;
        let mut macs_per_token = (self.vocab_size * self.hidden_size) as f64;
        let mut attention_macs = 0.0;
        for l in &self.layers {
            macs_per_token += self.projection_weights(l) as f64;
            attention_macs += 2.0 * (batch * l.n_heads * seq * seq * self.head_dim) as f64;
        }
        2.0 * (tokens * macs_per_token + attention_macs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        json!({
            "model_type": "llama", "vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96,
        })
    }

    #[test]
    fn uniform_config_round_trips() {
        let spec = ModelSpec::from_hf_config(&base(), Path::new("c.json")).unwrap();
        assert_eq!(spec.head_dim, 16);
        assert_eq!(spec.layers, vec![LayerShape { n_heads: 4, n_kv_heads: 2, intermediate_size: 96 }; 2]);
        let again = ModelSpec::from_hf_config(&spec.to_hf_config(), Path::new("c.json")).unwrap();
        assert_eq!(spec, again);
        assert!(spec.to_hf_config().get(HEADS_PER_LAYER_KEY).is_none());
    }

    #[test]
    fn per_layer_arrays_round_trip() {
        let mut v = base();
        v["head_dim"] = json!(16);
        v[HEADS_PER_LAYER_KEY] = json!([4, 2]);
        v[KV_HEADS_PER_LAYER_KEY] = json!([2, 1]);
        v[INTERMEDIATE_PER_LAYER_KEY] = json!([96, 40]);
        let spec = ModelSpec::from_hf_config(&v, Path::new("c.json")).unwrap();
        assert_eq!(spec.layers[1], LayerShape { n_heads: 2, n_kv_heads: 1, intermediate_size: 40 });
        let again = ModelSpec::from_hf_config(&spec.to_hf_config(), Path::new("c.json")).unwrap();
        assert_eq!(spec, again);
    }

    #[test]
    fn parameter_count_by_hand() {
        // embed 100*64 + lm_head 100*64 + final norm 64; per layer: q 64*64, k,v 64*32 each,
        // o 64*64, mlp 3*64*96, norms 2*64.
        let spec = ModelSpec::from_hf_config(&base(), Path::new("c.json")).unwrap();
        let layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 96 + 2 * 64;
        assert_eq!(spec.n_params(), 2 * 100 * 64 + 64 + 2 * layer);
    }

    fn err_of(v: Value) -> String {
        ModelSpec::from_hf_config(&v, Path::new("cfg.json")).unwrap_err().to_string()
    }

    #[test]
    fn forward_flops_by_hand() {
        let spec = ModelSpec::from_hf_config(&base(), Path::new("c.json")).unwrap();
        // Per token: head 100*64, q 64*64, k+v 2*64*32, o 64*64, mlp 3*64*96 = 30720 MACs
        // per layer. Attention per layer: 2 (QK, PV) * batch 3 * 4
        // heads * 5*5 positions * 16 dims = 9600 MACs.
        let per_token = 100.0 * 64.0 + 2.0 * (64.0 * 64.0 + 2.0 * 64.0 * 32.0 + 64.0 * 64.0 + 3.0 * 64.0 * 96.0);
        let expected = 2.0 * (15.0 * per_token + 2.0 * 9600.0);
        assert_eq!(spec.forward_flops(3, 5), expected);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let mut v = base();
        v["model_type"] = json!("gpt_neox");
        assert!(err_of(v).contains("unsupported model_type `gpt_neox`"));
        let mut v = base();
        v.as_object_mut().unwrap().remove("hidden_size");
        assert!(err_of(v).contains("`hidden_size`: missing"));
        let mut v = base();
        v["num_key_value_heads"] = json!(3);
        assert!(err_of(v).contains("not a multiple of 3 KV heads"));
        let mut v = base();
        v[HEADS_PER_LAYER_KEY] = json!([4]);
        assert!(err_of(v).contains("has 1 entries but num_hidden_layers is 2"));
        let mut v = base();
        v["hidden_size"] = json!(62);
        assert!(err_of(v).contains("not a multiple of 4 heads"));
        let mut v = base();
        v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 2.0});
        assert!(err_of(v).contains("rope_scaling.rope_type"));
        let mut v = base();
        v["vocab_size"] = json!("big");
        assert!(err_of(v).contains("cfg.json: field `vocab_size`"));
        for (field, what) in [("attention_bias", "attention"), ("mlp_bias", "MLP")] {
            let mut v = base();
            v["model_type"] = json!("mistral");
            v[field] = json!(true);
            assert!(err_of(v).contains(&format!("field `{field}`: mistral has no {what} biases")));
        }
    }

    #[test]
    fn sliding_windows_are_read_where_they_apply() {
        let mut v = base();
        v["sliding_window"] = json!(4096);
        assert_eq!(ModelSpec::from_hf_config(&v, Path::new("c.json")).unwrap().sliding_window, None, "llama has none");
        v["model_type"] = json!("mistral");
        let spec = ModelSpec::from_hf_config(&v, Path::new("c.json")).unwrap();
        assert_eq!(spec.sliding_window, Some(4096));
        assert_eq!(ModelSpec::from_hf_config(&spec.to_hf_config(), Path::new("c.json")).unwrap(), spec);
        v["model_type"] = json!("qwen2");
        v["use_sliding_window"] = json!(false);
        assert_eq!(ModelSpec::from_hf_config(&v, Path::new("c.json")).unwrap().sliding_window, None);
        v["use_sliding_window"] = json!(true);
        assert_eq!(ModelSpec::from_hf_config(&v, Path::new("c.json")).unwrap().sliding_window, Some(4096));
    }

    #[test]
    fn qwen2_has_qkv_biases() {
        let mut v = base();
        v["model_type"] = json!("qwen2");
        assert!(ModelSpec::from_hf_config(&v, Path::new("c.json")).unwrap().attention_bias);
        v["attention_bias"] = json!(true);
        assert!(ModelSpec::from_hf_config(&v, Path::new("c.json")).unwrap().attention_bias);
        v["model_type"] = json!("llama");
        v["attention_bias"] = json!(false);
        assert!(!ModelSpec::from_hf_config(&v, Path::new("c.json")).unwrap().attention_bias);
    }

    #[test]
    fn llama_biases_sit_on_q_k_v_and_o_and_on_the_mlp_as_configured() {
        let mut v = base();
        let plain = ModelSpec::from_hf_config(&v, Path::new("c.json")).unwrap();
        assert!(!plain.attention_bias && !plain.o_bias && !plain.mlp_bias);
        v["attention_bias"] = json!(true);
        v["mlp_bias"] = json!(true);
        let spec = ModelSpec::from_hf_config(&v, Path::new("c.json")).unwrap();
        assert!(spec.attention_bias && spec.o_bias && spec.mlp_bias);
        // q, k, v, o biases and gate, up, down biases per layer.
        let (h, l) = (spec.hidden_size, spec.layers[0]);
        let biases = (l.n_heads + 2 * l.n_kv_heads) * spec.head_dim + h + 2 * l.intermediate_size + h;
        assert_eq!(spec.layer_params(0), plain.layer_params(0) + biases);
        let written = spec.to_hf_config();
        assert_eq!((&written["attention_bias"], &written["mlp_bias"]), (&json!(true), &json!(true)));
        assert_eq!(ModelSpec::from_hf_config(&written, Path::new("c.json")).unwrap(), spec);
        let odd = ModelSpec { o_bias: false, ..spec.clone() };
        assert_eq!(odd.validate().unwrap_err().0, "attention_bias");
    }
}
