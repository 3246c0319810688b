//! Writing a model directory the loader reads back (and transformers too, when the layers
//! are uniform): `model.safetensors` (or shards with Hugging Face's
//! `model.safetensors.index.json` above a size), `config.json` (per-layer arrays when shapes differ),
//! `tokenizer.json`, and any JSON reports. It is written under a temporary name beside the
//! target and renamed into place, so a failed export leaves nothing that looks complete.

use crate::error::{Error, Result};
use crate::loader::TextTokenizer;
use candle_core::Tensor;
use llmprune_shared::ModelSpec;
use std::collections::HashMap;
use std::path::Path;

/// Hugging Face's default shard size (`save_pretrained(max_shard_size="5GB")`).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Writes `dir`, which must not exist yet, with weights in shards of at most
/// `max_shard_bytes` (a tensor larger than that gets a shard of its own). `reports` are extra
/// JSON files by name.
pub fn export_model(
    dir: &Path,
    spec: &ModelSpec,
    weights: &HashMap<String, Tensor>,
    tokenizer: &TextTokenizer,
    reports: &[(&str, &serde_json::Value)],
    max_shard_bytes: u64,
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
    let shards = shard(weights, max_shard_bytes);
    if shards.len() == 1 {
        let tensors = tmp.path().join("model.safetensors");
        candle_core::safetensors::save(weights, &tensors).map_err(|e| Error::file(&tensors, e))?;
    } else {
        let mut weight_map = serde_json::Map::new();
        for (i, names) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards.len());
            let part: HashMap<&str, Tensor> = names.iter().map(|n| (n.as_str(), weights[n].clone())).collect();
            let path = tmp.path().join(&file);
            candle_core::safetensors::save(&part, &path).map_err(|e| Error::file(&path, e))?;
            for n in names {
                weight_map.insert(n.clone(), file.clone().into());
            }
        }
        let total: u64 = weights.values().map(tensor_bytes).sum();
        let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_json("model.safetensors.index.json", &index)?;
    }
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

fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

/// Tensor names in model order (numbers compared as numbers: layer 2 before layer 10), cut
/// into consecutive shards of at most `max_bytes`.
fn shard(weights: &HashMap<String, Tensor>, max_bytes: u64) -> Vec<Vec<String>> {
    let key = |name: &str| -> Vec<(u64, String)> {
        name.split('.').map(|p| p.parse::<u64>().map_or((u64::MAX, p.to_string()), |n| (n, String::new()))).collect()
    };
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort_by_cached_key(|n| key(n));
    let mut shards: Vec<Vec<String>> = vec![Vec::new()];
    let mut size = 0u64;
    for name in names {
        let bytes = tensor_bytes(&weights[name]);
        let last = shards.len() - 1;
        if size + bytes > max_bytes && !shards[last].is_empty() {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        let last = shards.len() - 1;
        shards[last].push(name.clone());
    }
    shards
}
