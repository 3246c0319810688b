//! Starting a cluster for a command: its configuration from the settings and the command's
//! cluster flags, and a run on it that ends with the workers stopped whatever happens; or one
//! cluster kept across the phases of `llmprune run`.

use crate::cli::ClusterArgs;
use crate::cluster::driver::{Cluster, ClusterConfig, Members, Phase, RunFailed};
use crate::cluster::launcher::InProcessWorker;
use crate::interrupt::interrupted;
use crate::settings::Settings;
use anyhow::{anyhow, bail, Context, Result};
use llmprune_shared::device::WorkerDevice;
use llmprune_worker::cluster::serve::{serve, ServeOptions};
use llmprune_worker::confine::Confinement;
use std::sync::Arc;
use std::time::Duration;

/// The worker a command runs inside this process: `llmprune-worker`'s own serve code on
/// `device`, over loopback.
fn in_process_worker(device: WorkerDevice) -> InProcessWorker {
    Arc::new(move |coordinator: String, token: String, name: String| {
        let opts = ServeOptions {
            coordinator,
            token,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise_host: None,
            peer_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(30),
            device,
            name,
            fault: None,
            // Loopback only, in this process: the coordinator's own reach, in plaintext.
            confinement: Confinement::none(),
            tls: None,
            insecure: false,
        };
        Box::pin(async move { serve(opts).await.map_err(|e| e.to_string()) })
    })
}

pub fn cluster_config(settings: &Settings, args: &ClusterArgs) -> Result<ClusterConfig> {
    let worker_binary = match &settings.cluster.worker_binary {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating llmprune")?.with_file_name("llmprune-worker"),
    };
    let members = match (args.local_workers, args.workers) {
        (Some(n), _) => Members::Processes(n),
        (None, Some(n)) => Members::Remote(n),
        (None, None) => {
            // Refused here, naming the flag, when this build cannot compute there.
            settings.compute_device()?;
            Members::InProcess(in_process_worker(settings.worker_device()?))
        }
    };
    let faults = match &args.inject_fault {
        Some(_) if matches!(members, Members::InProcess(_)) => bail!("--inject-fault needs --local-workers N (it stops a worker process)"),
        Some(f) => {
            let (i, fault) = f.split_once(':').ok_or_else(|| anyhow!("--inject-fault {f}: expected WORKER:FAULT"))?;
            vec![(i.parse::<usize>().map_err(|_| anyhow!("--inject-fault {f}: bad worker index"))?, fault.to_string())]
        }
        None => Vec::new(),
    };
    Ok(ClusterConfig {
        settings: settings.cluster.clone(),
        members,
        worker_binary,
        faults,
        log_format: match settings.log_format {
            crate::settings::LogFormat::Text => "text",
            crate::settings::LogFormat::Json => "json",
        },
    })
}

/// A cluster that serves several phases of one run (`llmprune run`): its workers load each
/// phase's model in turn. A failed phase stops the workers and ends the session.
pub struct ClusterSession {
    runtime: tokio::runtime::Runtime,
    cluster: Option<Cluster>,
}

impl ClusterSession {
    pub fn start(config: ClusterConfig, run_id: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let cluster = runtime.block_on(async {
            tokio::select! {
                started = Cluster::start(config, run_id) => started,
                signal = interrupted() => Err(anyhow!(RunFailed { message: format!("interrupted by {signal} while the workers were starting"), retryable: true })),
            }
        })?;
        Ok(Self { runtime, cluster: Some(cluster) })
    }

    /// Runs one phase's `job` on the cluster; an error fails the run first, so that workers
    /// never linger. A signal (SIGINT, SIGTERM) ends the phase as a failure a rerun may pass.
    pub fn run<T>(&mut self, job: impl AsyncFnOnce(&mut Cluster) -> Result<T>) -> Result<T> {
        let cluster = self.cluster.as_mut().ok_or_else(|| anyhow!("the cluster has already failed"))?;
        let result = self.runtime.block_on(async {
            // The phase's future borrows the cluster: it is dropped before the failure is
            // handled.
            let outcome = {
                let phase = job(&mut *cluster);
                tokio::select! {
                    done = phase => done,
                    signal = interrupted() => Err(anyhow!("interrupted by {signal}")),
                }
            };
            match outcome {
                Ok(v) => Ok(v),
                Err(e) if crate::interrupt::received().is_some() => Err(cluster.fail_retryable(&format!("{e:#}")).await),
                Err(e) => {
                    if cluster.phase() != Phase::Failed {
                        let _ = cluster.fail(&format!("{e:#}")).await;
                    }
                    Err(e)
                }
            }
        });
        if result.is_err() {
            self.cluster = None;
        }
        result
    }

    /// Stops the workers after the last phase.
    pub fn finish(mut self) {
        if let Some(cluster) = self.cluster.take() {
            self.runtime.block_on(cluster.finish());
        }
    }
}

/// Starts the cluster, runs `job` on it, and stops the workers: after success, or after a
/// failure (an error of the coordinator's own fails the run first, so workers never linger).
pub fn with_cluster<T>(config: ClusterConfig, run_id: &str, job: impl AsyncFnOnce(&mut Cluster) -> Result<T>) -> Result<T> {
    let mut session = ClusterSession::start(config, run_id)?;
    let result = session.run(job);
    session.finish();
    result
}

/// Runs `job` on the run's shared cluster when there is one, else on a cluster of the
/// command's own (`--local-workers` / `--workers`).
pub fn on_cluster<T>(
    shared: Option<&mut ClusterSession>,
    settings: &Settings,
    args: &ClusterArgs,
    run_id: &str,
    job: impl AsyncFnOnce(&mut Cluster) -> Result<T>,
) -> Result<T> {
    match shared {
        Some(session) => session.run(job),
        None => with_cluster(cluster_config(settings, args)?, run_id, job),
    }
}
