//! LLM-Pruner's pruning core, in one process (the cluster distributes exactly this).
//!
//! Gradient statistics (`statistics`), importance per member, group and layer
//! (`importance`, reference §2.3–§2.5), slicing (`slice`), applying a plan step (`apply`),
//! and the pruning loop that decides the steps (`pipeline`).

pub mod apply;
pub mod engine;
pub mod importance;
pub mod pipeline;
pub mod slice;
pub mod statistics;
