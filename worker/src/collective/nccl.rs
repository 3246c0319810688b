//! NCCL between GPU workers (feature `nccl`). The trait's host slices are staged through the
//! device: the statistics it reduces are per-layer vectors, and the model's own tensors stay
//! where they are. NCCL's unique id is created by rank 0 and handed to the others through the
//! coordinator (never through files). The CUDA and NCCL libraries are loaded at run time;
//! without them every call is a clear error rather than cudarc's panic.

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
pub fn nccl_available() -> bool {
    // SAFETY: these only try to dlopen the libraries; they do not call into them.
    unsafe { cudarc::driver::sys::is_culib_present() && cudarc::nccl::sys::is_culib_present() }
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
    /// Joins the NCCL group as `rank` of `world` on GPU `ordinal`, with rank 0's unique id.
    pub fn new(ordinal: usize, rank: usize, world: usize, unique_id: &[u8]) -> CommResult<Self> {
        if !nccl_available() {
            return Err(CommError::Usage { rank, reason: "NCCL or the CUDA driver is not installed on this machine".into() });
        }
        let internal: [core::ffi::c_char; 128] = unique_id
            .iter()
            .map(|&b| b as core::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|v: Vec<_>| CommError::Protocol { rank, reason: format!("an NCCL unique id has 128 bytes, got {}", v.len()) })?;
        let ctx = CudaContext::new(ordinal).map_err(|e| err(rank, "device", e))?;
        let stream = ctx.default_stream();
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
        let e = NcclComm::new(0, 0, 1, &[0; 128]).err().unwrap().to_string();
        assert!(e.contains("not installed"), "{e}");
    }
}
