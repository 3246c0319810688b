//! Pipeline stages against the single-process model: the same windows scored through 1, 2
//! and 3 ranks (hidden states forward over a TCP ring, their gradients back) must give
//! bit-identical group scores, with and without the per-window Fisher. Data-parallel replicas
//! of the stages (each taking a share of the windows and all-reducing the statistics) agree
//! with each other to the bit and with one process up to the order of the sums over windows.

use candle_core::Device;
use llmprune_shared::depgraph::Group;
use llmprune_tests::tiny_model_dir;
use llmprune_worker::cluster::shard::{Collectives, ShardLayout, ShardModel};
use llmprune_worker::collective::{RingOptions, TcpRing};
use llmprune_worker::prune::apply::plan_groups;
use llmprune_worker::prune::engine::{GroupPart, StageJob};
use llmprune_worker::prune::importance::{group_scores, Criterion, Reduction};
use llmprune_worker::prune::statistics::gradient_stats;
use llmprune_worker::{load_model, LoadOptions};
use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::Path;
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
    single_process_over(dir, &windows(), criterion)
}

fn single_process_over(dir: &Path, windows: &[Vec<u32>], criterion: Criterion) -> HashMap<String, Vec<f32>> {
    let mut model = load_model(dir, LoadOptions::full, &Device::Cpu).unwrap().model;
    let groups = candidates(dir);
    let wanted: HashSet<String> = groups.iter().flat_map(|g| g.members.iter().map(|m| m.param.clone())).collect();
    let vars = model.make_trainable(|n| wanted.contains(n)).unwrap();
    let stats = gradient_stats(&model, &vars, windows, criterion.needs_fisher()).unwrap();
    let weights = model.weights_by_name();
    groups.iter().map(|g| (g.root.clone(), group_scores(g, criterion, Reduction::Sum, &weights, &stats).unwrap())).collect()
}

fn pipelined(dir: &Path, cuts: &[usize], criterion: Criterion) -> HashMap<String, Vec<f32>> {
    let mut by_replica = replicated(dir, cuts, 1, &windows(), criterion);
    by_replica.remove(0)
}

/// Scores from `replicas` copies of the pipeline cut at `cuts`, by replica; worker (s, r) is
/// stage s of replica r, in one pipeline ring per replica and one replica ring per stage.
fn replicated(dir: &Path, cuts: &[usize], replicas: usize, windows: &[Vec<u32>], criterion: Criterion) -> Vec<HashMap<String, Vec<f32>>> {
    let world = cuts.len() - 1;
    let bind = || TcpListener::bind("127.0.0.1:0").unwrap();
    let pipe: Vec<Vec<TcpListener>> = (0..replicas).map(|_| (0..world).map(|_| bind()).collect()).collect();
    let copies: Vec<Vec<TcpListener>> = (0..world).map(|_| (0..replicas).map(|_| bind()).collect()).collect();
    let pipe_addrs: Vec<Vec<_>> = pipe.iter().map(|r| r.iter().map(|l| l.local_addr().unwrap()).collect()).collect();
    let copy_addrs: Vec<Vec<_>> = copies.iter().map(|s| s.iter().map(|l| l.local_addr().unwrap()).collect()).collect();
    let mut handles = Vec::new();
    for (replica, stages) in pipe.into_iter().enumerate() {
        for (rank, listener) in stages.into_iter().enumerate() {
            let copy_listener = copies[rank][replica].try_clone().unwrap();
            let (dir, cuts, windows) = (dir.to_path_buf(), cuts.to_vec(), windows.to_vec());
            let (pipe_addrs, copy_addrs) = (pipe_addrs[replica].clone(), copy_addrs[rank].clone());
            handles.push(std::thread::spawn(move || {
                let opts =
                    RingOptions { connect_timeout: Duration::from_secs(20), io_timeout: Some(Duration::from_secs(60)), secret: vec![1], ..Default::default() };
                let pipeline = Box::new(TcpRing::connect(rank, &pipe_addrs, listener, &opts).unwrap());
                let replicas_ring = Box::new(TcpRing::connect(replica, &copy_addrs, copy_listener, &opts).unwrap());
                let mut comms = Collectives { pipeline, replicas: replicas_ring };
                let layers = cuts[rank]..cuts[rank + 1];
                let layout = ShardLayout { rank, world, layers, embeddings: rank == 0, head: rank + 1 == world, replica, replicas };
                let mut shard = ShardModel::load(&dir, layout, Default::default(), &Device::Cpu).unwrap();
                let mine: Vec<Group> = candidates(&dir).into_iter().filter(|g| g.members.iter().all(|m| shard.owns(&m.param))).collect();
                let job = StageJob { groups: &mine, layers: &[], criterion, reduction: Reduction::Sum, windows: &windows, damping: 0.01 };
                let scores = shard.score(&mut comms, &job, &mut |_, _| {}).unwrap();
                let whole = scores.groups.into_iter().map(|part| match part {
                    GroupPart::Whole(s) => s,
                    GroupPart::Members(_) => {
                        panic!("a group wholly inside the shard came back in parts")
                    }
                });
                (replica, mine.into_iter().map(|g| g.root).zip(whole).collect::<Vec<_>>())
            }));
        }
    }
    let mut out = vec![HashMap::new(); replicas];
    for h in handles {
        let (replica, scores) = h.join().unwrap();
        out[replica].extend(scores);
    }
    out
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

#[test]
fn replicas_agree_bit_for_bit_and_match_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_model_dir("tiny_gqa", tmp.path());
    let mut four = windows();
    four.push(vec![11, 22, 33, 44, 55, 66, 77, 88]);
    for criterion in [Criterion::ParamFirst, Criterion::ParamMix] {
        // Even shares (4 windows over 2), uneven ones (3 over 2), and 3 replicas of 2 stages.
        for (ws, cuts, replicas) in [(&four, vec![0, 3], 2), (&four, vec![0, 1, 3], 2), (&windows(), vec![0, 2, 3], 2), (&windows(), vec![0, 1, 3], 3)] {
            let want = single_process_over(&dir, ws, criterion);
            let got = replicated(&dir, &cuts, replicas, ws, criterion);
            for r in 1..replicas {
                for (root, s) in &got[0] {
                    let same = s.iter().zip(&got[r][root]).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{criterion:?} {cuts:?}×{replicas}: replica {r} differs on {root}");
                }
            }
            assert_eq!(got[0].len(), want.len());
            let mut worst = 0f32;
            for (root, w) in &want {
                let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
                for (a, b) in got[0][root].iter().zip(w) {
                    worst = worst.max((a - b).abs() / scale);
                }
            }
            // f32 sums over windows in another order: a few ulps of the group's largest score.
            assert!(worst < 1e-5, "{criterion:?} {cuts:?}×{replicas}: relative difference {worst}");
        }
    }
}
