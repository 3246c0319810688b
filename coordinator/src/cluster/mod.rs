//! The coordinator's side of the cluster runtime: the registry that workers register and
//! heartbeat with (`registry`), local worker processes (`launcher`), layer shards balanced by
//! memory (`shards`), the phase state machine that drives the workers (`driver`), the layout and
//! loading of a model on the workers (`load`), and distributed pruning (`prune`), recovery
//! (`recover`) and evaluation (`evaluate`) on top of it.

pub mod driver;
pub mod evaluate;
pub mod launcher;
pub mod load;
pub mod prune;
pub mod recover;
pub mod registry;
pub mod shards;
