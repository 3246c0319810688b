//! Reading models: Hugging Face directories (safetensors, memory-mapped) and GGUF files
//! (dequantised to f32), both yielding weights under Hugging Face tensor names.

mod checksum;
pub mod family;
mod gguf;
mod hf;
mod tokenizer;

pub use checksum::{model_checksum, sha256_file};
pub use family::{family_tensors, CanonicalWeights};
pub use gguf::{GgufModel, GgufWeights};
pub use hf::HfWeights;
pub use tokenizer::TextTokenizer;

use crate::error::{Error, Result};
use crate::model::{LlamaModel, LoadOptions};
use candle_core::{Device, Tensor};
use llmprune_shared::ModelSpec;
use std::path::{Path, PathBuf};

/// Tensors by Hugging Face name, from one model file or directory.
pub trait WeightSource {
    /// The file or directory named in errors.
    fn path(&self) -> &Path;
    /// Loads one tensor in its stored dtype (dequantised for GGUF).
    fn load(&self, name: &str, device: &Device) -> Result<Tensor>;
    /// All tensor names this source holds.
    fn names(&self) -> Vec<String>;
}

/// A model's description, weights and tokenizer, opened but not yet loaded.
pub struct OpenedModel {
    pub spec: ModelSpec,
    pub weights: Box<dyn WeightSource + Send + Sync>,
    pub tokenizer: TextTokenizer,
    pub path: PathBuf,
}

pub struct LoadedModel {
    pub model: LlamaModel,
    pub tokenizer: TextTokenizer,
    pub path: PathBuf,
}

/// Opens a Hugging Face directory or a `.gguf` file and checks that its tokenizer fits.
pub fn open_model(path: &Path) -> Result<OpenedModel> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let opened = if meta.is_dir() {
        let spec = ModelSpec::from_hf_config_file(&path.join("config.json"))?;
        let weights = CanonicalWeights::new(HfWeights::open(path)?, &spec);
        let tokenizer = TextTokenizer::from_file(&path.join("tokenizer.json"))?;
        OpenedModel { spec, weights: Box::new(weights), tokenizer, path: path.to_path_buf() }
    } else {
        let GgufModel { spec, weights, tokenizer } = GgufModel::open(path)?;
        OpenedModel { spec, weights: Box::new(weights), tokenizer, path: path.to_path_buf() }
    };
    opened.tokenizer.check_fits(&opened.spec)?;
    Ok(opened)
}

/// Opens a model and loads the parts `opts` chooses from its spec (`LoadOptions::full` for
/// all of it).
pub fn load_model(path: &Path, opts: impl FnOnce(&ModelSpec) -> LoadOptions, device: &Device) -> Result<LoadedModel> {
    let opened = open_model(path)?;
    let opts = opts(&opened.spec);
    let model = LlamaModel::load(opened.spec, opened.weights.as_ref(), &opts, device)?;
    Ok(LoadedModel { model, tokenizer: opened.tokenizer, path: opened.path })
}

/// Tensors already in memory (a pruned model before it is written), under Hugging Face names.
pub struct InMemoryWeights {
    /// Named in errors.
    pub label: PathBuf,
    pub tensors: std::collections::HashMap<String, Tensor>,
}

impl WeightSource for InMemoryWeights {
    fn path(&self) -> &Path {
        &self.label
    }

    fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| Error::Tensor { path: self.label.clone(), name: name.to_string(), reason: "missing".into() })?;
        Ok(t.to_device(device)?)
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
}
