//! Python's `random.Random`, draw for draw: the reference scripts sample their calibration
//! data with it, so the same seed must pick the same rows and windows here.

use rand_mt::Mt;

pub struct PyRandom(Mt);

impl PyRandom {
    /// `random.seed(seed)` for a non-negative integer: CPython keys MT19937's
    /// `init_by_array` with the seed's 32-bit words, least significant first.
    pub fn new(seed: u64) -> Self {
        let key: Vec<u32> = if seed >> 32 == 0 { vec![seed as u32] } else { vec![seed as u32, (seed >> 32) as u32] };
        Self(Mt::new_with_key(key))
    }

    /// `getrandbits(k)` for `k ≤ 64`: 32-bit words least significant first, the last one
    /// keeping only its top bits.
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64, "getrandbits({k}): at most 64 bits");
        match k {
            0 => 0,
            1..=32 => u64::from(self.0.next_u32() >> (32 - k)),
            _ => {
                let low = u64::from(self.0.next_u32());
                let high = u64::from(self.0.next_u32() >> (64 - k));
                low | high << 32
            }
        }
    }

    /// `random()`: a float in [0, 1) from 53 random bits.
    pub fn random(&mut self) -> f64 {
        let a = self.0.next_u32() >> 5;
        let b = self.0.next_u32() >> 6;
        (f64::from(a) * 67_108_864.0 + f64::from(b)) / 9_007_199_254_740_992.0
    }

    /// `randint(low, high)`, both ends included (`low ≤ high`).
    pub fn randint(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high, "randint({low}, {high})");
        low + self.randbelow(high - low + 1)
    }

    /// CPython's `_randbelow_with_getrandbits`: rejection sampling on `bit_length(n)` bits.
    fn randbelow(&mut self, n: u64) -> u64 {
        let k = 64 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values printed by CPython 3.11:
    //   random.seed(42); [random.randint(0, 10297) for _ in range(6)]; random.getrandbits(32),
    //   random.getrandbits(64), random.getrandbits(33), random.randint(0, 0), random.randint(5, 2**40)
    #[test]
    fn draws_equal_cpython() {
        let mut r = PyRandom::new(42);
        let rows: Vec<u64> = (0..6).map(|_| r.randint(0, 10297)).collect();
        assert_eq!(rows, [1824, 409, 4506, 4012, 3657, 2286]);
        assert_eq!(r.getrandbits(32), 3163119785);
        assert_eq!(r.getrandbits(64), 12482902213779070887);
        assert_eq!(r.getrandbits(33), 7476111027);
        assert_eq!(r.randint(0, 0), 0);
        assert_eq!(r.randint(5, 1 << 40), 466392613998);
    }

    #[test]
    fn floats_equal_cpython() {
        // random.seed(42); random.random(), random.random()
        let mut r = PyRandom::new(42);
        assert_eq!(r.random(), 0.6394267984578837);
        assert_eq!(r.random(), 0.025010755222666936);
    }

    #[test]
    fn seeds_of_zero_and_over_32_bits_equal_cpython() {
        let mut r = PyRandom::new(0);
        assert_eq!([r.randint(0, 99), r.randint(0, 99), r.randint(0, 99)], [49, 97, 53]);
        let mut r = PyRandom::new((1 << 40) + 7);
        assert_eq!([r.randint(0, 99), r.randint(0, 99), r.randint(0, 99)], [78, 95, 81]);
    }
}
