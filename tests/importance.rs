//! Gradient statistics and group importance of the tiny GQA model (per-layer shapes) against
//! an independent numpy implementation of LLM-Pruner's formulas (`tests/golden/gen_importance.py`):
//! the batch gradient and the per-window Fisher diagonal, then every group's scores for six
//! criteria, on the groups that discovery finds.

use llmprune_shared::depgraph::{llama_graph, Axis, Fusion};
use llmprune_tests::{fixture, load_tensors, rel_err, tiny_model};
use llmprune_worker::prune::importance::{group_scores, Criterion, Reduction};
use llmprune_worker::prune::statistics::gradient_stats;

#[test]
fn tiny_gqa_statistics_and_group_scores_match_the_reference_formulas() {
    let dir = fixture("tiny_gqa");
    let golden = load_tensors(&dir.join("golden.safetensors"));
    let fisher = load_tensors(&dir.join("fisher.safetensors"));
    let mut model = tiny_model("tiny_gqa");
    let vars = model.make_trainable(|_| true).unwrap();
    let windows: Vec<Vec<u32>> = golden["input_ids"].to_dtype(candle_core::DType::U32).unwrap().to_vec2::<u32>().unwrap();
    let stats = gradient_stats(&model, &vars, &windows, true).unwrap();
    for (name, _) in &vars {
        let e = rel_err(&stats.grad[name], &golden[&format!("grad.{name}")]);
        assert!(e <= 1e-3, "gradient of {name}: relative error {e}");
        let e = rel_err(&stats.fisher.as_ref().unwrap()[name], &fisher[name]);
        assert!(e <= 1e-3, "Fisher diagonal of {name}: relative error {e}");
    }

    let weights = model.weights_by_name();
    let groups = llama_graph(&model.spec, Fusion::Separate).groups().unwrap();
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("importance.json")).unwrap()).unwrap();
    let criteria = [
        ("vectorize", Criterion::Vectorize),
        ("param_first", Criterion::ParamFirst),
        ("param_second", Criterion::ParamSecond),
        ("param_mix", Criterion::ParamMix),
        ("l1", Criterion::L1),
        ("l2", Criterion::L2),
    ];
    for (key, criterion) in criteria {
        let want = &reference["scores"][key];
        assert_eq!(want.as_object().unwrap().len(), groups.len(), "{key}: the same groups");
        for group in &groups {
            let got = group_scores(group, criterion, Reduction::Sum, &weights, &stats).unwrap();
            let want: Vec<f64> = serde_json::from_value(want[&group.root].clone()).unwrap_or_else(|_| panic!("{key}: no reference scores for {}", group.root));
            assert_eq!(got.len(), want.len(), "{key} {}: units", group.root);
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            for (u, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((*g as f64 - w).abs() <= 1e-3 * scale, "{key} {} unit {u}: {g} vs reference {w}", group.root);
            }
        }
    }
}

#[test]
fn block_pruning_keeps_the_units_the_reference_scores_rank_highest() {
    use llmprune_shared::planner::{GqaMode, LayerProfile, PruneRequest, Scope, Strategy};
    use llmprune_worker::prune::pipeline::prune;
    let dir = fixture("tiny_gqa");
    let golden = load_tensors(&dir.join("golden.safetensors"));
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("importance.json")).unwrap()).unwrap();
    let windows: Vec<Vec<u32>> = golden["input_ids"].to_dtype(candle_core::DType::U32).unwrap().to_vec2::<u32>().unwrap();
    let req = PruneRequest {
        strategy: Strategy::Block,
        ratio: 0.5,
        attn_layers: 0..3,
        mlp_layers: 1..3,
        criterion: Criterion::ParamFirst,
        reduction: Reduction::Sum,
        scope: Scope::Local,
        normalize: false,
        layers: 0..3,
        gqa: GqaMode::KvGroups,
        round_to: 1,
        steps: 1,
        seed: 0,
        reconstruct: false,
        compensate_bias: false,
        damping: 0.01,
        profile: LayerProfile::Uniform,
    };
    let mut calibration = |_| Ok(windows.clone());
    let out = prune(tiny_model("tiny_gqa"), &mut calibration, &req).unwrap();
    let groups = &out.steps[0].groups;
    let roots: Vec<&str> = groups.iter().map(|g| g.root.as_str()).collect();
    assert_eq!(roots, ["layers.0.k", "layers.1.k", "layers.1.gate", "layers.2.k", "layers.2.gate"]);
    for g in groups {
        // Expected from the numpy scores: drop the lowest C − int(C/2) channels' worth of units.
        let want_scores: Vec<f64> = serde_json::from_value(reference["scores"]["param_first"][&g.root].clone()).unwrap();
        let width = if g.root.ends_with(".k") { 8 } else { 1 };
        let n_prune = (g.units * width - g.units * width / 2) / width;
        let mut order: Vec<usize> = (0..g.units).collect();
        order.sort_by(|&a, &b| want_scores[a].total_cmp(&want_scores[b]));
        let mut want: Vec<usize> = order[n_prune..].to_vec();
        want.sort_unstable();
        assert_eq!(g.kept, want, "{}", g.root);
    }
    // Layer 2 has one KV head: half of 8 channels is less than a head, so it keeps it.
    let shapes: Vec<(usize, usize, usize)> = out.spec.layers.iter().map(|l| (l.n_heads, l.n_kv_heads, l.intermediate_size)).collect();
    assert_eq!(shapes, [(3, 1, 64), (2, 1, 20), (2, 1, 12)]);

    let bad = PruneRequest { attn_layers: 2..4, ..req.clone() };
    let err = prune(tiny_model("tiny_gqa"), &mut calibration, &bad).err().expect("must fail").to_string();
    assert!(err.contains("attention layer range 2:4 is outside the model's 3 layers"), "{err}");
    let bad = PruneRequest { ratio: 1.5, ..req };
    let err = prune(tiny_model("tiny_gqa"), &mut calibration, &bad).err().expect("must fail").to_string();
    assert!(err.contains("pruning ratio 1.5 is outside (0, 1)"), "{err}");
}

/// Weights in bf16 and f16, as GPU workers hold them: the Fisher diagonal is squared and
/// summed in f32 (no entry underflows as the reference's fp16 squares do), and both statistics
/// stay near the numpy golden, within the half-precision rounding of the forward and backward
/// passes.
#[test]
fn half_precision_weights_give_f32_statistics_near_the_reference() {
    use candle_core::DType;
    use llmprune_worker::{LlamaModel, LoadOptions};
    let dir = fixture("tiny_gqa");
    let golden = load_tensors(&dir.join("golden.safetensors"));
    let fisher = load_tensors(&dir.join("fisher.safetensors"));
    let windows: Vec<Vec<u32>> = golden["input_ids"].to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap();
    for (dtype, tol) in [(DType::BF16, 5e-2), (DType::F16, 1e-2)] {
        let f32_model = tiny_model("tiny_gqa");
        let opts = LoadOptions { dtype, ..LoadOptions::full(&f32_model.spec) };
        let source = llmprune_worker::loader::InMemoryWeights { label: "tiny_gqa".into(), tensors: f32_model.weights_by_name() };
        let mut model = LlamaModel::load(f32_model.spec.clone(), &source, &opts, &candle_core::Device::Cpu).unwrap();
        let vars = model.make_trainable(|_| true).unwrap();
        assert!(vars.iter().all(|(_, v)| v.as_tensor().dtype() == dtype));
        let stats = gradient_stats(&model, &vars, &windows, true).unwrap();
        let mut worst = (0f64, 0f64);
        for (name, _) in &vars {
            let (g, f) = (&stats.grad[name], &stats.fisher.as_ref().unwrap()[name]);
            // The gradient as backward computed it; the Fisher squared and summed in f32.
            assert_eq!((g.dtype(), f.dtype()), (dtype, DType::F32), "{dtype:?} {name}");
            let zeros = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().filter(|v| **v == 0.0).count();
            assert_eq!(zeros(f), zeros(&fisher[name].to_dtype(DType::F32).unwrap()), "{dtype:?} {name}: Fisher entries lost to underflow");
            worst.0 = worst.0.max(rel_err(g, &golden[&format!("grad.{name}")]));
            worst.1 = worst.1.max(rel_err(f, &fisher[name]));
        }
        eprintln!("{dtype:?}: worst relative error gradient {:.2e}, Fisher {:.2e}", worst.0, worst.1);
        assert!(worst.0 <= tol && worst.1 <= 2.0 * tol, "{dtype:?}: relative errors {worst:?}");
    }
}

/// The statistics gathered a layer at a time (every batch of windows through one layer before
/// the next) equal those of whole-model passes, one batch of windows after another, to the bit:
/// the same operations on the same inputs, summed in the same order.
#[test]
fn input_statistics_gathered_a_layer_at_a_time_equal_whole_passes_to_the_bit() {
    use candle_core::{DType, Tensor};
    use llmprune_worker::cluster::shard::Collectives;
    use llmprune_worker::collective::SingleRank;
    use llmprune_worker::lora::Projection;
    use llmprune_worker::model::Exec;
    use llmprune_worker::prune::activations::{consumer_weight, gather_activation_stats, is_consumer_weight, WINDOWS_PER_PASS};
    use std::collections::HashMap;
    let model = tiny_model("tiny_gqa");
    // Three batches, the last one short.
    let count = 2 * WINDOWS_PER_PASS + 3;
    let windows: Vec<Vec<u32>> = (0..count).map(|w| (0..12).map(|t| ((w * 31 + t * 7) % model.spec.vocab_size) as u32).collect()).collect();
    let mut comms = Collectives { pipeline: Box::new(SingleRank), replicas: Box::new(SingleRank) };
    let mut reported = Vec::new();
    let stats = gather_activation_stats(&model, &mut comms, &windows, &is_consumer_weight, &mut |done, all| reported.push((done, all))).unwrap();
    assert_eq!(reported.last(), Some(&(3, 3)), "progress ends with every pass done");

    let mut want: HashMap<String, (Tensor, Tensor)> = HashMap::new();
    for batch in windows.chunks(WINDOWS_PER_PASS) {
        let ids = Tensor::from_vec(batch.concat(), (batch.len(), 12), model.device()).unwrap();
        let mut tap = |layer: usize, projection: Projection, x: &Tensor| -> llmprune_worker::error::Result<()> {
            let name = consumer_weight(layer, projection).unwrap();
            let x = x.to_dtype(DType::F32)?;
            let (sum, gram) = (x.sum(0)?, x.t()?.matmul(&x)?);
            let next = match want.remove(&name) {
                Some((s, g)) => ((&s + sum)?, (&g + gram)?),
                None => (sum, gram),
            };
            want.insert(name, next);
            Ok(())
        };
        model.forward_layers_tapped(model.embed_tokens(&ids).unwrap(), Exec::Inference, &mut tap).unwrap();
    }
    assert_eq!(stats.len(), want.len());
    for (name, (sum, gram)) in want {
        let got = &stats[&name];
        assert_eq!(got.tokens, count * 12, "{name}: tokens");
        assert_eq!(got.sum.to_vec1::<f32>().unwrap(), sum.to_vec1::<f32>().unwrap(), "{name}: input sums");
        assert_eq!(got.gram.to_vec2::<f32>().unwrap(), gram.to_vec2::<f32>().unwrap(), "{name}: Gram matrix");
    }
}

/// The activation criteria against `tests/golden/gen_activation_criteria.py` (transformers'
/// forward pass in float64 with hooks on o_proj and down_proj, numpy formulas; obs computed as
/// the residual of the re-solved consumer rather than by the inverse-block formula).
#[test]
fn tiny_gqa_input_statistics_activation_scores_and_reconstruction_match_the_reference() {
    use llmprune_shared::plan::Reconstruction;
    use llmprune_worker::cluster::shard::Collectives;
    use llmprune_worker::collective::SingleRank;
    use llmprune_worker::prune::activation_scores::{activation_group_scores, consumer_member};
    use llmprune_worker::prune::activations::{gather_activation_stats, is_consumer_weight};
    use llmprune_worker::prune::reconstruct::{reconstruct_consumer, rewrite_consumer};
    let dir = fixture("tiny_gqa");
    let golden = load_tensors(&dir.join("golden.safetensors"));
    let inputs = load_tensors(&dir.join("activations.safetensors"));
    let rebuilt = load_tensors(&dir.join("reconstructed.safetensors"));
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("activation_scores.json")).unwrap()).unwrap();
    let damping = reference["damping"].as_f64().unwrap();
    let model = tiny_model("tiny_gqa");
    let windows: Vec<Vec<u32>> = golden["input_ids"].to_dtype(candle_core::DType::U32).unwrap().to_vec2::<u32>().unwrap();
    let mut comms = Collectives { pipeline: Box::new(SingleRank), replicas: Box::new(SingleRank) };
    let stats = gather_activation_stats(&model, &mut comms, &windows, &is_consumer_weight, &mut |_, _| {}).unwrap();
    assert_eq!(stats.len(), 2 * model.spec.n_layers());
    for (name, s) in &stats {
        assert_eq!(s.tokens as u64, reference["tokens"].as_u64().unwrap(), "{name}: tokens");
        let e = rel_err(&s.sum, &inputs[&format!("sum.{name}")]);
        assert!(e <= 1e-5, "input sums of {name}: relative error {e}");
        let e = rel_err(&s.gram, &inputs[&format!("gram.{name}")]);
        assert!(e <= 1e-5, "input Gram matrix of {name}: relative error {e}");
    }

    let weights = model.weights_by_name();
    let groups = llama_graph(&model.spec, Fusion::Separate).groups().unwrap();
    for (key, criterion) in [("fluctuation", Criterion::Fluctuation), ("wanda", Criterion::Wanda), ("obs", Criterion::Obs)] {
        let want = reference["scores"][key].as_object().unwrap();
        let scored: Vec<_> = groups.iter().filter(|g| want.contains_key(&g.root)).collect();
        assert_eq!(scored.len(), want.len(), "{key}: every head and neuron group");
        for group in scored {
            let got = activation_group_scores(group, criterion, &weights, &stats, damping).unwrap();
            let want: Vec<f64> = serde_json::from_value(want[&group.root].clone()).unwrap();
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            assert_eq!(got.len(), want.len(), "{key} {}: units", group.root);
            for (u, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((*g as f64 - w).abs() <= 1e-4 * scale, "{key} {} unit {u}: {g} vs reference {w}", group.root);
            }
        }
        // Hidden channels have no consumer whose inputs were gathered.
        let hidden = groups.iter().find(|g| g.root == "embed_tokens.out").unwrap();
        assert!(activation_group_scores(hidden, criterion, &weights, &stats, damping).unwrap_err().to_string().contains("score heads and neurons"));
    }

    // Each consumer without the channels of its group's first unit, the rest re-solved.
    assert_eq!(rebuilt.len(), 5, "the last layer's o_proj has one KV head: nothing remains to re-solve");
    for (name, want) in &rebuilt {
        let group = groups.iter().find(|g| g.members.iter().any(|m| m.axis == Axis::Cols && &m.param == name)).unwrap();
        let member = consumer_member(group, &stats).unwrap();
        let kept: Vec<usize> = member.channels[1..].iter().flatten().copied().collect();
        let got = reconstruct_consumer(name, &weights[name], &stats[name], &kept, damping).unwrap();
        let e = rel_err(&got, want);
        assert!(e <= 1e-4, "reconstruction of {name}: relative error {e}");
        // Bias compensation of the same cut: alone (the weight stays), and with the kept
        // columns re-solved as least squares with an intercept.
        let compensated = load_tensors(&dir.join("compensated.safetensors"));
        let how = |weights, bias| Reconstruction { damping, windows: windows.clone(), weights, bias };
        let alone = rewrite_consumer(name, &weights[name], &stats[name], &kept, &how(false, true)).unwrap();
        assert!(alone.weight.is_none(), "{name}: compensation alone keeps the weight");
        let e = rel_err(&alone.bias_delta.unwrap(), &compensated[&format!("bias_only.{name}")]);
        assert!(e <= 1e-4, "bias compensation of {name}: relative error {e}");
        let both = rewrite_consumer(name, &weights[name], &stats[name], &kept, &how(true, true)).unwrap();
        let e = rel_err(&both.weight.unwrap(), &compensated[&format!("weight.{name}")]);
        assert!(e <= 1e-4, "reconstruction with an intercept of {name}: weight relative error {e}");
        // The covariance is E[xxᵀ] − μμᵀ from f32 sums, and the bias a difference of means:
        // both cancel digits, so this one holds to 1e-3 of the golden's float64.
        let e = rel_err(&both.bias_delta.unwrap(), &compensated[&format!("bias.{name}")]);
        assert!(e <= 1e-3, "reconstruction with an intercept of {name}: bias relative error {e}");
        let plain = rewrite_consumer(name, &weights[name], &stats[name], &kept, &how(true, false)).unwrap();
        assert!(plain.bias_delta.is_none() && rel_err(&plain.weight.unwrap(), want) <= 1e-4, "{name}: reconstruction alone");
    }
}

#[test]
fn many_windows_accumulate_the_gradient_of_the_mean_loss_in_blocks() {
    use llmprune_worker::model::Exec;
    use llmprune_worker::prune::statistics::GRADIENT_WINDOWS_PER_PASS;
    // 37 windows: blocks of 16, 16 and 5, weighted 16/37, 16/37, 5/37.
    let windows: Vec<Vec<u32>> = (0..37u32).map(|j| (0..8).map(|t| (j * 13 + t * 7 + 1) % 96).collect()).collect();
    assert!(windows.len() > 2 * GRADIENT_WINDOWS_PER_PASS);
    let mut model = tiny_model("tiny_gqa");
    let vars = model.make_trainable(|_| true).unwrap();
    let stats = gradient_stats(&model, &vars, &windows, false).unwrap();
    // One pass over all windows, as the reference takes it.
    let batch = candle_core::Tensor::from_vec(windows.concat(), (windows.len(), 8), &candle_core::Device::Cpu).unwrap();
    let store = model.loss(&batch, Exec::Differentiable).unwrap().backward().unwrap();
    for (name, var) in &vars {
        let e = rel_err(&stats.grad[name], store.get(var.as_tensor()).unwrap());
        assert!(e <= 1e-5, "gradient of {name}: relative error {e} between blocks and one pass");
    }
}
