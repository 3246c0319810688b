//! NCCL between GPU workers (feature `nccl`). Tensors on the GPU (statistics, adapter
//! gradients, hidden states and their gradients) are reduced, sent and received in their
//! device buffers, on the stream candle computes on (feature `cuda`); host slices (losses,
//! norms) and tensors elsewhere are staged through a device buffer. NCCL's unique id is
//! created by rank 0 and handed to the others through the coordinator (never through files).
//! Without the CUDA and NCCL libraries every call is a clear error rather than cudarc's panic.

use super::{part, CommError, CommResult, Communicator};
use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::{Comm, Id, ReduceOp};
use std::sync::Arc;

pub struct NcclComm {
    comm: Comm,
    stream: Arc<CudaStream>,
    rank: usize,
    world: usize,
}

fn err(rank: usize, what: &str, e: impl std::fmt::Debug) -> CommError {
    CommError::Protocol { rank, reason: format!("NCCL {what}: {e:?}") }
}

/// Whether the CUDA driver and NCCL can be loaded on this machine.
#[cfg(not(feature = "cuda"))]
pub fn nccl_available() -> bool {
    // SAFETY: these only try to dlopen the libraries; they do not call into them.
    unsafe { cudarc::driver::sys::is_culib_present() && cudarc::nccl::sys::is_culib_present() }
}

/// Whether the CUDA driver works here. A `cuda` build links the CUDA libraries and NCCL (it
/// would not have started without them), so the driver is what can be missing: without a
/// GPU, or with the link-time stub in its place, initialising it fails.
#[cfg(feature = "cuda")]
pub fn nccl_available() -> bool {
    cudarc::driver::result::init().is_ok()
}

/// A new NCCL unique id (rank 0 makes it; the coordinator hands it to the other ranks).
pub fn nccl_unique_id() -> CommResult<Vec<u8>> {
    if !nccl_available() {
        return Err(CommError::Usage { rank: 0, reason: "NCCL or the CUDA driver is not installed on this machine".into() });
    }
    let id = Id::new().map_err(|e| err(0, "unique id", e))?;
    Ok(id.internal().iter().map(|&c| c as u8).collect())
}

impl NcclComm {
    /// Joins the NCCL group as `rank` of `world` on GPU `ordinal`, with rank 0's unique id,
    /// on the stream of `device` when it is that GPU (so collectives and computation are
    /// ordered on one stream).
    pub fn new(device: &candle_core::Device, ordinal: usize, rank: usize, world: usize, unique_id: &[u8]) -> CommResult<Self> {
        if !nccl_available() {
            return Err(CommError::Usage { rank, reason: "NCCL or the CUDA driver is not installed on this machine".into() });
        }
        let internal: [core::ffi::c_char; 128] = unique_id
            .iter()
            .map(|&b| b as core::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|v: Vec<_>| CommError::Protocol { rank, reason: format!("an NCCL unique id has 128 bytes, got {}", v.len()) })?;
        let stream = match compute_stream(device) {
            Some(stream) => stream,
            None => CudaContext::new(ordinal).map_err(|e| err(rank, "device", e))?.default_stream(),
        };
        let comm = Comm::from_rank(stream.clone(), rank, world, Id::uninit(internal)).map_err(|e| err(rank, "init", e))?;
        Ok(Self { comm, stream, rank, world })
    }

    fn to_device(&self, data: &[f32]) -> CommResult<cudarc::driver::CudaSlice<f32>> {
        self.stream.clone_htod(data).map_err(|e| err(self.rank, "copy to device", e))
    }

    fn to_host(&self, data: &cudarc::driver::CudaSlice<f32>) -> CommResult<Vec<f32>> {
        self.stream.clone_dtoh(data).map_err(|e| err(self.rank, "copy to host", e))
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, data: &mut [f32]) -> CommResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut buf = self.to_device(data)?;
        self.comm.all_reduce_in_place(&mut buf, &ReduceOp::Sum).map_err(|e| err(self.rank, "all-reduce", e))?;
        data.copy_from_slice(&self.to_host(&buf)?);
        Ok(())
    }

    fn broadcast(&mut self, data: &mut [f32], root: usize) -> CommResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut buf = self.to_device(data)?;
        self.comm.broadcast_in_place(&mut buf, root as i32).map_err(|e| err(self.rank, "broadcast", e))?;
        data.copy_from_slice(&self.to_host(&buf)?);
        Ok(())
    }

    fn all_gather(&mut self, data: &[f32]) -> CommResult<Vec<Vec<f32>>> {
        // NCCL gathers equal blocks: share the lengths, pad to the longest, trim.
        let mut lengths = vec![0f32; self.world];
        lengths[self.rank] = data.len() as f32;
        self.all_reduce_sum(&mut lengths)?;
        let longest = lengths.iter().fold(0f32, |a, &b| a.max(b)) as usize;
        let mut padded = data.to_vec();
        padded.resize(longest, 0.0);
        let all = if longest == 0 {
            Vec::new()
        } else {
            let src = self.to_device(&padded)?;
            let mut dst = self.stream.alloc_zeros::<f32>(longest * self.world).map_err(|e| err(self.rank, "alloc", e))?;
            self.comm.all_gather(&src, &mut dst).map_err(|e| err(self.rank, "all-gather", e))?;
            self.to_host(&dst)?
        };
        Ok((0..self.world).map(|r| all.get(part(longest * self.world, self.world, r)).unwrap_or(&[])[..lengths[r] as usize].to_vec()).collect())
    }

    fn send(&mut self, data: &[f32], to: usize) -> CommResult<()> {
        let len = self.to_device(&[data.len() as f32])?;
        self.comm.send(&len, to as i32).map_err(|e| err(self.rank, "send", e))?;
        if !data.is_empty() {
            let buf = self.to_device(data)?;
            self.comm.send(&buf, to as i32).map_err(|e| err(self.rank, "send", e))?;
        }
        self.stream.synchronize().map_err(|e| err(self.rank, "send", e))
    }

    fn recv(&mut self, from: usize) -> CommResult<Vec<f32>> {
        let mut len = self.stream.alloc_zeros::<f32>(1).map_err(|e| err(self.rank, "alloc", e))?;
        self.comm.recv(&mut len, from as i32).map_err(|e| err(self.rank, "recv", e))?;
        let n = self.to_host(&len)?[0] as usize;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = self.stream.alloc_zeros::<f32>(n).map_err(|e| err(self.rank, "alloc", e))?;
        self.comm.recv(&mut buf, from as i32).map_err(|e| err(self.rank, "recv", e))?;
        self.to_host(&buf)
    }

    fn barrier(&mut self) -> CommResult<()> {
        let mut one = [0f32];
        self.all_reduce_sum(&mut one)
    }

    #[cfg(feature = "cuda")]
    fn all_reduce_sum_tensor(&mut self, t: &candle_core::Tensor) -> CommResult<candle_core::Tensor> {
        if !t.device().is_cuda() {
            return super::staged::all_reduce_sum_tensor(self, t);
        }
        on_device::all_reduce_sum(self, t)
    }

    #[cfg(feature = "cuda")]
    fn send_tensor(&mut self, t: &candle_core::Tensor, to: usize) -> CommResult<()> {
        if !t.device().is_cuda() {
            return super::staged::send_tensor(self, t, to);
        }
        on_device::send(self, t, to)
    }

    #[cfg(feature = "cuda")]
    fn recv_tensor(&mut self, from: usize, shape: &[usize], dtype: candle_core::DType, device: &candle_core::Device) -> CommResult<candle_core::Tensor> {
        if !device.is_cuda() {
            return super::staged::recv_tensor(self, from, shape, dtype, device);
        }
        on_device::recv(self, from, shape, dtype, device)
    }
}

/// The stream candle computes on, where `device` is a GPU of a `cuda` build.
#[cfg(feature = "cuda")]
fn compute_stream(device: &candle_core::Device) -> Option<Arc<CudaStream>> {
    match device {
        candle_core::Device::Cuda(d) => Some(d.cuda_stream()),
        _ => None,
    }
}

#[cfg(not(feature = "cuda"))]
fn compute_stream(_: &candle_core::Device) -> Option<Arc<CudaStream>> {
    None
}

/// Collectives on candle's CUDA buffers: no copy through the host. Sums are taken in f32
/// (statistics and gradients); sends keep the tensor's dtype, after a one-element header with
/// the element count that the receiver checks against the shape it expects.
#[cfg(feature = "cuda")]
mod on_device {
    use super::{err, NcclComm};
    use crate::collective::staged::{check_length, tensor_error as tensor_err};
    use crate::collective::{CommError, CommResult};
    use candle_core::cuda::CudaDType;
    use candle_core::op::BackpropOp;
    use candle_core::{CudaStorage, DType, Device, Storage, Tensor};
    use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
    use cudarc::nccl::{NcclType, ReduceOp};

    /// Calls `f` with the contiguous CUDA buffer of `t` (of element type `T`).
    fn with_buffer<T: CudaDType, R>(t: &Tensor, f: impl FnOnce(&cudarc::driver::CudaView<'_, T>) -> R) -> candle_core::Result<R> {
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(cuda) = &*storage else { candle_core::bail!("not a CUDA tensor") };
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("not contiguous".into()))?;
        Ok(f(&cuda.as_cuda_slice::<T>()?.slice(start..end)))
    }

    /// A tensor of `shape` over a buffer NCCL filled.
    fn wrap<T: CudaDType>(buffer: CudaSlice<T>, shape: &[usize], device: &Device) -> candle_core::Result<Tensor> {
        let storage = CudaStorage::wrap_cuda_slice(buffer, device.as_cuda_device()?.clone());
        Ok(Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false))
    }

    pub(super) fn all_reduce_sum(comm: &mut NcclComm, t: &Tensor) -> CommResult<Tensor> {
        let rank = comm.rank;
        let t = t.to_dtype(DType::F32).and_then(|t| t.contiguous()).map_err(tensor_err(rank, "all-reduce"))?;
        let n = t.elem_count();
        if n == 0 {
            return Ok(t);
        }
        let mut out = comm.stream.alloc_zeros::<f32>(n).map_err(|e| err(rank, "alloc", e))?;
        with_buffer::<f32, _>(&t, |src| comm.comm.all_reduce(src, &mut out, &ReduceOp::Sum).map(drop))
            .map_err(tensor_err(rank, "all-reduce"))?
            .map_err(|e| err(rank, "all-reduce", e))?;
        wrap(out, t.dims(), t.device()).map_err(tensor_err(rank, "all-reduce"))
    }

    /// The header that precedes a tensor: its element count and dtype, which the receiver
    /// checks before it posts a receive of that many bytes.
    fn header(t: &Tensor) -> [u64; 2] {
        [t.elem_count() as u64, dtype_code(t.dtype())]
    }

    fn dtype_code(dtype: DType) -> u64 {
        match dtype {
            DType::F32 => 1,
            DType::F16 => 2,
            DType::BF16 => 3,
            _ => 0,
        }
    }

    fn send_typed<T: CudaDType + NcclType + DeviceRepr>(comm: &mut NcclComm, t: &Tensor, to: usize) -> CommResult<()> {
        let rank = comm.rank;
        let header = comm.stream.clone_htod(&header(t)).map_err(|e| err(rank, "copy to device", e))?;
        comm.comm.send(&header, to as i32).map_err(|e| err(rank, "send", e))?;
        if t.elem_count() > 0 {
            with_buffer::<T, _>(t, |src| comm.comm.send(src, to as i32)).map_err(tensor_err(rank, "send"))?.map_err(|e| err(rank, "send", e))?;
        }
        Ok(())
    }

    pub(super) fn send(comm: &mut NcclComm, t: &Tensor, to: usize) -> CommResult<()> {
        let t = t.contiguous().map_err(tensor_err(comm.rank, "send"))?;
        match t.dtype() {
            DType::BF16 => send_typed::<half::bf16>(comm, &t, to),
            DType::F16 => send_typed::<half::f16>(comm, &t, to),
            DType::F32 => send_typed::<f32>(comm, &t, to),
            other => Err(CommError::Usage { rank: comm.rank, reason: format!("sending a {other:?} tensor over NCCL") }),
        }
    }

    fn recv_typed<T: CudaDType + NcclType + DeviceRepr + ValidAsZeroBits>(
        comm: &mut NcclComm,
        from: usize,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> CommResult<Tensor> {
        let rank = comm.rank;
        let mut header = comm.stream.alloc_zeros::<u64>(2).map_err(|e| err(rank, "alloc", e))?;
        comm.comm.recv(&mut header, from as i32).map_err(|e| err(rank, "recv", e))?;
        let [len, code] = <[u64; 2]>::try_from(comm.stream.clone_dtoh(&header).map_err(|e| err(rank, "copy to host", e))?)
            .map_err(|_| CommError::Protocol { rank, reason: "a tensor header of the wrong size".into() })?;
        if code != dtype_code(dtype) {
            return Err(CommError::Protocol { rank, reason: format!("rank {from} sent a tensor of dtype code {code} where {dtype:?} was expected") });
        }
        check_length(rank, from, len as usize, shape)?;
        if len == 0 {
            return Tensor::zeros(shape, dtype, device).map_err(tensor_err(rank, "recv"));
        }
        let mut buffer = comm.stream.alloc_zeros::<T>(len as usize).map_err(|e| err(rank, "alloc", e))?;
        comm.comm.recv(&mut buffer, from as i32).map_err(|e| err(rank, "recv", e))?;
        wrap(buffer, shape, device).map_err(tensor_err(rank, "recv"))
    }

    /// Sender and receiver agree on the dtype (a pipeline's stages hold one); the header
    /// says when they do not.
    pub(super) fn recv(comm: &mut NcclComm, from: usize, shape: &[usize], dtype: DType, device: &Device) -> CommResult<Tensor> {
        match dtype {
            DType::BF16 => recv_typed::<half::bf16>(comm, from, shape, dtype, device),
            DType::F16 => recv_typed::<half::f16>(comm, from, shape, dtype, device),
            DType::F32 => recv_typed::<f32>(comm, from, shape, dtype, device),
            other => Err(CommError::Usage { rank: comm.rank, reason: format!("receiving a {other:?} tensor over NCCL") }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_libraries_calls_fail_instead_of_panicking() {
        if nccl_available() {
            return; // a GPU machine: the cluster tests exercise the real thing
        }
        let e = nccl_unique_id().unwrap_err().to_string();
        assert!(e.contains("not installed"), "{e}");
        let e = NcclComm::new(&candle_core::Device::Cpu, 0, 0, 1, &[0; 128]).err().unwrap().to_string();
        assert!(e.contains("not installed"), "{e}");
    }
}
