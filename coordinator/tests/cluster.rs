//! The cluster on loopback with tiny models: 1, 2 and 3 local workers give the plan and the
//! weights single-process `prune` gives; a worker killed during scoring fails the run cleanly
//! and `--resume` completes it; a worker with the wrong token is refused.

use llmprune_tests::{assert_contains, model_tensors, tiny_model_dir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn llmprune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llmprune")).args(args).env_remove("LLMPRUNE_TOKEN").output().expect("running llmprune")
}

fn ok(out: &Output) {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn plan_groups(dir: &Path) -> serde_json::Value {
    let plan: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("plan.json")).unwrap()).unwrap();
    plan["steps"].clone()
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Setup {
    fn new(fixture: &str) -> (Self, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let model = tiny_model_dir(fixture, &root);
        let ids = root.join("calib.json");
        std::fs::write(&ids, "[[1, 5, 9, 13, 40, 41, 42, 7], [70, 2, 3, 60, 61, 62, 8, 9], [4, 4, 8, 15, 16, 23, 42, 0]]").unwrap();
        (Self { _tmp: tmp, root }, model, ids)
    }
}

#[test]
fn one_two_and_three_workers_equal_one_process() {
    for (fixture, extra) in [
        ("tiny_gqa", vec!["--criterion", "param-mix"]),
        ("tiny_gqa", vec!["--criterion", "param-first", "--scope", "global", "--iterative-steps", "2"]),
        ("tiny_gqa", vec!["--criterion", "vectorize", "--gqa", "query-heads"]),
        ("tiny_tied_mha", vec!["--criterion", "param-second", "--round-to", "4"]),
        ("tiny_tied_mha", vec!["--criterion", "random"]),
        // Hidden channels reach every stage: members scored where they live, reduced by the
        // coordinator; a tied embedding's gradient joined from both ends of the pipeline.
        ("tiny_gqa", vec!["--strategy", "channel", "--criterion", "param-mix"]),
        ("tiny_gqa", vec!["--strategy", "channel", "--criterion", "vectorize", "--scope", "global", "--iterative-steps", "2", "--round-to", "4"]),
        ("tiny_tied_mha", vec!["--strategy", "channel", "--criterion", "param-second"]),
        ("tiny_tied_mha", vec!["--strategy", "channel", "--criterion", "l2"]),
        // Whole layers scored by their stage; stages renumber (and may empty) after a step.
        ("tiny_gqa", vec!["--strategy", "layer", "--criterion", "vectorize"]),
        ("tiny_gqa", vec!["--strategy", "layer", "--criterion", "param-first", "--iterative-steps", "2"]),
        ("tiny_tied_mha", vec!["--strategy", "layer", "--criterion", "random"]),
        // Activation criteria and reconstruction: input statistics through the pipeline, each
        // consumer re-solved on the stage that holds it.
        ("tiny_gqa", vec!["--criterion", "obs", "--reconstruct"]),
        ("tiny_gqa", vec!["--criterion", "fluctuation", "--reconstruct", "--gqa", "query-heads", "--iterative-steps", "2"]),
        ("tiny_tied_mha", vec!["--criterion", "wanda", "--scope", "global", "--reconstruct"]),
        ("tiny_gqa", vec!["--criterion", "obs", "--scope", "standardized", "--reconstruct"]),
        // Bias compensation, alone and with reconstruction (the second step compensates biases
        // the first one wrote); a gradient criterion gathers the inputs at the cut.
        ("tiny_gqa", vec!["--criterion", "fluctuation", "--compensate-bias"]),
        ("tiny_gqa", vec!["--criterion", "obs", "--reconstruct", "--compensate-bias", "--iterative-steps", "2"]),
        ("tiny_tied_mha", vec!["--criterion", "param-first", "--compensate-bias"]),
        // A layer profile: the coordinator's selection spreads the ratio, the same on any layout.
        ("tiny_gqa", vec!["--criterion", "wanda", "--reconstruct", "--layer-profile", "ramp:0.5:1.5"]),
        // A gradient criterion scores without the inputs: the cut gathers them itself.
        ("tiny_tied_mha", vec!["--criterion", "param-second", "--reconstruct"]),
    ] {
        let (setup, model, ids) = Setup::new(fixture);
        let (m, i) = (model.to_str().unwrap(), ids.to_str().unwrap());
        let base = [&["prune", "--model", m, "--calibration-ids", i, "--ratio", "0.5"][..], &extra[..]].concat();
        let single = setup.root.join("single");
        ok(&llmprune(&[&base[..], &["--out", single.to_str().unwrap()]].concat()));
        let want = model_tensors(&single);
        // tiny_tied_mha has 2 layers: at most 2 workers.
        let counts: &[&str] = if fixture == "tiny_gqa" { &["1", "2", "3"] } else { &["1", "2"] };
        for &workers in counts {
            let out = setup.root.join(format!("cluster{workers}"));
            let res = llmprune(&[&base[..], &["--local-workers", workers, "--out", out.to_str().unwrap()]].concat());
            ok(&res);
            assert_eq!(plan_groups(&out), plan_groups(&single), "{fixture} {extra:?}: the plan of {workers} workers");
            let got = model_tensors(&out);
            assert!(got == want, "{fixture} {extra:?}: the weights of {workers} workers differ from one process");
            let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("prune_report.json")).unwrap()).unwrap();
            assert_eq!(report["cluster"]["workers"].as_u64().unwrap().to_string(), workers);
        }
    }
}

#[test]
fn plans_replay_on_workers_to_the_model_prune_wrote() {
    // apply-plan through the cluster engine: every stage cuts by the whole step (hidden
    // channels on every stage, layers removed and renumbered), as prune's steps did.
    // A reconstructing plan carries its windows: the replay gathers the same statistics.
    for extra in [
        vec!["--criterion", "param-first", "--strategy", "channel", "--iterative-steps", "2"],
        vec!["--criterion", "param-first", "--strategy", "layer"],
        vec!["--criterion", "param-first", "--gqa", "query-heads"],
        vec!["--criterion", "obs", "--reconstruct", "--iterative-steps", "2"],
        vec!["--criterion", "wanda", "--reconstruct", "--compensate-bias", "--iterative-steps", "2"],
    ] {
        let (setup, model, ids) = Setup::new("tiny_gqa");
        let (m, i) = (model.to_str().unwrap(), ids.to_str().unwrap());
        let pruned = setup.root.join("pruned");
        let base = [&["prune", "--model", m, "--calibration-ids", i, "--ratio", "0.5"][..], &extra[..]].concat();
        ok(&llmprune(&[&base[..], &["--out", pruned.to_str().unwrap()]].concat()));
        let plan = pruned.join("plan.json");
        for workers in ["2", "3"] {
            let out = setup.root.join(format!("replayed{workers}"));
            ok(&llmprune(&["apply-plan", "--model", m, "--plan", plan.to_str().unwrap(), "--local-workers", workers, "--out", out.to_str().unwrap()]));
            assert!(model_tensors(&out) == model_tensors(&pruned), "{extra:?}: the plan replayed on {workers} workers");
        }
    }
}

/// The dtype of every tensor in a model directory's safetensors files, from their headers.
fn stored_dtypes(dir: &Path) -> std::collections::BTreeSet<String> {
    let mut dtypes = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            let bytes = std::fs::read(&path).unwrap();
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
            dtypes.extend(header.as_object().unwrap().iter().filter(|(k, _)| *k != "__metadata__").map(|(_, v)| v["dtype"].as_str().unwrap().to_string()));
        }
    }
    dtypes
}

#[test]
fn bf16_weights_prune_alike_on_one_process_and_a_pipeline_and_replay_from_the_plan() {
    // GPU workers hold bf16 by default; here it is asked for on CPUs, through the same code.
    let (setup, model, ids) = Setup::new("tiny_gqa");
    let (m, i) = (model.to_str().unwrap(), ids.to_str().unwrap());
    let base = ["prune", "--model", m, "--calibration-ids", i, "--ratio", "0.5", "--criterion", "param-second", "--strategy", "channel", "--dtype", "bf16"];
    let single = setup.root.join("single");
    ok(&llmprune(&[&base[..], &["--out", single.to_str().unwrap()]].concat()));
    assert_eq!(stored_dtypes(&single).into_iter().collect::<Vec<_>>(), ["BF16"]);
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(single.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(single.join("prune_report.json")).unwrap()).unwrap();
    assert_eq!(report["dtype"], "bf16");
    let plan: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(single.join("plan.json")).unwrap()).unwrap();
    assert_eq!(plan["settings"]["dtype"], "bf16");

    // Stages pass bf16 hidden states and gradients: the same bits as one process.
    let piped = setup.root.join("piped");
    ok(&llmprune(&[&base[..], &["--local-workers", "3", "--out", piped.to_str().unwrap()]].concat()));
    assert_eq!(plan_groups(&piped), plan_groups(&single));
    assert!(model_tensors(&piped) == model_tensors(&single), "bf16 on 3 stages differs from one process");

    // The plan says bf16, so the replay loads bf16 without being told.
    let replayed = setup.root.join("replayed");
    ok(&llmprune(&[
        "apply-plan",
        "--model",
        m,
        "--plan",
        single.join("plan.json").to_str().unwrap(),
        "--local-workers",
        "2",
        "--out",
        replayed.to_str().unwrap(),
    ]));
    assert!(model_tensors(&replayed) == model_tensors(&single), "the bf16 plan replayed");
    assert_eq!(stored_dtypes(&replayed).into_iter().collect::<Vec<_>>(), ["BF16"]);

    // On CPU workers the default stays f32.
    let default = setup.root.join("default");
    ok(&llmprune(&[&base[..base.len() - 2], &["--out", default.to_str().unwrap()]].concat()));
    assert_eq!(stored_dtypes(&default).into_iter().collect::<Vec<_>>(), ["F32"]);
}

/// Each step's groups with their kept units, without the scores (replicas sum the windows'
/// statistics in another order, so scores may differ in their last bits).
fn kept_units(dir: &Path) -> Vec<Vec<(String, serde_json::Value)>> {
    let steps = plan_groups(dir);
    let steps = steps.as_array().unwrap();
    steps.iter().map(|s| s["groups"].as_array().unwrap().iter().map(|g| (g["root"].as_str().unwrap().to_string(), g["kept"].clone())).collect()).collect()
}

#[test]
fn replicas_of_two_stages_equal_one_process() {
    let (setup, model, ids) = Setup::new("tiny_gqa");
    let (m, i) = (model.to_str().unwrap(), ids.to_str().unwrap());
    let base = ["prune", "--model", m, "--calibration-ids", i, "--ratio", "0.5", "--criterion", "param-mix"];
    let single = setup.root.join("single");
    ok(&llmprune(&[&base[..], &["--out", single.to_str().unwrap()]].concat()));
    // 4 workers as 2 stages × 2 replicas; 3 windows split 2 + 1.
    let out = setup.root.join("replicated");
    ok(&llmprune(&[&base[..], &["--local-workers", "4", "--replicas", "2", "--out", out.to_str().unwrap()]].concat()));
    assert_eq!(kept_units(&out), kept_units(&single));
    assert!(model_tensors(&out) == model_tensors(&single), "the weights of 2×2 workers differ from one process");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("prune_report.json")).unwrap()).unwrap();
    let layout: Vec<(u64, u64)> =
        report["cluster"]["ranks"].as_array().unwrap().iter().map(|r| (r["stage"].as_u64().unwrap(), r["replica"].as_u64().unwrap())).collect();
    assert_eq!(layout, [(0, 0), (1, 0), (0, 1), (1, 1)]);
    // Only the first copy of each stage writes its shard.
    let files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");

    let bad = |extra: &[&str], want: &[&str]| {
        let out = setup.root.join("bad");
        let res = llmprune(&[&base[..], extra, &["--out", out.to_str().unwrap()]].concat());
        assert!(!res.status.success());
        assert_contains(&String::from_utf8_lossy(&res.stderr), want);
        assert!(!out.exists());
    };
    // Channel- and layer-wise steps with replicas: the same kept units and weights.
    for extra in [["--strategy", "channel"], ["--strategy", "layer"]] {
        let single = setup.root.join(format!("single-{}", extra[1]));
        ok(&llmprune(&[&base[..], &extra[..], &["--out", single.to_str().unwrap()]].concat()));
        let out = setup.root.join(format!("replicated-{}", extra[1]));
        ok(&llmprune(&[&base[..], &extra[..], &["--local-workers", "4", "--replicas", "2", "--out", out.to_str().unwrap()]].concat()));
        assert_eq!(kept_units(&out), kept_units(&single), "{extra:?}");
        let removed = |d: &Path| plan_groups(d).as_array().unwrap().iter().map(|s| s["removed_layers"].clone()).collect::<Vec<_>>();
        assert_eq!(removed(&out), removed(&single), "{extra:?}");
        assert!(model_tensors(&out) == model_tensors(&single), "{extra:?}: the weights of 2×2 workers differ from one process");
    }

    // Reconstruction from statistics the replicas all-reduce: the same kept units, the weights
    // within the order of the f32 sums over windows.
    for extra in [["--criterion", "obs", "--reconstruct"], ["--criterion", "wanda", "--reconstruct"]] {
        let args = |out: &Path| -> Vec<String> {
            ["prune", "--model", m, "--calibration-ids", i, "--ratio", "0.5"]
                .iter()
                .chain(&extra)
                .map(|s| s.to_string())
                .chain(["--out".into(), out.display().to_string()])
                .collect()
        };
        let single = setup.root.join(format!("single-{}", extra[1]));
        let argv = args(&single);
        ok(&llmprune(&argv.iter().map(String::as_str).collect::<Vec<_>>()));
        let out = setup.root.join(format!("replicated-{}", extra[1]));
        let argv = [args(&out), vec!["--local-workers".into(), "4".into(), "--replicas".into(), "2".into()]].concat();
        ok(&llmprune(&argv.iter().map(String::as_str).collect::<Vec<_>>()));
        assert_eq!(kept_units(&out), kept_units(&single), "{extra:?}");
        let (got, want) = (model_tensors(&out), model_tensors(&single));
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
        for (name, w) in &want {
            let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = got[name].iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff <= 1e-4 * scale, "{extra:?}: {name} differs by {diff} (scale {scale}) between 2×2 workers and one process");
        }
    }

    bad(&["--local-workers", "4", "--replicas", "3"], &["--replicas 3", "divide the 4 workers"]);
    bad(&["--replicas", "2"], &["--replicas 2", "--local-workers"]);
    bad(&["--local-workers", "4", "--replicas", "4"], &["--replicas 4", "at least 4 calibration samples"]);
}

#[test]
fn a_worker_lost_during_scoring_fails_cleanly_and_resume_completes() {
    let (setup, model, ids) = Setup::new("tiny_gqa");
    let (m, i) = (model.to_str().unwrap(), ids.to_str().unwrap());
    let out = setup.root.join("pruned");
    let o = out.to_str().unwrap();
    let args = ["prune", "--model", m, "--calibration-ids", i, "--ratio", "0.5", "--criterion", "param-first", "--local-workers", "2", "--out", o];
    let res = llmprune(&[&args[..], &["--inject-fault", "1:exit-during-score"]].concat());
    assert!(!res.status.success(), "the run must fail");
    let err = String::from_utf8_lossy(&res.stderr);
    assert_contains(&err, &["scoring", "worker local-1 (rank 1, layers", "may succeed again", "--resume"]);
    assert!(!out.exists(), "no output after a failure");
    let leftovers: Vec<String> = std::fs::read_dir(&setup.root)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    ok(&llmprune(&[&args[..], &["--resume"]].concat()));
    let single = setup.root.join("single");
    let res = llmprune(&["prune", "--model", m, "--calibration-ids", i, "--ratio", "0.5", "--criterion", "param-first", "--out", single.to_str().unwrap()]);
    ok(&res);
    assert!(model_tensors(&out) == model_tensors(&single));
}

#[test]
fn a_hung_worker_fails_the_run_with_its_name() {
    let (setup, model, ids) = Setup::new("tiny_gqa");
    let out = setup.root.join("pruned");
    let res = Command::new(env!("CARGO_BIN_EXE_llmprune"))
        .args(["prune", "--model", model.to_str().unwrap(), "--calibration-ids", ids.to_str().unwrap(), "--ratio", "0.5"])
        .args(["--local-workers", "2", "--inject-fault", "0:hang", "--out", out.to_str().unwrap()])
        .env("LLMPRUNE_CLUSTER__HEARTBEAT_MS", "100")
        .env("LLMPRUNE_CLUSTER__HEARTBEAT_TIMEOUT_MS", "300")
        .output()
        .unwrap();
    assert!(!res.status.success());
    assert_contains(&String::from_utf8_lossy(&res.stderr), &["worker local-0", "sent no heartbeat"]);
    assert!(!out.exists());
}

/// A coordinator pruning `model` on a free loopback port, waiting for `workers` remote workers
/// with `token`; returns it and its URL.
fn remote_coordinator(token: &str, model: &Path, ids: &Path, out: &Path, workers: usize, stderr: Stdio) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_llmprune"))
        .args(["--token", token, "--listen", &listen, "prune", "--model", model.to_str().unwrap()])
        .args(["--calibration-ids", ids.to_str().unwrap(), "--ratio", "0.5", "--workers", &workers.to_string(), "--out", out.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    (child, format!("http://{listen}"))
}

fn worker_binary() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_llmprune")).with_file_name("llmprune-worker")
}

#[test]
fn workers_with_the_wrong_token_are_refused() {
    let (setup, model, ids) = Setup::new("tiny_gqa");
    let out = setup.root.join("pruned");
    let (mut coordinator, url) = remote_coordinator("right-token", &model, &ids, &out, 1, Stdio::null());
    let worker = worker_binary();
    let mut refused = None;
    for _ in 0..100 {
        let res = Command::new(&worker).args(["--coordinator", &url, "--token", "wrong-token"]).output().unwrap();
        let err = String::from_utf8_lossy(&res.stderr).into_owned();
        if err.contains("refused registration") {
            refused = Some((res.status.success(), err));
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100)); // the coordinator is still starting
    }
    let _ = coordinator.kill();
    let _ = coordinator.wait();
    let (success, err) = refused.expect("the coordinator never answered");
    assert!(!success);
    assert_contains(&err, &["wrong cluster token"]);
    assert!(!out.exists());
}

#[test]
fn smollm2_on_three_workers_equals_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let model = llmprune_tests::smollm2_gguf();
    let ids = llmprune_tests::data_dir().join("calib/smollm2_calib_ids.json");
    let ptb = format!("ptb={}", llmprune_tests::data_dir().join("ptb/ptb.valid.txt").display());
    let base = [
        "prune",
        "--model",
        model.to_str().unwrap(),
        "--calibration-ids",
        ids.to_str().unwrap(),
        "--ratio",
        "0.25",
        "--attn-layers",
        "3:27",
        "--mlp-layers",
        "3:27",
        "--criterion",
        "param-first",
        "--eval-ppl",
        &ptb,
        "--eval-max-chunks",
        "4",
    ];
    let single = tmp.path().join("single");
    let three = tmp.path().join("three");
    ok(&llmprune(&[&base[..], &["--out", single.to_str().unwrap()]].concat()));
    ok(&llmprune(&[&base[..], &["--local-workers", "3", "--out", three.to_str().unwrap()]].concat()));
    assert_eq!(plan_groups(&three), plan_groups(&single), "the plan");
    assert!(model_tensors(&three) == model_tensors(&single), "the weights");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(three.join("prune_report.json")).unwrap()).unwrap();
    let single_report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(single.join("prune_report.json")).unwrap()).unwrap();
    assert_eq!(report["ppl"]["ptb"]["ppl"], single_report["ppl"]["ptb"]["ppl"], "the pruned model's perplexity");
    let ranks = report["cluster"]["ranks"].as_array().unwrap();
    let layers: Vec<u64> = ranks.iter().flat_map(|r| r["layers"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap())).collect();
    assert_eq!((layers[0], layers[5]), (0, 30), "the shards cover the model: {layers:?}");
    // Each worker loads only its shard: none holds more than half of the model's parameters.
    for r in ranks {
        assert!(r["params_loaded"].as_u64().unwrap() < 134_515_008 / 2, "{r}");
    }
}

#[test]
fn smollm2_hidden_channels_on_two_workers_equal_one_process() {
    // SmolLM2 ties its head to the embedding: each calibration pass the last stage's head
    // gradient is joined with the first stage's lookup gradient in one process's order
    // (repeated tokens make the order visible in the last bits of the scores).
    let tmp = tempfile::tempdir().unwrap();
    let model = llmprune_tests::smollm2_gguf();
    let ids = llmprune_tests::data_dir().join("calib/smollm2_calib_ids.json");
    let base = ["prune", "--model", model.to_str().unwrap(), "--calibration-ids", ids.to_str().unwrap(), "--strategy", "channel", "--ratio", "0.2"];
    let (single, two) = (tmp.path().join("single"), tmp.path().join("two"));
    ok(&llmprune(&[&base[..], &["--out", single.to_str().unwrap()]].concat()));
    ok(&llmprune(&[&base[..], &["--local-workers", "2", "--out", two.to_str().unwrap()]].concat()));
    assert_eq!(plan_groups(&two), plan_groups(&single), "the plan, scores included");
    assert!(model_tensors(&two) == model_tensors(&single), "the weights");
}

#[test]
fn gpu_workers_without_nccl_fail_the_run_with_a_clear_message() {
    let (setup, model, ids) = Setup::new("tiny_gqa");
    let out = setup.root.join("pruned");
    let (coordinator, url) = remote_coordinator("t0ken", &model, &ids, &out, 2, Stdio::piped());
    let worker = worker_binary();
    let mut workers: Vec<_> = (0..2)
        .map(|i| {
            Command::new(&worker)
                .args(["--coordinator", &url, "--token", "t0ken", "--device", "cuda:0", "--name", &format!("gpu-{i}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let res = coordinator.wait_with_output().unwrap();
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    // Remote workers take ranks in registration order: either may lead the group.
    assert_contains(&err, &["loading", "worker gpu-", "rank 0", "built without NCCL"]);
    assert!(!out.exists());
}
