//! `llmprune recover` end to end on a tiny pruned model: the merged model, the PEFT adapter and
//! the report; bad input refused with the file, line or flag named and nothing written.

use llmprune_tests::{assert_contains, model_tensors, tiny_model_dir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn llmprune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llmprune")).args(args).env_remove("RUST_LOG").output().expect("running llmprune")
}

fn ok(out: &Output) {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A tiny model pruned by `llmprune prune` and a small instruction file.
fn setup(root: &Path) -> (PathBuf, PathBuf) {
    let model = tiny_model_dir("tiny_gqa", root);
    let ids = root.join("calib.json");
    std::fs::write(&ids, "[[1, 5, 9, 13, 40, 41, 42, 7], [70, 2, 3, 60, 61, 62, 8, 9]]").unwrap();
    let pruned = root.join("pruned");
    ok(&llmprune(&[
        "prune",
        "--model",
        model.to_str().unwrap(),
        "--calibration-ids",
        ids.to_str().unwrap(),
        "--ratio",
        "0.25",
        "--criterion",
        "param-first",
        "--out",
        pruned.to_str().unwrap(),
    ]));
    let data = root.join("data.jsonl");
    let lines: Vec<String> = (0..30)
        .map(|i| {
            serde_json::json!({"instruction": format!("w{} w{}", i % 90 + 1, i % 7 + 3), "input": "", "output": format!("w{} w{} w{}", i % 50 + 2, i % 11 + 9, i % 13 + 20)})
                .to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    (pruned, data)
}

fn recover_args<'a>(pruned: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "recover",
        "--model",
        pruned,
        "--data",
        data,
        "--out",
        out,
        "--batch-size",
        "4",
        "--micro-batch-size",
        "2",
        "--val-size",
        "6",
        "--eval-steps",
        "3",
        "--warmup-steps",
        "1",
        "--lr",
        "1e-2",
        "--epochs",
        "1",
    ]
}

/// `args` with `flag` set to `value` (replaced if present).
fn with<'a>(mut args: Vec<&'a str>, flag: &'a str, value: &'a str) -> Vec<&'a str> {
    match args.iter().position(|a| *a == flag) {
        Some(i) => args[i + 1] = value,
        None => args.extend([flag, value]),
    }
    args
}

#[test]
fn recover_writes_the_merged_model_the_peft_adapter_and_a_report() {
    let tmp = tempfile::tempdir().unwrap();
    let (pruned, data) = setup(tmp.path());
    let out = tmp.path().join("recovered");
    let (p, d, o) = (pruned.to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap());
    let text = tmp.path().join("words.txt");
    std::fs::write(&text, (0..300).map(|i| format!("w{}", i % 90)).collect::<Vec<_>>().join(" ")).unwrap();
    let extra = format!("ptb={}", text.display());
    let mut args = recover_args(p, d, o);
    args.extend(["--extra-val", &extra, "--extra-val-chunks", "3", "--eval-ppl", &extra, "--eval-max-chunks", "3"]);
    ok(&llmprune(&args));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "plan.json",
        "recover_report.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("recover_report.json")).unwrap()).unwrap();
    assert_eq!(report["records"]["train"], 24);
    assert_eq!(report["records"]["validation"], 6);
    assert_eq!(report["loss_curve"].as_array().unwrap().len(), 6, "24 records / 4 per step");
    let vals: Vec<f64> = report["val_losses"].as_array().unwrap().iter().map(|v| v[1].as_f64().unwrap()).collect();
    assert!(vals.iter().skip(1).any(|&v| v < vals[0]), "validation loss never fell: {vals:?}");
    // The merged weights differ from the pruned ones where adapters were, with the same shapes.
    let (before, after) = (model_tensors(&pruned), model_tensors(&out));
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>());
    assert_ne!(before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"]);
    assert_eq!(before["model.layers.0.input_layernorm.weight"], after["model.layers.0.input_layernorm.weight"]);
    assert!(!tmp.path().join(".recovered.llmprune-checkpoint").exists(), "checkpoints removed after success");
    // Perplexity at every evaluation (steps 3 and 6) with the adapters active; at the end it is
    // the merged model's (the kept step's adapters).
    let extra: Vec<(u64, f64)> = report["extra_val"].as_array().unwrap().iter().map(|e| (e["step"].as_u64().unwrap(), e["ppl"].as_f64().unwrap())).collect();
    assert_eq!(extra.iter().map(|e| e.0).collect::<Vec<_>>(), [3, 6]);
    assert!(extra.iter().all(|e| e.1.is_finite() && e.1 > 1.0), "{extra:?}");
    {
        // The kept step's adapters (lowest validation loss) are the merged model's: `llmprune
        // ppl` on it agrees with the perplexity measured at that step.
        let kept = extra.iter().find(|e| report["kept_step"] == e.0).expect("an evaluation at the kept step").1;
        let json = tmp.path().join("ppl.json");
        ok(&llmprune(&[
            "ppl",
            "--model",
            o,
            "--data",
            &format!("ptb={}", text.display()),
            "--seq-len",
            "64",
            "--max-chunks",
            "3",
            "--json",
            json.to_str().unwrap(),
        ]));
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let merged = doc["results"]["ptb"]["ppl"].as_f64().unwrap();
        assert!((merged - kept).abs() < 1e-4 * merged, "merged {merged} vs during training {kept}");
        // --eval-ppl measured the same merged model at the end.
        let at_end = report["ppl"]["ptb"]["ppl"].as_f64().unwrap();
        assert!((merged - at_end).abs() < 1e-9 * merged, "--eval-ppl {at_end} vs llmprune ppl {merged}");
    }
    // The recovered model is a model: perplexity runs on it.
    ok(&llmprune(&["ppl", "--model", o, "--data", &format!("ptb={}", text.display()), "--seq-len", "16"]));
}

#[test]
fn recover_refuses_bad_input_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (pruned, data) = setup(tmp.path());
    let out = tmp.path().join("recovered");
    let (p, d, o) = (pruned.to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap());
    let fails = |args: Vec<&str>, parts: &[&str]| {
        let res = llmprune(&args);
        assert!(!res.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert_contains(&stderr, parts);
        // Checked before any model is loaded: no worker was asked.
        assert!(!stderr.contains("worker"), "{args:?} failed in a worker: {stderr}");
        assert!(!out.exists(), "{args:?} left an output");
    };
    // A line that is not JSON, and one without a field: named by line number.
    let bad = tmp.path().join("bad.jsonl");
    let mut text = std::fs::read_to_string(&data).unwrap();
    text.push_str("\n{\"instruction\": \"w1\", \"output\": \n{\"instruction\": \"w1\"}\n");
    std::fs::write(&bad, &text).unwrap();
    let b = bad.to_str().unwrap();
    fails(recover_args(p, b, o), &["bad.jsonl", "line 31", "--skip-bad-records"]);
    let mut args = recover_args(p, b, o);
    args.push("--skip-bad-records");
    let res = llmprune(&args);
    ok(&res);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("recover_report.json")).unwrap()).unwrap();
    assert_eq!(report["records"]["skipped_malformed"], 2);
    std::fs::remove_dir_all(&out).unwrap();

    let empty = tmp.path().join("empty.json");
    std::fs::write(&empty, "  \n").unwrap();
    fails(recover_args(p, empty.to_str().unwrap(), o), &["empty.json", "empty"]);
    let lamini_fields = tmp.path().join("l.jsonl");
    std::fs::write(&lamini_fields, "{\"instruction\": \"w1\", \"response\": \"w2\"}\n").unwrap();
    fails(recover_args(p, lamini_fields.to_str().unwrap(), o), &["l.jsonl", "line 1", "missing field `output`"]);
    fails(with(recover_args(p, d, o), "--batch-size", "5"), &["--batch-size 5", "--micro-batch-size 2"]);
    fails(with(recover_args(p, d, o), "--val-size", "30"), &["--val-size 30", "nothing to train"]);
    fails(with(recover_args(p, d, o), "--lora-targets", "q_proj,qkv"), &["--lora-targets", "qkv"]);
    fails(with(recover_args(p, d, o), "--extra-val", "wikitext2=/no/wiki.raw"), &["--extra-val", "/no/wiki.raw"]);
    fails(with(recover_args(p, d, o), "--format", "sharegpt"), &["--format", "sharegpt", "alpaca, lamini"]);
    // Not a pruned model directory.
    let plain = tiny_model_dir("tiny_tied_mha", &tmp.path().join("plain"));
    fails(recover_args(plain.to_str().unwrap(), d, o), &["no plan.json", "llmprune prune"]);
    fails(recover_args("/no/such/dir", d, o), &["/no/such/dir", "no config.json"]);
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("recover_report.json")).unwrap()).unwrap()
}

#[test]
fn two_local_workers_equal_one_process_and_a_lost_worker_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (pruned, data) = setup(tmp.path());
    let (p, d) = (pruned.to_str().unwrap(), data.to_str().unwrap());
    let single = tmp.path().join("single");
    ok(&llmprune(&recover_args(p, d, single.to_str().unwrap())));
    let two = tmp.path().join("two");
    let mut args = recover_args(p, d, two.to_str().unwrap());
    args.extend(["--local-workers", "2"]);
    ok(&llmprune(&args));
    let (r1, r2) = (report(&single), report(&two));
    assert_eq!(r2["cluster"]["workers"], 2);
    assert_eq!(r1["kept_step"], r2["kept_step"]);
    // Same global batches and dropout masks; only the order of the gradient sums differs.
    let (a, b) = (model_tensors(&single), model_tensors(&two));
    for (name, x) in &a {
        let d = x.iter().zip(&b[name]).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(d < 1e-5, "{name}: merged weights differ by {d}");
    }

    // A worker lost mid-way: the run fails naming it, leaves no output, and --resume continues
    // from the last checkpoint to the adapters of an uninterrupted 2-worker run.
    let (resumed, uninterrupted) = lose_a_worker_and_resume(tmp.path(), p, d, &["--local-workers", "2"]);
    assert_eq!(report(&resumed)["adapter_sha256"], report(&uninterrupted)["adapter_sha256"]);
}

/// Recovers with `cluster` flags three times: once with worker 1 lost at step 2 (which must
/// fail naming it and leave no output but a checkpoint), then with `--resume`, then
/// uninterrupted. Checks the resumed run continued from a checkpoint and ended with the
/// uninterrupted run's weights; returns both outputs.
fn lose_a_worker_and_resume(root: &Path, p: &str, d: &str, cluster: &[&str]) -> (PathBuf, PathBuf) {
    let (out, whole) = (root.join("resumed"), root.join("whole"));
    let args_for = |dir: &Path| -> Vec<String> {
        let mut a: Vec<String> = with(recover_args(p, d, dir.to_str().unwrap()), "--eval-steps", "1").into_iter().map(str::to_string).collect();
        a.extend(cluster.iter().map(|s| s.to_string()));
        a
    };
    let mut faulty = args_for(&out);
    faulty.extend(["--inject-fault".to_string(), "1:exit-during-recovery".to_string()]);
    let res = llmprune(&faulty.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!res.status.success());
    assert_contains(&String::from_utf8_lossy(&res.stderr), &["recovering", "worker local-1", "exited"]);
    assert!(!out.exists());
    assert!(root.join(".resumed.llmprune-checkpoint").is_dir(), "checkpoints kept for --resume");
    let mut resume = args_for(&out);
    resume.push("--resume".into());
    ok(&llmprune(&resume.iter().map(String::as_str).collect::<Vec<_>>()));
    ok(&llmprune(&args_for(&whole).iter().map(String::as_str).collect::<Vec<_>>()));
    assert!(report(&out)["resumed_from"].as_u64().unwrap() >= 1, "{}", report(&out)["resumed_from"]);
    assert!(model_tensors(&out) == model_tensors(&whole));
    (out, whole)
}

/// The adapter's matrices by name.
fn adapter_tensors(dir: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let file = dir.join("adapter/adapter_model.safetensors");
    candle_core::safetensors::load(&file, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

#[test]
fn pipeline_stages_equal_one_process_and_a_lost_stage_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (pruned, data) = setup(tmp.path());
    let (p, d) = (pruned.to_str().unwrap(), data.to_str().unwrap());
    let single = tmp.path().join("single");
    ok(&llmprune(&recover_args(p, d, single.to_str().unwrap())));

    // Two stages of one replica compute the single process's bits: the merged model and the
    // joined adapter are identical, the weights indexed as two shards.
    let staged = tmp.path().join("staged");
    let mut args = recover_args(p, d, staged.to_str().unwrap());
    args.extend(["--local-workers", "2", "--stages", "2"]);
    ok(&llmprune(&args));
    assert!(staged.join("model.safetensors.index.json").is_file());
    assert!(!staged.join("adapter/adapter_model.stage-00001.safetensors").exists(), "adapter parts joined and removed");
    assert!(model_tensors(&staged) == model_tensors(&single), "2 stages vs 1 process: merged weights differ");
    assert!(adapter_tensors(&staged) == adapter_tensors(&single), "2 stages vs 1 process: adapters differ");
    let r = report(&staged);
    assert_eq!((r["cluster"]["stages"].as_u64(), r["cluster"]["replicas"].as_u64()), (Some(2), Some(1)));
    assert_eq!(r["lora"]["trainable_params"], report(&single)["lora"]["trainable_params"]);
    // Step, loss, learning rate, gradient norm and tokens (not the seconds) are the same.
    let curve = |r: &serde_json::Value| r["loss_curve"].as_array().unwrap().iter().map(|s| [0, 1, 2, 3, 5].map(|i| s[i].clone())).collect::<Vec<_>>();
    assert_eq!(curve(&r), curve(&report(&single)));

    // The last stage lost mid-way: the run fails, and --resume continues from the checkpoint
    // every stage has to the weights of the uninterrupted run.
    lose_a_worker_and_resume(tmp.path(), p, d, &["--local-workers", "2", "--stages", "2"]);

    // Stages must divide the workers, and need workers.
    let bad = tmp.path().join("bad");
    let mut args = recover_args(p, d, bad.to_str().unwrap());
    args.extend(["--local-workers", "3", "--stages", "2"]);
    let res = llmprune(&args);
    assert!(!res.status.success());
    assert_contains(&String::from_utf8_lossy(&res.stderr), &["--stages 2", "3 workers"]);
    let res = llmprune(&with(recover_args(p, d, bad.to_str().unwrap()), "--stages", "2"));
    assert_contains(&String::from_utf8_lossy(&res.stderr), &["--stages 2", "--local-workers"]);
    assert!(!bad.exists());
}

#[test]
fn a_bf16_base_recovers_on_two_stages_as_in_one_process() {
    // How GPU workers recover by default, asked for on CPUs: f32 adapters over a bf16 base,
    // bf16 hidden states and their gradients between the stages.
    let tmp = tempfile::tempdir().unwrap();
    let (pruned, data) = setup(tmp.path());
    let (p, d) = (pruned.to_str().unwrap(), data.to_str().unwrap());
    let single = tmp.path().join("single");
    ok(&llmprune(&with(recover_args(p, d, single.to_str().unwrap()), "--dtype", "bf16")));
    let staged = tmp.path().join("staged");
    let mut args = with(recover_args(p, d, staged.to_str().unwrap()), "--dtype", "bf16");
    args.extend(["--local-workers", "2", "--stages", "2"]);
    ok(&llmprune(&args));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(single.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    let (r1, r2) = (report(&single), report(&staged));
    assert!(adapter_tensors(&single) == adapter_tensors(&staged), "the adapters of 2 bf16 stages differ from one process");
    assert!(model_tensors(&single) == model_tensors(&staged));
    assert_eq!(r1["loss_curve"].as_array().map(Vec::len), r2["loss_curve"].as_array().map(Vec::len));
    let adapter = candle_core::safetensors::load(single.join("adapter").join("adapter_model.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert!(adapter.values().all(|t| t.dtype() == candle_core::DType::F32), "PEFT adapters are written in f32");
    let val = r1["val_losses"].as_array().unwrap();
    assert!(val.iter().all(|v| v[1].as_f64().unwrap().is_finite()), "{val:?}");
}
