//! Writing a model directory the loader reads back (and transformers too, when the layers
//! are uniform): `model.safetensors`, `config.json` (per-layer arrays when shapes differ),
//! `tokenizer.json`, and any JSON reports. It is written under a temporary name beside the
//! target and renamed into place, so a failed export leaves nothing that looks complete.

use crate::error::{Error, Result};
use crate::loader::TextTokenizer;
use candle_core::Tensor;
use llmprune_shared::ModelSpec;
use std::collections::HashMap;
use std::path::Path;

/// Writes `dir`, which must not exist yet. `reports` are extra JSON files by name.
pub fn export_model(
    dir: &Path,
    spec: &ModelSpec,
    weights: &HashMap<String, Tensor>,
    tokenizer: &TextTokenizer,
    reports: &[(&str, &serde_json::Value)],
) -> Result<()> {
    if dir.exists() {
        return Err(Error::file(dir, "already exists; remove it or choose another output directory"));
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.partial-"))
        .tempdir_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    let write_json = |file: &str, value: &serde_json::Value| -> Result<()> {
        let path = tmp.path().join(file);
        let text = serde_json::to_string_pretty(value).map_err(|e| Error::file(&path, e))?;
        std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))
    };
    let tensors = tmp.path().join("model.safetensors");
    candle_core::safetensors::save(weights, &tensors).map_err(|e| Error::file(&tensors, e))?;
    write_json("config.json", &spec.to_hf_config())?;
    tokenizer.save(&tmp.path().join("tokenizer.json"))?;
    for (file, value) in reports {
        write_json(file, value)?;
    }
    // On failure the temporary directory is still owned, and deleted on drop.
    std::fs::rename(tmp.path(), dir).map_err(|e| Error::io(dir, e))?;
    let _moved = tmp.keep();
    Ok(())
}
