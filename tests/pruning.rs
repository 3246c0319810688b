//! Slicing a model along its discovered groups, checked against an independent construction:
//! removing attention heads or MLP neurons must give exactly the logits of the unpruned model
//! with those heads' o_proj columns (or those neurons' down_proj columns) set to zero, since
//! that is the only path by which they reach the output.

use candle_core::{Device, Tensor};
use llmprune_shared::depgraph::{llama_graph, Fusion, Group};
use llmprune_shared::plan::{PlanGroup, PlanStep};
use llmprune_shared::planner::{GqaMode, LayerProfile, PruneRequest, Scope, Strategy};
use llmprune_tests::{max_abs_diff, tiny_model};
use llmprune_worker::loader::InMemoryWeights;
use llmprune_worker::prune::apply::apply_step;
use llmprune_worker::prune::importance::{Criterion, Reduction};
use llmprune_worker::prune::pipeline::{prune, PruneOutcome};
use llmprune_worker::prune::slice::{remove_layers, slice_weights, sliced_spec};
use llmprune_worker::prune::statistics::gradient_stats;
use llmprune_worker::{Exec, LlamaModel, LoadOptions};
use std::collections::HashMap;

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

    let sliced = slice_weights(weights.clone(), &groups, &kept).unwrap();
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
    let sliced = slice_weights(weights.clone(), &groups, &kept).unwrap();
    let spec = sliced_spec(&model.spec, &sliced).unwrap();
    assert_eq!(spec.hidden_size, 36);
    assert_eq!(sliced["model.layers.1.self_attn.o_proj.weight"].dims(), [36, 32]);
    assert_eq!(sliced["model.layers.2.mlp.gate_proj.weight"].dims(), [24, 36]);
    assert_eq!(sliced["lm_head.weight"].dims(), [96, 36]);
    let source = InMemoryWeights { label: "pruned".into(), tensors: sliced };
    let pruned = LlamaModel::load(spec.clone(), &source, &LoadOptions::full(&spec), &Device::Cpu).unwrap();
    assert_eq!(pruned.logits(&ids(), Exec::Inference).unwrap().dims(), [2, 8, 96]);

    kept[hidden] = vec![48];
    let err = slice_weights(weights.clone(), &groups, &kept).unwrap_err().to_string();
    assert!(err.contains("group `embed_tokens.out` has 48 units; cannot keep unit 48"), "{err}");
    assert!(slice_weights(weights.clone(), &groups, &kept[1..]).is_err());
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
    let sliced = slice_weights(loaded.model.weights_by_name(), &groups, &kept).unwrap();
    let spec = sliced_spec(&loaded.model.spec, &sliced).unwrap();
    let source = InMemoryWeights { label: "pruned".into(), tensors: sliced.clone() };
    let pruned = LlamaModel::load(spec.clone(), &source, &LoadOptions::full(&spec), &Device::Cpu).unwrap();

    let out = tmp.path().join("pruned");
    let plan = serde_json::json!({"kept": kept});
    llmprune_worker::export::export_model(&out, &spec, &sliced, &loaded.tokenizer, &[("plan.json", &plan)], u64::MAX).unwrap();
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
    let err = llmprune_worker::export::export_model(&out, &spec, &sliced, &loaded.tokenizer, &[], u64::MAX).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");

    // Above the shard size: Hugging Face shards with an index, reloading to the same logits.
    let sharded = tmp.path().join("sharded");
    llmprune_worker::export::export_model(&sharded, &spec, &sliced, &loaded.tokenizer, &[], 20_000).unwrap();
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(sharded.join("model.safetensors.index.json")).unwrap()).unwrap();
    let files: std::collections::BTreeSet<&str> = index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap()).collect();
    let n = files.len();
    assert!(n > 1, "{files:?}");
    let want: std::collections::BTreeSet<String> = (1..=n).map(|i| format!("model-{i:05}-of-{n:05}.safetensors")).collect();
    assert_eq!(files.iter().map(|f| f.to_string()).collect::<std::collections::BTreeSet<_>>(), want);
    assert!(!sharded.join("model.safetensors").exists());
    let total: usize = sliced.values().map(|t| t.elem_count() * 4).sum();
    assert_eq!(index["metadata"]["total_size"], total);
    for f in &files {
        let bytes = std::fs::metadata(sharded.join(f)).unwrap().len();
        // A shard holds at most 20 kB of tensors unless one tensor alone is larger.
        let biggest = llmprune_tests::load_tensors(&sharded.join(f)).values().map(|t| t.elem_count() * 4).max().unwrap() as u64;
        assert!(bytes <= 20_000 + 4096 || bytes <= biggest + 4096, "{f}: {bytes} bytes");
    }
    let reloaded = llmprune_worker::load_model(&sharded, LoadOptions::full, &Device::Cpu).unwrap();
    assert_eq!(max_abs_diff(&a, &reloaded.model.logits(&ids(), Exec::Inference).unwrap()), 0.0);
}

#[test]
fn removing_query_heads_equals_silencing_them_and_uneven_removal_is_refused() {
    let model = tiny_model("tiny_gqa"); // heads [6, 4, 2], KV heads [2, 2, 1], head_dim 8
    let weights = model.weights_by_name();
    // Layer 0: KV head 0 serves query heads 0-2, KV head 1 heads 3-5; drop 0 and 4.
    // Layer 1: drop query head 0 (KV 0) and 3 (KV 1).
    let group = |root: &str, units, kept: Vec<usize>| PlanGroup { root: root.into(), units, kept, scores: vec![] };
    let step = PlanStep {
        ratio: 0.5,
        groups: vec![group("layers.0.q_heads", 6, vec![1, 2, 3, 5]), group("layers.1.q_heads", 4, vec![1, 2])],
        removed_layers: vec![],
        layer_scores: vec![],
        reconstruct: None,
    };
    let (spec, sliced) = apply_step(&model.spec, &weights, &step).unwrap();
    let shapes: Vec<(usize, usize, usize)> = spec.layers.iter().map(|l| (l.n_heads, l.n_kv_heads, l.intermediate_size)).collect();
    assert_eq!(shapes, [(4, 2, 64), (2, 2, 40), (2, 1, 24)]);
    assert_eq!(sliced["model.layers.0.self_attn.k_proj.weight"].dims(), [16, 48], "KV heads stay");
    let source = InMemoryWeights { label: "pruned".into(), tensors: sliced };
    let pruned = LlamaModel::load(spec.clone(), &source, &LoadOptions::full(&spec), &Device::Cpu).unwrap();
    let mut silenced = weights.clone();
    let cols = |heads: &[usize]| heads.iter().flat_map(|h| h * 8..(h + 1) * 8).collect::<Vec<_>>();
    for (param, columns) in [("model.layers.0.self_attn.o_proj.weight", cols(&[0, 4])), ("model.layers.1.self_attn.o_proj.weight", cols(&[0, 3]))] {
        let w = zero_columns(&silenced[param], &columns);
        silenced.insert(param.to_string(), w);
    }
    let source = InMemoryWeights { label: "silenced".into(), tensors: silenced };
    let reference = LlamaModel::load(model.spec.clone(), &source, &LoadOptions::full(&model.spec), &Device::Cpu).unwrap();
    let d = max_abs_diff(&pruned.logits(&ids(), Exec::Inference).unwrap(), &reference.logits(&ids(), Exec::Inference).unwrap());
    assert!(d < 1e-5, "pruned and silenced logits differ by {d}");

    // Keeping query heads 0-3 would move heads 2 and 3 to other KV heads: refused.
    let uneven = PlanStep { groups: vec![group("layers.0.q_heads", 6, vec![0, 1, 2, 3])], ..step.clone() };
    let err = apply_step(&model.spec, &weights, &uneven).unwrap_err().to_string();
    llmprune_tests::assert_contains(&err, &["plan does not fit the model", "layers.0.q_heads", "[3, 1]"]);
    // Plans that do not fit: unknown group, other unit counts, unordered units, cut twice.
    for (groups, expected) in [
        (vec![group("layers.7.gate", 4, vec![0])], "the model has no group `layers.7.gate`"),
        (vec![group("layers.0.gate", 65, vec![0])], "has 64 units in the model, 65 in the plan"),
        (vec![group("layers.0.gate", 64, vec![3, 1])], "ascending"),
        (vec![group("layers.0.gate", 64, vec![64])], "below 64"),
        (vec![group("layers.0.k", 2, vec![1]), group("layers.0.q_heads", 6, vec![0, 3])], "cut twice"),
    ] {
        let bad = PlanStep { groups, ..step.clone() };
        let err = apply_step(&model.spec, &weights, &bad).unwrap_err().to_string();
        llmprune_tests::assert_contains(&err, &["plan does not fit the model", expected]);
    }
    let bad = PlanStep { groups: vec![], removed_layers: vec![3], ..step.clone() };
    llmprune_tests::assert_contains(&apply_step(&model.spec, &weights, &bad).unwrap_err().to_string(), &["cannot remove layer 3"]);
}

#[test]
fn removing_a_layer_equals_silencing_its_residual_branches() {
    let model = tiny_model("tiny_gqa");
    let weights = model.weights_by_name();
    let (spec, kept) = remove_layers(&model.spec, &weights, &[1]).unwrap();
    assert_eq!(spec.n_layers(), 2);
    assert_eq!((spec.layers[1].n_heads, spec.layers[1].intermediate_size), (2, 24), "layer 2 became layer 1");
    assert_eq!(kept["model.layers.1.mlp.down_proj.weight"].dims(), weights["model.layers.2.mlp.down_proj.weight"].dims());
    assert!(!kept.contains_key("model.layers.2.mlp.down_proj.weight"));
    let source = InMemoryWeights { label: "pruned".into(), tensors: kept };
    let pruned = LlamaModel::load(spec.clone(), &source, &LoadOptions::full(&spec), &Device::Cpu).unwrap();
    // The layer adds o_proj(...) and down_proj(...) to the residual stream; zeroing both
    // leaves the stream untouched, which is what removing the layer does.
    let mut silenced = weights.clone();
    for p in ["model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp.down_proj.weight"] {
        let z = silenced[p].zeros_like().unwrap();
        silenced.insert(p.into(), z);
    }
    let source = InMemoryWeights { label: "silenced".into(), tensors: silenced };
    let reference = LlamaModel::load(model.spec.clone(), &source, &LoadOptions::full(&model.spec), &Device::Cpu).unwrap();
    let d = max_abs_diff(&pruned.logits(&ids(), Exec::Inference).unwrap(), &reference.logits(&ids(), Exec::Inference).unwrap());
    assert!(d < 1e-5, "removed and silenced logits differ by {d}");
    assert!(remove_layers(&model.spec, &weights, &[0, 1, 2]).is_err(), "a model needs a layer");
    assert!(remove_layers(&model.spec, &weights, &[1, 1]).is_err());
}

fn request(strategy: Strategy, (criterion, reduction): (Criterion, Reduction), ratio: f64, steps: usize) -> PruneRequest {
    PruneRequest {
        strategy,
        ratio,
        attn_layers: 0..3,
        mlp_layers: 0..3,
        layers: 0..3,
        criterion,
        reduction,
        scope: Scope::Local,
        normalize: false,
        gqa: GqaMode::KvGroups,
        round_to: 1,
        steps,
        seed: 42,
        reconstruct: false,
        compensate_bias: false,
        damping: 0.01,
        profile: LayerProfile::Uniform,
    }
}

fn calibration_windows() -> Vec<Vec<u32>> {
    vec![vec![5, 17, 3, 88, 41, 9, 60, 2], vec![1, 2, 3, 4, 5, 6, 7, 8], vec![90, 12, 33, 4, 70, 6, 71, 80]]
}

fn run_prune(req: &PruneRequest) -> PruneOutcome {
    let windows = calibration_windows();
    prune(tiny_model("tiny_gqa"), &mut |_| Ok(windows.clone()), req).unwrap()
}

#[test]
fn iterative_magnitude_pruning_equals_one_shot() {
    // A unit's l2 score reads only its own rows and columns, which pruning other units leaves
    // alone: two steps toward 0.25 then 0.5 of the initial widths must cut what one step to 0.5
    // cuts, although the second step sees narrower layers.
    let l2 = (Criterion::L2, Reduction::Mean);
    let one = run_prune(&request(Strategy::Block, l2, 0.5, 1));
    let two = run_prune(&request(Strategy::Block, l2, 0.5, 2));
    assert_eq!(two.steps.iter().map(|s| s.ratio).collect::<Vec<_>>(), [0.25, 0.5]);
    let mlp0 = |o: &PruneOutcome, k: usize| o.steps[k].groups.iter().find(|g| g.root == "layers.0.gate").unwrap().kept.len();
    assert_eq!((mlp0(&two, 0), mlp0(&two, 1), mlp0(&one, 0)), (48, 32, 32));
    assert_eq!(one.spec, two.spec);
    for (name, w) in &one.weights {
        assert_eq!(max_abs_diff(w, &two.weights[name]), 0.0, "{name}");
    }
}

#[test]
fn rounding_and_query_head_requests_shape_the_model() {
    let pf = (Criterion::ParamFirst, Reduction::Sum);
    let mut req = request(Strategy::Block, pf, 0.3, 1);
    req.round_to = 8;
    let out = run_prune(&req);
    // MLP 64 -> int(64·0.7) = 44 -> 48; 40 -> 28 -> 32; 24 -> 16 (already aligned).
    let widths: Vec<usize> = out.spec.layers.iter().map(|l| l.intermediate_size).collect();
    assert_eq!(widths, [48, 32, 24 - 8]);
    req.round_to = 1;
    req.gqa = GqaMode::QueryHeads;
    req.ratio = 0.5;
    let out = run_prune(&req);
    // Each KV head keeps int(n_rep·0.5) query heads rounded as the reference rounds heads:
    // n_rep 3 -> 1 of 3 goes (24 - 12 = 12 channels = 1 head), n_rep 2 -> 1 of 2.
    let heads: Vec<(usize, usize)> = out.spec.layers.iter().map(|l| (l.n_heads, l.n_kv_heads)).collect();
    assert_eq!(heads, [(4, 2), (2, 2), (1, 1)]);
    req.scope = Scope::Global;
    let err = prune(tiny_model("tiny_gqa"), &mut |_| Ok(calibration_windows()), &req).err().unwrap().to_string();
    assert!(err.contains("needs local scope"), "{err}");
}

#[test]
fn a_layer_profile_moves_the_ratio_along_the_layers() {
    // ramp:0.5:1.5 over layers 0..3 at ratio 0.5: weights 0.5, 1, 1.5 (mean 1), so the layers
    // lose 0.25, 0.5 and 0.75 of their neurons: int(64·0.75) = 48, int(40·0.5) = 20 and
    // int(24·0.25) = 6 kept; and of their KV head groups 2·0.25 → none, 2·0.5 → one, 1·0.75 →
    // none (heads go whole, floored).
    let mut req = request(Strategy::Block, (Criterion::L2, Reduction::Mean), 0.5, 1);
    req.profile = LayerProfile::Ramp { first: 0.5, last: 1.5 };
    let out = run_prune(&req);
    let widths: Vec<usize> = out.spec.layers.iter().map(|l| l.intermediate_size).collect();
    assert_eq!(widths, [48, 20, 6]);
    let kv: Vec<usize> = out.spec.layers.iter().map(|l| l.n_kv_heads).collect();
    assert_eq!(kv, [2, 1, 1]);
    // Too steep a profile would empty a layer: refused before anything runs, naming it.
    req.profile = LayerProfile::Ramp { first: 0.0, last: 3.0 };
    let err = prune(tiny_model("tiny_gqa"), &mut |_| Ok(calibration_windows()), &req).err().unwrap().to_string();
    assert!(err.contains("layer 2 would lose 1.00 of its attention units"), "{err}");
    req.profile = LayerProfile::Ramp { first: 0.5, last: 1.5 };
    req.scope = Scope::Global;
    let err = prune(tiny_model("tiny_gqa"), &mut |_| Ok(calibration_windows()), &req).err().unwrap().to_string();
    assert!(err.contains("needs --strategy block and --scope local"), "{err}");
}

#[test]
fn layer_scores_are_the_taylor_estimate_of_removing_the_layer() {
    let mut req = request(Strategy::Layer, (Criterion::Vectorize, Reduction::Sum), 0.34, 1);
    req.layers = 0..3;
    let out = run_prune(&req);
    // 3 - int(3·0.66) = 2 layers go; the one kept scored highest.
    let step = &out.steps[0];
    assert_eq!(step.removed_layers.len(), 2);
    assert_eq!(out.spec.n_layers(), 1);
    // Independent of the pipeline: |Σ w·g| over every weight of each layer, with plain loops.
    let mut model = tiny_model("tiny_gqa");
    let vars = model.make_trainable(|n| n.starts_with("model.layers.")).unwrap();
    let stats = gradient_stats(&model, &vars, &calibration_windows(), false).unwrap();
    let weights: HashMap<String, Tensor> = model.weights_by_name();
    for &(layer, score) in &step.layer_scores {
        let prefix = format!("model.layers.{layer}.");
        let mut total = 0f64;
        for (name, w) in weights.iter().filter(|(n, _)| n.starts_with(&prefix)) {
            let w = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let g = stats.grad[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            total += w.iter().zip(&g).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>();
        }
        let want = total.abs() as f32;
        assert!((score - want).abs() <= 1e-4 * want.abs().max(1e-6), "layer {layer}: {score} vs {want}");
    }
    let kept_layer = (0..3).find(|l| !step.removed_layers.contains(l)).unwrap();
    let best = step.layer_scores.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0;
    assert_eq!(kept_layer, best);
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
