//! A pruning plan as data (`plan.json`): which units of which coupled groups (and which whole
//! layers) each pruning step keeps, with what made the decision: the settings, the calibration
//! source, the scores, and the checksum of the model it was made for. Applying it again to
//! that model gives the same model; the coordinator decides it and broadcasts it to workers.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Written into every plan; a reader refuses other versions.
pub const PLAN_FORMAT: &str = "llmprune-plan";
pub const PLAN_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum PlanError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("not a plan: `format` is {found:?}, expected {PLAN_FORMAT:?}")]
    Format { found: String },
    #[error("plan version {found} is not supported (this build reads version {PLAN_VERSION})")]
    Version { found: u32 },
}

/// The model a plan was made for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanModel {
    /// Where it was read from (informative).
    pub path: String,
    /// sha256 over the model's files (the worker loader's `model_checksum`); applying the
    /// plan to another model is refused.
    pub sha256: String,
    pub params: usize,
}

/// One pruned group of one step: its root (as the dependency graph names it), its units
/// then, the kept ones (ascending), and the scores all units had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanGroup {
    pub root: String,
    pub units: usize,
    pub kept: Vec<usize>,
    pub scores: Vec<f32>,
}

/// One pruning step: its target share of the initial widths, the groups it cut, and the
/// layers it removed whole (indices in the model as it was before this step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanStep {
    pub ratio: f64,
    #[serde(default)]
    pub groups: Vec<PlanGroup>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_layers: Vec<usize>,
    /// Scores of the candidate layers (layer-wise pruning), by layer index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_scores: Vec<(usize, f32)>,
    /// With it, the step re-solves the kept input columns of the consuming projections from
    /// their inputs over these windows; the plan carries the windows so that a replay gathers
    /// the same statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconstruct: Option<Reconstruction>,
}

/// What a step's cut does to every o_proj and down_proj that loses input channels, from the
/// statistics of its inputs over the `windows` (the model before the cut), `K` the kept
/// channels, `R` the removed ones, `μ` the inputs' mean:
/// - `weights` alone: least squares, `W' = W·Hd[:,K]·Hd_KK⁻¹`, `Hd` the Gram matrix `XᵀX/N`
///   damped by `damping` × its mean diagonal: the kept columns that best reproduce the
///   layer's outputs on those inputs (SparseGPT, SlimGPT);
/// - `bias` alone: `b' = b + W[:,R]·μ_R`, the removed channels' mean contribution kept as a
///   bias (FLAP's bias compensation);
/// - both: least squares with an intercept, `W' = W·Σd[:,K]·Σd_KK⁻¹` with the damped
///   covariance `Σd`, and `b' = b + W·μ − W'·μ_K`.
///
/// A model without biases gets them (zero on q/k/v and gate/up) so that transformers' LLaMA
/// (`attention_bias`, `mlp_bias`) loads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reconstruction {
    pub damping: f64,
    pub windows: Vec<Vec<u32>>,
    #[serde(default = "yes")]
    pub weights: bool,
    #[serde(default)]
    pub bias: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub format: String,
    pub version: u32,
    pub model: PlanModel,
    /// How the plan was decided (strategy, ratio, criterion, calibration…); informative.
    pub settings: serde_json::Value,
    pub steps: Vec<PlanStep>,
}

impl Plan {
    pub fn new(model: PlanModel, settings: serde_json::Value, steps: Vec<PlanStep>) -> Self {
        Self { format: PLAN_FORMAT.into(), version: PLAN_VERSION, model, settings, steps }
    }

    /// Parses a plan, checking its format marker and version.
    pub fn from_json(text: &str) -> Result<Self, PlanError> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        let format = value.get("format").and_then(|f| f.as_str()).unwrap_or("");
        if format != PLAN_FORMAT {
            return Err(PlanError::Format { found: format.into() });
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        if version != PLAN_VERSION {
            return Err(PlanError::Version { found: version });
        }
        Ok(serde_json::from_value(value)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_formats() {
        let plan = Plan::new(
            PlanModel { path: "m.gguf".into(), sha256: "ab".into(), params: 10 },
            serde_json::json!({"ratio": 0.25}),
            vec![PlanStep {
                ratio: 0.25,
                groups: vec![PlanGroup { root: "layers.0.gate".into(), units: 3, kept: vec![0, 2], scores: vec![1.0, 0.5, 2.0] }],
                removed_layers: vec![],
                layer_scores: vec![],
                reconstruct: Some(Reconstruction { damping: 0.01, windows: vec![vec![1, 2, 3]], weights: true, bias: false }),
            }],
        );
        let text = serde_json::to_string(&plan).unwrap();
        assert_eq!(Plan::from_json(&text).unwrap(), plan);
        let other = text.replace(PLAN_FORMAT, "something-else");
        assert_eq!(Plan::from_json(&other).unwrap_err().to_string(), "not a plan: `format` is \"something-else\", expected \"llmprune-plan\"");
        let newer = text.replace("\"version\":1", "\"version\":2");
        assert!(matches!(Plan::from_json(&newer), Err(PlanError::Version { found: 2 })));
    }
}
