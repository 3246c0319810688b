//! Contiguous layer shards, one per rank, balanced by weight bytes against each worker's
//! memory. The first rank also holds the embedding, the last the final norm and the head.

use anyhow::{bail, Result};
use llmprune_shared::dtype::WeightDtype;
use llmprune_shared::ModelSpec;
use std::ops::Range;

/// Bytes of the weights a rank holding `layers` (and the embedding if `first`, the final norm
/// and head if `last`) would hold in `dtype`.
fn shard_bytes(spec: &ModelSpec, layers: Range<usize>, first: bool, last: bool, dtype: WeightDtype) -> u64 {
    let (v, h) = (spec.vocab_size as u64, spec.hidden_size as u64);
    let per_layer: u64 = layers.map(|i| layer_params(spec, i)).sum();
    let ends = if first { v * h } else { 0 } + if last { h + v * h } else { 0 };
    dtype.size_in_bytes() * (per_layer + ends)
}

fn layer_params(spec: &ModelSpec, i: usize) -> u64 {
    spec.layer_params(i) as u64
}

/// Layer ranges by rank for workers with `memories` bytes each, holding the weights in
/// `dtype`: rank r's share of the model's bytes follows its share of the memory, every rank
/// gets at least one layer, and a shard that does not fit its worker is refused.
pub fn assign_shards(spec: &ModelSpec, memories: &[u64], dtype: WeightDtype) -> Result<Vec<Range<usize>>> {
    let (n, world) = (spec.n_layers(), memories.len());
    if world == 0 {
        bail!("no workers");
    }
    if world > n {
        bail!("{world} workers for a model of {n} layers: each worker needs at least one layer");
    }
    let total_mem: f64 = memories.iter().map(|&m| m.max(1) as f64).sum();
    let total = shard_bytes(spec, 0..n, true, true, dtype) as f64;
    // Bytes before layer i's end, counting the embedding at the front.
    let mut prefix = vec![0f64; n + 1];
    prefix[0] = shard_bytes(spec, 0..0, true, false, dtype) as f64;
    for i in 0..n {
        prefix[i + 1] = prefix[i] + (dtype.size_in_bytes() * layer_params(spec, i)) as f64;
    }
    let mut cuts = vec![0usize];
    let mut mem_before = 0f64;
    for (r, &m) in memories.iter().enumerate().take(world - 1) {
        mem_before += m.max(1) as f64;
        let target = total * mem_before / total_mem;
        let lo = cuts[r] + 1;
        let hi = n - (world - 1 - r);
        // The cut whose prefix is closest to the target, leaving a layer for every later rank.
        let best = (lo..=hi).min_by(|&a, &b| (prefix[a] - target).abs().total_cmp(&(prefix[b] - target).abs())).unwrap_or(lo);
        cuts.push(best);
    }
    cuts.push(n);
    let ranges: Vec<Range<usize>> = cuts.windows(2).map(|w| w[0]..w[1]).collect();
    for (r, (range, &mem)) in ranges.iter().zip(memories).enumerate() {
        let bytes = shard_bytes(spec, range.clone(), r == 0, r + 1 == world, dtype);
        if bytes > mem {
            bail!(
                "rank {r} would hold layers {}..{} ({:.1} MiB of weights in {}) but reports {:.1} MiB free",
                range.start,
                range.end,
                bytes as f64 / 1048576.0,
                dtype.name(),
                mem as f64 / 1048576.0
            );
        }
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmprune_shared::dtype::WeightDtype::{Bf16, F16, F32};
    use serde_json::json;

    fn spec(layers: usize, vocab: usize) -> ModelSpec {
        let v = json!({"model_type": "llama", "vocab_size": vocab, "hidden_size": 8, "head_dim": 2, "num_hidden_layers": layers,
                       "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 16});
        ModelSpec::from_hf_config(&v, std::path::Path::new("config.json")).unwrap()
    }

    #[test]
    fn balanced_by_bytes_and_memory() {
        // 12 equal layers of 4·(256+384+16) = 2624 bytes; tiny vocabulary: even split.
        let s = spec(12, 2);
        assert_eq!(assign_shards(&s, &[1 << 30; 3], F32).unwrap(), vec![0..4, 4..8, 8..12]);
        // Twice the memory, twice the layers.
        assert_eq!(assign_shards(&s, &[2 << 30, 1 << 30, 1 << 30], F32).unwrap(), vec![0..6, 6..9, 9..12]);
        // A large vocabulary weighs on the first (embedding) and last (head) ranks.
        let big = spec(12, 2000); // 64 KB embedding ≈ 24 layers
        let r = assign_shards(&big, &[1 << 30; 3], F32).unwrap();
        assert_eq!(r[1].len(), 10, "{r:?}");
        assert!(r[0].len() == 1 && r[2].len() == 1, "{r:?}");
        assert_eq!(assign_shards(&s, &[1 << 30], F32).unwrap(), vec![0..12]);
    }

    #[test]
    fn refuses_what_cannot_work() {
        let s = spec(2, 2);
        assert!(assign_shards(&s, &[1 << 30; 3], F32).unwrap_err().to_string().contains("at least one layer"));
        let e = assign_shards(&s, &[1000, 1 << 30], F32).unwrap_err().to_string();
        assert!(e.contains("rank 0 would hold layers 0..1"), "{e}");
    }

    #[test]
    fn half_precision_weights_take_half_the_memory() {
        // 2 layers of 256 + 384 + 16 = 656 weights, a 2 × 8 embedding, the final norm and an
        // untied 2 × 8 head: one worker holds 1352 weights, 5408 bytes in f32, 2704 in bf16.
        let s = spec(2, 2);
        let e = assign_shards(&s, &[5407], F32).unwrap_err().to_string();
        assert!(e.contains("(0.0 MiB of weights in f32)"), "{e}");
        assert_eq!(assign_shards(&s, &[5408], F32).unwrap(), vec![0..2]);
        assert!(assign_shards(&s, &[2703], Bf16).unwrap_err().to_string().contains("in bf16"));
        assert_eq!(assign_shards(&s, &[2704], Bf16).unwrap(), vec![0..2]);
        assert_eq!(assign_shards(&s, &[2704], F16).unwrap(), vec![0..2]);
    }
}
