//! Evaluation of a loaded model.

pub mod perplexity;
