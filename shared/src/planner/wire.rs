//! The planner's modes and steps as the protocol carries them.

use super::modes::{Criterion, Reduction};
use super::PlannerError;
use crate::plan::{PlanGroup, PlanStep, Reconstruction};
use crate::proto;

impl From<Criterion> for proto::Criterion {
    fn from(c: Criterion) -> Self {
        match c {
            Criterion::Random => proto::Criterion::Random,
            Criterion::L1 => proto::Criterion::L1,
            Criterion::L2 => proto::Criterion::L2,
            Criterion::Vectorize => proto::Criterion::Vectorize,
            Criterion::ParamFirst => proto::Criterion::ParamFirst,
            Criterion::ParamSecond => proto::Criterion::ParamSecond,
            Criterion::ParamMix => proto::Criterion::ParamMix,
            Criterion::Fluctuation => proto::Criterion::Fluctuation,
            Criterion::Wanda => proto::Criterion::Wanda,
            Criterion::Obs => proto::Criterion::Obs,
        }
    }
}

impl From<Reduction> for proto::Reduction {
    fn from(r: Reduction) -> Self {
        match r {
            Reduction::Sum => proto::Reduction::Sum,
            Reduction::Mean => proto::Reduction::Mean,
            Reduction::Max => proto::Reduction::Max,
            Reduction::Prod => proto::Reduction::Prod,
            Reduction::First => proto::Reduction::First,
            Reduction::Last => proto::Reduction::Last,
        }
    }
}

/// The criterion a request's enum field carries.
pub fn criterion_from_wire(value: i32) -> Result<Criterion, PlannerError> {
    Ok(match proto::Criterion::try_from(value).unwrap_or(proto::Criterion::Unspecified) {
        proto::Criterion::Unspecified => return Err(PlannerError::Wire(format!("criterion {value} is not one this worker knows"))),
        proto::Criterion::Random => Criterion::Random,
        proto::Criterion::L1 => Criterion::L1,
        proto::Criterion::L2 => Criterion::L2,
        proto::Criterion::Vectorize => Criterion::Vectorize,
        proto::Criterion::ParamFirst => Criterion::ParamFirst,
        proto::Criterion::ParamSecond => Criterion::ParamSecond,
        proto::Criterion::ParamMix => Criterion::ParamMix,
        proto::Criterion::Fluctuation => Criterion::Fluctuation,
        proto::Criterion::Wanda => Criterion::Wanda,
        proto::Criterion::Obs => Criterion::Obs,
    })
}

/// The reduction a request's enum field carries.
pub fn reduction_from_wire(value: i32) -> Result<Reduction, PlannerError> {
    Ok(match proto::Reduction::try_from(value).unwrap_or(proto::Reduction::Unspecified) {
        proto::Reduction::Unspecified => return Err(PlannerError::Wire(format!("reduction {value} is not one this worker knows"))),
        proto::Reduction::Sum => Reduction::Sum,
        proto::Reduction::Mean => Reduction::Mean,
        proto::Reduction::Max => Reduction::Max,
        proto::Reduction::Prod => Reduction::Prod,
        proto::Reduction::First => Reduction::First,
        proto::Reduction::Last => Reduction::Last,
    })
}

/// A plan step as every stage receives it (the scores stay with the coordinator).
pub fn step_to_wire(step: &PlanStep) -> proto::ApplyPlanRequest {
    proto::ApplyPlanRequest {
        groups: step
            .groups
            .iter()
            .map(|g| proto::KeptUnits { root: g.root.clone(), units: g.units as u32, kept: g.kept.iter().map(|&u| u as u32).collect() })
            .collect(),
        removed_layers: step.removed_layers.iter().map(|&i| i as u32).collect(),
        reconstruct: step.reconstruct.as_ref().map(|r| proto::Reconstruction {
            damping: r.damping,
            windows: r.windows.iter().map(|w| proto::TokenWindow { ids: w.clone() }).collect(),
            weights: r.weights,
            bias: r.bias,
        }),
    }
}

/// The step an ApplyPlan request carries, without scores.
pub fn step_from_wire(req: proto::ApplyPlanRequest) -> PlanStep {
    PlanStep {
        ratio: 0.0,
        groups: req
            .groups
            .into_iter()
            .map(|g| PlanGroup { root: g.root, units: g.units as usize, kept: g.kept.into_iter().map(|u| u as usize).collect(), scores: vec![] })
            .collect(),
        removed_layers: req.removed_layers.into_iter().map(|i| i as usize).collect(),
        layer_scores: vec![],
        reconstruct: req.reconstruct.map(|r| Reconstruction {
            damping: r.damping,
            windows: r.windows.into_iter().map(|w| w.ids).collect(),
            weights: r.weights,
            bias: r.bias,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::ModeName;

    #[test]
    fn modes_and_steps_survive_the_wire() {
        for &(_, c) in Criterion::NAMES {
            assert_eq!(criterion_from_wire(proto::Criterion::from(c) as i32).unwrap(), c);
        }
        for &(_, r) in Reduction::NAMES {
            assert_eq!(reduction_from_wire(proto::Reduction::from(r) as i32).unwrap(), r);
        }
        assert!(criterion_from_wire(0).is_err() && reduction_from_wire(99).is_err());
        let step = PlanStep {
            ratio: 0.0,
            groups: vec![PlanGroup { root: "layers.1.gate".into(), units: 4, kept: vec![0, 3], scores: vec![] }],
            removed_layers: vec![2],
            layer_scores: vec![],
            reconstruct: Some(Reconstruction { damping: 0.5, windows: vec![vec![7, 8], vec![9, 10]], weights: false, bias: true }),
        };
        assert_eq!(step_from_wire(step_to_wire(&step)), step);
    }
}
