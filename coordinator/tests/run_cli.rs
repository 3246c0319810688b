//! `llmprune run` end to end on a tiny model: one configuration file drives evaluation,
//! pruning, recovery and evaluation on one cluster of local workers and writes the report;
//! a worker lost during recovery and `--resume` complete the run; configuration errors name
//! their key; the environment and `--set` override the file.

use llmprune_tests::{assert_contains, data_dir, repo_root, tiny_instruct_data, tiny_model_dir, tiny_task_dir, tiny_text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn llmprune(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llmprune"));
    c.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running llmprune")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    assert!(!out.status.success(), "should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A configuration for the tiny model, its data beside it.
fn config(root: &Path) -> PathBuf {
    let model = tiny_model_dir("tiny_gqa", root);
    let zeroshot = tiny_task_dir(root, 6);
    let ids = root.join("calib.json");
    std::fs::write(&ids, "[[1, 5, 9, 13, 40, 41, 42, 7], [70, 2, 3, 60, 61, 62, 8, 9]]").unwrap();
    let data = root.join("data.jsonl");
    tiny_instruct_data(&data, 30);
    let text = root.join("words.txt");
    tiny_text(&text, 400);
    let toml = format!(
        r#"model = "{model}"
out = "{out}"
seed = 3

[workers]
local = 2

[prune]
ratio = 0.25
criterion = "param-first"
calibration_ids = "{ids}"

[recover]
data = "{data}"
batch_size = 4
micro_batch_size = 2
val_size = 6
eval_steps = 1
warmup_steps = 1
lr = 1e-2
epochs = 1
extra_val = ["ptb={text}"]
extra_val_chunks = 3

[eval]
data_dir = "{zeroshot}"
ppl = ["ptb={text}"]
seq_len = 16
latency_chunks = 2
"#,
        model = model.display(),
        out = root.join("run").display(),
        ids = ids.display(),
        data = data.display(),
        text = text.display(),
        zeroshot = zeroshot.display(),
    );
    let path = root.join("run.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn read(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn one_command_runs_the_whole_job_and_resumes_after_a_lost_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let c = cfg.to_str().unwrap();
    let out = tmp.path().join("run");

    // A worker lost in recovery: the run stops with the phase and worker named.
    let res = llmprune(&["--config", c, "run", "--inject-fault", "1:exit-during-recovery"], &[]);
    assert_contains(&stderr(&res), &["phase `recover`", "worker local-1"]);
    assert!(out.join("pruned/plan.json").is_file() && out.join("eval/pruned.json").is_file(), "finished phases kept");
    assert!(!out.join("recovered").exists() && !out.join("report.md").exists());
    // Without --resume the existing run is not touched.
    assert_contains(&stderr(&llmprune(&["--config", c, "run"], &[])), &["already exists", "--resume"]);
    let stdout = ok(&llmprune(&["--config", c, "run", "--resume"], &[]));
    assert_contains(&stdout, &["report:"]);

    let report = read(&out.join("report.json"));
    let rows = report["table1"].as_array().unwrap();
    assert_eq!(rows.iter().map(|r| r["name"].as_str().unwrap()).collect::<Vec<_>>(), ["dense", "pruned", "recovered"]);
    for r in rows {
        assert!(r["ptb"].as_f64().unwrap() > 1.0 && r["boolq"].as_f64().is_some() && r["average"].as_f64().is_some(), "{r}");
    }
    let recovered = read(&out.join("recovered/recover_report.json"));
    assert!(recovered["resumed_from"].as_u64().unwrap() >= 1, "the recovery resumed from its checkpoint");
    assert_eq!(report["layers"].as_array().unwrap().len(), 3);
    assert!(report["table3"]["after"]["params"].as_u64() < report["table3"]["before"]["params"].as_u64());
    // The cluster's prune does not time the model; the dense and pruned evaluations did.
    for which in ["before", "after"] {
        assert!(report["table3"][which]["latency_s_per_chunk"].as_f64().is_some_and(|s| s > 0.0), "{which}: {}", report["table3"]);
        assert_eq!(report["table3"][which]["latency_measured_on"]["by"], "eval");
        // Each of the 2 chunks timed alone: the median lies within their extremes.
        let l = &report["table3"][which]["latency"];
        assert_eq!(l["timed_chunks"], 2, "{l}");
        assert!(l["min"].as_f64() <= l["s_per_chunk"].as_f64() && l["s_per_chunk"].as_f64() <= l["max"].as_f64(), "{l}");
    }
    for plot in ["widths.svg", "loss.svg", "ppl.svg"] {
        let svg = std::fs::read_to_string(out.join("plots").join(plot)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{plot}");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert_contains(&md, &["| dense |", "| pruned |", "| recovered |", "Table 3", "plots/widths.svg", "plots/loss.svg", "the median over 2 chunks"]);
    if let Ok(keep) = std::env::var("LLMPRUNE_KEEP_RUN") {
        let _ = std::process::Command::new("cp").args(["-r", out.to_str().unwrap(), &keep]).status();
    }
    // The seed reached every phase.
    assert_eq!(read(&out.join("pruned/plan.json"))["settings"]["seed"], 3);
    assert_eq!(recovered["optimizer"]["seed"], 3);

    // Resumed with other settings, a finished phase is not passed off as done: the run stops
    // before anything runs, naming the keys, and leaves the run as it was.
    let before = std::fs::read_to_string(out.join("report.json")).unwrap();
    let e = stderr(&llmprune(&["--config", c, "--set", "prune.ratio=0.5", "run", "--resume"], &[]));
    assert_contains(&e, &["phase `prune` finished before with other settings: prune.ratio: 0.25 → 0.5", "pruned"]);
    let e = stderr(&llmprune(&["--config", c, "--set", "recover.max_steps=200", "run", "--resume"], &[]));
    assert_contains(&e, &["phase `recover` finished before with other settings: recover.max_steps: null → 200"]);
    assert_eq!(std::fs::read_to_string(out.join("report.json")).unwrap(), before);
    // Resumed as it was: every phase skipped, and the time table keeps what they took.
    let seconds = report["seconds"].clone();
    ok(&llmprune(&["--config", c, "run", "--resume"], &[]));
    let again = read(&out.join("report.json"));
    for phase in ["prune", "eval-dense", "eval-pruned", "eval-recovered"] {
        assert_eq!(again["seconds"][phase], seconds[phase], "{phase}");
    }
    assert!(again["seconds"]["total"].as_f64().unwrap() >= seconds["prune"].as_f64().unwrap() + seconds["recover"].as_f64().unwrap());
}

#[test]
fn configuration_errors_name_the_key_and_overrides_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let c = cfg.to_str().unwrap();
    let fails = |env: &[(&str, &str)], extra: &[&str], parts: &[&str]| {
        let mut args = vec!["--config", c];
        args.extend(extra);
        args.push("run");
        let err = stderr(&llmprune(&args, env));
        assert_contains(&err, parts);
        assert!(!tmp.path().join("run").exists(), "nothing started: {err}");
    };
    fails(&[("LLMPRUNE_PRUNE__RATIO", "abc")], &[], &["prune.ratio", "abc"]);
    fails(&[], &["--set", "prune.ratio=1.5"], &["prune.ratio 1.5", "(0, 1)"]);
    fails(&[], &["--set", "recover.lora_rank=8"], &["recover.lora_rank", "not an option of `llmprune recover`"]);
    fails(&[], &["--set", "eval.model=x"], &["eval.model", "set by the run"]);
    fails(&[], &["--set", "workers.local=0"], &["workers.local", "at least 1"]);
    fails(&[], &["--set", "eval.tasks=boolq,mmlu"], &["eval.tasks", "mmlu"]);
    fails(&[("LLMPRUNE_RECOVER__DATA", "")], &["--set", "recover.data="], &["recover.data"]);

    // --dry-run plans every phase (the run's workers reach the prune's checks) and starts nothing.
    let plan = ok(&llmprune(&["--config", c, "--set", "workers.replicas=2", "--set", "workers.stages=2", "run", "--dry-run"], &[]));
    assert_contains(&plan, &["2 local workers", "llmprune prune", "--replicas 2", "llmprune recover", "--stages 2", "--name recovered"]);
    assert!(!tmp.path().join("run").exists());

    // The merged configuration: file < environment < --set.
    let printed = ok(&llmprune(
        &["--config", c, "--set", "prune.criterion=l2", "config", "--print"],
        &[("LLMPRUNE_PRUNE__RATIO", "0.4"), ("LLMPRUNE_PRUNE__CRITERION", "l1")],
    ));
    assert_contains(&printed, &["\"ratio\": \"0.4\"", "\"criterion\": \"l2\"", "\"local\": 2"]);
}

#[test]
fn the_smollm2_examples_check_from_the_repository_root() {
    // Their paths are relative to the repository root, the team data beside it.
    assert!(data_dir().is_dir());
    for example in ["examples/smollm2-laptop.toml", "examples/smollm2-beyond.toml"] {
        let out = Command::new(env!("CARGO_BIN_EXE_llmprune")).args(["--config", example, "run", "--dry-run"]).current_dir(repo_root()).output().unwrap();
        assert!(out.status.success(), "{example}: {}", String::from_utf8_lossy(&out.stderr));
        assert_contains(&String::from_utf8_lossy(&out.stdout), &["llmprune prune", "llmprune recover"]);
    }
}
