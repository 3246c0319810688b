//! Collective communication between the workers of a run, behind one trait: a single rank
//! (no-op), a TCP ring on CPUs (the ring algorithm NCCL and Gloo use for all-reduce), and NCCL
//! on GPUs (feature `nccl`). A worker's runtime owns its communicator; calls block.

#[cfg(feature = "nccl")]
mod nccl;
mod ring;
mod single;

#[cfg(feature = "nccl")]
pub use nccl::{nccl_available, nccl_unique_id, NcclComm};
pub use ring::{RingOptions, TcpRing};
pub use single::SingleRank;

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CommError {
    #[error("rank {rank}: {what} with rank {peer} failed: {source}")]
    Io {
        rank: usize,
        peer: usize,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("rank {rank}: no connection from rank {peer} within {waited:?}")]
    Timeout { rank: usize, peer: usize, waited: Duration },
    #[error("rank {rank}: {reason}")]
    Protocol { rank: usize, reason: String },
    #[error("rank {rank}: {reason}")]
    Usage { rank: usize, reason: String },
}

pub type CommResult<T> = std::result::Result<T, CommError>;

/// What every collective backend offers. Every rank of the group makes the same calls in the
/// same order; results are bit-identical on every rank. Not `Send`: NCCL communicators belong
/// to the thread that made them, so a worker's runtime creates its own on its thread.
pub trait Communicator {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Element-wise sum over all ranks, in place.
    fn all_reduce_sum(&mut self, data: &mut [f32]) -> CommResult<()>;
    /// `root`'s `data` on every rank (`data` must have the same length everywhere).
    fn broadcast(&mut self, data: &mut [f32], root: usize) -> CommResult<()>;
    /// Every rank's `data` (lengths may differ), by rank.
    fn all_gather(&mut self, data: &[f32]) -> CommResult<Vec<Vec<f32>>>;
    /// Sends to a neighbouring rank (rank ± 1 in the ring).
    fn send(&mut self, data: &[f32], to: usize) -> CommResult<()>;
    /// Receives what a neighbouring rank sent.
    fn recv(&mut self, from: usize) -> CommResult<Vec<f32>>;
    fn barrier(&mut self) -> CommResult<()>;
}

/// Where a worker runs (`cpu`, `cuda:N`), named once in the shared crate.
pub use llmprune_shared::device::WorkerDevice;

/// The device tensors live on. `cuda:N` needs a build with candle's CUDA backend; other builds
/// refuse it here, naming the device.
pub fn compute_device(device: WorkerDevice) -> Result<candle_core::Device, String> {
    match device {
        WorkerDevice::Cpu => Ok(candle_core::Device::Cpu),
        WorkerDevice::Cuda(n) => candle_core::Device::new_cuda(n).map_err(|e| format!("cuda:{n}: {e} (this build computes on the CPU only)")),
    }
}

#[cfg(not(feature = "nccl"))]
fn without_nccl(rank: usize) -> CommError {
    CommError::Usage { rank, reason: "this worker was built without NCCL (cargo build --features nccl)".into() }
}

/// A fresh NCCL unique id for a group whose rank 0 this worker is.
pub fn group_id() -> CommResult<Vec<u8>> {
    #[cfg(feature = "nccl")]
    return nccl_unique_id();
    #[cfg(not(feature = "nccl"))]
    Err(without_nccl(0))
}

/// This worker's NCCL communicator in a group of `world`, on GPU `ordinal`.
pub fn nccl_group(ordinal: usize, rank: usize, world: usize, id: &[u8]) -> CommResult<Box<dyn Communicator>> {
    #[cfg(feature = "nccl")]
    return Ok(Box::new(NcclComm::new(ordinal, rank, world, id)?));
    #[cfg(not(feature = "nccl"))]
    {
        let _ = (ordinal, world, id);
        Err(without_nccl(rank))
    }
}

/// The `i`-th of `n` nearly equal contiguous parts of `0..len` (sizes differ by at most one).
pub fn part(len: usize, n: usize, i: usize) -> std::ops::Range<usize> {
    let (base, extra) = (len / n, len % n);
    let start = i * base + i.min(extra);
    start..start + base + usize::from(i < extra)
}
