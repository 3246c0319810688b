//! The coordinator's side of the cluster runtime, the one path every phase takes (one process
//! is a cluster of one in-process worker): the registry that workers register and heartbeat
//! with (`registry`), the workers the coordinator starts itself (`launcher`), layer shards
//! balanced by memory (`shards`), the phase state machine that drives the workers (`driver`),
//! the layout and loading of a model on the workers (`load`), and pruning (`prune`), recovery
//! (`recover`), evaluation (`evaluate`) and generation (`generate`) on top of it.

pub mod driver;
pub mod evaluate;
pub mod generate;
pub mod launcher;
pub mod load;
pub mod prune;
pub mod recover;
pub mod registry;
pub mod shards;
