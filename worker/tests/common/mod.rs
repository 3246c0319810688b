//! Helpers shared by the worker's integration tests.

use candle_core::{Device, Tensor};

/// A fixed pseudo-random fill in [-1, 1) (splitmix64), so failures reproduce.
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E3779B97F4A7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            (z as f64 / u64::MAX as f64 * 2.0 - 1.0) as f32
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}
