//! lm-evaluation-harness's multiple-choice metrics: `acc` (the most likely choice is the gold
//! one; the first on ties, as `np.argmax`), `acc_norm` (log-likelihood per character of the
//! choice), their means and standard errors (`mean_stderr`: sample standard deviation / √n).

use super::tasks::Doc;
use serde::Serialize;

/// The first index of the largest value.
fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 || i == 0 {
            best = (i, v);
        }
    }
    best.0
}

/// One document's outcome.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DocResult {
    pub doc: usize,
    pub gold: usize,
    /// Log-likelihood of each choice.
    pub lls: Vec<f64>,
    pub pred: usize,
    pub pred_norm: usize,
}

impl DocResult {
    pub fn new(doc: &Doc, lls: Vec<f64>) -> Self {
        let pred = argmax(lls.iter().copied());
        let pred_norm = argmax(lls.iter().zip(&doc.choice_chars).map(|(l, &n)| l / n as f64));
        Self { doc: doc.index, gold: doc.gold, lls, pred, pred_norm }
    }
}

/// Mean and `mean_stderr` of 0/1 outcomes.
pub fn mean_stderr(hits: &[bool]) -> (f64, f64) {
    let n = hits.len() as f64;
    if hits.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = hits.iter().filter(|&&h| h).count() as f64 / n;
    if hits.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = hits.iter().map(|&h| (f64::from(u8::from(h)) - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// A task's scores.
#[derive(Debug, Clone, Serialize)]
pub struct TaskScores {
    pub acc: f64,
    pub acc_stderr: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm_stderr: Option<f64>,
    pub samples: usize,
}

pub fn task_scores(results: &[DocResult], with_norm: bool) -> TaskScores {
    let (acc, acc_stderr) = mean_stderr(&results.iter().map(|r| r.pred == r.gold).collect::<Vec<_>>());
    let (acc_norm, acc_norm_stderr) = mean_stderr(&results.iter().map(|r| r.pred_norm == r.gold).collect::<Vec<_>>());
    TaskScores { acc, acc_stderr, acc_norm: with_norm.then_some(acc_norm), acc_norm_stderr: with_norm.then_some(acc_norm_stderr), samples: results.len() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_ties_and_norm_divides_by_characters() {
        let doc = Doc { index: 0, pairs: vec![], gold: 1, choice_chars: vec![2, 10] };
        let r = DocResult::new(&doc, vec![-4.0, -4.0]);
        assert_eq!((r.pred, r.pred_norm), (0, 1));
    }

    #[test]
    fn stderr_is_the_sample_standard_error() {
        // p = 0.75, n = 4: sqrt(p(1-p)/(n-1)) = sqrt(0.1875/3) = 0.25.
        let (m, s) = mean_stderr(&[true, true, false, true]);
        assert_eq!(m, 0.75);
        assert!((s - 0.25).abs() < 1e-12, "{s}");
    }
}
