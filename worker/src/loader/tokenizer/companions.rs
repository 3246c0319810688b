//! The files beside `tokenizer.json` that other tools need to use an exported model:
//! `tokenizer_config.json` (special tokens, chat template, the tokenizer class),
//! `special_tokens_map.json` and `generation_config.json` (the ids generation stops and pads
//! with). Without them transformers leaves bos/eos/pad unset and lm-evaluation-harness's HF
//! backend fails on every model. A Hugging Face input directory's own files are copied as they
//! are; for a GGUF they are written from its `tokenizer.ggml.*` metadata, as llama.cpp's
//! converter read them from the original files.

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::Value;
use serde_json::{json, Map};
use std::collections::HashMap;
use std::path::Path;

/// Copied from a Hugging Face directory when present.
pub const COPIED: [&str; 4] = ["tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "chat_template.jinja"];

/// What an exported model's tokenizer files say beside `tokenizer.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Companions {
    /// Nothing known (a tokenizer.json alone): nothing is written.
    #[default]
    None,
    /// A Hugging Face directory's files, by name, written back unchanged.
    Files(Vec<(String, Vec<u8>)>),
    /// Special tokens and chat template from GGUF metadata.
    Specials(Specials),
}

/// Special token ids (looked up as tokens when written) and the chat template.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Specials {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    pub unk: Option<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

impl Companions {
    /// The companion files of the Hugging Face directory `dir`.
    pub fn read_dir(dir: &Path) -> Result<Self> {
        let mut files = Vec::new();
        for name in COPIED {
            let path = dir.join(name);
            if path.is_file() {
                files.push((name.to_string(), std::fs::read(&path).map_err(|e| Error::io(&path, e))?));
            }
        }
        Ok(if files.is_empty() { Companions::None } else { Companions::Files(files) })
    }

    /// The special tokens and chat template of GGUF metadata (`add_bos` as the tokenizer
    /// decided it).
    pub fn from_gguf(meta: &HashMap<String, Value>, add_bos: bool) -> Self {
        let id = |key: &str| meta.get(key).and_then(|v| v.to_u32().ok().or_else(|| v.to_u64().ok().map(|x| x as u32)));
        let chat_template = match meta.get("tokenizer.chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        Companions::Specials(Specials {
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            pad: id("tokenizer.ggml.padding_token_id"),
            unk: id("tokenizer.ggml.unknown_token_id"),
            add_bos,
            chat_template,
        })
    }

    /// The files to write, by name: copies, or JSON made from the specials with `token` naming
    /// an id and `max_length` the model's context.
    pub fn files(&self, token: impl Fn(u32) -> Option<String>, max_length: usize) -> Result<Vec<(String, Vec<u8>)>> {
        match self {
            Companions::None => Ok(Vec::new()),
            Companions::Files(files) => Ok(files.clone()),
            Companions::Specials(s) => {
                let mut named = Map::new();
                for (key, id) in [("bos_token", s.bos), ("eos_token", s.eos), ("pad_token", s.pad), ("unk_token", s.unk)] {
                    if let Some(id) = id {
                        let text = token(id).ok_or_else(|| Error::Invalid(format!("the tokenizer's {key} id {id} is not a token")))?;
                        named.insert(key.into(), json!(text));
                    }
                }
                let mut config = named.clone();
                config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
                config.insert("add_bos_token".into(), json!(s.add_bos));
                config.insert("add_eos_token".into(), json!(false));
                config.insert("clean_up_tokenization_spaces".into(), json!(false));
                config.insert("model_max_length".into(), json!(max_length));
                if let Some(t) = &s.chat_template {
                    config.insert("chat_template".into(), json!(t));
                }
                let mut generation = Map::new();
                for (key, id) in [("bos_token_id", s.bos), ("eos_token_id", s.eos), ("pad_token_id", s.pad.or(s.eos))] {
                    if let Some(id) = id {
                        generation.insert(key.into(), json!(id));
                    }
                }
                let pretty = |v: serde_json::Value| -> Result<Vec<u8>> {
                    Ok((serde_json::to_string_pretty(&v).map_err(|e| Error::Invalid(e.to_string()))? + "\n").into_bytes())
                };
                Ok(vec![
                    ("tokenizer_config.json".into(), pretty(config.into())?),
                    ("special_tokens_map.json".into(), pretty(named.into())?),
                    ("generation_config.json".into(), pretty(generation.into())?),
                ])
            }
        }
    }
}
