//! The model against transformers (fixtures from `tests/golden/gen_golden.py`): logits of
//! every position, the loss and every weight's gradient of tiny random LLaMAs with GQA,
//! non-uniform layers, tied embeddings and Llama-3 rope scaling, and of a tiny Qwen2 with
//! q/k/v biases; and dequantised SmolLM2.

use candle_core::{DType, Device, Tensor};
use llmprune_tests::{fixture, load_tensors, max_abs_diff, rel_err, smollm2_gguf, tiny_model};
use llmprune_worker::{load_model, Exec, LoadOptions};

fn golden_ids(golden: &std::collections::HashMap<String, Tensor>) -> Tensor {
    golden["input_ids"].to_dtype(DType::U32).unwrap()
}

fn check_tiny(name: &str) {
    let golden = load_tensors(&fixture(name).join("golden.safetensors"));
    let mut model = tiny_model(name);
    let ids = golden_ids(&golden);
    for exec in [Exec::Inference, Exec::Differentiable] {
        let logits = model.logits(&ids, exec).unwrap();
        let d = max_abs_diff(&logits, &golden["logits"]);
        assert!(d <= 1e-4, "{name} {exec:?}: logits differ by {d}");
        let loss = model.loss(&ids, exec).unwrap().to_scalar::<f32>().unwrap();
        let want = golden["loss"].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((loss - want).abs() <= 1e-5, "{name} {exec:?}: loss {loss} vs {want}");
    }
    let vars = model.make_trainable(|_| true).unwrap();
    let grads = model.loss(&ids, Exec::Differentiable).unwrap().backward().unwrap();
    let canonical: std::collections::HashMap<String, Tensor> = vars
        .iter()
        .map(|(param, var)| (param.clone(), grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient for {param}")).clone()))
        .collect();
    // Gradients in the family's own names and layouts (fused gate_up, interleaved rotary
    // rows), through the exporter's conversion.
    let family = llmprune_worker::loader::family_tensors(&model.spec, &canonical).unwrap();
    let mut checked = 0;
    for (param, g) in &family {
        let want = golden.get(&format!("grad.{param}")).unwrap_or_else(|| panic!("{name}: no golden gradient for {param}"));
        let e = rel_err(g, want);
        assert!(e <= 1e-3, "{name}: gradient of {param} has relative error {e}");
        checked += 1;
    }
    let golden_grads = golden.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(checked, golden_grads, "{name}: every parameter of the reference has a gradient here");
}

#[test]
fn tiny_gqa_non_uniform_layers_match_transformers() {
    check_tiny("tiny_gqa");
}

#[test]
fn tiny_tied_mha_with_llama3_rope_scaling_matches_transformers() {
    check_tiny("tiny_tied_mha");
}

#[test]
fn tiny_qwen2_with_qkv_biases_matches_transformers() {
    // Qwen2ForCausalLM: q/k/v biases (gradients checked too), GQA, tied head, rope_theta 1e6.
    check_tiny("tiny_qwen2");
}

#[test]
fn tiny_llama_with_attention_and_mlp_biases_matches_transformers() {
    // LlamaForCausalLM with attention_bias and mlp_bias: biases on q, k, v, o, gate, up and
    // down, each with its gradient (what bias compensation exports for stock transformers).
    check_tiny("tiny_llama_bias");
}

#[test]
fn tiny_qwen3_with_qk_norms_matches_transformers() {
    // Qwen3ForCausalLM: RMSNorm over each head's q and k channels before the rotary
    // embedding, GQA, untied head, rope_parameters (transformers 5).
    check_tiny("tiny_qwen3");
}

#[test]
fn tiny_glm_with_partial_interleaved_rotary_and_fused_gate_up_matches_transformers() {
    // GlmForCausalLM (the ChatGLM line): half of each head rotated, channels in interleaved
    // pairs, gate and up fused in one gate_up_proj, q/k/v biases.
    check_tiny("tiny_glm");
}

#[test]
fn smollm2_gguf_logits_match_transformers() {
    let golden = load_tensors(&fixture("smollm2").join("golden.safetensors"));
    let loaded = load_model(&smollm2_gguf(), LoadOptions::full, &Device::Cpu).unwrap();
    let ids = golden_ids(&golden);
    let text = "The quick brown fox jumps over the lazy dog. In 1969, 3 astronauts flew to the Moon!";
    let ours = loaded.tokenizer.encode(text).unwrap();
    assert_eq!(ours, ids.flatten_all().unwrap().to_vec1::<u32>().unwrap(), "token ids differ from transformers'");
    let want = &golden["logits"];
    let n = want.dim(1).unwrap();
    let modes = [Exec::Inference, Exec::Differentiable].map(|e| loaded.model.logits(&ids, e).unwrap());
    let d = max_abs_diff(&modes[0], &modes[1]);
    assert!(d <= 1e-4, "the two execution modes differ by {d}");
    for exec in [Exec::Inference, Exec::Differentiable] {
        let logits = loaded.model.logits(&ids, exec).unwrap().narrow(1, 0, n).unwrap();
        let d = max_abs_diff(&logits, want);
        eprintln!("{exec:?}: SmolLM2 logits max abs diff {d}");
        assert!(d <= 1e-4, "{exec:?}: SmolLM2 logits differ by {d}");
        let loss = loaded.model.loss(&ids, exec).unwrap().to_scalar::<f32>().unwrap();
        let want_loss = golden["loss"].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((loss - want_loss).abs() <= 1e-4, "{exec:?}: loss {loss} vs {want_loss}");
    }
}

#[test]
fn smollm2_tokenizer_matches_transformers() {
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("smollm2").join("tokenizer_cases.json")).unwrap()).unwrap();
    let opened = llmprune_worker::loader::open_model(&smollm2_gguf()).unwrap();
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(opened.tokenizer.encode(text).unwrap(), want, "text {text:?}");
    }
}
