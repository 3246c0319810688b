//! What workers return for the coordinator to merge, without tensors.

/// One evaluation share: this worker's documents and perplexity chunks, or all of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalShare {
    /// Log-likelihoods of each choice, by unit (document of all tasks, in order), sorted.
    pub lls: Vec<(usize, Vec<f64>)>,
    /// Perplexity sums, by text.
    pub ppl: Vec<PplPart>,
    /// Seconds per chunk of the first text, batch 1, when the job timed it.
    pub latency_s_per_chunk: Option<f64>,
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
