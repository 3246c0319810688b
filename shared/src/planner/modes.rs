//! The pruning modes, defined once: the CLI parses them (with the `clap` feature), the
//! configuration names them, the protocol carries them as enums and the planner and the
//! workers match on them.

use serde::{Deserialize, Serialize};

/// A mode's name as the CLI, the configuration and `plan.json` spell it.
pub trait ModeName: Sized + Copy + 'static {
    /// Every value with its name.
    const NAMES: &'static [(&'static str, Self)];
    /// What the mode is called in messages ("criterion", "reduction", ...).
    const WHAT: &'static str;

    fn name(self) -> &'static str
    where
        Self: PartialEq,
    {
        Self::NAMES.iter().find(|(_, v)| *v == self).map_or("?", |(n, _)| n)
    }

    /// The value called `name`; the error lists the known names.
    fn from_name(name: &str) -> Result<Self, String> {
        Self::NAMES.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).ok_or_else(|| {
            let known: Vec<&str> = Self::NAMES.iter().map(|(n, _)| *n).collect();
            format!("unknown {} `{name}` (known: {})", Self::WHAT, known.join(", "))
        })
    }
}

/// What a pruning step removes (reference §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Attention heads and MLP neurons of the layers in range (Types A and B).
    Block,
    /// Hidden channels across the whole network (Type C).
    Channel,
    /// Whole decoder layers of --layers, the lowest-scoring first.
    Layer,
}

impl ModeName for Strategy {
    const NAMES: &'static [(&'static str, Self)] = &[("block", Strategy::Block), ("channel", Strategy::Channel), ("layer", Strategy::Layer)];
    const WHAT: &'static str = "strategy";
}

/// How the candidate units are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Every candidate group loses the same share.
    Local,
    /// All candidate units ranked together.
    Global,
    /// FLAP's adaptive search: each group's scores standardised, all units ranked together,
    /// as many parameters removed as local pruning would remove (block-wise).
    Standardized,
}

impl ModeName for Scope {
    const NAMES: &'static [(&'static str, Self)] = &[("local", Scope::Local), ("global", Scope::Global), ("standardized", Scope::Standardized)];
    const WHAT: &'static str = "scope";
}

/// What a head is under grouped-query attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum GqaMode {
    /// Remove a KV head together with its query heads (LLM-Pruner's llama3.py).
    KvGroups,
    /// Keep every KV head; remove the same number of query heads under each (shapes stock
    /// transformers loads).
    QueryHeads,
}

impl ModeName for GqaMode {
    const NAMES: &'static [(&'static str, Self)] = &[("kv-groups", GqaMode::KvGroups), ("query-heads", GqaMode::QueryHeads)];
    const WHAT: &'static str = "GQA mode";
}

/// The importance criteria of LLM-Pruner (`--pruner_type`, `--taylor`), and seeded random
/// scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Criterion {
    /// Seeded uniform scores (the reference's `torch.rand`; here Python's `random`).
    Random,
    /// `Σ_k |w_k|` per channel.
    L1,
    /// `Σ_k w_k²` per channel.
    L2,
    /// Vector-wise Taylor (paper Eq. 3, "Vector"): `|Σ_k w_k g_k|`.
    #[cfg_attr(feature = "clap", value(alias = "vector"))]
    #[serde(alias = "vector")]
    Vectorize,
    /// Element-wise first order (paper "Element¹", Taylor): `Σ_k |w_k g_k|`.
    #[cfg_attr(feature = "clap", value(alias = "element1", alias = "taylor"))]
    #[serde(alias = "element1", alias = "taylor")]
    ParamFirst,
    /// Element-wise second order (paper "Element²"): `Σ_k |w_k F_kk w_k|`, `F` the diagonal Fisher.
    #[cfg_attr(feature = "clap", value(alias = "element2"))]
    #[serde(alias = "element2")]
    ParamSecond,
    /// `Σ_k |w_k g_k − ½ w_k F_kk w_k|`.
    ParamMix,
    /// FLAP's fluctuation: the variance of each input channel of the consuming projection
    /// (o_proj, down_proj) over the calibration tokens × the squared norm of its weight column.
    Fluctuation,
    /// Structured Wanda: `Σ_i |W_ic|` of the consuming projection's column × the RMS of its
    /// input channel over the calibration tokens.
    Wanda,
    /// Optimal Brain Surgeon on the consuming projection: the increase of its squared output
    /// error when a unit's input channels go and the other columns are re-solved, from the
    /// inputs' Gram matrix (`tr(W_g (H⁻¹)_gg⁻¹ W_gᵀ)`, H damped).
    Obs,
}

impl ModeName for Criterion {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("random", Criterion::Random),
        ("l1", Criterion::L1),
        ("l2", Criterion::L2),
        ("vectorize", Criterion::Vectorize),
        ("param-first", Criterion::ParamFirst),
        ("param-second", Criterion::ParamSecond),
        ("param-mix", Criterion::ParamMix),
        ("fluctuation", Criterion::Fluctuation),
        ("wanda", Criterion::Wanda),
        ("obs", Criterion::Obs),
    ];
    const WHAT: &'static str = "criterion";
}

impl Criterion {
    /// Whether the scores come from the planner's seeded generator instead of the model.
    pub fn is_random(self) -> bool {
        self == Criterion::Random
    }

    /// Whether the criterion reads the gradient of the calibration loss.
    pub fn needs_gradient(self) -> bool {
        !matches!(self, Criterion::Random | Criterion::L1 | Criterion::L2) && !self.needs_activations()
    }

    /// Whether the criterion reads the statistics of the consuming projections' inputs
    /// (o_proj, down_proj) over the calibration tokens; it then scores heads and neurons only.
    pub fn needs_activations(self) -> bool {
        matches!(self, Criterion::Fluctuation | Criterion::Wanda | Criterion::Obs)
    }

    /// Whether the criterion runs the model over calibration windows.
    pub fn needs_calibration(self) -> bool {
        self.needs_gradient() || self.needs_activations()
    }

    /// Whether the diagonal Fisher (`Σ_j g_j² / N` over per-sample gradients) is needed.
    pub fn needs_fisher(self) -> bool {
        matches!(self, Criterion::ParamSecond | Criterion::ParamMix)
    }

    /// The reduction the reference uses with this criterion: `mean` for magnitudes, `sum`
    /// for Taylor scores.
    pub fn default_reduction(self) -> Reduction {
        if self.needs_gradient() {
            Reduction::Sum
        } else {
            Reduction::Mean
        }
    }
}

/// How a group's member scores become one score per channel (`--grouping_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Reduction {
    Sum,
    Mean,
    Max,
    Prod,
    /// The first member only (the group's root).
    First,
    /// The last member only (the paper's "last-only" ablation).
    Last,
}

impl ModeName for Reduction {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("sum", Reduction::Sum),
        ("mean", Reduction::Mean),
        ("max", Reduction::Max),
        ("prod", Reduction::Prod),
        ("first", Reduction::First),
        ("last", Reduction::Last),
    ];
    const WHAT: &'static str = "reduction";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known_ones() {
        for &(n, c) in Criterion::NAMES {
            assert_eq!(Criterion::from_name(n).unwrap(), c);
            assert_eq!(c.name(), n);
            assert_eq!(serde_json::to_value(c).unwrap(), n);
        }
        for &(n, r) in Reduction::NAMES {
            assert_eq!(Reduction::from_name(n).unwrap().name(), n);
            assert_eq!(serde_json::to_value(r).unwrap(), n);
        }
        assert_eq!(Strategy::from_name("layer").unwrap(), Strategy::Layer);
        assert_eq!(GqaMode::QueryHeads.name(), "query-heads");
        assert_eq!(Scope::from_name("widest").unwrap_err(), "unknown scope `widest` (known: local, global, standardized)");
        assert_eq!(Criterion::ParamFirst.default_reduction(), Reduction::Sum);
        assert_eq!(Criterion::L2.default_reduction(), Reduction::Mean);
        assert!(!Criterion::Random.needs_gradient() && Criterion::Random.is_random());
        assert!(Criterion::Obs.needs_calibration() && !Criterion::Obs.needs_gradient() && !Criterion::ParamFirst.needs_activations());
    }
}
