//! The tensor collectives through host memory, in f32: what the CPU ring and a single rank
//! use, and NCCL for tensors that are not on a GPU. f32 holds every f16 and bf16 value
//! exactly, so a half-precision tensor crosses unchanged.

use super::{CommError, CommResult, Communicator};
use candle_core::{DType, Device, Tensor};

/// A tensor operation of a collective's call, as that call's error.
pub(super) fn tensor_error(rank: usize, what: &'static str) -> impl Fn(candle_core::Error) -> CommError {
    move |error| CommError::Tensor { rank, what, error: Box::new(error) }
}

fn host_values(rank: usize, t: &Tensor, what: &'static str) -> CommResult<Vec<f32>> {
    t.flatten_all().and_then(|t| t.to_dtype(DType::F32)).and_then(|t| t.to_vec1::<f32>()).map_err(tensor_error(rank, what))
}

pub(super) fn all_reduce_sum_tensor<C: Communicator + ?Sized>(comm: &mut C, t: &Tensor) -> CommResult<Tensor> {
    let rank = comm.rank();
    let mut values = host_values(rank, t, "all-reduce")?;
    comm.all_reduce_sum(&mut values)?;
    Tensor::from_vec(values, t.shape(), t.device()).map_err(tensor_error(rank, "all-reduce"))
}

pub(super) fn send_tensor<C: Communicator + ?Sized>(comm: &mut C, t: &Tensor, to: usize) -> CommResult<()> {
    let values = host_values(comm.rank(), t, "send")?;
    comm.send(&values, to)
}

pub(super) fn recv_tensor<C: Communicator + ?Sized>(comm: &mut C, from: usize, shape: &[usize], dtype: DType, device: &Device) -> CommResult<Tensor> {
    let rank = comm.rank();
    let values = comm.recv(from)?;
    check_length(rank, from, values.len(), shape)?;
    Tensor::from_vec(values, shape, device).and_then(|t| t.to_dtype(dtype)).map_err(tensor_error(rank, "recv"))
}

/// A received tensor has the elements its receiver expects, or the pipeline is out of step.
pub(super) fn check_length(rank: usize, from: usize, len: usize, shape: &[usize]) -> CommResult<()> {
    let expected: usize = shape.iter().product();
    if len != expected {
        return Err(CommError::Protocol { rank, reason: format!("rank {from} sent {len} values where a tensor {shape:?} ({expected}) was expected") });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::SingleRank;
    use super::*;

    /// A host-side communicator that records what crosses it, for the tensor calls' framing.
    struct Loopback {
        sent: Vec<Vec<f32>>,
    }

    impl Communicator for Loopback {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn all_reduce_sum(&mut self, data: &mut [f32]) -> CommResult<()> {
            data.iter_mut().for_each(|v| *v *= 2.0); // as if the other rank held the same values
            Ok(())
        }
        fn broadcast(&mut self, _: &mut [f32], _: usize) -> CommResult<()> {
            Ok(())
        }
        fn all_gather(&mut self, data: &[f32]) -> CommResult<Vec<Vec<f32>>> {
            Ok(vec![data.to_vec(); 2])
        }
        fn send(&mut self, data: &[f32], _: usize) -> CommResult<()> {
            self.sent.push(data.to_vec());
            Ok(())
        }
        fn recv(&mut self, _: usize) -> CommResult<Vec<f32>> {
            Ok(self.sent.remove(0))
        }
        fn barrier(&mut self) -> CommResult<()> {
            Ok(())
        }
    }

    #[test]
    fn half_precision_tensors_cross_unchanged_and_sums_come_back_in_f32() {
        let dev = Device::Cpu;
        let values = [1.0f32, -2.5, 3.0e-3, 65504.0, 1.0e-7, 0.1];
        let bf = Tensor::new(&values, &dev).unwrap().reshape((2, 3)).unwrap().to_dtype(DType::BF16).unwrap();
        let mut c = Loopback { sent: Vec::new() };
        c.send_tensor(&bf, 1).unwrap();
        let back = c.recv_tensor(1, &[2, 3], DType::BF16, &dev).unwrap();
        assert_eq!(back.dtype(), DType::BF16);
        assert_eq!(back.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap(), bf.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap());

        let sum = c.all_reduce_sum_tensor(&bf).unwrap();
        assert_eq!(sum.dtype(), DType::F32);
        let twice: Vec<f32> = bf.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v * 2.0).collect();
        assert_eq!(sum.flatten_all().unwrap().to_vec1::<f32>().unwrap(), twice);
    }

    #[test]
    fn a_tensor_of_the_wrong_size_is_refused_naming_the_sender() {
        let mut c = Loopback { sent: vec![vec![1.0; 5]] };
        let e = c.recv_tensor(1, &[2, 3], DType::F32, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("rank 1 sent 5 values where a tensor [2, 3] (6) was expected"), "{e}");
    }

    #[test]
    fn a_single_rank_sums_to_itself() {
        let t = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        let s = SingleRank.all_reduce_sum_tensor(&t).unwrap();
        assert_eq!(s.to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap());
    }
}
