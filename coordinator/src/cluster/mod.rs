//! The coordinator's side of the cluster runtime: the registry that workers register and
//! heartbeat with (`registry`), local worker processes (`launcher`), layer shards balanced by
//! memory (`shards`), the phase state machine that drives the workers (`driver`), and
//! distributed pruning on top of it (`prune`).

pub mod driver;
pub mod launcher;
pub mod prune;
pub mod registry;
pub mod shards;
