//! Pipeline stages against the single-process model: the same windows scored through 1, 2
//! and 3 ranks (hidden states forward over a TCP ring, their gradients back) must give
//! bit-identical group scores, with and without the per-window Fisher.

use candle_core::Device;
use llmprune_shared::depgraph::Group;
use llmprune_tests::tiny_model_dir;
use llmprune_worker::cluster::shard::{ShardLayout, ShardModel};
use llmprune_worker::collective::{RingOptions, TcpRing};
use llmprune_worker::prune::apply::plan_groups;
use llmprune_worker::prune::importance::{group_scores, Criterion, Reduction};
use llmprune_worker::prune::statistics::gradient_stats;
use llmprune_worker::{load_model, LoadOptions};
use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn windows() -> Vec<Vec<u32>> {
    vec![vec![5, 17, 3, 88, 41, 9, 60, 2], vec![1, 2, 3, 4, 5, 6, 7, 8], vec![90, 12, 33, 4, 70, 6, 71, 80]]
}

/// The candidate groups: every head and MLP group.
fn candidates(dir: &Path) -> Vec<Group> {
    let spec = load_model(dir, LoadOptions::full, &Device::Cpu).unwrap().model.spec;
    plan_groups(&spec).unwrap().into_iter().filter(|g| !g.root.ends_with("q_heads") && g.root != "embed_tokens.out").collect()
}

fn single_process(dir: &Path, criterion: Criterion) -> HashMap<String, Vec<f32>> {
    let mut model = load_model(dir, LoadOptions::full, &Device::Cpu).unwrap().model;
    let groups = candidates(dir);
    let wanted: HashSet<String> = groups.iter().flat_map(|g| g.members.iter().map(|m| m.param.clone())).collect();
    let vars = model.make_trainable(|n| wanted.contains(n)).unwrap();
    let stats = gradient_stats(&model, &vars, &windows(), criterion.needs_fisher()).unwrap();
    let weights = model.weights_by_name();
    groups.iter().map(|g| (g.root.clone(), group_scores(g, criterion, Reduction::Sum, &weights, &stats).unwrap())).collect()
}

fn pipelined(dir: &Path, cuts: &[usize], criterion: Criterion) -> HashMap<String, Vec<f32>> {
    let world = cuts.len() - 1;
    let listeners: Vec<TcpListener> = (0..world).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, listener)| {
            let (dir, addrs, cuts): (PathBuf, _, Vec<usize>) = (dir.to_path_buf(), addrs.clone(), cuts.to_vec());
            std::thread::spawn(move || {
                let opts = RingOptions { connect_timeout: Duration::from_secs(20), io_timeout: Some(Duration::from_secs(60)), cookie: 1 };
                let mut comm = TcpRing::connect(rank, &addrs, listener, &opts).unwrap();
                let layout = ShardLayout { rank, world, layers: cuts[rank]..cuts[rank + 1], embeddings: rank == 0, head: rank + 1 == world };
                let mut shard = ShardModel::load(&dir, layout, &Device::Cpu).unwrap();
                let mine: Vec<Group> = candidates(&dir).into_iter().filter(|g| g.members.iter().all(|m| shard.owns(&m.param))).collect();
                let scores = shard.score(&mut comm, &mine, criterion, Reduction::Sum, &windows(), &mut |_, _| {}).unwrap();
                mine.into_iter().map(|g| g.root).zip(scores).collect::<Vec<_>>()
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
}

#[test]
fn pipelined_scores_equal_single_process_scores_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_model_dir("tiny_gqa", tmp.path()); // 3 layers
    for criterion in [Criterion::ParamFirst, Criterion::ParamMix] {
        let want = single_process(&dir, criterion);
        for cuts in [vec![0, 3], vec![0, 1, 3], vec![0, 2, 3], vec![0, 1, 2, 3]] {
            let got = pipelined(&dir, &cuts, criterion);
            assert_eq!(got.len(), want.len(), "{cuts:?}");
            for (root, w) in &want {
                let g = &got[root];
                let same = g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{criterion:?} stages {cuts:?} group {root}: {g:?} vs {w:?}");
            }
        }
    }
}
