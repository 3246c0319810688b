//! A model's identity for plans: a plan records the checksum of the model it was made for,
//! and replaying it on anything else is refused. Hashing a 7B model reads 13 GB, and every
//! worker checks it at every phase's load, so each file's sha256 is remembered beside it
//! (`.NAME.sha256`) with the size, modification time and inode it had: a file that is
//! rewritten or replaced changes one of them and is hashed again.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
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

/// What a remembered checksum was taken of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileStamp {
    size: u64,
    /// Nanoseconds since the Unix epoch (u64 lasts until 2554).
    modified_ns: u64,
    inode: u64,
}

#[derive(Serialize, Deserialize)]
struct Remembered {
    stamp: FileStamp,
    sha256: String,
}

fn stamp(path: &Path) -> Result<FileStamp> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let modified_ns = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos() as u64);
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(FileStamp { size: meta.len(), modified_ns, inode })
}

/// Where a file's checksum is remembered: a hidden file beside it.
pub fn remembered_checksum_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.sha256"))
}

/// [`sha256_file`], remembered beside the file while its size, modification time and inode
/// stay the same. A directory that cannot be written only costs the hashing.
pub fn sha256_file_remembered(path: &Path) -> Result<String> {
    let before = stamp(path)?;
    let memo = remembered_checksum_path(path);
    let known = std::fs::read_to_string(&memo).ok().and_then(|t| serde_json::from_str::<Remembered>(&t).ok());
    if let Some(r) = known.filter(|r| r.stamp == before && r.sha256.len() == 64) {
        return Ok(r.sha256);
    }
    let sha256 = sha256_file(path)?;
    // A file that changed while it was read is not remembered.
    if stamp(path)? == before {
        let text = serde_json::to_string(&Remembered { stamp: before, sha256: sha256.clone() }).unwrap_or_default();
        let partial = memo.with_extension(format!("partial-{}", std::process::id()));
        let written = std::fs::write(&partial, text).and_then(|_| std::fs::rename(&partial, &memo));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&partial);
            tracing::debug!(file = %memo.display(), error = %e, "checksum not remembered");
        }
    }
    Ok(sha256)
}

/// A single-file model (GGUF): the file's sha256. A directory: the sha256 of the lines
/// `NAME SHA256` of `config.json` and every `*.safetensors` file, in name order (the
/// tokenizer and reports do not change the weights).
pub fn model_checksum(path: &Path) -> Result<String> {
    if !path.is_dir() {
        return sha256_file_remembered(path);
    }
    let entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let p = entry.map_err(|e| Error::io(path, e))?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name == "config.json" || (name.ends_with(".safetensors") && !name.starts_with('.')) {
            files.push(p);
        }
    }
    files.sort();
    let mut h = Sha256::new();
    for f in &files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        h.update(format!("{name} {}\n", sha256_file_remembered(f)?).as_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_checksums_follow_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("model.gguf");
        std::fs::write(&file, b"weights one").unwrap();
        let first = model_checksum(&file).unwrap();
        assert_eq!(first, sha256_file(&file).unwrap());
        assert!(remembered_checksum_path(&file).exists());
        // A remembered value is used while the stamp matches: prove it by planting one.
        let planted = r#"{"sha256":"PLANTED"}"#;
        assert!(serde_json::from_str::<Remembered>(planted).is_err(), "a memo without a stamp is ignored");
        let mut memo: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(remembered_checksum_path(&file)).unwrap()).unwrap();
        memo["sha256"] = serde_json::json!("a".repeat(64));
        std::fs::write(remembered_checksum_path(&file), memo.to_string()).unwrap();
        assert_eq!(model_checksum(&file).unwrap(), "a".repeat(64));
        // Replaced (new inode, size and time): hashed again.
        let replacement = tmp.path().join("new.gguf");
        std::fs::write(&replacement, b"weights two, longer").unwrap();
        std::fs::rename(&replacement, &file).unwrap();
        assert_eq!(model_checksum(&file).unwrap(), sha256_file(&file).unwrap());
        assert_ne!(model_checksum(&file).unwrap(), first);
    }

    #[test]
    fn directories_ignore_the_remembered_files() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("config.json"), b"{}").unwrap();
        std::fs::write(tmp.path().join("model.safetensors"), b"tensors").unwrap();
        let first = model_checksum(tmp.path()).unwrap();
        assert!(remembered_checksum_path(&tmp.path().join("model.safetensors")).exists());
        assert_eq!(model_checksum(tmp.path()).unwrap(), first, "the memo files do not change the checksum");
    }
}
