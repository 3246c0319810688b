//! Every differentiable op's device-generic path (candle primitives, autograd) against its
//! fused CPU kernel: forward values and the gradient of every input, in f32 to float
//! rounding and in bf16 to bf16's precision. A GPU build runs the generic paths; these tests
//! are what make switching the device safe.

use candle_core::{DType, Device, Tensor, Var};
use llmprune_worker::ops::{self, generic};

mod common;
use common::randn;

/// Forward value and the gradients of `Σ f(inputs) ⊙ r` (a fixed random `r`), all in f32,
/// with the inputs given to `f` in `dtype`.
fn run(f: &dyn Fn(&[Tensor]) -> Tensor, inputs: &[Tensor], dtype: DType) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts).to_dtype(DType::F32).unwrap();
    let r = randn(y.dims(), 99);
    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let grads = vars.iter().map(|v| g.get(v.as_tensor()).expect("an input without gradient").to_dtype(DType::F32).unwrap()).collect();
    (y.detach(), grads)
}

/// Largest difference relative to the reference's largest magnitude.
fn relative(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1e-12);
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() / scale
}

/// The generic op equals the fused kernel in f32 within `f32_tol` and stays within `bf16_tol`
/// when run in bf16, forward and backward. `which` names the op in failures.
fn check(which: &str, fused: &dyn Fn(&[Tensor]) -> Tensor, generic: &dyn Fn(&[Tensor]) -> Tensor, inputs: &[Tensor], f32_tol: f32, bf16_tol: f32) {
    let (y, g) = run(fused, inputs, DType::F32);
    for (dtype, tol) in [(DType::F32, f32_tol), (DType::BF16, bf16_tol)] {
        let (y2, g2) = run(generic, inputs, dtype);
        let d = relative(&y2, &y);
        assert!(d <= tol, "{which} {dtype:?}: forward differs by {d} (relative)");
        for (i, (a, b)) in g2.iter().zip(&g).enumerate() {
            let d = relative(a, b);
            assert!(d <= tol, "{which} {dtype:?}: gradient of input {i} differs by {d} (relative)");
        }
    }
    // The fused entry point itself routes bf16 to the generic op (it has no bf16 kernel).
    let (y3, _) = run(fused, inputs, DType::BF16);
    assert!(relative(&y3, &y) <= bf16_tol, "{which}: the fused entry point in bf16");
}

#[test]
fn rms_norm_generic_equals_the_kernel() {
    let x = randn(&[3, 5, 64], 1);
    let w = (randn(&[64], 2) + 1.5).unwrap();
    check("rms_norm", &|t| ops::rms_norm(&t[0], &t[1], 1e-5).unwrap(), &|t| generic::rms_norm(&t[0], &t[1], 1e-5).unwrap(), &[x, w], 2e-6, 2e-2);
}

#[test]
fn rope_generic_equals_the_kernel() {
    let x = randn(&[2, 3, 7, 16], 3);
    let angles: Vec<f32> = (0..7).flat_map(|p| (0..8).map(move |i| p as f32 * 10f32.powf(-(i as f32) / 8.0))).collect();
    let a = Tensor::from_vec(angles, (7, 8), &Device::Cpu).unwrap();
    let (cos, sin) = (a.cos().unwrap(), a.sin().unwrap());
    // cos and sin are tables, not trained: only x's gradient is compared.
    let fused = |t: &[Tensor]| ops::rope(&t[0], &cos.to_dtype(t[0].dtype()).unwrap(), &sin.to_dtype(t[0].dtype()).unwrap()).unwrap();
    let gen = |t: &[Tensor]| generic::rope(&t[0], &cos, &sin).unwrap();
    check("rope", &fused, &gen, &[x], 1e-6, 1e-2);
}

#[test]
fn causal_softmax_generic_equals_the_kernel() {
    // 2 groups of 2 query heads × 3 new positions over 5 keys (2 cached).
    let scores = (randn(&[2, 2, 6, 5], 4) * 4.0).unwrap();
    check("causal_softmax", &|t| ops::causal_softmax(&t[0], 0.35, 3).unwrap(), &|t| generic::causal_softmax(&t[0], 0.35, 3).unwrap(), &[scores], 2e-6, 2e-2);
}

#[test]
fn swiglu_generic_equals_the_kernel() {
    let gate = (randn(&[4, 33], 5) * 3.0).unwrap();
    let up = randn(&[4, 33], 6);
    check("swiglu", &|t| ops::swiglu(&t[0], &t[1]).unwrap(), &|t| generic::swiglu(&t[0], &t[1]).unwrap(), &[gate, up], 2e-6, 2e-2);
}

#[test]
fn lm_head_nll_generic_equals_the_kernel() {
    let hidden = randn(&[6, 16], 7);
    let head = randn(&[50, 16], 8);
    let targets = [3u32, 49, ops::IGNORE_TARGET, 0, 17, 17];
    let fused = |t: &[Tensor]| ops::lm_head_nll(&t[0], &t[1], &targets).unwrap();
    let gen = |t: &[Tensor]| generic::lm_head_nll(&t[0], &t[1], &targets, ops::IGNORE_TARGET).unwrap();
    check("lm_head_nll", &fused, &gen, &[hidden, head], 2e-6, 3e-2);
    let (nll, _) = run(&gen, &[randn(&[6, 16], 7), randn(&[50, 16], 8)], DType::F32);
    assert_eq!(nll.to_vec1::<f32>().unwrap()[2], 0.0, "an ignored row contributes nothing");
}

#[test]
fn linear_ops_compose_off_their_kernels() {
    // frozen_linear and lora_linear fall back to candle's matmuls off f32/CPU: the composed
    // forms in bf16 stay within bf16's precision of the kernels.
    let x = randn(&[5, 24], 9);
    let w = randn(&[12, 24], 10);
    let (a, b) = (randn(&[4, 24], 11), randn(&[12, 4], 12));
    let frozen = |t: &[Tensor]| ops::frozen_linear(&t[0], &w.to_dtype(t[0].dtype()).unwrap()).unwrap();
    let plain = |t: &[Tensor]| t[0].matmul(&w.to_dtype(t[0].dtype()).unwrap().t().unwrap()).unwrap();
    check("frozen_linear", &frozen, &plain, std::slice::from_ref(&x), 1e-6, 2e-2);
    let lora = |t: &[Tensor]| ops::lora_linear(&t[0], &w.to_dtype(t[0].dtype()).unwrap(), &t[1], &t[2], 2.0, None).unwrap();
    let composed = |t: &[Tensor]| {
        let w = w.to_dtype(t[0].dtype()).unwrap();
        (t[0].matmul(&w.t().unwrap()).unwrap() + (t[0].matmul(&t[1].t().unwrap()).unwrap() * 2.0).unwrap().matmul(&t[2].t().unwrap()).unwrap()).unwrap()
    };
    check("lora_linear", &lora, &composed, &[x, a, b], 1e-5, 3e-2);
}
