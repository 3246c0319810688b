//! Loading: layer ranges (what a worker of a layer-sharded cluster loads), sharded
//! safetensors, and GGUF files with llama.cpp's q/k permutation undone.

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use llmprune_shared::ModelSpec;
use llmprune_tests::{fixture, load_tensors, max_abs_diff, tiny_model, tiny_model_dir, write_tiny_gguf};
use llmprune_worker::loader::{open_model, HfWeights};
use llmprune_worker::{load_model, Exec, LlamaModel, LoadOptions};

fn ids() -> Tensor {
    Tensor::new(&[[5u32, 9, 33, 2, 71, 40, 8, 1], [0, 12, 95, 3, 3, 60, 14, 27]], &Device::Cpu).unwrap()
}

#[test]
fn a_pipeline_of_layer_ranges_equals_the_whole_model() {
    let full = tiny_model("tiny_gqa");
    let dir = fixture("tiny_gqa");
    let spec = ModelSpec::from_hf_config_file(&dir.join("config.json")).unwrap();
    let weights = HfWeights::open(&dir).unwrap();
    let first =
        LlamaModel::load(spec.clone(), &weights, &LoadOptions { layers: 0..1, embeddings: true, head: false, dtype: DType::F32 }, &Device::Cpu).unwrap();
    let last = LlamaModel::load(spec, &weights, &LoadOptions { layers: 1..3, embeddings: false, head: true, dtype: DType::F32 }, &Device::Cpu).unwrap();
    assert!(last.embed.is_none() && first.norm.is_none() && first.lm_head.is_none());
    assert_eq!(last.named_weights().len(), 2 * 9 + 2, "the last stage holds its layers, the norm and the head only");
    let ids = ids();
    let targets: Vec<u32> = ids.flatten_all().unwrap().to_vec1().unwrap();
    for exec in [Exec::Inference, Exec::Differentiable] {
        let hidden = first.forward_layers(first.embed_tokens(&ids).unwrap(), exec).unwrap();
        let staged = last.hidden_to_nll(&last.forward_layers(hidden, exec).unwrap(), &targets, exec).unwrap();
        let whole = full.hidden_to_nll(&full.forward_layers(full.embed_tokens(&ids).unwrap(), exec).unwrap(), &targets, exec).unwrap();
        assert_eq!(max_abs_diff(&staged, &whole), 0.0);
    }
}

#[test]
fn layer_range_outside_the_model_is_refused() {
    let dir = fixture("tiny_gqa");
    let spec = ModelSpec::from_hf_config_file(&dir.join("config.json")).unwrap();
    let weights = HfWeights::open(&dir).unwrap();
    let opts = LoadOptions { layers: 2..4, embeddings: false, head: false, dtype: DType::F32 };
    let err = LlamaModel::load(spec, &weights, &opts, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("layer range 2..4 is outside the model's 3 layers"), "{err}");
}

#[test]
fn sharded_safetensors_with_an_index_load_like_one_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_model_dir("tiny_gqa", tmp.path());
    let all = load_tensors(&dir.join("model.safetensors"));
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (k, part) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", k + 1);
        let tensors: std::collections::HashMap<String, Tensor> = part.iter().map(|n| ((*n).clone(), all[*n].clone())).collect();
        candle_core::safetensors::save(&tensors, dir.join(&file)).unwrap();
        for n in part {
            weight_map.insert((*n).clone(), serde_json::json!(file));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let sharded = load_model(&dir, LoadOptions::full, &Device::Cpu).unwrap();
    let whole = tiny_model("tiny_gqa");
    let d = max_abs_diff(&sharded.model.logits(&ids(), Exec::Inference).unwrap(), &whole.logits(&ids(), Exec::Inference).unwrap());
    assert_eq!(d, 0.0);
}

#[test]
fn gguf_with_llama_cpp_permutation_loads_in_hf_layout() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["tiny_gqa", "tiny_tied_mha"] {
        let path = tmp.path().join(format!("{name}.gguf"));
        write_tiny_gguf(name, &path, "llama", GgmlDType::F32);
        let opened = open_model(&path).unwrap();
        let want = ModelSpec::from_hf_config_file(&fixture(name).join("config.json")).unwrap();
        assert_eq!(opened.spec.layers, want.layers, "{name}: per-layer shapes from GGUF metadata arrays");
        assert_eq!(opened.spec.tie_word_embeddings, want.tie_word_embeddings);
        if want.rope_scaling.is_some() {
            continue; // GGUF rope scaling is refused (tested in bad_input); shapes were the point.
        }
        let gguf = load_model(&path, LoadOptions::full, &Device::Cpu).unwrap();
        let hf = tiny_model(name);
        let ids = ids();
        let d = max_abs_diff(&gguf.model.logits(&ids, Exec::Inference).unwrap(), &hf.logits(&ids, Exec::Inference).unwrap());
        assert_eq!(d, 0.0, "{name}: GGUF and safetensors give different logits");
    }
}

#[test]
fn gguf_quantized_weights_are_dequantized() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("q.gguf");
    write_tiny_gguf("tiny_gqa", &path, "llama", GgmlDType::F16);
    let gguf = load_model(&path, LoadOptions::full, &Device::Cpu).unwrap();
    let hf = tiny_model("tiny_gqa");
    let (a, b) = (gguf.model.logits(&ids(), Exec::Inference).unwrap(), hf.logits(&ids(), Exec::Inference).unwrap());
    let d = max_abs_diff(&a, &b);
    assert!(d > 0.0 && d < 5e-3, "f16 storage should perturb logits slightly, got {d}");
}

/// The dequantisation the GGUF loader relies on (candle's `QTensor::dequantize`) against
/// llama.cpp's own `gguf` Python package, for every storage type it can write or read:
/// F16, BF16, Q4_0/1, Q5_0/1, Q8_0 and the K-quants Q2_K..Q6_K (`tests/golden/gen_gguf_quants.py`).
#[test]
fn gguf_dequantization_matches_llama_cpp_reference_for_every_type() {
    use candle_core::quantized::gguf_file::Content;
    let dir = fixture("gguf_quants");
    let golden = load_tensors(&dir.join("dequantized.safetensors"));
    let mut file = std::fs::File::open(dir.join("quants.gguf")).unwrap();
    let content = Content::read(&mut file).unwrap();
    assert_eq!(content.tensor_infos.len(), 12);
    for (name, want) in &golden {
        let got = content.tensor(&mut file, name, &Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap();
        let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let d = max_abs_diff(&got, want);
        assert!(d <= 1e-6 * scale, "{name}: dequantised values differ by {d} (scale {scale})");
    }
}
