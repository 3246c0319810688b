//! Hugging Face's `model.safetensors.index.json` for shard files already written: which file
//! holds each tensor; and the naming of written weight files as one model. Used by the
//! exporter, `synth` and the coordinator for a cluster's stage files; no tensor is read.

use std::path::{Path, PathBuf};

pub const INDEX_FILE: &str = "model.safetensors.index.json";

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("tensor `{0}` is in two shards")]
    Duplicate(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes the index of `shards` (file, tensor names) holding `total_bytes` into `dir`.
pub fn write_index(dir: &Path, shards: &[(String, Vec<String>)], total_bytes: u64) -> Result<(), IndexError> {
    let mut weight_map = serde_json::Map::new();
    for (file, names) in shards {
        for n in names {
            if weight_map.insert(n.clone(), file.clone().into()).is_some() {
                return Err(IndexError::Duplicate(n.clone()));
            }
        }
    }
    let path = dir.join(INDEX_FILE);
    let doc = serde_json::json!({"metadata": {"total_size": total_bytes}, "weight_map": weight_map});
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    std::fs::write(&path, text + "\n").map_err(|source| IndexError::Io { path, source })
}

/// Names weight files already written in `dir`, given in model order as (file, tensor names,
/// bytes), as one Hugging Face model: `model.safetensors` when there is one, else
/// `model-0000k-of-0000n.safetensors` and their index. The files' own names must differ from
/// these (`part-…`, `stage-…`).
pub fn name_as_model(dir: &Path, parts: &[(String, Vec<String>, u64)]) -> Result<(), IndexError> {
    let name = |k: usize| if parts.len() == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{:05}.safetensors", k + 1, parts.len()) };
    let mut files = Vec::with_capacity(parts.len());
    for (k, (file, names, _)) in parts.iter().enumerate() {
        let to = dir.join(name(k));
        std::fs::rename(dir.join(file), &to).map_err(|source| IndexError::Io { path: to, source })?;
        files.push((name(k), names.clone()));
    }
    if parts.len() > 1 {
        write_index(dir, &files, parts.iter().map(|(_, _, bytes)| bytes).sum())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_maps_each_tensor_to_its_file_once() {
        let tmp = std::env::temp_dir().join(format!("llmprune-index-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let shards = vec![("a.safetensors".to_string(), vec!["x".to_string()]), ("b.safetensors".to_string(), vec!["y".to_string()])];
        write_index(&tmp, &shards, 12).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.join(INDEX_FILE)).unwrap()).unwrap();
        assert_eq!(doc["weight_map"]["y"], "b.safetensors");
        assert_eq!(doc["metadata"]["total_size"], 12);
        let twice = vec![shards[0].clone(), ("c.safetensors".to_string(), vec!["x".to_string()])];
        assert!(matches!(write_index(&tmp, &twice, 1), Err(IndexError::Duplicate(n)) if n == "x"));
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn written_parts_become_one_model_or_indexed_shards() {
        let tmp = std::env::temp_dir().join(format!("llmprune-names-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let part = |file: &str, names: &[&str]| {
            std::fs::write(tmp.join(file), file).unwrap();
            (file.to_string(), names.iter().map(|n| n.to_string()).collect::<Vec<_>>(), 4)
        };
        name_as_model(&tmp, &[part("part-00001.safetensors", &["x"])]).unwrap();
        assert!(tmp.join("model.safetensors").is_file() && !tmp.join(INDEX_FILE).exists());
        std::fs::remove_file(tmp.join("model.safetensors")).unwrap();
        name_as_model(&tmp, &[part("stage-00000-00001.safetensors", &["x"]), part("stage-00001-00001.safetensors", &["y", "z"])]).unwrap();
        assert_eq!(std::fs::read_to_string(tmp.join("model-00002-of-00002.safetensors")).unwrap(), "stage-00001-00001.safetensors");
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.join(INDEX_FILE)).unwrap()).unwrap();
        assert_eq!((doc["weight_map"]["z"].as_str(), doc["metadata"]["total_size"].as_u64()), (Some("model-00002-of-00002.safetensors"), Some(8)));
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
