//! The dtype weights are held in, defined once: the CLI parses it (with the `clap` feature),
//! the protocol carries it, workers load by it. Statistics and sums stay f32/f64 whatever it is.

use crate::proto;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    #[default]
    F32,
    F16,
    Bf16,
}

impl WeightDtype {
    /// What a job that names no dtype holds weights in: f32 on CPUs (exact, and what the CPU
    /// kernels take), bf16 on GPUs (half the memory and tensor-core matmuls; statistics,
    /// optimizer state and adapters stay f32).
    pub fn default_for(on_gpu: bool) -> Self {
        if on_gpu {
            WeightDtype::Bf16
        } else {
            WeightDtype::F32
        }
    }

    /// As a setting shows it: the dtype, or `auto` for [`Self::default_for`] the workers.
    pub fn name_or_auto(choice: Option<Self>) -> &'static str {
        choice.map_or("auto", Self::name)
    }

    /// What [`Self::name_or_auto`] wrote.
    pub fn parse_name_or_auto(name: &str) -> Result<Option<Self>, String> {
        match name {
            "auto" => Ok(None),
            _ => [WeightDtype::F32, WeightDtype::F16, WeightDtype::Bf16]
                .into_iter()
                .find(|d| d.name() == name)
                .map(Some)
                .ok_or_else(|| format!("`{name}` is not f32, f16, bf16 or auto")),
        }
    }

    /// Bytes per weight.
    pub fn size_in_bytes(self) -> u64 {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::F16 | WeightDtype::Bf16 => 2,
        }
    }

    /// As PyTorch and `config.json` spell it.
    pub fn torch_name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "float32",
            WeightDtype::F16 => "float16",
            WeightDtype::Bf16 => "bfloat16",
        }
    }

    /// As the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
            WeightDtype::Bf16 => "bf16",
        }
    }

    /// The dtype a request's enum field carries (an unknown value is refused by name).
    pub fn from_wire(value: i32) -> Result<Self, String> {
        match proto::WeightDtype::try_from(value) {
            Ok(proto::WeightDtype::F32) => Ok(WeightDtype::F32),
            Ok(proto::WeightDtype::F16) => Ok(WeightDtype::F16),
            Ok(proto::WeightDtype::Bf16) => Ok(WeightDtype::Bf16),
            Err(_) => Err(format!("weight dtype {value} is not one this worker knows")),
        }
    }
}

impl From<WeightDtype> for proto::WeightDtype {
    fn from(d: WeightDtype) -> Self {
        match d {
            WeightDtype::F32 => proto::WeightDtype::F32,
            WeightDtype::F16 => proto::WeightDtype::F16,
            WeightDtype::Bf16 => proto::WeightDtype::Bf16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_survives_the_wire() {
        for d in [WeightDtype::F32, WeightDtype::F16, WeightDtype::Bf16] {
            assert_eq!(WeightDtype::from_wire(proto::WeightDtype::from(d) as i32), Ok(d));
        }
        assert!(WeightDtype::from_wire(17).is_err());
    }

    #[test]
    fn a_setting_reads_back_as_written() {
        for choice in [None, Some(WeightDtype::F32), Some(WeightDtype::F16), Some(WeightDtype::Bf16)] {
            assert_eq!(WeightDtype::parse_name_or_auto(WeightDtype::name_or_auto(choice)), Ok(choice));
        }
        assert_eq!(WeightDtype::parse_name_or_auto("fp8"), Err("`fp8` is not f32, f16, bf16 or auto".to_string()));
    }
}
