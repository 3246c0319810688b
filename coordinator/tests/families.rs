//! Model families beyond LLaMA's layout, end to end: Qwen3 (q/k norms inside attention) and
//! GLM (interleaved partial rotary embedding, fused gate_up_proj, q/k/v biases) prune, export
//! in their own layout, and the export is what stock transformers loads: its logits equal
//! the ones transformers computed from llmprune's export (`tests/golden/gen_family_exports.py`,
//! the same prune). Channel- and layer-wise prunes of both reload in llmprune, and a plan
//! replays to the same files.

use candle_core::{DType, Device, Tensor};
use llmprune_tests::{fixture, load_tensors, max_abs_diff, model_tensors, tiny_model_dir};
use llmprune_worker::{load_model, Exec, LoadOptions};
use std::path::Path;
use std::process::{Command, Output};

/// Shared with tests/golden/gen_family_exports.py.
const CALIBRATION: &str = "[[1, 5, 9, 13, 40, 41, 42, 7], [60, 2, 3, 33, 61, 62, 8, 9], [4, 4, 8, 15, 16, 23, 42, 0]]";

fn llmprune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llmprune")).args(args).output().expect("running llmprune")
}

fn ok(out: &Output) {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn prune(model: &Path, calib: &Path, extra: &[&str], out: &Path) {
    let base = ["prune", "--model", model.to_str().unwrap(), "--calibration-ids", calib.to_str().unwrap(), "--ratio", "0.5"];
    ok(&llmprune(&[&base[..], extra, &["--out", out.to_str().unwrap()]].concat()));
}

#[test]
fn qwen3_and_glm_prune_export_and_load_in_transformers() {
    for name in ["tiny_qwen3", "tiny_glm"] {
        let tmp = tempfile::tempdir().unwrap();
        let model = tiny_model_dir(name, tmp.path());
        let calib = tmp.path().join("calib.json");
        std::fs::write(&calib, CALIBRATION).unwrap();
        let out = tmp.path().join("pruned");
        prune(&model, &calib, &["--criterion", "param-first"], &out);

        let golden = load_tensors(&fixture(name).join("export_golden.safetensors"));
        let ids = golden["input_ids"].to_dtype(DType::U32).unwrap();
        let loaded = load_model(&out, LoadOptions::full, &Device::Cpu).unwrap();
        for exec in [Exec::Inference, Exec::Differentiable] {
            let d = max_abs_diff(&loaded.model.logits(&ids, exec).unwrap(), &golden["logits"]);
            assert!(d <= 1e-4, "{name} {exec:?}: the export's logits differ from transformers' by {d}");
        }
        let params = golden["params"].to_vec1::<i64>().unwrap()[0] as usize;
        assert_eq!(loaded.model.spec.n_params(), params, "{name}: transformers loaded {params} parameters");
        // The file is in the family's layout: transformers' names, nothing canonical left over.
        let stored = load_tensors(&out.join("model.safetensors"));
        if name == "tiny_glm" {
            assert!(stored.keys().any(|n| n.ends_with("mlp.gate_up_proj.weight")) && !stored.keys().any(|n| n.ends_with("mlp.gate_proj.weight")));
        } else {
            assert!(stored.keys().any(|n| n.ends_with("self_attn.q_norm.weight")));
        }
        let files = model_tensors(&out);

        // A plan replays to the same files; channel- and layer-wise prunes reload.
        let replay = tmp.path().join("replayed");
        let plan = out.join("plan.json");
        ok(&llmprune(&["apply-plan", "--model", model.to_str().unwrap(), "--plan", plan.to_str().unwrap(), "--out", replay.to_str().unwrap()]));
        assert!(model_tensors(&replay) == files, "{name}: apply-plan wrote other weights");
        for strategy in ["channel", "layer"] {
            let out = tmp.path().join(strategy);
            prune(&model, &calib, &["--strategy", strategy, "--criterion", "vectorize"], &out);
            let pruned = load_model(&out, LoadOptions::full, &Device::Cpu).unwrap().model;
            let logits: Tensor = pruned.logits(&ids, Exec::Inference).unwrap();
            assert!(logits.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|x| x.is_finite()), "{name} {strategy}");
            let stored: usize = model_tensors(&out).values().map(Vec::len).sum();
            assert_eq!(stored, pruned.spec.n_params(), "{name} {strategy}: the files hold the spec's parameters");
        }
    }
}

/// A LLaMA pruned unevenly (heads of layer 0, neurons of layer 1) exports with a
/// `modeling_llmprune.py` and a `model_type` stock transformers refuses without
/// `trust_remote_code`; with it, transformers computes llmprune's logits
/// (`tests/golden/gen_nonuniform_export.py`, the same prune, checks the refusal and stores them).
#[test]
fn an_uneven_llama_exports_code_transformers_loads_to_the_same_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir("tiny_gqa", tmp.path());
    let calib = tmp.path().join("calib.json");
    std::fs::write(&calib, CALIBRATION).unwrap();
    let out = tmp.path().join("pruned");
    prune(&model, &calib, &["--criterion", "param-first", "--attn-layers", "0:1", "--mlp-layers", "1:2"], &out);

    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "llmprune_llama");
    assert_eq!(config["auto_map"]["AutoModelForCausalLM"], "modeling_llmprune.LlmpruneLlamaForCausalLM");
    assert_eq!(std::fs::read_to_string(out.join("modeling_llmprune.py")).unwrap(), llmprune_worker::export::NONUNIFORM_LLAMA_MODELING);

    let golden = load_tensors(&fixture("tiny_gqa").join("nonuniform_export_golden.safetensors"));
    let ids = golden["input_ids"].to_dtype(DType::U32).unwrap();
    let loaded = load_model(&out, LoadOptions::full, &Device::Cpu).unwrap();
    assert!(!loaded.model.spec.is_uniform());
    for exec in [Exec::Inference, Exec::Differentiable] {
        let d = max_abs_diff(&loaded.model.logits(&ids, exec).unwrap(), &golden["logits"]);
        assert!(d <= 1e-4, "{exec:?}: transformers' logits of the uneven export differ from llmprune's by {d}");
    }
    assert_eq!(loaded.model.spec.n_params(), golden["params"].to_vec1::<i64>().unwrap()[0] as usize);
    // A plan replays to the same files, config and code included.
    let replay = tmp.path().join("replayed");
    ok(&llmprune(&["apply-plan", "--model", model.to_str().unwrap(), "--plan", out.join("plan.json").to_str().unwrap(), "--out", replay.to_str().unwrap()]));
    for f in ["config.json", "modeling_llmprune.py"] {
        assert_eq!(std::fs::read(replay.join(f)).unwrap(), std::fs::read(out.join(f)).unwrap(), "{f}");
    }
}
