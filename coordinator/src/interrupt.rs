//! SIGINT and SIGTERM (Ctrl-C, `scancel`, a Kubernetes eviction): the run in progress fails
//! cleanly — workers told to stop, temporary outputs removed, checkpoints kept — and the
//! process exits saying how to `--resume`. A watcher thread receives the signal and wakes the
//! cluster's phase, which waits on [`interrupted`]. When nothing waits (work outside a
//! cluster phase: hashing a model, writing a report, a command without workers) the watcher
//! removes the temporary outputs itself and exits at once; a phase that does not unwind
//! within [`GRACE`], or a second signal, gets the same.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

/// How long the run has to unwind by itself after a signal.
const GRACE: Duration = Duration::from_secs(20);

/// The signal received (its number), 0 before any.
static RECEIVED: AtomicI32 = AtomicI32::new(0);
static WAKE: Notify = Notify::const_new();
/// How many [`interrupted`] futures are waiting: phases that unwind by themselves.
static WAITING: AtomicUsize = AtomicUsize::new(0);
static TEMPORARIES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The signal's name, as users know it.
fn name(signal: i32) -> &'static str {
    match signal {
        2 => "SIGINT",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

/// Starts the watcher (once, at start-up).
pub fn install() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Registered here, before the thread starts, so that no signal arrives unhandled.
    let (mut int, mut term) = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        Ok::<_, std::io::Error>((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?))
    })?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        runtime.block_on(async {
            let first = tokio::select! { _ = int.recv() => 2, _ = term.recv() => 15 };
            RECEIVED.store(first, Ordering::SeqCst);
            if WAITING.load(Ordering::SeqCst) == 0 {
                remove_temporaries();
                eprintln!(
                    "error: interrupted by {}: temporary outputs removed; checkpoints are kept: run the same command with --resume to continue",
                    name(first)
                );
                std::process::exit(128 + first);
            }
            tracing::warn!("{}: stopping the workers and removing temporary outputs", name(first));
            WAKE.notify_waiters();
            let again = tokio::select! {
                _ = int.recv() => "a second signal",
                _ = term.recv() => "a second signal",
                _ = tokio::time::sleep(GRACE) => "the run did not stop in time",
            };
            tracing::error!("{again}: removing temporary outputs and exiting now");
            remove_temporaries();
            std::process::exit(128 + first);
        })
    })?;
    Ok(())
}

/// The signal that interrupted the run, if one did.
pub fn received() -> Option<&'static str> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(name(s)),
    }
}

/// The exit code of a run stopped by a signal (128 + its number), if one was.
pub fn exit_code() -> Option<u8> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some((128 + s) as u8),
    }
}

/// Resolves when a signal arrives (at once if one has). While it waits, a signal is left to
/// its caller to handle.
pub async fn interrupted() -> &'static str {
    struct Waiting;
    impl Drop for Waiting {
        fn drop(&mut self) {
            WAITING.fetch_sub(1, Ordering::SeqCst);
        }
    }
    WAITING.fetch_add(1, Ordering::SeqCst);
    let _waiting = Waiting;
    loop {
        let woken = WAKE.notified();
        if let Some(s) = received() {
            return s;
        }
        woken.await;
    }
}

/// A temporary output (a `.OUT.partial-*` directory) that an interrupted run removes even
/// when it cannot unwind in time; registered while it exists.
pub struct Temporary(PathBuf);

impl Temporary {
    pub fn register(path: &Path) -> Self {
        lock().push(path.to_path_buf());
        Self(path.to_path_buf())
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        lock().retain(|p| *p != self.0);
    }
}

fn lock() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    TEMPORARIES.lock().unwrap_or_else(|p| p.into_inner())
}

fn remove_temporaries() {
    for path in lock().iter() {
        let _ = std::fs::remove_dir_all(path);
    }
}

/// Removes `.NAME.partial-*` directories beside `out` that an earlier run of the same output
/// left (killed outright, or on a machine that went down): `--resume` starts clean.
pub fn remove_stale_partials(out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let (Some(parent), Some(name)) = (out.parent(), out.file_name()) else {
        return Ok(Vec::new());
    };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let prefix = llmprune_worker::export::partial_prefix(&name.to_string_lossy());
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(parent) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let held = lock().contains(&entry.path());
        if entry.file_name().to_string_lossy().starts_with(&prefix) && !held {
            std::fs::remove_dir_all(entry.path())?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_partials_of_the_output_are_removed_and_others_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("pruned");
        for d in [".pruned.partial-abc", ".pruned.partial-def/nested", ".other.partial-x", ".pruned.llmprune-checkpoint", ".pruned.partial-live"] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        let _live = Temporary::register(&tmp.path().join(".pruned.partial-live"));
        let mut removed: Vec<String> = remove_stale_partials(&out).unwrap().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        removed.sort();
        assert_eq!(removed, [".pruned.partial-abc", ".pruned.partial-def"]);
        for kept in [".other.partial-x", ".pruned.llmprune-checkpoint", ".pruned.partial-live"] {
            assert!(tmp.path().join(kept).exists(), "{kept}");
        }
        assert!(remove_stale_partials(&tmp.path().join("absent/out")).unwrap().is_empty());
    }
}
