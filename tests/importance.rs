//! Gradient statistics and group importance of the tiny GQA model (per-layer shapes) against
//! an independent numpy implementation of LLM-Pruner's formulas (`tests/golden/gen_importance.py`):
//! the batch gradient and the per-window Fisher diagonal, then every group's scores for six
//! criteria, on the groups that discovery finds.

use candle_core::Tensor;
use llmprune_shared::depgraph::{llama_graph, Fusion};
use llmprune_tests::{fixture, load_tensors, rel_err, tiny_model};
use llmprune_worker::prune::importance::{group_scores, Criterion, Reduction};
use llmprune_worker::prune::statistics::gradient_stats;
use std::collections::HashMap;

#[test]
fn tiny_gqa_statistics_and_group_scores_match_the_reference_formulas() {
    let dir = fixture("tiny_gqa");
    let golden = load_tensors(&dir.join("golden.safetensors"));
    let fisher = load_tensors(&dir.join("fisher.safetensors"));
    let mut model = tiny_model("tiny_gqa");
    let vars = model.make_trainable(|_| true).unwrap();
    let windows: Vec<Vec<u32>> = golden["input_ids"]
        .to_dtype(candle_core::DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let stats = gradient_stats(&model, &vars, &windows, true).unwrap();
    for (name, _) in &vars {
        let e = rel_err(&stats.grad[name], &golden[&format!("grad.{name}")]);
        assert!(e <= 1e-3, "gradient of {name}: relative error {e}");
        let e = rel_err(&stats.fisher.as_ref().unwrap()[name], &fisher[name]);
        assert!(e <= 1e-3, "Fisher diagonal of {name}: relative error {e}");
    }

    let weights: HashMap<String, Tensor> = model.named_weights().into_iter().map(|(n, t)| (n, t.clone())).collect();
    let groups = llama_graph(&model.spec, Fusion::Separate).groups().unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("importance.json")).unwrap()).unwrap();
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
            let want: Vec<f64> = serde_json::from_value(want[&group.root].clone())
                .unwrap_or_else(|_| panic!("{key}: no reference scores for {}", group.root));
            assert_eq!(got.len(), want.len(), "{key} {}: units", group.root);
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            for (u, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - w).abs() <= 1e-3 * scale,
                    "{key} {} unit {u}: {g} vs reference {w}",
                    group.root
                );
            }
        }
    }
}
