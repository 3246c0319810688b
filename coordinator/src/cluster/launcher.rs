//! Workers this coordinator starts itself: `--local-workers N` worker processes on this
//! machine, or (a command without `--local-workers`/`--workers`) one worker inside this
//! process running the same worker code over loopback gRPC. Either is watched so that its end
//! fails the run at once, and stopped when the coordinator is done or fails.

use super::driver::ClusterConfig;
use anyhow::{Context, Result};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The name of the worker a command runs in its own process.
pub const IN_PROCESS: &str = "in-process";

/// Serves the in-process worker, given the coordinator's URL, the token and the worker's
/// name, until the coordinator stops it (`Ok`) or it fails (the error, in words).
pub type InProcessWorker = Arc<dyn Fn(String, String, String) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

pub struct LocalWorkers {
    pids: Vec<u32>,
    /// Dropping the children kills them (`kill_on_drop`); they live in the watcher tasks.
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl LocalWorkers {
    /// Starts `n` workers named `local-0` … `local-{n-1}` of `config`'s binary, logging in
    /// its log format and with its TLS files, like the coordinator; its fault for worker i is
    /// passed to worker i (testing only). An exit is reported on `exited` as (name, status).
    pub fn start(n: usize, config: &ClusterConfig, coordinator: &str, token: &str, exited: mpsc::UnboundedSender<(String, String)>) -> Result<Self> {
        let (binary, log_format, tls) = (&config.worker_binary, config.log_format, &config.settings.tls);
        let mut pids = Vec::new();
        let mut watchers = Vec::new();
        for i in 0..n {
            let name = format!("local-{i}");
            let mut cmd = Command::new(binary);
            cmd.args(["--coordinator", coordinator, "--name", &name, "--log-format", log_format])
                // The token in the environment, not the command line (which `ps` shows).
                .env("LLMPRUNE_TOKEN", token)
                .kill_on_drop(true)
                .stdin(std::process::Stdio::null());
            for (flag, file) in [("--tls-cert", &tls.cert), ("--tls-key", &tls.key), ("--tls-ca", &tls.ca)] {
                if let Some(file) = file {
                    cmd.arg(flag).arg(file);
                }
            }
            if tls.mutual {
                cmd.arg("--tls-mutual");
            }
            if let Some(name) = &tls.server_name {
                cmd.args(["--tls-server-name", name]);
            }
            for (_, fault) in config.faults.iter().filter(|(w, _)| *w == i) {
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

    /// One worker in this process, serving on a loopback port. Its end (the coordinator's
    /// Shutdown, or an error) is reported on `exited`.
    pub fn in_process(worker: &InProcessWorker, coordinator: &str, token: &str, exited: mpsc::UnboundedSender<(String, String)>) -> Self {
        let serving = worker(coordinator.to_string(), token.to_string(), IN_PROCESS.to_string());
        let watcher = tokio::spawn(async move {
            let status = match serving.await {
                Ok(()) => "stopped".to_string(),
                Err(e) => format!("failed: {e}"),
            };
            let _ = exited.send((IN_PROCESS.to_string(), status));
        });
        Self { pids: Vec::new(), watchers: vec![watcher] }
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
