//! The groups discovered for tiny models, against the structures LLM-Pruner prunes
//! (reference §3.2): Type A (MLP neurons), Type B (heads; under GQA a KV head with its query
//! heads), Type C (hidden channels across the whole network).

use super::*;
use crate::ModelSpec;
use serde_json::json;
use std::path::Path;

fn spec(extra: serde_json::Value) -> ModelSpec {
    let mut v = json!({
        "model_type": "llama", "vocab_size": 11, "hidden_size": 8, "head_dim": 2, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 6,
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    ModelSpec::from_hf_config(&v, Path::new("config.json")).unwrap()
}

fn find<'a>(groups: &'a [Group], root: &str) -> &'a Group {
    groups.iter().find(|g| g.root == root).unwrap_or_else(|| panic!("no group rooted at {root}: {groups:#?}"))
}

fn member<'a>(g: &'a Group, param: &str, axis: Axis) -> &'a GroupMember {
    g.members.iter().find(|m| m.param == param && m.axis == axis).unwrap_or_else(|| panic!("{} lacks {param} {axis:?}", g.root))
}

/// Channels `[u·w, (u+1)·w)` for each unit `u`.
fn blocks(units: usize, w: usize) -> Vec<Vec<usize>> {
    (0..units).map(|u| (u * w..(u + 1) * w).collect()).collect()
}

#[test]
fn mha_gives_heads_neurons_and_one_hidden_group() {
    let groups = llama_graph(&spec(json!({})), Fusion::Separate).groups().unwrap();
    assert_eq!(groups.len(), 1 + 2 + 2, "hidden + per layer heads and neurons: {groups:#?}");
    for i in 0..2 {
        let p = format!("model.layers.{i}");
        // MHA: all four spaces have 4 heads; the first, q, is the root (as LLM-Pruner roots at q_proj).
        let heads = find(&groups, &format!("layers.{i}.q"));
        assert_eq!(heads.units, 4);
        let params: Vec<(&str, Axis)> = heads.members.iter().map(|m| (m.param.as_str(), m.axis)).collect();
        let want = ["q_proj", "k_proj", "v_proj", "o_proj"];
        assert_eq!(params.len(), 4, "{params:?}");
        for name in want {
            let axis = if name == "o_proj" { Axis::Cols } else { Axis::Rows };
            assert_eq!(member(heads, &format!("{p}.self_attn.{name}.weight"), axis).channels, blocks(4, 2));
        }
        let neurons = find(&groups, &format!("layers.{i}.gate"));
        assert_eq!(neurons.units, 6);
        assert_eq!(neurons.members.len(), 3);
        for (name, axis) in [("gate_proj", Axis::Rows), ("up_proj", Axis::Rows), ("down_proj", Axis::Cols)] {
            assert_eq!(member(neurons, &format!("{p}.mlp.{name}.weight"), axis).channels, blocks(6, 1));
        }
    }
    let hidden = find(&groups, "embed_tokens.out");
    assert_eq!(hidden.units, 8);
    let mut want: Vec<(String, Axis)> =
        vec![("model.embed_tokens.weight".into(), Axis::Cols), ("model.norm.weight".into(), Axis::Elements), ("lm_head.weight".into(), Axis::Cols)];
    for i in 0..2 {
        let p = format!("model.layers.{i}");
        want.push((format!("{p}.input_layernorm.weight"), Axis::Elements));
        want.push((format!("{p}.post_attention_layernorm.weight"), Axis::Elements));
        for n in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"] {
            want.push((format!("{p}.{n}.weight"), Axis::Cols));
        }
        want.push((format!("{p}.self_attn.o_proj.weight"), Axis::Rows));
        want.push((format!("{p}.mlp.down_proj.weight"), Axis::Rows));
    }
    let mut got: Vec<(String, Axis)> = hidden.members.iter().map(|m| (m.param.clone(), m.axis)).collect();
    let key = |x: &(String, Axis)| format!("{}{:?}", x.0, x.1);
    got.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(got, want);
    assert!(hidden.members.iter().all(|m| m.channels == blocks(8, 1)));
}

#[test]
fn gqa_with_per_layer_shapes_groups_each_kv_head_with_its_query_heads() {
    let s = spec(json!({
        "num_attention_heads_per_layer": [4, 2], "num_key_value_heads_per_layer": [2, 1],
        "intermediate_size_per_layer": [6, 3],
    }));
    let groups = llama_graph(&s, Fusion::Separate).groups().unwrap();
    // Layer 0: 2 KV heads of 2 query heads each; the KV side is the root, as LLM-Pruner's
    // llama3.py roots at k_proj. KV head 0 takes query heads 0 and 1 (channels 0..4).
    let l0 = find(&groups, "layers.0.k");
    assert_eq!(l0.units, 2);
    assert_eq!(member(l0, "model.layers.0.self_attn.k_proj.weight", Axis::Rows).channels, blocks(2, 2));
    assert_eq!(member(l0, "model.layers.0.self_attn.v_proj.weight", Axis::Rows).channels, blocks(2, 2));
    assert_eq!(member(l0, "model.layers.0.self_attn.q_proj.weight", Axis::Rows).channels, blocks(2, 4));
    assert_eq!(member(l0, "model.layers.0.self_attn.o_proj.weight", Axis::Cols).channels, blocks(2, 4));
    // Layer 1: one KV head serving both query heads.
    let l1 = find(&groups, "layers.1.k");
    assert_eq!(l1.units, 1);
    assert_eq!(member(l1, "model.layers.1.self_attn.q_proj.weight", Axis::Rows).channels, blocks(1, 4));
    assert_eq!(find(&groups, "layers.1.gate").units, 3);
    assert_eq!(groups.len(), 5);
}

#[test]
fn query_heads_of_a_gqa_group_become_units_and_kv_heads_stay() {
    let s = spec(json!({"num_key_value_heads": 2, "attention_bias": true, "model_type": "qwen2"}));
    let groups = llama_graph(&s, Fusion::Separate).groups().unwrap();
    let q = query_head_group(find(&groups, "layers.1.k"), 2).unwrap();
    assert_eq!((q.root.as_str(), q.units, q.unit_width), ("layers.1.q_heads", 4, 2));
    assert_eq!(structure(&q.root), Some(Structure::QueryHeads(1)));
    let mut params: Vec<(&str, Axis)> = q.members.iter().map(|m| (m.param.as_str(), m.axis)).collect();
    params.sort_by_key(|p| format!("{p:?}"));
    assert_eq!(
        params,
        vec![
            ("model.layers.1.self_attn.o_proj.weight", Axis::Cols),
            ("model.layers.1.self_attn.q_proj.bias", Axis::Elements),
            ("model.layers.1.self_attn.q_proj.weight", Axis::Rows),
        ]
    );
    // Query head t is channels 2t, 2t+1 of q_proj's rows and o_proj's columns.
    assert!(q.members.iter().all(|m| m.channels == blocks(4, 2)));
    // MHA layers and non-head groups have no query-head group.
    let mha = llama_graph(&spec(json!({})), Fusion::Separate).groups().unwrap();
    assert!(query_head_group(find(&mha, "layers.0.q"), 1).is_none());
    assert!(query_head_group(find(&groups, "layers.0.gate"), 2).is_none());
}

#[test]
fn fused_projections_are_cut_at_their_offsets() {
    let s = spec(json!({"num_key_value_heads": 2}));
    let groups = llama_graph(&s, Fusion::Fused).groups().unwrap();
    let heads = find(&groups, "layers.0.k");
    // qkv_proj rows: q heads at 0..8, k at 8..12, v at 12..16 (head_dim 2). KV head 0 takes
    // q rows 0..4, k rows 8..10, v rows 12..14.
    let qkv = member(heads, "model.layers.0.self_attn.qkv_proj.weight", Axis::Rows);
    assert_eq!(qkv.channels, vec![vec![0, 1, 2, 3, 8, 9, 12, 13], vec![4, 5, 6, 7, 10, 11, 14, 15]]);
    assert_eq!(heads.members.len(), 2, "qkv_proj rows and o_proj columns");
    let neurons = find(&groups, "layers.0.gate");
    let gate_up = member(neurons, "model.layers.0.mlp.gate_up_proj.weight", Axis::Rows);
    assert_eq!(gate_up.channels[0], [0, 6]);
    assert_eq!(gate_up.channels[5], [5, 11]);
    let hidden = find(&groups, "embed_tokens.out");
    assert_eq!(member(hidden, "model.layers.1.self_attn.qkv_proj.weight", Axis::Cols).channels, blocks(8, 1));
    assert_eq!(member(hidden, "model.layers.1.mlp.gate_up_proj.weight", Axis::Cols).channels, blocks(8, 1));
    // A fused bias is cut at the same offsets as the fused rows.
    let s = spec(json!({"model_type": "qwen2", "num_key_value_heads": 2}));
    let groups = llama_graph(&s, Fusion::Fused).groups().unwrap();
    let bias = member(find(&groups, "layers.0.k"), "model.layers.0.self_attn.qkv_proj.bias", Axis::Elements);
    assert_eq!(bias.channels, qkv.channels);
}

#[test]
fn qwen2_biases_follow_their_heads_and_a_tied_head_is_one_member() {
    let s = spec(json!({"model_type": "qwen2", "num_key_value_heads": 2, "tie_word_embeddings": true}));
    let groups = llama_graph(&s, Fusion::Separate).groups().unwrap();
    let heads = find(&groups, "layers.1.k");
    assert_eq!(member(heads, "model.layers.1.self_attn.q_proj.bias", Axis::Elements).channels, blocks(2, 4));
    assert_eq!(member(heads, "model.layers.1.self_attn.k_proj.bias", Axis::Elements).channels, blocks(2, 2));
    let hidden = find(&groups, "embed_tokens.out");
    let tied: Vec<_> = hidden.members.iter().filter(|m| m.param == "model.embed_tokens.weight").collect();
    assert_eq!(tied.len(), 1);
    assert_eq!(tied[0].channels, blocks(8, 1));
    assert!(hidden.members.iter().all(|m| m.param != "lm_head.weight"));
}

#[test]
fn inconsistent_couplings_are_refused() {
    let mut g = Graph::default();
    let (a, b) = (g.space("a", 3, 1), g.space("b", 4, 1));
    g.elementwise(&[a, b]);
    assert_eq!(g.groups().unwrap_err().to_string(), "`a` (3 units) and `b` (4 units) are coupled element-wise but differ in size");
    let mut g = Graph::default();
    let (kv, q) = (g.space("kv", 2, 4), g.space("q", 5, 4));
    g.expand(kv, q, 2);
    assert!(matches!(g.groups(), Err(GraphError::BadExpand { .. })));
}

#[test]
fn every_group_has_a_known_structure() {
    let s = spec(json!({"num_key_value_heads": 2}));
    let groups = llama_graph(&s, Fusion::Separate).groups().unwrap();
    let mut found: Vec<Structure> = groups.iter().map(|g| structure(&g.root).unwrap()).collect();
    found.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(found, [Structure::Heads(0), Structure::Heads(1), Structure::Hidden, Structure::Neurons(0), Structure::Neurons(1)]);
    assert_eq!(structure("layers.x.k"), None);
    assert_eq!(structure("layers.1.v"), None);
}

/// Every parameter name of a layer-0 head group, sorted.
fn head_members(s: &ModelSpec) -> Vec<String> {
    let groups = llama_graph(s, Fusion::Separate).groups().unwrap();
    let mut params: Vec<String> = find(&groups, "layers.0.k").members.iter().map(|m| format!("{} {:?}", m.param, m.axis)).collect();
    params.sort();
    params
}

#[test]
fn qwen3_heads_leave_their_qk_norms_whole() {
    // Qwen3's q/k norms act on the channels inside every head alike: removing whole heads
    // never touches them, so they are in no group (and channels inside a head are never units).
    let s = spec(json!({"model_type": "qwen3", "num_key_value_heads": 2}));
    let members = head_members(&s);
    assert!(members.iter().all(|m| !m.contains("norm")), "{members:?}");
    assert_eq!(members.len(), 4, "q rows, k rows, v rows, o columns: {members:?}");
    let groups = llama_graph(&s, Fusion::Separate).groups().unwrap();
    assert!(groups.iter().all(|g| g.members.iter().all(|m| !m.param.contains("q_norm") && !m.param.contains("k_norm"))));
    // The hidden channels reach the same weights as LLaMA's.
    let llama = spec(json!({"num_key_value_heads": 2}));
    let hidden = |s: &ModelSpec| find(&llama_graph(s, Fusion::Separate).groups().unwrap(), "embed_tokens.out").members.len();
    assert_eq!(hidden(&s), hidden(&llama));
    assert_eq!(s.n_params(), llama.n_params() + 2 * 2 * 2, "two head_dim-wide norms per layer");
}

#[test]
fn glm_heads_carry_their_qkv_biases_and_rotate_half_their_channels() {
    let s = spec(json!({"model_type": "glm", "num_key_value_heads": 2, "head_dim": 4, "partial_rotary_factor": 0.5}));
    assert!(s.attention_bias, "GLM's attention_bias defaults to true: q/k/v biases");
    assert_eq!(s.rotary_dim, 2);
    let members = head_members(&s);
    for bias in ["q_proj.bias", "k_proj.bias", "v_proj.bias"] {
        assert!(members.iter().any(|m| m.contains(bias)), "{bias} in {members:?}");
    }
    assert!(members.iter().all(|m| !m.contains("o_proj.bias")));
    let off = spec(json!({"model_type": "glm", "attention_bias": false}));
    assert!(!off.attention_bias);
    let err = ModelSpec::from_hf_config(
        &json!({"model_type": "qwen3", "vocab_size": 11, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 4, "intermediate_size": 6, "partial_rotary_factor": 0.5}),
        Path::new("c.json"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("partial_rotary_factor"), "{err}");
}
