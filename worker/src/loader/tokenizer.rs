//! Tokenizers: a Hugging Face `tokenizer.json`, or one rebuilt from GGUF metadata.

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::Value;
use llmprune_shared::ModelSpec;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// llama.cpp's token types; control tokens are special (never split, skipped in decoding).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Llama 3's pre-tokenizer split (llama.cpp `llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub struct TextTokenizer {
    inner: Tokenizer,
    /// Prepended by us when the GGUF asks for a BOS (tokenizer.json files do it themselves).
    bos: Option<u32>,
    source: PathBuf,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Tokenizer { path: path.into(), reason: "file not found".into() });
        }
        let inner = Tokenizer::from_file(path).map_err(|e| Error::Tokenizer { path: path.into(), reason: e.to_string() })?;
        Ok(Self { inner, bos: None, source: path.to_path_buf() })
    }

    /// Rebuilds the tokenizer llama.cpp stored in `tokenizer.ggml.*`.
    pub fn from_gguf(path: &Path, meta: &HashMap<String, Value>) -> Result<Self> {
        let err = |reason: String| Error::Tokenizer { path: path.into(), reason };
        let strings = |key: &str| -> Result<Vec<String>> {
            let arr = meta
                .get(key)
                .ok_or_else(|| err(format!("metadata `{key}` missing")))?
                .to_vec()
                .map_err(|_| err(format!("metadata `{key}` is not an array")))?;
            arr.iter()
                .map(|v| v.to_string().cloned().map_err(|_| err(format!("metadata `{key}` holds a non-string"))))
                .collect()
        };
        let model = match meta.get("tokenizer.ggml.model") {
            Some(Value::String(s)) => s.as_str(),
            _ => return Err(err("metadata `tokenizer.ggml.model` missing".into())),
        };
        if model != "gpt2" {
            return Err(err(format!(
                "tokenizer model `{model}` is not supported (supported: gpt2-style byte-level BPE); \
                 use a Hugging Face directory with tokenizer.json"
            )));
        }
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| err(format!("merge `{m}` is not two tokens")))
            })
            .collect::<Result<Vec<_>>>()?;
        let types: Vec<i32> = match meta.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| err(format!("BPE: {e}")))?;
        let pre = match meta.get("tokenizer.ggml.pre") {
            Some(Value::String(s)) => s.as_str(),
            _ => "default",
        };
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            "default" | "gpt2" => byte_level.into(),
            "llama-bpe" | "llama3" => {
                let split = Split::new(SplitPattern::Regex(LLAMA3_SPLIT.into()), SplitDelimiterBehavior::Isolated, false)
                    .map_err(|e| err(format!("pre-tokenizer regex: {e}")))?;
                Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into()
            }
            other => return Err(err(format!("pre-tokenizer `{other}` is not supported (supported: smollm, gpt2, llama-bpe)"))),
        };
        let mut inner = Tokenizer::new(bpe);
        inner
            .with_pre_tokenizer(Some(pre_tokenizer))
            .with_post_processor(Some(ByteLevel::new(false, true, true)))
            .with_decoder(Some(ByteLevel::new(false, true, true)));
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
            .map(|(tok, &t)| AddedToken::from(tok.clone(), t == TOKEN_TYPE_CONTROL))
            .collect();
        inner.add_special_tokens(special).map_err(|e| err(format!("special tokens: {e}")))?;
        let bos = match meta.get("tokenizer.ggml.add_bos_token") {
            Some(Value::Bool(true)) => match meta.get("tokenizer.ggml.bos_token_id") {
                Some(v) => Some(v.to_u32().map_err(|_| err("`tokenizer.ggml.bos_token_id` is not a u32".into()))?),
                None => return Err(err("add_bos_token is set but bos_token_id is missing".into())),
            },
            _ => None,
        };
        Ok(Self { inner, bos, source: path.to_path_buf() })
    }

    /// Token ids of `text`, with the BOS the model expects (if any).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, true)
            .map_err(|e| Error::Tokenizer { path: self.source.clone(), reason: e.to_string() })?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        ids.extend(self.bos);
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer { path: self.source.clone(), reason: e.to_string() })
    }

    /// Tokens including added ones.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// A tokenizer whose ids reach past the model's embedding rows would index out of range.
    pub fn check_fits(&self, spec: &ModelSpec) -> Result<()> {
        let max_id = self.inner.get_vocab(true).values().copied().max().unwrap_or(0) as usize;
        if max_id >= spec.vocab_size {
            return Err(Error::Tokenizer {
                path: self.source.clone(),
                reason: format!(
                    "token id {max_id} (of {} tokens) does not fit the model's vocab_size {}",
                    self.vocab_size(),
                    spec.vocab_size
                ),
            });
        }
        Ok(())
    }
}
