//! Slicing a model along its discovered groups, checked against an independent construction:
//! removing attention heads or MLP neurons must give exactly the logits of the unpruned model
//! with those heads' o_proj columns (or those neurons' down_proj columns) set to zero, since
//! that is the only path by which they reach the output.

use candle_core::{Device, Tensor};
use llmprune_shared::depgraph::{llama_graph, Fusion, Group};
use llmprune_tests::{max_abs_diff, tiny_model};
use llmprune_worker::loader::InMemoryWeights;
use llmprune_worker::prune::slice::{slice_weights, sliced_spec};
use llmprune_worker::{Exec, LlamaModel, LoadOptions};

fn ids() -> Tensor {
    Tensor::new(&[[5u32, 17, 3, 88, 41, 9, 60, 2], [1, 2, 3, 4, 5, 6, 7, 8]], &Device::Cpu).unwrap()
}

fn zero_columns(w: &Tensor, columns: &[usize]) -> Tensor {
    let mut m = w.to_vec2::<f32>().unwrap();
    for row in &mut m {
        for &c in columns {
            row[c] = 0.0;
        }
    }
    Tensor::new(m, &Device::Cpu).unwrap()
}

#[test]
fn removing_heads_and_neurons_equals_silencing_them() {
    let model = tiny_model("tiny_gqa"); // heads [6, 4, 2], KV heads [2, 2, 1], MLP [64, 40, 24], head_dim 8
    let groups: Vec<Group> = llama_graph(&model.spec, Fusion::Separate).groups().unwrap();
    let weights = model.weights_by_name();
    // Keep all units except: layer 0 KV head 0 (query heads 0-2), layer 1 KV head 1 (query
    // heads 2-3), layer 0 MLP neurons 3, 10 and 63, layer 2 MLP neurons 0..12.
    let mut kept: Vec<Vec<usize>> = groups.iter().map(|g| (0..g.units).collect()).collect();
    let pick = |root: &str| groups.iter().position(|g| g.root == root).unwrap();
    kept[pick("layers.0.k")] = vec![1];
    kept[pick("layers.1.k")] = vec![0];
    kept[pick("layers.0.gate")].retain(|u| ![3, 10, 63].contains(u));
    kept[pick("layers.2.gate")] = (12..24).collect();

    let sliced = slice_weights(&weights, &groups, &kept).unwrap();
    let spec = sliced_spec(&model.spec, &sliced).unwrap();
    let shapes: Vec<(usize, usize, usize)> = spec.layers.iter().map(|l| (l.n_heads, l.n_kv_heads, l.intermediate_size)).collect();
    assert_eq!(shapes, [(3, 1, 61), (2, 1, 40), (2, 1, 12)]);
    let source = InMemoryWeights { label: "pruned".into(), tensors: sliced };
    let pruned = LlamaModel::load(spec.clone(), &source, &LoadOptions::full(&spec), &Device::Cpu).unwrap();

    let mut silenced = weights.clone();
    let cols = |heads: std::ops::Range<usize>| heads.flat_map(|h| h * 8..(h + 1) * 8).collect::<Vec<_>>();
    for (param, columns) in [
        ("model.layers.0.self_attn.o_proj.weight", cols(0..3)),
        ("model.layers.1.self_attn.o_proj.weight", cols(2..4)),
        ("model.layers.0.mlp.down_proj.weight", vec![3, 10, 63]),
        ("model.layers.2.mlp.down_proj.weight", (0..12).collect()),
    ] {
        let w = zero_columns(&silenced[param], &columns);
        silenced.insert(param.to_string(), w);
    }
    let source = InMemoryWeights { label: "silenced".into(), tensors: silenced };
    let reference = LlamaModel::load(model.spec.clone(), &source, &LoadOptions::full(&model.spec), &Device::Cpu).unwrap();
    for exec in [Exec::Inference, Exec::Differentiable] {
        let d = max_abs_diff(&pruned.logits(&ids(), exec).unwrap(), &reference.logits(&ids(), exec).unwrap());
        assert!(d < 1e-5, "{exec:?}: pruned and silenced logits differ by {d}");
    }
    // And the pruning did change the model.
    let d = max_abs_diff(&pruned.logits(&ids(), Exec::Inference).unwrap(), &model.logits(&ids(), Exec::Inference).unwrap());
    assert!(d > 1e-3, "pruning should change the logits, changed by {d}");
}

#[test]
fn hidden_channels_are_cut_everywhere_and_bad_selections_refused() {
    let model = tiny_model("tiny_gqa");
    let groups = llama_graph(&model.spec, Fusion::Separate).groups().unwrap();
    let weights = model.weights_by_name();
    let mut kept: Vec<Vec<usize>> = groups.iter().map(|g| (0..g.units).collect()).collect();
    let hidden = groups.iter().position(|g| g.root == "embed_tokens.out").unwrap();
    kept[hidden] = (0..48).filter(|c| c % 4 != 0).collect();
    let sliced = slice_weights(&weights, &groups, &kept).unwrap();
    let spec = sliced_spec(&model.spec, &sliced).unwrap();
    assert_eq!(spec.hidden_size, 36);
    assert_eq!(sliced["model.layers.1.self_attn.o_proj.weight"].dims(), [36, 32]);
    assert_eq!(sliced["model.layers.2.mlp.gate_proj.weight"].dims(), [24, 36]);
    assert_eq!(sliced["lm_head.weight"].dims(), [96, 36]);
    let source = InMemoryWeights { label: "pruned".into(), tensors: sliced };
    let pruned = LlamaModel::load(spec.clone(), &source, &LoadOptions::full(&spec), &Device::Cpu).unwrap();
    assert_eq!(pruned.logits(&ids(), Exec::Inference).unwrap().dims(), [2, 8, 96]);

    kept[hidden] = vec![48];
    let err = slice_weights(&weights, &groups, &kept).unwrap_err().to_string();
    assert!(err.contains("group `embed_tokens.out` has 48 units; cannot keep unit 48"), "{err}");
    assert!(slice_weights(&weights, &groups, &kept[1..]).is_err());
}

#[test]
fn export_then_reload_gives_identical_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = llmprune_tests::tiny_model_dir("tiny_gqa", tmp.path());
    let loaded = llmprune_worker::load_model(&dir, LoadOptions::full, &Device::Cpu).unwrap();
    let groups = llama_graph(&loaded.model.spec, Fusion::Separate).groups().unwrap();
    let mut kept: Vec<Vec<usize>> = groups.iter().map(|g| (0..g.units).collect()).collect();
    kept[groups.iter().position(|g| g.root == "layers.0.k").unwrap()] = vec![0];
    kept[groups.iter().position(|g| g.root == "layers.2.gate").unwrap()] = (0..24).step_by(2).collect();
    let sliced = slice_weights(&loaded.model.weights_by_name(), &groups, &kept).unwrap();
    let spec = sliced_spec(&loaded.model.spec, &sliced).unwrap();
    let source = InMemoryWeights { label: "pruned".into(), tensors: sliced.clone() };
    let pruned = LlamaModel::load(spec.clone(), &source, &LoadOptions::full(&spec), &Device::Cpu).unwrap();

    let out = tmp.path().join("pruned");
    let plan = serde_json::json!({"kept": kept});
    llmprune_worker::export::export_model(&out, &spec, &sliced, &loaded.tokenizer, &[("plan.json", &plan)]).unwrap();
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["num_attention_heads_per_layer"], serde_json::json!([3, 4, 2]));
    assert_eq!(config["intermediate_size_per_layer"], serde_json::json!([64, 40, 12]));
    assert!(out.join("plan.json").exists());
    let reloaded = llmprune_worker::load_model(&out, LoadOptions::full, &Device::Cpu).unwrap();
    let (a, b) = (pruned.logits(&ids(), Exec::Inference).unwrap(), reloaded.model.logits(&ids(), Exec::Inference).unwrap());
    assert_eq!(max_abs_diff(&a, &b), 0.0, "exported weights are the pruned weights, bit for bit");
    // Nothing else is left beside the output, and an existing directory is not overwritten.
    let entries: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let err = llmprune_worker::export::export_model(&out, &spec, &sliced, &loaded.tokenizer, &[]).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[test]
fn saved_gguf_tokenizers_read_back_to_the_same_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let text = "The 3 quick foxes, naïve: <|im_start|>user\nhi";
    let smollm2 = llmprune_worker::loader::open_model(&llmprune_tests::smollm2_gguf()).unwrap().tokenizer;
    let path = tmp.path().join("smollm2.json");
    smollm2.save(&path).unwrap();
    let back = llmprune_worker::loader::TextTokenizer::from_file(&path).unwrap();
    assert_eq!(back.encode(text).unwrap(), smollm2.encode(text).unwrap());
}
