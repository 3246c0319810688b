//! LLM-Pruner's pruning core, in one process (the cluster distributes exactly this).
//!
//! Today: the importance of each channel of a group member, and the group reductions
//! (`reference-implementation.md` §2.3–§2.5). Coupled-structure discovery, plans and
//! slicing build on these.

pub mod importance;
pub mod pipeline;
pub mod slice;
pub mod statistics;
