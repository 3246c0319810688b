//! Hugging Face directories: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Files are memory-mapped; a tensor is copied out only
//! when asked for, so a worker that loads a range of layers reads only those.

use super::WeightSource;
use crate::error::{Error, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{Device, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub struct HfWeights {
    dir: PathBuf,
    files: Vec<(PathBuf, MmapedSafetensors)>,
    /// Tensor name → index into `files`.
    routing: HashMap<String, usize>,
}

impl HfWeights {
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if index.exists() {
            shard_files(&index)?.into_iter().map(|f| dir.join(f)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(Error::file(dir, "no model.safetensors or model.safetensors.index.json"));
        };
        let mut files = Vec::with_capacity(paths.len());
        let mut routing = HashMap::new();
        for (i, path) in paths.into_iter().enumerate() {
            if !path.exists() {
                return Err(Error::file(&path, "listed in the safetensors index but missing"));
            }
            // SAFETY: the file is opened read-only and we never write through the map; as
            // with any mmap, truncating it underneath a running process is undefined.
            let st = unsafe { MmapedSafetensors::new(&path) }.map_err(|e| Error::file(&path, format!("not a valid safetensors file: {e}")))?;
            for (name, _) in st.tensors() {
                routing.insert(name, i);
            }
            files.push((path, st));
        }
        Ok(Self { dir: dir.to_path_buf(), files, routing })
    }
}

/// The distinct shard files named by an index's `weight_map`.
fn shard_files(index: &Path) -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::file(index, format!("not valid JSON: {e}")))?;
    let map = value.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::file(index, "field `weight_map`: missing or not an object"))?;
    map.values()
        .map(|v| v.as_str().map(str::to_string).ok_or_else(|| Error::file(index, format!("field `weight_map`: expected file names, found {v}"))))
        .collect()
}

impl WeightSource for HfWeights {
    fn path(&self) -> &Path {
        &self.dir
    }

    fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let &i = self.routing.get(name).ok_or_else(|| Error::Tensor { path: self.dir.clone(), name: name.into(), reason: "not found".into() })?;
        let (path, st) = &self.files[i];
        st.load(name, device).map_err(|e| Error::Tensor { path: path.clone(), name: name.into(), reason: e.to_string() })
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.routing.keys().cloned().collect();
        v.sort();
        v
    }
}
