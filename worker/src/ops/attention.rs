//! Inference attention over packed tokens, on the CPU.
//!
//! Zero-shot scoring runs ragged batches: rows of different lengths, each continuing its own
//! cached context (the choices of one question share theirs). As padded batched matmuls this
//! computed every padded query and key, the masked half of every causal square, an additive
//! mask, a copy of each row's cached keys, and a transposed copy of queries, keys and values.
//! Here every real query attends to exactly the keys it sees: its row's real cached positions
//! and its row's new positions up to its own, read from the packed projections and from the
//! cache in place. Work is split in blocks of query positions of one row.

use super::Simd;
use candle_core::{DType, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// Query positions per task: they share one gathered copy of their keys.
const QUERY_BLOCK: usize = 32;

/// Cached keys and values that the new rows continue.
#[derive(Clone, Copy)]
pub struct CachedKv<'a> {
    /// `[C, n_kv, P, d]` each.
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    /// The cache row each new row continues.
    pub rows: &'a [usize],
    /// Real cached positions of each new row (the first of its cache row's `P`).
    pub lens: &'a [usize],
}

/// The geometry of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
}

/// Causal GQA attention of packed new tokens: `lens[b]` tokens of row `b`, rows one after
/// the other; `q` `[N, n_heads·d]`, `k` and `v` `[N, n_kv·d]` (rotary embedding applied).
/// Query heads `g·rep .. (g+1)·rep` share KV head `g`. Returns `[N, n_heads·d]` in the
/// inputs' dtype; computes in f32.
pub fn packed_attention(q: &Tensor, k: &Tensor, v: &Tensor, lens: &[usize], past: Option<CachedKv>, heads: Heads, scale: f32) -> Result<Tensor> {
    packed_attention_with(Simd::detect(), q, k, v, lens, past, heads, scale)
}

/// [`packed_attention`] with the given vector implementation.
#[allow(clippy::too_many_arguments)]
pub fn packed_attention_with(
    simd: Simd,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    lens: &[usize],
    past: Option<CachedKv>,
    heads: Heads,
    scale: f32,
) -> Result<Tensor> {
    let Heads { n_heads, n_kv, head_dim: d } = heads;
    let n: usize = lens.iter().sum();
    if n_kv == 0 || n_heads % n_kv != 0 || q.dims() != [n, n_heads * d] || k.dims() != [n, n_kv * d] || v.dims() != [n, n_kv * d] {
        candle_core::bail!("packed_attention: q {:?}, k {:?}, v {:?} for {n} tokens of {heads:?}", q.dims(), k.dims(), v.dims());
    }
    let dtype = q.dtype();
    let f32_of = |t: &Tensor| -> Result<Tensor> { t.to_dtype(DType::F32)?.contiguous() };
    let (q, k, v) = (f32_of(q)?, f32_of(k)?, f32_of(v)?);
    let cached = past.map(|p| -> Result<_> { Ok((f32_of(p.k)?, f32_of(p.v)?)) }).transpose()?;
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let new = NewKv { q: cpu_f32(&qs, ql)?, k: cpu_f32(&ks, kl)?, v: cpu_f32(&vs, vl)? };
    let guards = cached.as_ref().map(|(pk, pv)| (pk.storage_and_layout(), pv.storage_and_layout()));
    let old = match (&guards, past, &cached) {
        (Some(((ks, kl), (vs, vl))), Some(p), Some((pk, _))) => {
            let (c, g, positions, pd) = pk.dims4()?;
            if g != n_kv || pd != d || p.rows.len() != lens.len() || p.lens.len() != lens.len() {
                candle_core::bail!("packed_attention: a cache of {:?} for {} rows of {heads:?}", pk.dims(), lens.len());
            }
            if let Some(b) = (0..lens.len()).find(|&b| p.rows[b] >= c || p.lens[b] > positions) {
                candle_core::bail!("packed_attention: row {b} continues cache row {} ({} positions) of {c} rows of {positions}", p.rows[b], p.lens[b]);
            }
            Some(OldKv { k: cpu_f32(ks, kl)?, v: cpu_f32(vs, vl)?, positions, rows: p.rows, lens: p.lens })
        }
        _ => None,
    };
    let mut out = vec![0f32; n * n_heads * d];
    // Tasks in packed order, each owning its query rows of the output.
    let mut tasks = Vec::new();
    let (mut rest, mut offset) = (out.as_mut_slice(), 0);
    for (b, &len) in lens.iter().enumerate() {
        for i0 in (0..len).step_by(QUERY_BLOCK) {
            let i1 = (i0 + QUERY_BLOCK).min(len);
            let (mine, tail) = rest.split_at_mut((i1 - i0) * n_heads * d);
            tasks.push(Block { row: b, offset, i0, i1, out: mine });
            rest = tail;
        }
        offset += len;
    }
    let kernel = Kernel { simd, heads, scale, new, old };
    tasks.into_par_iter().for_each(|t| kernel.run(t));
    Tensor::from_vec(out, (n, n_heads * d), q.device())?.to_dtype(dtype)
}

fn cpu_f32<'a>(s: &'a Storage, l: &Layout) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(cpu) => super::f32_slice("packed_attention", cpu, l),
        _ => candle_core::bail!("packed_attention runs on the CPU"),
    }
}

/// The packed projections of the new tokens.
#[derive(Clone, Copy)]
struct NewKv<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
}

/// The cache, `[C, n_kv, P, d]`, and which of its rows and positions each new row reads.
#[derive(Clone, Copy)]
struct OldKv<'a> {
    k: &'a [f32],
    v: &'a [f32],
    positions: usize,
    rows: &'a [usize],
    lens: &'a [usize],
}

/// Query positions `i0..i1` of row `row`, whose first token is packed token `offset`.
struct Block<'a> {
    row: usize,
    offset: usize,
    i0: usize,
    i1: usize,
    out: &'a mut [f32],
}

struct Kernel<'a> {
    simd: Simd,
    heads: Heads,
    scale: f32,
    new: NewKv<'a>,
    old: Option<OldKv<'a>>,
}

impl Kernel<'_> {
    fn run(&self, t: Block) {
        let Heads { n_heads, n_kv, head_dim: d } = self.heads;
        let rep = n_heads / n_kv;
        let cached = self.old.map_or(0, |o| o.lens[t.row]);
        // Keys the block's last query sees; the transposed copy's rows padded to 8 lanes.
        let keys = cached + t.i1;
        let stride = keys.div_ceil(8) * 8;
        let mut kt = vec![0f32; d * stride];
        let mut values = vec![0f32; keys * d];
        let mut scores = vec![0f32; keys];
        for g in 0..n_kv {
            let mut put = |j: usize, key: &[f32], value: &[f32]| {
                for (c, &x) in key.iter().enumerate() {
                    kt[c * stride + j] = x;
                }
                values[j * d..(j + 1) * d].copy_from_slice(value);
            };
            if let Some(o) = self.old {
                let base = (o.rows[t.row] * n_kv + g) * o.positions * d;
                for j in 0..cached {
                    let at = base + j * d;
                    put(j, &o.k[at..at + d], &o.v[at..at + d]);
                }
            }
            for j in 0..t.i1 {
                let at = (t.offset + j) * n_kv * d + g * d;
                put(cached + j, &self.new.k[at..at + d], &self.new.v[at..at + d]);
            }
            for h in g * rep..(g + 1) * rep {
                for i in t.i0..t.i1 {
                    let seen = cached + i + 1;
                    let at = (t.offset + i) * n_heads * d + h * d;
                    let s = &mut scores[..seen];
                    self.simd.scores(&self.new.q[at..at + d], &kt, stride, s);
                    let sum = self.simd.softmax_unnormalised(s, self.scale);
                    let o = (i - t.i0) * n_heads * d + h * d;
                    self.simd.weighted_sum(s, &values, 1.0 / sum, &mut t.out[o..o + d]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn fill(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503)) >> 8) as f32 / (1u32 << 24) as f32) * 2.0 - 1.0).collect()
    }

    /// Cached keys, values, positions per row, cache row and real length of each new row.
    type NaiveCache<'a> = (&'a [f32], &'a [f32], usize, &'a [usize], &'a [usize]);

    /// Attention written out position by position: query `i` of row `b` sees its cached
    /// row's first `past_lens[b]` positions and its own new positions `0..=i`.
    #[allow(clippy::too_many_arguments)]
    fn naive(q: &[f32], k: &[f32], v: &[f32], lens: &[usize], cache: Option<NaiveCache>, nh: usize, nkv: usize, d: usize, scale: f32) -> Vec<f32> {
        let mut out = vec![0f32; q.len()];
        let mut offset = 0;
        for (b, &len) in lens.iter().enumerate() {
            for i in 0..len {
                for h in 0..nh {
                    let g = h / (nh / nkv);
                    let qv = &q[(offset + i) * nh * d + h * d..][..d];
                    let mut keys: Vec<(&[f32], &[f32])> = Vec::new();
                    if let Some((ck, cv, p, rows, plens)) = cache {
                        for j in 0..plens[b] {
                            let at = ((rows[b] * nkv + g) * p + j) * d;
                            keys.push((&ck[at..at + d], &cv[at..at + d]));
                        }
                    }
                    for j in 0..=i {
                        let at = (offset + j) * nkv * d + g * d;
                        keys.push((&k[at..at + d], &v[at..at + d]));
                    }
                    let s: Vec<f64> = keys.iter().map(|(kk, _)| qv.iter().zip(*kk).map(|(a, b)| (a * b) as f64).sum::<f64>() * scale as f64).collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..d {
                        out[(offset + i) * nh * d + h * d + c] = (keys.iter().zip(&e).map(|((_, vv), w)| vv[c] as f64 * w).sum::<f64>() / z) as f32;
                    }
                }
            }
            offset += len;
        }
        out
    }

    #[test]
    fn packed_attention_equals_attention_written_out() {
        let dev = Device::Cpu;
        let mut levels = vec![Simd::Scalar];
        if Simd::detect() != Simd::Scalar {
            levels.push(Simd::detect());
        }
        // Rows longer than a query block, empty rows, rows continuing the same cache row,
        // a head size that is not a multiple of 64.
        for (nh, nkv, d) in [(6usize, 2usize, 64usize), (4, 4, 8), (3, 1, 24)] {
            let lens = [5usize, 0, 70, 1, 33];
            let n: usize = lens.iter().sum();
            let (q, k, v) = (fill(n * nh * d, 1), fill(n * nkv * d, 2), fill(n * nkv * d, 3));
            let t = |x: &[f32], w: usize| Tensor::from_vec(x.to_vec(), (n, w), &dev).unwrap();
            let (qt, kt, vt) = (t(&q, nh * d), t(&k, nkv * d), t(&v, nkv * d));
            let heads = Heads { n_heads: nh, n_kv: nkv, head_dim: d };
            let (c, p) = (3usize, 40usize);
            let (ck, cv) = (fill(c * nkv * p * d, 4), fill(c * nkv * p * d, 5));
            let (rows, plens) = ([2usize, 0, 2, 1, 0], [40usize, 3, 17, 0, 3]);
            let ckt = Tensor::from_vec(ck.clone(), (c, nkv, p, d), &dev).unwrap();
            let cvt = Tensor::from_vec(cv.clone(), (c, nkv, p, d), &dev).unwrap();
            for simd in &levels {
                for with_past in [false, true] {
                    let past = with_past.then_some(CachedKv { k: &ckt, v: &cvt, rows: &rows, lens: &plens });
                    let got: Vec<f32> = packed_attention_with(*simd, &qt, &kt, &vt, &lens, past, heads, 0.3).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                    let cache = with_past.then_some((ck.as_slice(), cv.as_slice(), p, &rows[..], &plens[..]));
                    let want = naive(&q, &k, &v, &lens, cache, nh, nkv, d, 0.3);
                    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(worst < 2e-6, "{simd:?} heads {nh}/{nkv}×{d}, past {with_past}: off by {worst}");
                }
            }
        }
    }

    #[test]
    fn packed_attention_rejects_a_cache_row_it_does_not_have() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 8), DType::F32, &dev).unwrap();
        let cache = Tensor::zeros((1, 1, 4, 8), DType::F32, &dev).unwrap();
        let past = CachedKv { k: &cache, v: &cache, rows: &[1], lens: &[2] };
        let e = packed_attention(&x, &x, &x, &[2], Some(past), Heads { n_heads: 1, n_kv: 1, head_dim: 8 }, 1.0).unwrap_err();
        assert!(e.to_string().contains("continues cache row 1"), "{e}");
    }
}
