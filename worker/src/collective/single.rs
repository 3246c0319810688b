//! A group of one: every collective is the identity.

use super::{CommError, CommResult, Communicator};

#[derive(Debug, Default)]
pub struct SingleRank;

impl SingleRank {
    fn no_peer(&self, what: &str) -> CommError {
        CommError::Usage { rank: 0, reason: format!("{what}: a single rank has no peer") }
    }
}

impl Communicator for SingleRank {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, _data: &mut [f32]) -> CommResult<()> {
        Ok(())
    }
    fn broadcast(&mut self, _data: &mut [f32], root: usize) -> CommResult<()> {
        if root == 0 {
            Ok(())
        } else {
            Err(self.no_peer("broadcast"))
        }
    }
    fn all_gather(&mut self, data: &[f32]) -> CommResult<Vec<Vec<f32>>> {
        Ok(vec![data.to_vec()])
    }
    fn send(&mut self, _data: &[f32], _to: usize) -> CommResult<()> {
        Err(self.no_peer("send"))
    }
    fn recv(&mut self, _from: usize) -> CommResult<Vec<f32>> {
        Err(self.no_peer("recv"))
    }
    fn barrier(&mut self) -> CommResult<()> {
        Ok(())
    }
}
