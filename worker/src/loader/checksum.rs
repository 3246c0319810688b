//! A model's identity for plans: a plan records the checksum of the model it was made for,
//! and replaying it on anything else is refused.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// sha256 of a file, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// A single-file model (GGUF): the file's sha256. A directory: the sha256 of the lines
/// `NAME SHA256` of `config.json` and every `*.safetensors` file, in name order (the
/// tokenizer and reports do not change the weights).
pub fn model_checksum(path: &Path) -> Result<String> {
    if !path.is_dir() {
        return sha256_file(path);
    }
    let entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let p = entry.map_err(|e| Error::io(path, e))?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name == "config.json" || name.ends_with(".safetensors") {
            files.push(p);
        }
    }
    files.sort();
    let mut h = Sha256::new();
    for f in &files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        h.update(format!("{name} {}\n", sha256_file(f)?).as_bytes());
    }
    Ok(hex::encode(h.finalize()))
}
