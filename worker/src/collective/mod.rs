//! Collective communication between the workers of a run, behind one trait: a single rank
//! (no-op), a TCP ring on CPUs (the ring algorithm NCCL and Gloo use for all-reduce), and NCCL
//! on GPUs (feature `nccl`). A worker's runtime owns its communicator; calls block.
//!
//! Two levels: host slices (small values: losses, norms, lengths) and tensors (statistics,
//! adapter gradients, hidden states and their gradients). The tensor calls stage through host
//! memory by default; NCCL in a `cuda` build works on the CUDA buffers themselves.

#[cfg(feature = "nccl")]
mod nccl;
mod ring;
mod single;
mod staged;

#[cfg(feature = "nccl")]
pub use nccl::{nccl_available, nccl_unique_id, NcclComm};
pub use ring::{RingOptions, TcpRing};
pub use single::SingleRank;

use candle_core::{DType, Device, Tensor};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CommError {
    #[error("rank {rank}: {what} with rank {peer} failed: {error}")]
    Io { rank: usize, peer: usize, what: &'static str, error: std::io::Error },
    #[error("rank {rank}: no connection from rank {peer} within {waited:?}")]
    Timeout { rank: usize, peer: usize, waited: Duration },
    #[error("rank {rank}: {reason}")]
    Protocol { rank: usize, reason: String },
    #[error("rank {rank}: {reason}")]
    Usage { rank: usize, reason: String },
    #[error("rank {rank}: {what}: {error}")]
    Tensor { rank: usize, what: &'static str, error: Box<candle_core::Error> },
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

    /// The element-wise sum of `t` over all ranks, in f32 on `t`'s device (statistics and
    /// gradients are summed in f32 whatever the weights' dtype).
    fn all_reduce_sum_tensor(&mut self, t: &Tensor) -> CommResult<Tensor> {
        staged::all_reduce_sum_tensor(self, t)
    }

    /// Sends `t` to a neighbouring rank, which receives it with [`Communicator::recv_tensor`].
    fn send_tensor(&mut self, t: &Tensor, to: usize) -> CommResult<()> {
        staged::send_tensor(self, t, to)
    }

    /// Receives the tensor a neighbouring rank sent, which must have `shape`; returned in
    /// `dtype` on `device`.
    fn recv_tensor(&mut self, from: usize, shape: &[usize], dtype: DType, device: &Device) -> CommResult<Tensor> {
        staged::recv_tensor(self, from, shape, dtype, device)
    }
}

/// Where a worker runs (`cpu`, `cuda:N`), named once in the shared crate.
pub use llmprune_shared::device::WorkerDevice;

/// The device tensors live on. `cuda:N` needs a build with candle's CUDA backend (feature
/// `cuda`); other builds refuse it here, naming the device.
pub fn compute_device(device: WorkerDevice) -> Result<candle_core::Device, String> {
    match device {
        WorkerDevice::Cpu => Ok(candle_core::Device::Cpu),
        WorkerDevice::Cuda(n) => cuda_device(n),
    }
}

/// A driver error in words: the driver's description and the code's name
/// (`no CUDA-capable device is detected (CUDA_ERROR_NO_DEVICE)`), not its Rust debug form.
#[cfg(feature = "cuda")]
fn driver_message(e: &cudarc::driver::DriverError) -> String {
    let text = |r: Result<&std::ffi::CStr, _>| r.map(|s| s.to_string_lossy().into_owned()).ok();
    match (text(e.error_string()), text(e.error_name())) {
        (Some(description), Some(name)) if !description.contains(&name) => format!("{description} ({name})"),
        (Some(description), _) => description,
        (None, Some(name)) => name,
        (None, None) => format!("CUDA driver error {:?}", e.0),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(n: usize) -> Result<candle_core::Device, String> {
    // The driver first: without one (no GPU, or the link-time stub) its own error says so,
    // where candle's would come wrapped in a backtrace.
    if let Err(e) = cudarc::driver::result::init() {
        return Err(format!("cuda:{n}: the NVIDIA driver cannot be used here ({})", driver_message(&e)));
    }
    let count = cudarc::driver::result::device::get_count().map_err(|e| format!("cuda:{n}: counting GPUs failed ({})", driver_message(&e)))?;
    if n >= count as usize {
        return Err(format!("cuda:{n}: this machine has {count} GPU(s), numbered from 0"));
    }
    // candle's kernels are built for one architecture (`sm_XXa` PTX), which no other loads.
    let ctx = cudarc::driver::CudaContext::new(n).map_err(|e| format!("cuda:{n}: {}", driver_message(&e)))?;
    let (major, minor) = ctx.compute_capability().map_err(|e| format!("cuda:{n}: {}", driver_message(&e)))?;
    if let Some(built) = BUILT_FOR.filter(|b| b.parse::<i32>().ok() != Some(major * 10 + minor)) {
        return Err(format!(
            "cuda:{n} has compute capability {major}.{minor}; this build's kernels are for {built} (rebuild with CUDA_COMPUTE_CAP={major}{minor})"
        ));
    }
    candle_core::Device::new_cuda(n).map_err(|e| format!("cuda:{n}: {}", e.to_string().lines().next().unwrap_or_default()))
}

/// The compute capability candle's kernels were built for (scripts/setup-cuda.sh sets it).
#[cfg(feature = "cuda")]
const BUILT_FOR: Option<&str> = option_env!("CUDA_COMPUTE_CAP");

/// The free memory of the GPU a worker computes on, as it offers it to the coordinator (which
/// cuts stages by it); `None` for the CPU, or where the GPU cannot be asked.
pub fn device_free_memory(device: WorkerDevice) -> Option<u64> {
    match device {
        WorkerDevice::Cpu => None,
        #[cfg(feature = "cuda")]
        WorkerDevice::Cuda(n) => cudarc::driver::result::init()
            .ok()
            .and_then(|_| cudarc::driver::CudaContext::new(n).ok())
            .and_then(|ctx| ctx.mem_get_info().ok())
            .map(|(free, _)| free as u64),
        #[cfg(not(feature = "cuda"))]
        WorkerDevice::Cuda(_) => None,
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(n: usize) -> Result<candle_core::Device, String> {
    Err(format!("cuda:{n}: this build computes on the CPU only (build with --features cuda; see scripts/setup-cuda.sh)"))
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

/// This worker's NCCL communicator in a group of `world`, on GPU `ordinal`, whose tensors
/// live on `device`.
pub fn nccl_group(device: &Device, ordinal: usize, rank: usize, world: usize, id: &[u8]) -> CommResult<Box<dyn Communicator>> {
    #[cfg(feature = "nccl")]
    return Ok(Box::new(NcclComm::new(device, ordinal, rank, world, id)?));
    #[cfg(not(feature = "nccl"))]
    {
        let _ = (device, ordinal, world, id);
        Err(without_nccl(rank))
    }
}

/// The `i`-th of `n` nearly equal contiguous parts of `0..len` (sizes differ by at most one).
pub fn part(len: usize, n: usize, i: usize) -> std::ops::Range<usize> {
    let (base, extra) = (len / n, len % n);
    let start = i * base + i.min(extra);
    start..start + base + usize::from(i < extra)
}
