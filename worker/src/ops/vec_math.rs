//! Vectorised inner loops of the inference kernels: exponentials, softmax rows and the
//! two products of attention. Each has a portable scalar form and an AVX2+FMA form picked
//! at run time (the binaries are built for baseline x86-64, whose SSE2 loops take 4 lanes
//! without fused multiply-add); tests run both.
//!
//! The vector `exp` is Cephes' `expf` (range reduction by ln 2 in two parts, a degree-5
//! polynomial, the power of two built in the exponent bits): within 2 ulp of the libm value,
//! where glibc's scalar `expf` took 4% of an evaluation's time.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Which implementation the loops run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub enum Simd {
    Scalar,
    /// AVX2 with FMA (x86-64 only), made only by [`Simd::detect`] on a CPU that has them.
    Avx2(Detected),
}

/// Proof that the CPU was checked: private, so `Simd::Avx2` cannot be made elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detected(());

impl Simd {
    /// The fastest this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Simd::Avx2(Detected(()));
        }
        Simd::Scalar
    }

    /// `Σ_j exp(x_j − shift)`, each term in f32, summed in f64 (a 49k-entry vocabulary
    /// row would lose digits to rounding in f32).
    pub fn exp_sum_f64(self, xs: &[f32], shift: f32) -> f64 {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2` is only made by `detect`, where the CPU has AVX2 and FMA.
            Simd::Avx2(_) => unsafe { avx2::exp_sum_f64(xs, shift) },
            _ => xs.iter().map(|&x| (x - shift).exp() as f64).sum(),
        }
    }

    /// Turns `xs` into `exp(scale · (x − max))` in place, and returns their sum: an
    /// unnormalised softmax row.
    pub fn softmax_unnormalised(self, xs: &mut [f32], scale: f32) -> f32 {
        let max = self.max(xs);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Simd::Avx2(_) => unsafe { avx2::scaled_exp_in_place(xs, scale, max) },
            _ => {
                let mut sum = 0f32;
                for x in xs.iter_mut() {
                    *x = ((*x - max) * scale).exp();
                    sum += *x;
                }
                sum
            }
        }
    }

    /// The largest of `xs` (−∞ for none).
    pub fn max(self, xs: &[f32]) -> f32 {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Simd::Avx2(_) => unsafe { avx2::max(xs) },
            _ => xs.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)),
        }
    }

    /// `scores[j] = q · k_j` for keys `j < scores.len()`, the keys stored transposed:
    /// `kt[c · stride + j]` is component `c` of key `j`. `kt` holds `q.len()` rows of
    /// `stride` entries, `stride` a multiple of 8 at least `scores.len()` rounded up to 8
    /// (its padding columns are read, not used).
    pub fn scores(self, q: &[f32], kt: &[f32], stride: usize, scores: &mut [f32]) {
        debug_assert!(stride.is_multiple_of(8) && stride >= scores.len() && kt.len() >= q.len() * stride);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above; the bounds are checked by the debug assertion's conditions,
            // which the kernel's buffers meet by construction (and `avx2::scores` re-checks).
            Simd::Avx2(_) => unsafe { avx2::scores(q, kt, stride, scores) },
            _ => {
                scores.iter_mut().for_each(|s| *s = 0.0);
                for (c, &qc) in q.iter().enumerate() {
                    let row = &kt[c * stride..][..scores.len()];
                    scores.iter_mut().zip(row).for_each(|(s, &k)| *s += qc * k);
                }
            }
        }
    }

    /// `out = Σ_j p_j · v_j` over the rows `v_j` of `values` (`p.len()` rows of
    /// `out.len()` entries), scaled by `scale`.
    pub fn weighted_sum(self, p: &[f32], values: &[f32], scale: f32, out: &mut [f32]) {
        let d = out.len();
        debug_assert!(values.len() >= p.len() * d);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Simd::Avx2(_) if d.is_multiple_of(8) => unsafe { avx2::weighted_sum(p, values, scale, out) },
            _ => {
                out.iter_mut().for_each(|o| *o = 0.0);
                for (&pj, row) in p.iter().zip(values.chunks_exact(d)) {
                    out.iter_mut().zip(row).for_each(|(o, &v)| *o += pj * v);
                }
                out.iter_mut().for_each(|o| *o *= scale);
            }
        }
    }

    /// `silu(g) · u` into `g`.
    pub fn swiglu_in_place(self, g: &mut [f32], u: &[f32]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Simd::Avx2(_) => unsafe { avx2::swiglu_in_place(g, u) },
            _ => g.iter_mut().zip(u).for_each(|(g, &u)| *g = *g / (1.0 + (-*g).exp()) * u),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    /// Cephes `expf`, 8 lanes. Inputs are clamped to [-87.3, 88]: below, the result is the
    /// smallest normal float's order (~1e-38) instead of a denormal or 0, which no sum here
    /// can tell apart.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3)), _mm256_set1_ps(88.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_199_9e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.166_666_65));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
        let y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(y, _mm256_castsi256_ps(pow2))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn max(xs: &[f32]) -> f32 {
        let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
        let chunks = xs.chunks_exact(8);
        let tail = chunks.remainder();
        for c in chunks {
            acc = _mm256_max_ps(acc, _mm256_loadu_ps(c.as_ptr()));
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        lanes.iter().chain(tail).fold(f32::NEG_INFINITY, |m, &x| m.max(x))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_sum_f64(xs: &[f32], shift: f32) -> f64 {
        let s = _mm256_set1_ps(shift);
        let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let chunks = xs.chunks_exact(8);
        let tail = chunks.remainder();
        for c in chunks {
            let e = exp(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), s));
            lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
            hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(e)));
        }
        let mut lanes = [0f64; 4];
        _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(lo, hi));
        lanes.iter().sum::<f64>() + tail.iter().map(|&x| (x - shift).exp() as f64).sum::<f64>()
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scaled_exp_in_place(xs: &mut [f32], scale: f32, max: f32) -> f32 {
        let (sc, m) = (_mm256_set1_ps(scale), _mm256_set1_ps(max));
        let mut acc = _mm256_setzero_ps();
        let mut chunks = xs.chunks_exact_mut(8);
        for c in &mut chunks {
            let e = exp(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), m), sc));
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            acc = _mm256_add_ps(acc, e);
        }
        let mut sum = hsum(acc);
        for x in chunks.into_remainder() {
            *x = ((*x - max) * scale).exp();
            sum += *x;
        }
        sum
    }

    /// Four 8-key blocks at a time share each broadcast query component.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scores(q: &[f32], kt: &[f32], stride: usize, scores: &mut [f32]) {
        assert!(stride.is_multiple_of(8) && stride >= scores.len().div_ceil(8) * 8 && kt.len() >= q.len() * stride);
        let blocks = scores.len().div_ceil(8);
        let mut b = 0;
        while b + 4 <= blocks {
            score_blocks::<4>(q, kt, stride, b, scores);
            b += 4;
        }
        while b < blocks {
            score_blocks::<1>(q, kt, stride, b, scores);
            b += 1;
        }
    }

    /// Scores of keys `8·b .. 8·(b + B)` (those below `scores.len()` kept).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn score_blocks<const B: usize>(q: &[f32], kt: &[f32], stride: usize, b: usize, scores: &mut [f32]) {
        let mut acc = [_mm256_setzero_ps(); B];
        for (c, &qc) in q.iter().enumerate() {
            let qv = _mm256_set1_ps(qc);
            // In bounds (checked by `scores`): c < q.len() and 8·(b + B) ≤ stride.
            let row = kt.as_ptr().add(c * stride + b * 8);
            for (t, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(row.add(t * 8)), *a);
            }
        }
        let mut out = [0f32; 32];
        for (t, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(t * 8), *a);
        }
        let start = b * 8;
        let n = (scores.len() - start).min(B * 8);
        scores[start..start + n].copy_from_slice(&out[..n]);
    }

    /// Up to eight accumulators (64 columns) per pass over the keys.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weighted_sum(p: &[f32], values: &[f32], scale: f32, out: &mut [f32]) {
        let d = out.len();
        assert!(d.is_multiple_of(8) && values.len() >= p.len() * d);
        for col in (0..d).step_by(64) {
            match ((d - col) / 8).min(8) {
                8 => weighted_columns::<8>(p, values, scale, col, out),
                4 => weighted_columns::<4>(p, values, scale, col, out),
                lanes => {
                    for t in 0..lanes {
                        weighted_columns::<1>(p, values, scale, col + 8 * t, out);
                    }
                }
            }
        }
    }

    /// Columns `col .. col + 8·L` of the weighted sum.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weighted_columns<const L: usize>(p: &[f32], values: &[f32], scale: f32, col: usize, out: &mut [f32]) {
        let d = out.len();
        let mut acc = [_mm256_setzero_ps(); L];
        for (j, &pj) in p.iter().enumerate() {
            let pv = _mm256_set1_ps(pj);
            // In bounds (checked by `weighted_sum`): j < p.len() and col + 8·L ≤ d.
            let row = values.as_ptr().add(j * d + col);
            for (t, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(pv, _mm256_loadu_ps(row.add(t * 8)), *a);
            }
        }
        let sc = _mm256_set1_ps(scale);
        for (t, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(col + t * 8), _mm256_mul_ps(*a, sc));
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn swiglu_in_place(g: &mut [f32], u: &[f32]) {
        assert_eq!(g.len(), u.len());
        let one = _mm256_set1_ps(1.0);
        let mut gc = g.chunks_exact_mut(8);
        let mut uc = u.chunks_exact(8);
        for (gx, ux) in (&mut gc).zip(&mut uc) {
            let x = _mm256_loadu_ps(gx.as_ptr());
            let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), x));
            let silu = _mm256_div_ps(x, _mm256_add_ps(one, e));
            _mm256_storeu_ps(gx.as_mut_ptr(), _mm256_mul_ps(silu, _mm256_loadu_ps(ux.as_ptr())));
        }
        for (x, &uv) in gc.into_remainder().iter_mut().zip(uc.remainder()) {
            *x = *x / (1.0 + (-*x).exp()) * uv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels() -> Vec<Simd> {
        let mut l = vec![Simd::Scalar];
        if Simd::detect() != Simd::Scalar {
            l.push(Simd::detect());
        }
        l
    }

    fn ramp(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32) * 2.0 - 1.0).collect()
    }

    #[test]
    fn vector_exp_is_within_two_ulp_of_libm_over_the_softmax_range() {
        for simd in levels() {
            // exp(scale · (x − max)) for x in [-90, 0]: every term softmax and the NLL take.
            let mut xs: Vec<f32> = (0..20001).map(|i| -90.0 * i as f32 / 20000.0).collect();
            let want: Vec<f32> = xs.iter().map(|x| x.exp()).collect();
            let sum = simd.softmax_unnormalised(&mut xs, 1.0);
            for (got, want) in xs.iter().zip(&want) {
                if *want > 1e-37 {
                    assert!(((got - want) / want).abs() < 2.5e-7, "{simd:?}: {got} vs {want}");
                } else {
                    assert!((got - want).abs() < 2e-38, "{simd:?}: {got} vs {want} near the normal range's end");
                }
            }
            let exact: f64 = want.iter().map(|&x| x as f64).sum();
            assert!((sum as f64 - exact).abs() / exact < 1e-5, "{simd:?}: sum {sum} vs {exact}");
        }
    }

    #[test]
    fn exp_sum_matches_the_f64_sum_of_libm_terms() {
        for simd in levels() {
            for n in [0, 1, 7, 8, 9, 1000, 49153] {
                let xs: Vec<f32> = ramp(n, 3).iter().map(|x| x * 30.0).collect();
                let want: f64 = xs.iter().map(|&x| (x - 5.0).exp() as f64).sum();
                let got = simd.exp_sum_f64(&xs, 5.0);
                assert!((got - want).abs() <= want.abs() * 3e-7, "{simd:?} n={n}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn scores_and_weighted_sum_equal_plain_loops() {
        for simd in levels() {
            for (d, keys) in [(64usize, 1usize), (64, 37), (128, 64), (8, 9), (24, 70)] {
                let stride = keys.div_ceil(8) * 8;
                let q = ramp(d, 1);
                let kt = ramp(d * stride, 2);
                let mut got = vec![0f32; keys];
                simd.scores(&q, &kt, stride, &mut got);
                for (j, g) in got.iter().enumerate() {
                    let want: f32 = (0..d).map(|c| q[c] * kt[c * stride + j]).sum();
                    assert!((g - want).abs() < 1e-5, "{simd:?} d={d} key {j}: {g} vs {want}");
                }
                let p = ramp(keys, 4);
                let values = ramp(keys * d, 5);
                let mut out = vec![0f32; d];
                simd.weighted_sum(&p, &values, 0.5, &mut out);
                for (c, o) in out.iter().enumerate() {
                    let want: f32 = (0..keys).map(|j| p[j] * values[j * d + c]).sum::<f32>() * 0.5;
                    assert!((o - want).abs() < 1e-5, "{simd:?} d={d} column {c}: {o} vs {want}");
                }
            }
        }
    }

    #[test]
    fn swiglu_equals_silu_times_up() {
        for simd in levels() {
            let g0: Vec<f32> = ramp(1003, 6).iter().map(|x| x * 20.0).collect();
            let u = ramp(1003, 7);
            let mut g = g0.clone();
            simd.swiglu_in_place(&mut g, &u);
            for ((got, &x), &uv) in g.iter().zip(&g0).zip(&u) {
                let want = x / (1.0 + (-x).exp()) * uv;
                assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "{simd:?}: silu({x})·{uv} = {got} vs {want}");
            }
        }
    }
}
