//! Tokenizers: a Hugging Face `tokenizer.json`, or one rebuilt from GGUF metadata.

mod companions;
mod from_gguf;

pub use companions::Companions;

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::Value;
use llmprune_shared::ModelSpec;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::Tokenizer;

pub struct TextTokenizer {
    inner: Tokenizer,
    /// Prepended by us when the GGUF asks for a BOS (tokenizer.json files do it themselves).
    bos: Option<u32>,
    source: PathBuf,
    /// Special tokens, chat template and generation ids, written beside an export.
    companions: Companions,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Tokenizer { path: path.into(), reason: "file not found".into() });
        }
        let inner = Tokenizer::from_file(path).map_err(|e| Error::Tokenizer { path: path.into(), reason: e.to_string() })?;
        let companions = Companions::read_dir(path.parent().unwrap_or(Path::new(".")))?;
        Ok(Self { inner, bos: None, source: path.to_path_buf(), companions })
    }

    /// Rebuilds the tokenizer llama.cpp stored in `tokenizer.ggml.*`.
    pub fn from_gguf(path: &Path, meta: &HashMap<String, Value>) -> Result<Self> {
        let (inner, bos) = from_gguf::build(meta).map_err(|reason| Error::Tokenizer { path: path.into(), reason })?;
        Ok(Self { inner, bos, source: path.to_path_buf(), companions: Companions::from_gguf(meta, bos.is_some()) })
    }

    /// Token ids of `text`, with the BOS the model expects (if any).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, true).map_err(|e| Error::Tokenizer { path: self.source.clone(), reason: e.to_string() })?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        ids.extend(self.bos);
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Token ids of `text` alone: no BOS, no special tokens (lm-evaluation-harness's
    /// encoding of contexts and continuations).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(|e| Error::Tokenizer { path: self.source.clone(), reason: e.to_string() })?;
        Ok(enc.get_ids().to_vec())
    }

    /// The BOS id this tokenizer prepends, if any.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::Tokenizer { path: self.source.clone(), reason: e.to_string() })
    }

    /// Writes a `tokenizer.json` that [`TextTokenizer::from_file`] (and Hugging Face)
    /// reads back to the same ids: a BOS this tokenizer prepends itself becomes the file's
    /// post-processor template.
    pub fn save(&self, path: &Path) -> Result<()> {
        let err = |reason: String| Error::Tokenizer { path: path.into(), reason };
        let mut inner = self.inner.clone();
        if let Some(bos) = self.bos {
            let token = inner.id_to_token(bos).ok_or_else(|| err(format!("BOS id {bos} is not a token")))?;
            let template = TemplateProcessing::builder()
                .try_single(format!("{token} $A"))
                .and_then(|b| b.try_pair(format!("{token} $A {token} $B:1")))
                .map_err(|e| err(format!("BOS template: {e}")))?
                .special_tokens(vec![(token.clone(), bos)])
                .build()
                .map_err(|e| err(format!("BOS template: {e}")))?;
            inner.with_post_processor(Some(template));
        }
        inner.save(path, true).map_err(|e| err(e.to_string()))
    }

    /// Writes the files other tools read beside `tokenizer.json` into `dir`
    /// (`tokenizer_config.json`, `special_tokens_map.json`, `generation_config.json`, …), for
    /// a model of `max_length` positions; returns their names.
    pub fn save_companions(&self, dir: &Path, max_length: usize) -> Result<Vec<String>> {
        let files = self.companions.files(|id| self.inner.id_to_token(id), max_length)?;
        for (name, bytes) in &files {
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        }
        Ok(files.into_iter().map(|(name, _)| name).collect())
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
                reason: format!("token id {max_id} (of {} tokens) does not fit the model's vocab_size {}", self.vocab_size(), spec.vocab_size),
            });
        }
        Ok(())
    }
}
