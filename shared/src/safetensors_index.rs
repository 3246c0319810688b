//! Hugging Face's `model.safetensors.index.json` for shard files already written: which file
//! holds each tensor. Written by the exporter for sharded outputs and by the coordinator for a
//! cluster's stage files; no tensor is read.

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
}
