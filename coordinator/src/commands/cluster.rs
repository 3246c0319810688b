//! Starting a cluster for a command: its configuration from the settings and the command's
//! cluster flags, and a run on it that ends with the workers stopped whatever happens.

use crate::cli::ClusterArgs;
use crate::cluster::driver::{Cluster, ClusterConfig, Phase};
use crate::settings::Settings;
use anyhow::{anyhow, Context, Result};

pub fn cluster_config(settings: &Settings, args: &ClusterArgs) -> Result<ClusterConfig> {
    let worker_binary = match &settings.cluster.worker_binary {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating llmprune")?.with_file_name("llmprune-worker"),
    };
    let faults = match &args.inject_fault {
        Some(f) => {
            let (i, fault) = f.split_once(':').ok_or_else(|| anyhow!("--inject-fault {f}: expected WORKER:FAULT"))?;
            vec![(i.parse::<usize>().map_err(|_| anyhow!("--inject-fault {f}: bad worker index"))?, fault.to_string())]
        }
        None => Vec::new(),
    };
    Ok(ClusterConfig {
        settings: settings.cluster.clone(),
        local_workers: args.local_workers,
        remote_workers: args.workers,
        worker_binary,
        faults,
        log_format: match settings.log_format {
            crate::settings::LogFormat::Text => "text",
            crate::settings::LogFormat::Json => "json",
        },
    })
}

/// Starts the cluster, runs `job` on it, and stops the workers: after success, or after a
/// failure (an error of the coordinator's own fails the run first, so workers never linger).
pub fn with_cluster<T>(config: ClusterConfig, run_id: &str, job: impl AsyncFnOnce(&mut Cluster) -> Result<T>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let mut cluster = Cluster::start(config, run_id).await?;
        match job(&mut cluster).await {
            Ok(v) => {
                cluster.finish().await;
                Ok(v)
            }
            Err(e) => {
                if cluster.phase() != Phase::Failed {
                    let _ = cluster.fail(&format!("{e:#}")).await;
                }
                Err(e)
            }
        }
    })
}
