//! The worker's side of the cluster runtime: a model shard that scores and slices its own
//! layers as one stage of a pipeline (`shard`), the runtime that owns it with its device and
//! communicator on one thread (`runtime`), and the gRPC service that hands the runtime its
//! commands (`service`).

pub mod runtime;
pub mod service;
pub mod shard;
