//! Dropout masks that depend only on (key, layer, projection, element): a micro-batch's masks
//! are the same on whichever rank runs it, so data-parallel runs equal one-process runs.

use super::Projection;
use rayon::prelude::*;

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `len` factors, each 0 with probability `p` and `1/(1−p)` otherwise (inverted dropout, as
/// torch's), for the input of `projection` in `layer` under `key`.
pub fn dropout_mask(key: u64, layer: usize, projection: Projection, len: usize, p: f32) -> Vec<f32> {
    let stream = mix(key ^ mix(((layer as u64) << 8) | projection as u64));
    let keep = 1.0 / (1.0 - p);
    // Compare 24 random bits against p·2²⁴: exact for the probabilities one sets.
    let threshold = (p as f64 * (1u64 << 24) as f64) as u64;
    (0..len as u64)
        .into_par_iter()
        .map(|i| if (mix(stream.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15))) >> 40) < threshold { 0.0 } else { keep })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_drop_the_right_share_and_depend_only_on_their_key() {
        let m = dropout_mask(42, 3, Projection::Up, 200_000, 0.05);
        let dropped = m.iter().filter(|&&x| x == 0.0).count() as f64 / m.len() as f64;
        // 200k Bernoulli(0.05): standard deviation 0.0005.
        assert!((dropped - 0.05).abs() < 0.002, "{dropped}");
        assert!(m.iter().all(|&x| x == 0.0 || (x - 1.0 / 0.95).abs() < 1e-7));
        assert_eq!(m, dropout_mask(42, 3, Projection::Up, 200_000, 0.05));
        assert_ne!(m, dropout_mask(43, 3, Projection::Up, 200_000, 0.05));
        assert_ne!(m, dropout_mask(42, 4, Projection::Up, 200_000, 0.05));
        assert_ne!(m, dropout_mask(42, 3, Projection::Down, 200_000, 0.05));
        // A prefix is the same mask: masks do not depend on the length asked for.
        assert_eq!(dropout_mask(42, 3, Projection::Up, 1000, 0.05), m[..1000]);
        assert!(dropout_mask(1, 0, Projection::Q, 1000, 0.0).iter().all(|&x| x == 1.0));
    }
}
