//! The planner: everything about deciding a prune that needs no tensor. The modes, the
//! typed request and its checks, the groups a plan may name and the candidates of a step,
//! unit scores from member scores, the selection, the check that a step fits a model and the
//! model's shape after it, and the step loop itself over an engine (the process's own model
//! or a cluster's workers). The coordinator plans with this alone; workers check with it.

mod engine;
mod groups;
mod modes;
mod profile;
mod request;
mod scores;
mod select;
mod wire;

pub use engine::{prune_steps, replay_steps, run_ready, PruneEngine, ScoreJob, Scores, StepSeconds, StepsOutcome};
pub use groups::{candidate_groups, check_step, plan_groups, renumber_range, spec_after_step};
pub use modes::{Criterion, GqaMode, ModeName, Reduction, Scope, Strategy};
pub use profile::LayerProfile;
pub use request::PruneRequest;
pub use scores::{assemble_members, fold_member, random_scores, reduce, scored_member_count, scored_members, unit_scores};
pub use select::{select_layers, select_units};
pub use wire::{criterion_from_wire, reduction_from_wire, step_from_wire, step_to_wire};

use crate::depgraph::GraphError;
use crate::selection::SelectionError;

/// Why a plan cannot be made or does not fit: always the caller's input (settings, plan,
/// scores), never a fault of the machine.
#[derive(Debug, thiserror::Error)]
pub enum PlannerError {
    #[error("{what} layer range {start}:{end} is outside the model's {layers} layers")]
    LayerRange { what: &'static str, start: usize, end: usize, layers: usize },
    #[error("pruning ratio {0} is outside (0, 1)")]
    Ratio(f64),
    #[error("layer profile: {0}")]
    Profile(String),
    #[error("damping {0} must be a finite number ≥ 0")]
    Damping(f64),
    #[error("the {0} must be at least 1")]
    AtLeastOne(&'static str),
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("{0}")]
    NoCandidates(&'static str),
    #[error("the model's structure: {0}")]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Selection(#[from] SelectionError),
    #[error("the plan does not fit the model: {0}")]
    Misfit(String),
    #[error("scores: {0}")]
    Scores(String),
    #[error("protocol: {0}")]
    Wire(String),
}
