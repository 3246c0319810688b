pub mod apply_plan;
pub mod bench;
pub mod cluster;
pub mod config;
pub mod eval;
pub mod fetch;
pub mod generate;
pub mod phase_stamp;
pub mod ppl;
pub mod prune;
pub mod recover;
pub mod run;
pub mod synth;
pub mod table;

use crate::interrupt::{remove_stale_partials, Temporary};
use anyhow::{Context, Result};
use llmprune_worker::export::ModelDir;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A model output's temporary directory beside `out` (renamed into place when complete),
/// registered so that an interrupted run removes it. With `resume`, the temporary
/// directories an earlier run of the same output left behind are removed first.
pub fn create_output(out: &Path, resume: bool) -> Result<(ModelDir, Temporary)> {
    if resume {
        for stale in remove_stale_partials(out).with_context(|| format!("--out {}: removing an earlier run's partial output", out.display()))? {
            tracing::info!(removed = %stale.display(), "an earlier run's partial output");
        }
    }
    let dir = ModelDir::create(out)?;
    let temporary = Temporary::register(dir.path());
    Ok((dir, temporary))
}

/// A worker-library error as the command line says it: a job setting named by its flag.
pub fn in_flags(e: llmprune_worker::Error) -> anyhow::Error {
    match e {
        llmprune_worker::Error::Job(job) => anyhow::anyhow!(job.as_flag()),
        other => other.into(),
    }
}

/// A worker's failure about one of the job's settings `T` (the worker names it by its key,
/// `val_size 30: leaves nothing to train on`) as the command line says it (`--val-size 30`).
pub fn worker_settings_in_flags<T: clap::Args>(e: anyhow::Error) -> anyhow::Error {
    let msg = format!("{e:#}");
    let keys: Vec<String> = T::augment_args(clap::Command::new("job")).get_arguments().map(|a| a.get_id().to_string()).collect();
    match keys.iter().find(|k| msg.contains(&format!("failed: {k} ")) || msg.contains(&format!("failed: {k}:"))) {
        Some(key) => anyhow::anyhow!(msg.replacen(&format!("failed: {key}"), &format!("failed: --{}", key.replace('_', "-")), 1)),
        None => e,
    }
}

/// Writes JSON to a temporary file beside `path`, then renames it: a crash never leaves a
/// half-written file that looks complete.
pub fn write_json_atomic(path: &Path, value: &serde_json::Value) -> Result<()> {
    write_file_atomic(path, (serde_json::to_string_pretty(value)? + "\n").as_bytes())
}

/// Writes `path` through a temporary file in its directory, renamed into place with the mode
/// of a file created there.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("writing in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    llmprune_worker::file_mode::as_created(tmp.path()).with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Where a run writing `out` keeps its checkpoints (beside it, hidden); removed once the
/// output is in place.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    out.with_file_name(format!(".{name}.llmprune-checkpoint"))
}
