//! The worker's side of the cluster runtime: a model shard that scores and slices its own
//! layers as one stage of a pipeline (`shard`), the runtime that owns it with its device and
//! communicator on one thread (`runtime`), the gRPC service that hands the runtime its
//! commands (`service`), and a worker's membership of a cluster (`serve`).

pub mod runtime;
pub mod serve;
pub mod service;
pub mod shard;
