//! Where a worker computes, as the CLI, the configuration and registration name it: `cpu` or
//! `cuda:N`. The worker turns it into a tensor device; nothing here touches one.

/// Where a worker runs: its collectives take NCCL on a GPU and the TCP ring on a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerDevice {
    Cpu,
    Cuda(usize),
}

impl WorkerDevice {
    /// `cpu` or `cuda:N`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Self::Cuda).ok_or_else(|| format!("`{s}`: expected cpu or cuda:N")),
        }
    }

    /// As workers report it to the coordinator.
    pub fn kind(&self) -> String {
        match self {
            Self::Cpu => "cpu".into(),
            Self::Cuda(n) => format!("cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_read_back_as_written() {
        for d in [WorkerDevice::Cpu, WorkerDevice::Cuda(3)] {
            assert_eq!(WorkerDevice::parse(&d.kind()), Ok(d));
        }
        assert!(WorkerDevice::parse("gpu0").unwrap_err().contains("expected cpu or cuda:N"));
    }
}
