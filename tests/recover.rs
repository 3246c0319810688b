//! The recovery loop on the tiny GQA model: two data-parallel ranks end with the adapters one
//! process ends with (same global batch and seed, dropout on), pipeline stages too (to the
//! bit without replicas), and a run interrupted after a checkpoint and resumed ends with the
//! adapters of an uninterrupted run.

use candle_core::Device;
use llmprune_tests::tiny_model_dir;
use llmprune_worker::collective::{Communicator, RingOptions, SingleRank, TcpRing};
use llmprune_worker::loader::TextTokenizer;
use llmprune_worker::lora::{self, LoraConfig, Projection};
use llmprune_worker::train::data::TokenizeOptions;
use llmprune_worker::train::optim::AdamWConfig;
use llmprune_worker::train::records::{Format, RecordFile};
use llmprune_worker::train::recover::{recover, RecoverEvent, RecoverOptions, RecoverOutcome};
use llmprune_worker::train::TrainGroups;
use llmprune_worker::{load_model, LoadOptions};
use std::net::TcpListener;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn dataset(dir: &Path) -> PathBuf {
    let path = dir.join("data.jsonl");
    let lines: Vec<String> = (0..40)
        .map(|i| {
            let words = |k: usize, n: usize| (0..n).map(|j| format!("w{}", 1 + (i * 7 + k * 13 + j * 5) % 95)).collect::<Vec<_>>().join(" ");
            let input = if i % 3 == 0 { words(1, 3) } else { String::new() };
            serde_json::json!({"instruction": words(0, 4), "input": input, "output": words(2, 3 + i % 6)}).to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn options(checkpoints: Option<PathBuf>, resume: bool) -> RecoverOptions {
    RecoverOptions {
        adamw: AdamWConfig { weight_decay: 0.01, ..Default::default() },
        epochs: 1,
        max_steps: None,
        batch_size: 4,
        micro_batch_size: 2,
        lr: 1e-2,
        warmup_steps: 1,
        max_grad_norm: Some(1.0),
        seed: 5,
        val_size: 8,
        eval_every: 2,
        save_every: u64::MAX,
        tokenize: TokenizeOptions { cutoff_len: 64, train_on_inputs: false, add_eos: true, eos: Some(2) },
        checkpoint_dir: checkpoints,
        resume,
        fingerprint: "test".into(),
        extra_val: Vec::new(),
        extra_val_chunks: None,
    }
}

/// Trains from fresh adapters; `stop_after` panics in the progress callback after that step
/// (a crash); returns the outcome and the adapters' values by name.
fn run(
    model_dir: &Path,
    data: &Path,
    opts: &RecoverOptions,
    comm: &mut dyn Communicator,
    stop_after: Option<u64>,
) -> (RecoverOutcome, Vec<(String, Vec<f32>)>) {
    try_run(model_dir, data, opts, &mut TrainGroups { data: comm, pipeline: &mut SingleRank }, 0..3, stop_after).unwrap()
}

type Adapters = Vec<(String, Vec<f32>)>;

/// [`run`] of the model's `layers` (a pipeline stage when not all three), fallibly.
fn try_run(
    model_dir: &Path,
    data: &Path,
    opts: &RecoverOptions,
    groups: &mut TrainGroups,
    layers: Range<usize>,
    stop_after: Option<u64>,
) -> llmprune_worker::Result<(RecoverOutcome, Adapters)> {
    let (embeddings, head) = (layers.start == 0, layers.end == 3);
    let mut loaded = load_model(model_dir, |_| LoadOptions { layers, embeddings, head, dtype: candle_core::DType::F32 }, &Device::Cpu).unwrap();
    let cfg = LoraConfig { r: 4, alpha: 8.0, dropout: 0.1, targets: Projection::ALL.to_vec() };
    let vars = lora::attach(&mut loaded.model, &cfg, 11).unwrap();
    let tok = TextTokenizer::from_file(&model_dir.join("tokenizer.json")).unwrap();
    let records = RecordFile::open(data, Format::Alpaca, false).unwrap();
    let outcome = recover(&loaded.model, &vars, &records, &tok, opts, groups, &mut |event| {
        if let RecoverEvent::Step(r) = event {
            if Some(r.step) == stop_after {
                panic!("simulated crash after step {}", r.step);
            }
        }
    })?;
    let values = vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
    Ok((outcome, values))
}

fn ring(rank: usize, listener: TcpListener, addrs: &[std::net::SocketAddr], cookie: u64) -> TcpRing {
    let opts = RingOptions {
        connect_timeout: Duration::from_secs(20),
        io_timeout: Some(Duration::from_secs(120)),
        secret: cookie.to_le_bytes().to_vec(),
        ..Default::default()
    };
    TcpRing::connect(rank, addrs, listener, &opts).unwrap()
}

/// Trains on `stages.len()` pipeline stages (their layer ranges) × `replicas` data-parallel
/// copies, one thread each; `opts(stage)` gives a stage its options. Returns the outcomes by
/// replica, then stage.
fn run_cluster(
    model: &Path,
    data: &Path,
    stages: &[Range<usize>],
    replicas: usize,
    opts: impl Fn(usize) -> RecoverOptions,
) -> Vec<Vec<(RecoverOutcome, Adapters)>> {
    let n_stages = stages.len();
    let bind = |_| TcpListener::bind("127.0.0.1:0").unwrap();
    // Worker i is stage i mod S of replica i div S: a pipeline ring per replica, a ring of
    // copies per stage.
    let pipe: Vec<TcpListener> = (0..n_stages * replicas).map(bind).collect();
    let copies: Vec<TcpListener> = (0..n_stages * replicas).map(bind).collect();
    let pipe_addrs = |r: usize| (0..n_stages).map(|s| pipe[r * n_stages + s].local_addr().unwrap()).collect::<Vec<_>>();
    let copy_addrs = |s: usize| (0..replicas).map(|r| copies[r * n_stages + s].local_addr().unwrap()).collect::<Vec<_>>();
    let handles: Vec<_> = pipe
        .iter()
        .zip(&copies)
        .enumerate()
        .map(|(i, (pl, cl))| {
            let (r, s) = (i / n_stages, i % n_stages);
            let (pl, cl, pa, ca) = (pl.try_clone().unwrap(), cl.try_clone().unwrap(), pipe_addrs(r), copy_addrs(s));
            let (model, data, layers, opts) = (model.to_path_buf(), data.to_path_buf(), stages[s].clone(), opts(s));
            std::thread::spawn(move || {
                let (mut p, mut c) = (ring(s, pl, &pa, 7), ring(r, cl, &ca, 8));
                try_run(&model, &data, &opts, &mut TrainGroups { data: &mut c, pipeline: &mut p }, layers, None).unwrap()
            })
        })
        .collect();
    let mut out: Vec<Vec<_>> = (0..replicas).map(|_| Vec::new()).collect();
    for (i, h) in handles.into_iter().enumerate() {
        out[i / n_stages].push(h.join().unwrap());
    }
    out
}

/// The adapters of one replica's stages, in model order.
fn joined(stages: &[(RecoverOutcome, Adapters)]) -> Adapters {
    stages.iter().flat_map(|(_, a)| a.clone()).collect()
}

fn max_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|((n1, x), (n2, y))| {
            assert_eq!(n1, n2);
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

#[test]
fn two_ranks_equal_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir("tiny_gqa", tmp.path());
    let data = dataset(tmp.path());
    let (single, want) = run(&model, &data, &options(None, false), &mut SingleRank, None);
    assert_eq!(single.steps.len(), 8);
    let first = single.val_losses.first().unwrap().1;
    let best = single.val_losses.iter().map(|v| v.1).fold(f64::INFINITY, f64::min);
    assert!(best < first, "validation loss did not fall: {:?}", single.val_losses);

    let listeners: Vec<TcpListener> = (0..2).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, listener)| {
            let (model, data, addrs) = (model.clone(), data.clone(), addrs.clone());
            std::thread::spawn(move || {
                let opts =
                    RingOptions { connect_timeout: Duration::from_secs(20), io_timeout: Some(Duration::from_secs(120)), secret: vec![3], ..Default::default() };
                let mut ring = TcpRing::connect(rank, &addrs, listener, &opts).unwrap();
                run(&model, &data, &options(None, false), &mut ring, None)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // Every rank holds the same adapters (recover checks their checksums too).
    assert_eq!(max_diff(&results[0].1, &results[1].1), 0.0);
    let d = max_diff(&results[0].1, &want);
    assert!(d < 1e-5, "2 ranks vs 1 process: {d}");
    for ((s1, _), (s2, _)) in results[0].0.val_losses.iter().zip(&single.val_losses) {
        assert_eq!(s1, s2);
    }
    assert_eq!(results[0].0.kept_step, single.kept_step);
}

#[test]
fn pipeline_stages_equal_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir("tiny_gqa", tmp.path());
    let data = dataset(tmp.path());
    let (single, want) = run(&model, &data, &options(None, false), &mut SingleRank, None);

    // Two stages, one replica: the same operations in the same order, so the same bits (the
    // gradient norm is summed over the stages' tensors in the single process's order).
    let staged = run_cluster(&model, &data, &[0..1, 1..3], 1, |_| options(None, false));
    assert_eq!(max_diff(&joined(&staged[0]), &want), 0.0, "2 stages vs 1 process");
    for (outcome, _) in &staged[0] {
        assert_eq!(outcome.val_losses, single.val_losses);
        let losses = |o: &RecoverOutcome| o.steps.iter().map(|s| (s.loss, s.grad_norm, s.trained_tokens)).collect::<Vec<_>>();
        assert_eq!(losses(outcome), losses(&single), "every stage reports the step's loss and norm");
        assert_eq!(outcome.kept_step, single.kept_step);
    }

    // Three stages × two replicas: within the data-parallel tolerance, replicas bit-identical.
    let grid = run_cluster(&model, &data, &[0..1, 1..2, 2..3], 2, |_| options(None, false));
    assert_eq!(joined(&grid[0]), joined(&grid[1]), "replicas diverged");
    let d = max_diff(&joined(&grid[0]), &want);
    assert!(d < 1e-5, "3 stages × 2 replicas vs 1 process: {d}");
}

#[test]
fn stages_resume_from_the_newest_checkpoint_they_all_have() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir("tiny_gqa", tmp.path());
    let data = dataset(tmp.path());
    let ck = |s: usize| tmp.path().join(format!("ck-stage-{s}"));
    let (_, want) = run(&model, &data, &options(None, false), &mut SingleRank, None);
    let stages = [0..2, 2..3];
    run_cluster(&model, &data, &stages, 1, |s| options(Some(ck(s)), false));
    // Stage 1 lost its newest checkpoint (a crash between the stages' writes): both resume
    // from step 6, the newest they share, and end where the uninterrupted run did.
    std::fs::remove_dir_all(ck(1).join("step-00000008")).unwrap();
    std::fs::write(ck(1).join("latest"), "step-00000006").unwrap();
    let resumed = run_cluster(&model, &data, &stages, 1, |s| options(Some(ck(s)), true));
    for (outcome, _) in &resumed[0] {
        assert_eq!(outcome.resumed_from, Some(6));
    }
    assert_eq!(joined(&resumed[0]), want);
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir("tiny_gqa", tmp.path());
    let data = dataset(tmp.path());
    let (whole, want) = run(&model, &data, &options(Some(tmp.path().join("ck-whole")), false), &mut SingleRank, None);

    let ck = tmp.path().join("ck");
    let crashed = std::panic::catch_unwind(|| run(&model, &data, &options(Some(ck.clone()), false), &mut SingleRank, Some(5)));
    assert!(crashed.is_err());
    assert!(ck.join("latest").exists(), "a checkpoint at step 4 was written before the crash");
    let (resumed, got) = run(&model, &data, &options(Some(ck.clone()), true), &mut SingleRank, None);
    assert_eq!(resumed.resumed_from, Some(4));
    assert_eq!(max_diff(&got, &want), 0.0, "resumed adapters differ");
    assert_eq!(resumed.val_losses, whole.val_losses);
    assert_eq!(resumed.steps.len(), whole.steps.len());

    // Checkpoints every 3 steps without evaluations in between: the crash after step 5 resumes
    // from step 3, to the same end.
    let sparse = |dir: PathBuf, resume: bool| RecoverOptions { eval_every: 100, save_every: 3, ..options(Some(dir), resume) };
    let (_, want_sparse) = run(&model, &data, &sparse(tmp.path().join("ck-sparse-whole"), false), &mut SingleRank, None);
    let ck3 = tmp.path().join("ck-sparse");
    assert!(std::panic::catch_unwind(|| run(&model, &data, &sparse(ck3.clone(), false), &mut SingleRank, Some(5))).is_err());
    let (resumed, got) = run(&model, &data, &sparse(ck3, true), &mut SingleRank, None);
    assert_eq!(resumed.resumed_from, Some(3));
    assert_eq!(max_diff(&got, &want_sparse), 0.0);

    // Another run's checkpoint is refused.
    let mut other = options(Some(ck), true);
    other.fingerprint = "another".into();
    let Err(err) = try_run(&model, &data, &other, &mut TrainGroups { data: &mut SingleRank, pipeline: &mut SingleRank }, 0..3, None) else {
        panic!("another run's checkpoint must be refused")
    };
    llmprune_tests::assert_contains(&err.to_string(), &["checkpoint", "another run", "--resume"]);
}
