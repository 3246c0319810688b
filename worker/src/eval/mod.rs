//! Evaluation of a loaded model.

pub mod job;
pub mod perplexity;
pub mod zeroshot;
