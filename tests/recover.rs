//! The recovery loop on the tiny GQA model: two data-parallel ranks end with the adapters one
//! process ends with (same global batch and seed, dropout on), and a run interrupted after a
//! checkpoint and resumed ends with the adapters of an uninterrupted run.

use candle_core::Device;
use llmprune_tests::tiny_model_dir;
use llmprune_worker::collective::{Communicator, RingOptions, SingleRank, TcpRing};
use llmprune_worker::loader::TextTokenizer;
use llmprune_worker::lora::{self, LoraConfig, Projection};
use llmprune_worker::train::data::TokenizeOptions;
use llmprune_worker::train::optim::AdamWConfig;
use llmprune_worker::train::records::{Format, RecordFile};
use llmprune_worker::train::recover::{recover, RecoverOptions, RecoverOutcome};
use llmprune_worker::{load_model, LoadOptions};
use std::net::TcpListener;
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
fn run(model_dir: &Path, data: &Path, opts: &RecoverOptions, comm: &mut dyn Communicator, stop_after: Option<u64>) -> (RecoverOutcome, Vec<(String, Vec<f32>)>) {
    try_run(model_dir, data, opts, comm, stop_after).unwrap()
}

type Adapters = Vec<(String, Vec<f32>)>;

fn try_run(model_dir: &Path, data: &Path, opts: &RecoverOptions, comm: &mut dyn Communicator, stop_after: Option<u64>) -> llmprune_worker::Result<(RecoverOutcome, Adapters)> {
    let mut loaded = load_model(model_dir, LoadOptions::full, &Device::Cpu).unwrap();
    let cfg = LoraConfig { r: 4, alpha: 8.0, dropout: 0.1, targets: Projection::ALL.to_vec() };
    let vars = lora::attach(&mut loaded.model, &cfg, 11).unwrap();
    let tok = TextTokenizer::from_file(&model_dir.join("tokenizer.json")).unwrap();
    let records = RecordFile::open(data, Format::Alpaca, false).unwrap();
    let outcome = recover(&loaded.model, &vars, &records, &tok, opts, comm, &mut |r| {
        if Some(r.step) == stop_after {
            panic!("simulated crash after step {}", r.step);
        }
    })?;
    let values = vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
    Ok((outcome, values))
}

fn max_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    a.iter().zip(b).flat_map(|((n1, x), (n2, y))| {
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
                let opts = RingOptions { connect_timeout: Duration::from_secs(20), io_timeout: Some(Duration::from_secs(120)), cookie: 3 };
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
    let Err(err) = try_run(&model, &data, &other, &mut SingleRank, None) else { panic!("another run's checkpoint must be refused") };
    llmprune_tests::assert_contains(&err.to_string(), &["checkpoint", "another run", "--resume"]);
}
