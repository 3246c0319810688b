//! `--local-workers N`: worker processes on this machine, started with the coordinator's
//! address and token, watched so that one exiting fails the run at once, and killed when the
//! coordinator is done or fails.

use anyhow::{Context, Result};
use std::path::Path;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

pub struct LocalWorkers {
    pids: Vec<u32>,
    /// Dropping the children kills them (`kill_on_drop`); they live in the watcher tasks.
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl LocalWorkers {
    /// Starts `n` workers named `local-0` … `local-{n-1}`, logging in `log_format` like the
    /// coordinator; `faults[i]` is passed to worker i (testing only). An exit is reported on
    /// `exited` as (name, status).
    pub fn start(
        n: usize,
        binary: &Path,
        coordinator: &str,
        token: &str,
        faults: &[(usize, String)],
        log_format: &str,
        exited: mpsc::UnboundedSender<(String, String)>,
    ) -> Result<Self> {
        let mut pids = Vec::new();
        let mut watchers = Vec::new();
        for i in 0..n {
            let name = format!("local-{i}");
            let mut cmd = Command::new(binary);
            cmd.args(["--coordinator", coordinator, "--name", &name, "--log-format", log_format])
                .env("LLMPRUNE_TOKEN", token)
                .kill_on_drop(true)
                .stdin(std::process::Stdio::null());
            for (_, fault) in faults.iter().filter(|(w, _)| *w == i) {
                cmd.args(["--fault", fault]);
            }
            let mut child: Child = cmd.spawn().with_context(|| format!("starting {} (set cluster.worker_binary)", binary.display()))?;
            pids.push(child.id().unwrap_or(0));
            let tx = exited.clone();
            watchers.push(tokio::spawn(async move {
                let status = match child.wait().await {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("unknown status ({e})"),
                };
                let _ = tx.send((name, status));
            }));
        }
        Ok(Self { pids, watchers })
    }

    pub fn pids(&self) -> &[u32] {
        &self.pids
    }
}

impl Drop for LocalWorkers {
    fn drop(&mut self) {
        // Aborting a watcher drops its child, which kills the process.
        for w in &self.watchers {
            w.abort();
        }
    }
}
