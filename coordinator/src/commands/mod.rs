pub mod apply_plan;
pub mod bench;
pub mod cluster;
pub mod config;
pub mod eval;
pub mod fetch;
pub mod generate;
pub mod ppl;
pub mod prune;
pub mod recover;
pub mod run;
pub mod table;

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes JSON to a temporary file beside `path`, then renames it: a crash never leaves a
/// half-written file that looks complete.
pub fn write_json_atomic(path: &Path, value: &serde_json::Value) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("writing in {}", dir.display()))?;
    serde_json::to_writer_pretty(&mut tmp, value)?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Where a run writing `out` keeps its checkpoints (beside it, hidden); removed once the
/// output is in place.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    out.with_file_name(format!(".{name}.llmprune-checkpoint"))
}
