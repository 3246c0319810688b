//! The GPU's tests: each differentiable op's device-generic path on `cuda:0` against the fused
//! CPU kernel, forward and every input's gradient (f32 to float rounding, bf16 to bf16's
//! precision), and a decoder's loss and weight gradients on the GPU against the CPU. Built only
//! with `--features cuda`; each test says it is skipped and passes where no CUDA device opens,
//! so the CUDA build's test run on a CPU machine stays green. `scripts/gpu-check.sh` ships this
//! binary and runs it on the GPU, with the ignored `profile_ops_at_llama_7b_layer_shape`: the
//! per-op times that decide which ops deserve CUDA kernels of their own.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor, Var};
use llmprune_worker::ops;
use std::time::Instant;

mod common;
use common::randn;

/// `cuda:0`, or `None` (said on stderr) where none opens.
fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// Forward value and the gradients of `Σ f(inputs) ⊙ r` (a fixed random `r`), returned in f32
/// on the CPU, with the inputs given to `f` on `device` in `dtype`.
fn run(f: &dyn Fn(&[Tensor]) -> Tensor, inputs: &[Tensor], device: &Device, dtype: DType) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(&t.to_device(device).unwrap().to_dtype(dtype).unwrap()).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts).to_dtype(DType::F32).unwrap();
    let r = randn(y.dims(), 99).to_device(device).unwrap();
    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let host = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap();
    let grads = vars.iter().map(|v| host(g.get(v.as_tensor()).expect("an input without gradient"))).collect();
    (host(&y.detach()), grads)
}

/// Largest difference relative to the reference's largest magnitude.
fn relative(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1e-12);
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() / scale
}

/// The op on the GPU (f32 within `f32_tol`, bf16 within `bf16_tol`) against its CPU kernel.
fn check(which: &str, op: &dyn Fn(&[Tensor]) -> Tensor, inputs: &[Tensor], f32_tol: f32, bf16_tol: f32) {
    let Some(gpu) = gpu() else { return };
    let (y, g) = run(op, inputs, &Device::Cpu, DType::F32);
    for (dtype, tol) in [(DType::F32, f32_tol), (DType::BF16, bf16_tol)] {
        let (y2, g2) = run(op, inputs, &gpu, dtype);
        let d = relative(&y2, &y);
        assert!(d <= tol, "{which} cuda {dtype:?}: forward differs from the CPU kernel by {d} (relative)");
        for (i, (a, b)) in g2.iter().zip(&g).enumerate() {
            let d = relative(a, b);
            assert!(d <= tol, "{which} cuda {dtype:?}: gradient of input {i} differs from the CPU kernel by {d} (relative)");
        }
    }
}

fn rope_tables(positions: usize, half: usize, device: &Device) -> (Tensor, Tensor) {
    let angles: Vec<f32> = (0..positions).flat_map(|p| (0..half).map(move |i| p as f32 * 10000f32.powf(-(i as f32) / half as f32))).collect();
    let a = Tensor::from_vec(angles, (positions, half), device).unwrap();
    (a.cos().unwrap(), a.sin().unwrap())
}

#[test]
fn rms_norm_on_the_gpu_equals_the_cpu_kernel() {
    let (x, w) = (randn(&[3, 5, 64], 1), (randn(&[64], 2) + 1.5).unwrap());
    check("rms_norm", &|t| ops::rms_norm(&t[0], &t[1], 1e-5).unwrap(), &[x, w], 2e-6, 2e-2);
}

#[test]
fn rope_on_the_gpu_equals_the_cpu_kernel() {
    let (cos, sin) = rope_tables(7, 8, &Device::Cpu);
    let op = |t: &[Tensor]| {
        let (c, s) = (cos.to_device(t[0].device()).unwrap(), sin.to_device(t[0].device()).unwrap());
        ops::rope(&t[0], &c.to_dtype(t[0].dtype()).unwrap(), &s.to_dtype(t[0].dtype()).unwrap()).unwrap()
    };
    check("rope", &op, &[randn(&[2, 3, 7, 16], 3)], 1e-6, 1e-2);
}

#[test]
fn causal_softmax_on_the_gpu_equals_the_cpu_kernel() {
    let scores = (randn(&[2, 2, 6, 5], 4) * 4.0).unwrap();
    check("causal_softmax", &|t| ops::causal_softmax(&t[0], 0.35, 3).unwrap(), &[scores], 2e-6, 2e-2);
}

#[test]
fn swiglu_on_the_gpu_equals_the_cpu_kernel() {
    let (gate, up) = ((randn(&[4, 33], 5) * 3.0).unwrap(), randn(&[4, 33], 6));
    check("swiglu", &|t| ops::swiglu(&t[0], &t[1]).unwrap(), &[gate, up], 2e-6, 2e-2);
}

#[test]
fn lm_head_nll_on_the_gpu_equals_the_cpu_kernel() {
    let targets = [3u32, 49, ops::IGNORE_TARGET, 0, 17, 17];
    check("lm_head_nll", &|t| ops::lm_head_nll(&t[0], &t[1], &targets).unwrap(), &[randn(&[6, 16], 7), randn(&[50, 16], 8)], 2e-6, 3e-2);
}

#[test]
fn lora_linear_on_the_gpu_equals_the_cpu_kernel() {
    let w = randn(&[12, 24], 10);
    let op = |t: &[Tensor]| {
        let w = w.to_device(t[0].device()).unwrap().to_dtype(t[0].dtype()).unwrap();
        ops::lora_linear(&t[0], &w, &t[1], &t[2], 2.0, None).unwrap()
    };
    check("lora_linear", &op, &[randn(&[5, 24], 9), randn(&[4, 24], 11), randn(&[12, 4], 12)], 1e-5, 3e-2);
}

/// Seconds of `f` on the GPU: the median of 5 synchronised runs after a warm-up.
fn time_gpu(device: &Device, f: &dyn Fn()) -> f64 {
    f();
    device.synchronize().unwrap();
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            device.synchronize().unwrap();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[2]
}

/// Forward and backward of each op the decoder layer runs, at one LLaMA-7B layer's shapes over
/// 10 × 128 tokens in bf16 (the scoring pass of `prune`), beside the layer's matmuls: which ops
/// cost enough to deserve a kernel of their own. Prints one JSON line `profile: {...}` (ms).
#[test]
#[ignore = "a measurement for scripts/gpu-check.sh, not a check"]
fn profile_ops_at_llama_7b_layer_shape() {
    let Some(gpu) = gpu() else { return };
    let (b, t, heads, kv_heads, d, hidden, inter) = (10usize, 128usize, 32usize, 32usize, 128usize, 4096usize, 11008usize);
    let bf = |shape: &[usize], seed| Var::from_tensor(&randn(shape, seed).to_device(&gpu).unwrap().to_dtype(DType::BF16).unwrap()).unwrap();
    let fwd_bwd = |y: Tensor| {
        let _ = y.to_dtype(DType::F32).unwrap().sum_all().unwrap().backward().unwrap();
    };
    let x = bf(&[b, t, hidden], 1);
    let norm_w = bf(&[hidden], 2);
    let q = bf(&[b, heads, t, d], 3);
    let (cos, sin) = rope_tables(t, d / 2, &gpu);
    let scores = bf(&[b, kv_heads, t * heads / kv_heads, t], 4);
    let (gate, up) = (bf(&[b * t, inter], 5), bf(&[b * t, inter], 6));
    let w_up = bf(&[inter, hidden], 7);
    let head = bf(&[32000, hidden], 8);
    let targets: Vec<u32> = (0..b * t).map(|i| (i * 7919 % 32000) as u32).collect();
    let rows = x.as_tensor().reshape((b * t, hidden)).unwrap();
    let mut ms = serde_json::Map::new();
    let mut put = |name: &str, f: &dyn Fn()| {
        ms.insert(name.into(), serde_json::json!(1e3 * time_gpu(&gpu, f)));
    };
    put("rms_norm", &|| fwd_bwd(ops::rms_norm(x.as_tensor(), norm_w.as_tensor(), 1e-5).unwrap()));
    put("rope_q", &|| fwd_bwd(ops::rope(q.as_tensor(), &cos, &sin).unwrap()));
    put("causal_softmax", &|| fwd_bwd(ops::causal_softmax(scores.as_tensor(), 0.088, t).unwrap()));
    put("swiglu", &|| fwd_bwd(ops::swiglu(gate.as_tensor(), up.as_tensor()).unwrap()));
    put("mlp_matmul_one_of_three", &|| fwd_bwd(rows.matmul(&w_up.as_tensor().t().unwrap()).unwrap()));
    put("lm_head_nll_32000", &|| fwd_bwd(ops::lm_head_nll(&rows, head.as_tensor(), &targets).unwrap()));
    println!("profile: {}", serde_json::Value::Object(ms));
}
