//! The fused ops against candle's own composed (differentiable) formulations: same forward
//! values, same gradients for every input.

use candle_core::{Device, Tensor, Var, D};
use llmprune_worker::ops;

mod common;
use common::randn;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Gradients of `Σ f(inputs) ⊙ r` for a fixed random `r`, for each input.
fn grads(f: impl Fn(&[Tensor]) -> Tensor, inputs: &[Tensor], seed: u64) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts);
    let r = randn(y.dims(), seed);
    let loss = (&y * &r).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let gs = vars.iter().map(|v| g.get(v.as_tensor()).expect("input without gradient").clone()).collect();
    (y.detach(), gs)
}

fn assert_same(name: &str, ours: (Tensor, Vec<Tensor>), reference: (Tensor, Vec<Tensor>), tol: f32) {
    let d = max_abs_diff(&ours.0, &reference.0);
    assert!(d < tol, "{name}: forward differs by {d}");
    for (i, (a, b)) in ours.1.iter().zip(&reference.1).enumerate() {
        let d = max_abs_diff(a, b);
        assert!(d < tol, "{name}: gradient of input {i} differs by {d}");
    }
}

#[test]
fn rms_norm_matches_composed() {
    let x = (randn(&[3, 5, 16], 1) * 3.0).unwrap();
    let w = randn(&[16], 2);
    let ours = grads(|t| ops::rms_norm(&t[0], &t[1], 1e-5).unwrap(), &[x.clone(), w.clone()], 3);
    let reference = grads(|t| candle_nn::ops::rms_norm_slow(&t[0], &t[1], 1e-5).unwrap(), &[x.clone(), w.clone()], 3);
    assert_same("rms_norm", ours, reference, 1e-4);
    let fused = candle_nn::ops::rms_norm(&x, &w, 1e-5).unwrap();
    assert!(max_abs_diff(&fused, &ops::rms_norm(&x, &w, 1e-5).unwrap()) < 1e-5);
}

#[test]
fn rope_matches_composed() {
    let x = randn(&[2, 3, 7, 8], 4);
    let cos = randn(&[7, 4], 5);
    let sin = randn(&[7, 4], 6);
    let ours = grads(|t| ops::rope(&t[0], &cos, &sin).unwrap(), std::slice::from_ref(&x), 7);
    let reference = grads(|t| candle_nn::rotary_emb::rope_slow(&t[0], &cos, &sin).unwrap(), std::slice::from_ref(&x), 7);
    assert_same("rope", ours, reference, 1e-5);
    let fused = candle_nn::rotary_emb::rope(&x, &cos, &sin).unwrap();
    assert!(max_abs_diff(&fused, &ops::rope(&x, &cos, &sin).unwrap()) < 1e-6);
}

#[test]
fn swiglu_matches_composed() {
    // Gates spread over ±6 reach both tails of the sigmoid.
    let gate = (randn(&[4, 6, 33], 8) * 6.0).unwrap();
    let up = randn(&[4, 6, 33], 9);
    let composed = |t: &[Tensor]| (t[0].silu().unwrap() * &t[1]).unwrap();
    let ours = grads(|t| ops::swiglu(&t[0], &t[1]).unwrap(), &[gate.clone(), up.clone()], 10);
    let reference = grads(composed, &[gate.clone(), up.clone()], 10);
    // The forward pass is candle's own expression: identical, not just close.
    assert_eq!(max_abs_diff(&ours.0, &reference.0), 0.0, "swiglu forward");
    assert_same("swiglu", ours, reference, 1e-5);
    assert!(ops::swiglu(&gate, &up.narrow(2, 0, 32).unwrap()).is_err(), "shape mismatch must be refused");
}

/// The same softmax written with candle's differentiable primitives and an explicit mask.
fn composed_causal_softmax(scores: &Tensor, scale: f64, q_len: usize) -> Tensor {
    let (_, _, rows, keys) = scores.dims4().unwrap();
    let offset = keys - q_len;
    let mask: Vec<f32> = (0..rows).flat_map(|r| (0..keys).map(move |j| if j > offset + r % q_len { -1e9 } else { 0.0 })).collect();
    let mask = Tensor::from_vec(mask, (rows, keys), &Device::Cpu).unwrap();
    candle_nn::ops::softmax(&(scores * scale).unwrap().broadcast_add(&mask).unwrap(), D::Minus1).unwrap()
}

#[test]
fn causal_softmax_matches_composed_with_gqa_rows() {
    // 2 query heads per KV head folded into rows: rows = 2 × 5 positions.
    let s = (randn(&[2, 3, 10, 5], 8) * 4.0).unwrap();
    let ours = grads(|t| ops::causal_softmax(&t[0], 0.35, 5).unwrap(), std::slice::from_ref(&s), 9);
    let reference = grads(|t| composed_causal_softmax(&t[0], 0.35, 5), std::slice::from_ref(&s), 9);
    assert_same("causal_softmax", ours, reference, 1e-5);
}

#[test]
fn causal_softmax_with_cached_keys() {
    // 3 new queries against 7 keys: query i sees keys 0..=4+i.
    let s = randn(&[1, 2, 3, 7], 10);
    let ours = grads(|t| ops::causal_softmax(&t[0], 1.0, 3).unwrap(), std::slice::from_ref(&s), 11);
    let reference = grads(|t| composed_causal_softmax(&t[0], 1.0, 3), std::slice::from_ref(&s), 11);
    assert_same("causal_softmax(cache)", ours, reference, 1e-5);
    // Row 0 of both heads must put zero weight on keys 5 and 6.
    let row0: Vec<f32> = ops::causal_softmax(&s, 1.0, 3).unwrap().narrow(2, 0, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!((&row0[5..7], &row0[12..14]), (&[0.0, 0.0][..], &[0.0, 0.0][..]));
}

#[test]
fn lm_head_nll_matches_composed_in_every_chunking() {
    let h = randn(&[7, 6], 12);
    let w = (randn(&[11, 6], 13) * 2.0).unwrap();
    let targets = [3u32, 0, ops::IGNORE_TARGET, 10, 5, 5, 1];
    let composed = |t: &[Tensor]| {
        let logits = t[0].matmul(&t[1].t().unwrap()).unwrap();
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let idx: Vec<u32> = targets.iter().map(|&x| if x == ops::IGNORE_TARGET { 0 } else { x }).collect();
        let keep: Vec<f32> = targets.iter().map(|&x| if x == ops::IGNORE_TARGET { 0.0 } else { 1.0 }).collect();
        let idx = Tensor::from_vec(idx, (7, 1), &Device::Cpu).unwrap();
        let keep = Tensor::from_vec(keep, 7, &Device::Cpu).unwrap();
        (lp.gather(&idx, 1).unwrap().squeeze(1).unwrap().neg().unwrap() * keep).unwrap()
    };
    // Logits kept between the passes (limit 1000 floats) and recomputed (limit 0).
    for keep in [1000, 0] {
        for chunk in [1, 3, 7, 100] {
            let f = |t: &[Tensor]| ops::lm_head_nll_chunked(&t[0], &t[1], &targets, chunk, keep).unwrap();
            let ours = grads(f, &[h.clone(), w.clone()], 14);
            let reference = grads(composed, &[h.clone(), w.clone()], 14);
            assert_same(&format!("lm_head_nll(chunk {chunk}, keep {keep})"), ours, reference, 1e-5);
        }
    }
}

#[test]
fn lm_head_nll_tiled_equals_composed_in_every_tiling() {
    let h = randn(&[7, 6], 12);
    // Later vocabulary slices hold larger logits, so the running maximum grows tile by tile.
    let ramp = Tensor::arange(0f32, 11., &Device::Cpu).unwrap().unsqueeze(1).unwrap();
    let w = (randn(&[11, 6], 13) * 2.0).unwrap().broadcast_mul(&(ramp * 0.3).unwrap()).unwrap();
    let targets = [3u32, 0, ops::IGNORE_TARGET, 10, 5, 5, 1];
    let logits = h.matmul(&w.t().unwrap()).unwrap();
    let lp: Vec<Vec<f32>> = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap().to_vec2().unwrap();
    let reference: Vec<f32> = targets.iter().enumerate().map(|(i, &t)| if t == ops::IGNORE_TARGET { 0.0 } else { -lp[i][t as usize] }).collect();
    for rows in [1, 3, 7, 100] {
        for vocab in [1, 2, 4, 11, 64] {
            let ours: Vec<f32> = ops::lm_head_nll_tiled(&h, &w, &targets, rows, vocab).unwrap().to_vec1().unwrap();
            let worst = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "tiles of {rows} rows × {vocab} entries: {ours:?} vs {reference:?}");
        }
    }
    // Inference (no graph) takes the tiled path through the public entry point.
    let ours: Vec<f32> = ops::lm_head_nll(&h, &w, &targets).unwrap().to_vec1().unwrap();
    assert!(ours.iter().zip(&reference).all(|(a, b)| (a - b).abs() < 1e-5));
}

#[test]
fn lm_head_nll_rejects_targets_outside_vocabulary() {
    let e = ops::lm_head_nll(&randn(&[2, 4], 1), &randn(&[5, 4], 2), &[1, 5]).unwrap_err();
    assert!(e.to_string().contains("target id 5 is outside the vocabulary of 5"), "{e}");
}

#[test]
fn frozen_linear_equals_matmul_in_value_and_input_gradient() {
    let w = randn(&[24, 40], 11);
    let (y, gx) = grads(|t| ops::frozen_linear(&t[0], &w).unwrap(), &[randn(&[7, 40], 12)], 13);
    let (y_ref, gx_ref) = grads(|t| t[0].matmul(&w.t().unwrap()).unwrap(), &[randn(&[7, 40], 12)], 13);
    assert!(max_abs_diff(&y, &y_ref) < 1e-6);
    assert!(max_abs_diff(&gx[0], &gx_ref[0]) < 1e-6);
}

#[test]
fn lora_linear_equals_the_composed_adapter_with_and_without_dropout() {
    use llmprune_worker::lora::{dropout_mask, Projection};
    let w = randn(&[24, 40], 21);
    for p in [0.0f32, 0.3] {
        let dropout = ops::Dropout { key: 99, layer: 2, projection: Projection::Up, p };
        let inputs = [randn(&[7, 40], 22), randn(&[4, 40], 23), randn(&[24, 4], 24)];
        let (y, g) = grads(|t| ops::lora_linear(&t[0], &w, &t[1], &t[2], 2.5, Some(dropout)).unwrap(), &inputs, 25);
        let mask = Tensor::from_vec(dropout_mask(99, 2, Projection::Up, 7 * 40, p), (7, 40), &Device::Cpu).unwrap();
        let composed = |t: &[Tensor]| {
            let low = (t[0].mul(&mask).unwrap().matmul(&t[1].t().unwrap()).unwrap() * 2.5).unwrap();
            (t[0].matmul(&w.t().unwrap()).unwrap() + low.matmul(&t[2].t().unwrap()).unwrap()).unwrap()
        };
        let (y_ref, g_ref) = grads(composed, &inputs, 25);
        assert!(max_abs_diff(&y, &y_ref) < 1e-5, "p={p}");
        for (i, (a, b)) in g.iter().zip(&g_ref).enumerate() {
            assert!(max_abs_diff(a, b) < 1e-5, "p={p}: gradient of input {i}");
        }
    }
}
