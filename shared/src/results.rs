//! What workers return for the coordinator to merge, without tensors.

/// One evaluation share: this worker's documents and perplexity chunks, or all of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalShare {
    /// Log-likelihoods of each choice, by unit (document of all tasks, in order), sorted.
    pub lls: Vec<(usize, Vec<f64>)>,
    /// Summed NLL and predictions counted, by text.
    pub ppl: Vec<(String, f64, u64)>,
    /// Seconds per chunk of the first text, batch 1, when the job timed it.
    pub latency_s_per_chunk: Option<f64>,
}
