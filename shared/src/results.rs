//! What workers return for the coordinator to merge, without tensors.

/// One evaluation share: this worker's documents and perplexity chunks, or all of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalShare {
    /// Log-likelihoods of each choice, by unit (document of all tasks, in order), sorted.
    pub lls: Vec<(usize, Vec<f64>)>,
    /// Perplexity sums, by text.
    pub ppl: Vec<PplPart>,
    /// The latency of the first text, when the job timed it.
    pub latency: Option<Latency>,
}

/// Above this share of the machine's CPU time taken by other processes while a latency was
/// timed, the timing is reported as made on a busy machine.
pub const BUSY_SHARE: f64 = 0.10;

/// The paper's Table 3 latency: each chunk's forward pass (batch 1) timed on its own, after
/// one untimed warm-up pass, so that the median and spread say how steady the timing was.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latency {
    /// Seconds of each timed chunk, in the text's order.
    pub chunk_seconds: Vec<f64>,
    /// Share (0..1) of the machine's CPU time that other processes used while timing, when
    /// the operating system tells.
    pub others_busy: Option<f64>,
}

impl Latency {
    /// The `q`-quantile (0..=1) of the chunk times, linearly interpolated (numpy's default).
    pub fn quantile(&self, q: f64) -> f64 {
        let mut v = self.chunk_seconds.clone();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
    }

    /// Seconds per chunk as reported: the median, which a passing disturbance does not move.
    pub fn median(&self) -> f64 {
        self.quantile(0.5)
    }

    pub fn busy(&self) -> bool {
        self.others_busy.is_some_and(|b| b > BUSY_SHARE)
    }

    /// The report's form: median, quartiles, extremes, mean, and the machine's load.
    pub fn to_json(&self) -> serde_json::Value {
        let n = self.chunk_seconds.len();
        serde_json::json!({
            "s_per_chunk": self.median(),
            "q1": self.quantile(0.25),
            "q3": self.quantile(0.75),
            "min": self.quantile(0.0),
            "max": self.quantile(1.0),
            "mean": self.chunk_seconds.iter().sum::<f64>() / n.max(1) as f64,
            "timed_chunks": n,
            "others_busy": self.others_busy,
            "machine_busy": self.busy(),
        })
    }
}

/// A text's summed next-token NLL over the chunks one worker scored (or all of them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PplPart {
    /// The dataset's name (`wikitext2`, `ptb`).
    pub name: String,
    pub nll: f64,
    /// Predictions the NLL sums.
    pub count: u64,
    pub chunks: u64,
    /// The whole text's tokens.
    pub tokens: u64,
    /// Seconds spent scoring (the slowest worker's, once merged).
    pub seconds: f64,
}

impl PplPart {
    pub fn mean_nll(&self) -> f64 {
        self.nll / self.count.max(1) as f64
    }

    pub fn ppl(&self) -> f64 {
        self.mean_nll().exp()
    }

    /// Adds another worker's part of the same text.
    pub fn merge(&mut self, other: &PplPart) {
        self.nll += other.nll;
        self.count += other.count;
        self.chunks += other.chunks;
        self.tokens = self.tokens.max(other.tokens);
        self.seconds = self.seconds.max(other.seconds);
    }
}

impl From<crate::proto::PplSum> for PplPart {
    fn from(p: crate::proto::PplSum) -> Self {
        PplPart { name: p.name, nll: p.nll, count: p.count, chunks: p.chunks, tokens: p.tokens, seconds: p.seconds }
    }
}

impl From<PplPart> for crate::proto::PplSum {
    fn from(p: PplPart) -> Self {
        crate::proto::PplSum { name: p.name, nll: p.nll, count: p.count, chunks: p.chunks, tokens: p.tokens, seconds: p.seconds }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantiles_interpolate_like_numpy() {
        // numpy.quantile([0.5, 0.1, 0.4, 0.2], [0, .25, .5, .75, 1]) = [0.1, 0.175, 0.3, 0.425, 0.5]
        let l = Latency { chunk_seconds: vec![0.5, 0.1, 0.4, 0.2], others_busy: Some(0.02) };
        for (q, want) in [(0.0, 0.1), (0.25, 0.175), (0.5, 0.3), (0.75, 0.425), (1.0, 0.5)] {
            assert!((l.quantile(q) - want).abs() < 1e-12, "q {q}: {}", l.quantile(q));
        }
        let j = l.to_json();
        assert_eq!((j["timed_chunks"].as_u64(), j["machine_busy"].as_bool()), (Some(4), Some(false)));
        assert!((j["mean"].as_f64().unwrap() - 0.3).abs() < 1e-12);
        assert!(Latency { others_busy: Some(0.35), ..l.clone() }.busy());
        assert!(!Latency { others_busy: None, ..l }.busy());
        assert!(Latency::default().median().is_nan());
    }
}
