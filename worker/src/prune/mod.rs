//! LLM-Pruner's pruning core, in one process (the cluster distributes exactly this).
//!
//! Gradient statistics (`statistics`), importance per member, group and layer
//! (`importance`, reference §2.3–§2.5), the consumers' input statistics (`activations`) and
//! the criteria and reconstruction built on them (`activation_scores`, `gram`,
//! `reconstruct`), slicing (`slice`), applying a plan step (`apply`), and the pruning loop
//! that decides the steps (`pipeline`).

pub mod activation_scores;
pub mod activations;
pub mod apply;
pub mod engine;
pub mod gram;
pub mod importance;
pub mod pipeline;
pub mod reconstruct;
pub mod slice;
pub mod statistics;
