//! Gradients against finite differences, independently of any reference implementation:
//! for every weight tensor W of a tiny non-uniform GQA model, the directional derivative
//! `(L(W + εV) − L(W − εV)) / 2ε` along a random V equals `⟨∇_W L, V⟩`.

use candle_core::{Tensor, Var};
use llmprune_tests::tiny_model;
use llmprune_worker::{Exec, LlamaModel};

fn direction(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu).unwrap()
}

fn loss_of(model: &LlamaModel, ids: &Tensor) -> f64 {
    model.loss(ids, Exec::Differentiable).unwrap().to_scalar::<f32>().unwrap() as f64
}

#[test]
fn every_weight_gradient_matches_finite_differences() {
    let mut model = tiny_model("tiny_gqa");
    let ids = Tensor::new(&[[3u32, 17, 42, 8, 91, 0, 55, 23, 9, 64], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]], &candle_core::Device::Cpu).unwrap();
    let vars: Vec<(String, Var)> = model.make_trainable(|_| true).unwrap();
    assert_eq!(vars.len(), 1 + 3 * 9 + 2, "embedding, 9 tensors per layer, final norm, head");
    let grads = model.loss(&ids, Exec::Differentiable).unwrap().backward().unwrap();
    for (i, (name, var)) in vars.iter().enumerate() {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let original = var.as_tensor().copy().unwrap();
        let v = direction(original.dims(), 0x9E37 + i as u64);
        let analytic = (g * &v).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        let central = |eps: f64| {
            var.set(&(&original + (&v * eps).unwrap()).unwrap()).unwrap();
            let up = loss_of(&model, &ids);
            var.set(&(&original - (&v * eps).unwrap()).unwrap()).unwrap();
            let down = loss_of(&model, &ids);
            var.set(&original).unwrap();
            (up - down) / (2.0 * eps)
        };
        // Richardson extrapolation cancels the O(ε²) term of the central difference, so ε
        // can stay large enough that the f32 rounding of the loss (~3e-7) stays small.
        let (coarse, fine) = (central(2e-3), central(1e-3));
        let numeric = (4.0 * fine - coarse) / 3.0;
        let tolerance = 2e-2 * analytic.abs() + 1e-3;
        assert!((numeric - analytic).abs() <= tolerance, "{name}: finite difference {numeric:.6} vs gradient {analytic:.6}");
    }
}
