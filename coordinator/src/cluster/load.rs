//! Laying a model out on the workers and loading it: N workers as N/R pipeline stages × R
//! replicas (worker r is stage r mod S of replica r div S), contiguous layer shards balanced
//! by bytes against each stage's smallest worker, both rings (or NCCL groups) joined, and
//! only each worker's layers read from the shared model file. Pruning uses stages; recovery
//! one stage of N replicas.

use super::driver::{random_hex, Cluster, Member, Phase};
use super::shards::assign_shards;
use anyhow::{bail, Result};
use llmprune_shared::dtype::WeightDtype;
use llmprune_shared::proto::{self, LoadShardRequest, NcclUniqueIdRequest, ShardSpec};
use llmprune_shared::ModelSpec;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// A rank's part in the run, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct RankReport {
    pub worker: String,
    pub rank: usize,
    pub stage: usize,
    pub replica: usize,
    pub layers: [usize; 2],
    pub params_loaded: u64,
    pub peak_rss_mib: f64,
}

pub struct Layout {
    /// Pipeline stages.
    pub world: usize,
    /// The dtype the workers hold the weights in.
    pub dtype: WeightDtype,
    pub ranks: Vec<RankReport>,
    pub load_s: f64,
}

/// The model a phase loads: its files, their checksum, and the dtype workers hold it in
/// (`None`: [`WeightDtype::default_for`] the workers' device).
#[derive(Clone, Copy)]
pub struct ModelFiles<'a> {
    pub spec: &'a ModelSpec,
    pub path: &'a Path,
    pub sha256: &'a str,
    pub dtype: Option<WeightDtype>,
}

/// Assigns stages, replicas and layers to the cluster's members (by the weights' bytes in the
/// dtype they will be held in) and has them load.
pub async fn load_layout(cluster: &mut Cluster, model: ModelFiles<'_>, replicas: usize) -> Result<Layout> {
    let ModelFiles { spec, path: model_path, sha256: model_sha256, dtype } = model;
    let workers = cluster.members.len();
    if replicas == 0 || !workers.is_multiple_of(replicas) {
        bail!("--replicas {replicas}: the {workers} workers must split into equal replicas (a divisor of {workers})");
    }
    let world = workers / replicas;
    // Worker r is stage r mod S of replica r div S: with one replica the ranks are the stages.
    for m in cluster.members.iter_mut() {
        (m.stage, m.replica) = (m.rank % world, m.rank / world);
    }
    // A stage must fit the smallest of its copies.
    let memories: Vec<u64> = (0..world).map(|s| cluster.members.iter().filter(|m| m.stage == s).map(|m| m.memory_bytes).min().unwrap_or(0)).collect();
    let dtype = dtype.unwrap_or_else(|| WeightDtype::default_for(cluster.members.iter().all(on_gpu)));
    let shards = assign_shards(spec, &memories, dtype)?;
    for m in cluster.members.iter_mut() {
        m.layers = shards[m.stage].clone();
    }
    let ring_of = |replica: usize| -> Vec<String> { cluster.members.iter().filter(|m| m.replica == replica).map(|m| m.ring_address.clone()).collect() };
    let ring_addresses: Vec<Vec<String>> = (0..replicas).map(ring_of).collect();
    let replica_ring_addresses: Vec<Vec<String>> =
        (0..world).map(|s| cluster.members.iter().filter(|m| m.stage == s).map(|m| m.replica_ring_address.clone()).collect()).collect();
    let secret = random_hex()?.into_bytes();
    let (pipeline_ids, replica_ids) = nccl_ids(cluster, world, replicas).await?;

    cluster.enter(Phase::Loading);
    let t = Instant::now();
    let (path, sha, run_id) = (model_path.display().to_string(), model_sha256.to_string(), cluster.registry.run_id.clone());
    let loaded = cluster
        .each("loading", |m| {
            let mut rpc = m.rpc.clone();
            let req = LoadShardRequest {
                run_id: run_id.clone(),
                model_path: path.clone(),
                model_sha256: sha.clone(),
                shard: Some(ShardSpec {
                    rank: m.stage as u32,
                    world_size: world as u32,
                    layer_start: m.layers.start as u32,
                    layer_end: m.layers.end as u32,
                    embeddings: m.stage == 0,
                    head: m.stage + 1 == world,
                    replica: m.replica as u32,
                    replicas: replicas as u32,
                }),
                ring_addresses: ring_addresses[m.replica].clone(),
                ring_secret: secret.clone(),
                replica_ring_addresses: replica_ring_addresses[m.stage].clone(),
                worker_id: m.id.clone(),
                pipeline_nccl_id: pipeline_ids[m.replica].clone(),
                replica_nccl_id: replica_ids[m.stage].clone(),
                dtype: proto::WeightDtype::from(dtype) as i32,
            };
            async move { Ok(rpc.load_shard(req).await?.into_inner()) }
        })
        .await?;
    let load_s = t.elapsed().as_secs_f64();
    let ranks: Vec<RankReport> = cluster
        .members
        .iter()
        .zip(&loaded)
        .map(|(m, l)| RankReport {
            worker: m.id.clone(),
            rank: m.rank,
            stage: m.stage,
            replica: m.replica,
            layers: [m.layers.start, m.layers.end],
            params_loaded: l.params,
            peak_rss_mib: l.peak_rss_bytes as f64 / 1048576.0,
        })
        .collect();
    Ok(Layout { world, dtype, ranks, load_s })
}

fn on_gpu(m: &Member) -> bool {
    m.device_kind.starts_with("cuda")
}

/// NCCL unique ids for the pipeline group of each replica and the replica group of each
/// stage when the workers are GPUs (asked of each group's first member), none on CPUs.
async fn nccl_ids(cluster: &mut Cluster, world: usize, replicas: usize) -> Result<(Vec<Vec<u8>>, Vec<Vec<u8>>)> {
    let gpus = cluster.members.iter().filter(|m| on_gpu(m)).count();
    if gpus == 0 {
        return Ok((vec![Vec::new(); replicas], vec![Vec::new(); world]));
    }
    if gpus < cluster.members.len() {
        let kinds: Vec<String> = cluster.members.iter().map(|m| format!("{}: {}", m.id, m.device_kind)).collect();
        bail!("the workers mix CPUs and GPUs ({}); run them all on one kind", kinds.join(", "));
    }
    // A group of one needs no id; a group's first member is stage 0 (pipeline) or replica 0.
    let first_of_pipeline = |m: &Member| world > 1 && m.stage == 0;
    let first_of_replicas = |m: &Member| replicas > 1 && m.replica == 0;
    let ids = cluster
        .each_where(
            "loading",
            |m| first_of_pipeline(m) || first_of_replicas(m),
            |m| {
                let mut rpc = m.rpc.clone();
                let (stage, replica) = (m.stage, m.replica);
                // A short call with a deadline: the worker's runtime is idle between phases.
                let ask = || {
                    let mut req = tonic::Request::new(NcclUniqueIdRequest {});
                    req.set_timeout(std::time::Duration::from_secs(30));
                    req
                };
                async move {
                    let id = rpc.nccl_unique_id(ask()).await?.into_inner().id;
                    let second =
                        if stage == 0 && replica == 0 && world > 1 && replicas > 1 { rpc.nccl_unique_id(ask()).await?.into_inner().id } else { Vec::new() };
                    Ok((stage, replica, id, second))
                }
            },
        )
        .await?;
    let (mut pipeline, mut copies) = (vec![Vec::new(); replicas], vec![Vec::new(); world]);
    for (stage, replica, id, second) in ids {
        match (stage, replica) {
            // Worker (0, 0) leads both of its groups: one id each.
            (0, 0) if world > 1 && replicas > 1 => (pipeline[0], copies[0]) = (id, second),
            (0, r) if world > 1 => pipeline[r] = id,
            (s, _) => copies[s] = id,
        }
    }
    Ok((pipeline, copies))
}
