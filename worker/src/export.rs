//! Writing a model directory the loader reads back (and transformers too, when the layers
//! are uniform): `model.safetensors` (or shards with Hugging Face's
//! `model.safetensors.index.json` above a size), `config.json` (per-layer arrays when shapes
//! differ), `tokenizer.json`, and any JSON reports. Everything is written into a temporary
//! directory beside the target and renamed into place at the end, so a failed export (or a
//! failed cluster run whose workers were writing their shards into it) leaves nothing that
//! looks complete.

use crate::error::{Error, Result};
use crate::loader::{family_tensors, TextTokenizer};
use candle_core::Tensor;
use llmprune_shared::dtype::WeightDtype;
use llmprune_shared::safetensors_index::{name_as_model, write_index, IndexError};
use llmprune_shared::ModelSpec;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Hugging Face's default shard size (`save_pretrained(max_shard_size="5GB")`).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// A model directory being written; dropped before [`ModelDir::commit`], it is deleted.
pub struct ModelDir {
    tmp: tempfile::TempDir,
    target: PathBuf,
}

/// The name prefix of an output's temporary directory beside it (`.NAME.partial-…`), renamed
/// to `NAME` when complete.
pub fn partial_prefix(name: &str) -> String {
    format!(".{name}.partial-")
}

impl ModelDir {
    /// Starts writing `target`, which must not exist yet.
    pub fn create(target: &Path) -> Result<Self> {
        if target.exists() {
            return Err(Error::file(target, "already exists; remove it or choose another output directory"));
        }
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
        let tmp = tempfile::Builder::new().prefix(&partial_prefix(&name)).tempdir_in(parent).map_err(|e| Error::io(parent, e))?;
        Ok(Self { tmp, target: target.to_path_buf() })
    }

    /// The temporary directory (workers write their shards here).
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn write_json(&self, file: &str, value: &serde_json::Value) -> Result<()> {
        let path = self.tmp.path().join(file);
        let text = serde_json::to_string_pretty(value).map_err(|e| Error::file(&path, e))?;
        std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))
    }

    /// The weights, in shards of at most `max_shard_bytes` (a tensor larger than that gets a
    /// shard of its own).
    pub fn write_weights(&self, spec: &ModelSpec, weights: &HashMap<String, Tensor>, max_shard_bytes: u64) -> Result<()> {
        write_weights_into(self.tmp.path(), spec, weights, max_shard_bytes)
    }

    /// Hugging Face's `model.safetensors.index.json` for shard files already written.
    pub fn write_index(&self, shards: &[(String, Vec<String>)], total_bytes: u64) -> Result<()> {
        write_index_into(self.tmp.path(), shards, total_bytes)
    }

    /// `config.json` (saying the weights' `dtype`), `tokenizer.json` and the tokenizer's
    /// companions (special tokens, chat template, generation ids).
    pub fn write_model_files(&self, spec: &ModelSpec, tokenizer: &TextTokenizer, dtype: WeightDtype) -> Result<()> {
        let mut config = spec.to_hf_config();
        config["torch_dtype"] = serde_json::json!(dtype.torch_name());
        if config["model_type"] == llmprune_shared::model_spec::NONUNIFORM_LLAMA_MODEL_TYPE {
            let path = self.tmp.path().join(format!("{}.py", llmprune_shared::model_spec::NONUNIFORM_LLAMA_MODULE));
            std::fs::write(&path, NONUNIFORM_LLAMA_MODELING).map_err(|e| Error::io(&path, e))?;
        }
        self.write_json("config.json", &config)?;
        tokenizer.save(&self.tmp.path().join("tokenizer.json"))?;
        tokenizer.save_companions(self.tmp.path(), spec.max_position_embeddings)?;
        Ok(())
    }

    /// Renames the directory into place, with the modes of files created there (the
    /// temporaries' 0600 and 0700 served while it was partial).
    pub fn commit(self) -> Result<()> {
        if self.target.exists() {
            return Err(Error::file(&self.target, "appeared while the model was being written; not overwritten"));
        }
        crate::file_mode::as_created(self.tmp.path()).map_err(|e| Error::io(self.tmp.path(), e))?;
        // On failure the temporary directory is still owned, and deleted on drop.
        std::fs::rename(self.tmp.path(), &self.target).map_err(|e| Error::io(&self.target, e))?;
        let _moved = self.tmp.keep();
        Ok(())
    }
}

/// One file of canonical tensors (a model's or a stage's) in the family's names and layouts
/// ([`family_tensors`]); returns the names written and their bytes.
pub fn write_tensor_file(path: &Path, spec: &ModelSpec, weights: &HashMap<String, Tensor>) -> Result<(Vec<String>, u64)> {
    let weights = family_tensors(spec, weights)?;
    candle_core::safetensors::save(&weights, path).map_err(|e| Error::file(path, e))?;
    let mut names: Vec<String> = weights.keys().cloned().collect();
    names.sort();
    Ok((names, weights.values().map(tensor_bytes).sum()))
}

/// A stage's canonical tensors as files `STEM-00001.safetensors`, … of at most
/// `max_shard_bytes` each (in model order), each written under a hidden name and renamed so
/// that a crash leaves no file that looks whole. Returns (file, tensor names, bytes) per file.
pub fn write_tensor_parts(
    dir: &Path,
    stem: &str,
    spec: &ModelSpec,
    weights: &HashMap<String, Tensor>,
    max_shard_bytes: u64,
) -> Result<Vec<(String, Vec<String>, u64)>> {
    let weights = &family_tensors(spec, weights)?;
    let mut written = Vec::new();
    for (k, names) in shard(weights, max_shard_bytes).into_iter().enumerate() {
        let file = format!("{stem}-{:05}.safetensors", k + 1);
        let part: HashMap<&str, Tensor> = names.iter().map(|n| (n.as_str(), weights[n].clone())).collect();
        let (partial, target) = (dir.join(format!(".{file}.partial")), dir.join(&file));
        candle_core::safetensors::save(&part, &partial).map_err(|e| Error::file(&partial, e))?;
        std::fs::rename(&partial, &target).map_err(|e| Error::io(&target, e))?;
        let bytes = part.values().map(tensor_bytes).sum();
        drop(part);
        written.push((file, names, bytes));
    }
    Ok(written)
}

/// The weights as `model.safetensors`, or shards of at most `max_shard_bytes` with their
/// index, into an existing directory (a [`ModelDir`]'s, or a cluster's temporary output), in
/// the family's names and layouts.
pub fn write_weights_into(dir: &Path, spec: &ModelSpec, weights: &HashMap<String, Tensor>, max_shard_bytes: u64) -> Result<()> {
    let parts = write_tensor_parts(dir, "part", spec, weights, max_shard_bytes)?;
    name_as_model(dir, &parts).map_err(index_error)
}

/// `model.safetensors.index.json` in `dir` for shard files already written there.
pub fn write_index_into(dir: &Path, shards: &[(String, Vec<String>)], total_bytes: u64) -> Result<()> {
    write_index(dir, shards, total_bytes).map_err(index_error)
}

/// An index or naming failure as the worker's error (I/O by its path).
pub(crate) fn index_error(e: IndexError) -> Error {
    match e {
        IndexError::Io { path, source } => Error::io(path, source),
        duplicate => Error::Invalid(duplicate.to_string()),
    }
}

/// Writes `dir` (which must not exist yet) in one go. `reports` are extra JSON files by name.
pub fn export_model(
    dir: &Path,
    spec: &ModelSpec,
    weights: &HashMap<String, Tensor>,
    tokenizer: &TextTokenizer,
    reports: &[(&str, &serde_json::Value)],
    max_shard_bytes: u64,
) -> Result<()> {
    let out = ModelDir::create(dir)?;
    out.write_weights(spec, weights, max_shard_bytes)?;
    out.write_model_files(spec, tokenizer, held_dtype(weights))?;
    for (file, value) in reports {
        out.write_json(file, value)?;
    }
    out.commit()
}

/// transformers' definition of a LLaMA with per-layer widths, written beside such exports.
pub const NONUNIFORM_LLAMA_MODELING: &str = include_str!("../hf/modeling_llmprune.py");

/// The dtype `weights` are held in (f32 when there are none).
fn held_dtype(weights: &HashMap<String, Tensor>) -> WeightDtype {
    match weights.values().next().map(Tensor::dtype) {
        Some(candle_core::DType::BF16) => WeightDtype::Bf16,
        Some(candle_core::DType::F16) => WeightDtype::F16,
        _ => WeightDtype::F32,
    }
}

fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

/// Tensor names in model order (numbers compared as numbers: layer 2 before layer 10), cut
/// into consecutive shards of at most `max_bytes`.
fn shard(weights: &HashMap<String, Tensor>, max_bytes: u64) -> Vec<Vec<String>> {
    let key =
        |name: &str| -> Vec<(u64, String)> { name.split('.').map(|p| p.parse::<u64>().map_or((u64::MAX, p.to_string()), |n| (n, String::new()))).collect() };
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort_by_cached_key(|n| key(n));
    cut_by_bytes(names.into_iter().map(|n| (n.clone(), tensor_bytes(&weights[n]))), max_bytes)
}

/// Tensors (name, bytes), in order, cut into consecutive shards of at most `max_bytes` (a
/// larger tensor alone in its shard).
pub(crate) fn cut_by_bytes(tensors: impl IntoIterator<Item = (String, u64)>, max_bytes: u64) -> Vec<Vec<String>> {
    let mut shards: Vec<Vec<String>> = vec![Vec::new()];
    let mut size = 0u64;
    for (name, bytes) in tensors {
        let last = shards.len() - 1;
        if size + bytes > max_bytes && !shards[last].is_empty() {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        let last = shards.len() - 1;
        shards[last].push(name);
    }
    shards
}
