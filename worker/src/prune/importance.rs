//! Channel importance: per group member (reference §2.3), then reduced over the members of
//! a coupled group (§2.4), with GQA query heads credited to their true KV head (§2.5).
//!
//! Everything is computed in f32 whatever the model's dtype: the reference squares and
//! accumulates gradients in fp16 on GPUs, where `g²` (g ≈ 1e-5) underflows to zero.

use super::statistics::GradientStats;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use llmprune_shared::depgraph::{Axis, Group};
use std::collections::HashMap;

/// The importance criteria of LLM-Pruner (`--pruner_type`, `--taylor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Criterion {
    /// `Σ_k |w_k|` per channel.
    L1,
    /// `Σ_k w_k²` per channel.
    L2,
    /// Vector-wise Taylor (paper Eq. 3): `|Σ_k w_k g_k|`.
    Vectorize,
    /// Element-wise first order (Element¹): `Σ_k |w_k g_k|`.
    ParamFirst,
    /// Element-wise second order (Element²): `Σ_k |w_k F_kk w_k|`, `F` the diagonal Fisher.
    ParamSecond,
    /// `Σ_k |w_k g_k − ½ w_k F_kk w_k|`.
    ParamMix,
}

impl Criterion {
    /// Names as the CLI and the protocol spell them.
    pub const NAMES: [(&'static str, Criterion); 6] = [
        ("l1", Criterion::L1),
        ("l2", Criterion::L2),
        ("vectorize", Criterion::Vectorize),
        ("param-first", Criterion::ParamFirst),
        ("param-second", Criterion::ParamSecond),
        ("param-mix", Criterion::ParamMix),
    ];

    pub fn name(self) -> &'static str {
        name_of(&Self::NAMES, self)
    }

    pub fn from_name(name: &str) -> Result<Self> {
        by_name(&Self::NAMES, "criterion", name)
    }

    pub fn needs_gradient(self) -> bool {
        !matches!(self, Criterion::L1 | Criterion::L2)
    }

    /// Whether the diagonal Fisher (`Σ_j g_j² / N` over per-sample gradients) is needed.
    pub fn needs_fisher(self) -> bool {
        matches!(self, Criterion::ParamSecond | Criterion::ParamMix)
    }
}

/// One channel score per channel of a member whose channels lie along `axis` of its weight:
/// rows of a linear weight (its outputs), columns of a linear or embedding weight (inputs,
/// hidden channels), or the elements of an RMSNorm weight. `grad` is the gradient of the
/// batch-mean loss and `fisher` the diagonal Fisher, both shaped like `weight`, given when
/// the criterion needs them.
pub fn member_importance(
    axis: Axis,
    criterion: Criterion,
    weight: &Tensor,
    grad: Option<&Tensor>,
    fisher: Option<&Tensor>,
) -> Result<Vec<f32>> {
    let salience = salience(criterion, weight, grad, fisher)?;
    let per_channel = |t: &Tensor| -> Result<Tensor> {
        Ok(match axis {
            Axis::Elements => t.clone(),
            Axis::Rows => t.sum(1)?,
            Axis::Cols => t.sum(0)?,
        })
    };
    let scores = match (axis, criterion) {
        (Axis::Elements, _) => salience.abs()?,
        (_, Criterion::Vectorize) => per_channel(&salience)?.abs()?,
        _ => per_channel(&salience.abs()?)?,
    };
    Ok(scores.to_vec1::<f32>()?)
}

/// The salience of each element of `weight` (reference §2.3): `|w|`, `w²`, `w·g`, `w·F·w` or
/// `w·g − ½·w·F·w`, in f32.
fn salience(criterion: Criterion, weight: &Tensor, grad: Option<&Tensor>, fisher: Option<&Tensor>) -> Result<Tensor> {
    let f32_like = |name: &str, t: Option<&Tensor>| -> Result<Tensor> {
        let t = t.ok_or_else(|| Error::Invalid(format!("{criterion:?} importance needs the {name}")))?;
        if t.dims() != weight.dims() {
            return Err(Error::Invalid(format!("{name} {:?} does not match the weight {:?}", t.dims(), weight.dims())));
        }
        Ok(t.to_dtype(DType::F32)?)
    };
    let w = weight.to_dtype(DType::F32)?;
    Ok(match criterion {
        Criterion::L1 => w.abs()?,
        Criterion::L2 => w.sqr()?,
        Criterion::Vectorize | Criterion::ParamFirst => (&w * f32_like("gradient", grad)?)?,
        Criterion::ParamSecond => (&w * f32_like("Fisher diagonal", fisher)?)?.mul(&w)?,
        Criterion::ParamMix => {
            let second = (&w * f32_like("Fisher diagonal", fisher)?)?.mul(&w)?;
            ((&w * f32_like("gradient", grad)?)? - (second * 0.5)?)?
        }
    })
}

/// The score of removing a whole layer whose weights are `params` (name, weight): the
/// criterion's salience over every element of the layer, the group being the whole layer.
/// `Vectorize` is the first-order Taylor estimate of the loss change `|Σ w·g|` over all of the
/// layer's weights (paper Eq. 3 with the layer as the structure); the element-wise criteria
/// sum `|salience|`; magnitudes sum `|w|` or `w²`.
pub fn layer_score(params: &[(&str, &Tensor)], criterion: Criterion, stats: &GradientStats) -> Result<f32> {
    let mut total = 0f64;
    for (name, w) in params {
        let fisher = stats.fisher.as_ref().and_then(|f| f.get(*name));
        let s = salience(criterion, w, stats.grad.get(*name), fisher)?;
        let s = if criterion == Criterion::Vectorize { s } else { s.abs()? };
        total += s.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    Ok(if criterion == Criterion::Vectorize { total.abs() as f32 } else { total as f32 })
}

/// One score per root unit of `group` (a head, a neuron, a hidden channel): each member's
/// per-channel importance is gathered per root unit and folded onto the root's unit width
/// ([`fold_onto_unit`]: the query heads of a KV head summed channel by channel), reduced
/// across members channel by channel, and summed over the unit's channels. Biases are not scored, as in the reference (its linear
/// handler reads only the weight). `weights` and `stats` are looked up by parameter name.
pub fn group_scores(
    group: &Group,
    criterion: Criterion,
    reduction: Reduction,
    weights: &HashMap<String, Tensor>,
    stats: &GradientStats,
) -> Result<Vec<f32>> {
    let width = group.unit_width;
    let mut folded: Vec<Vec<Vec<f32>>> = Vec::new(); // [member][unit][channel of the unit]
    for m in group.members.iter().filter(|m| !m.param.ends_with(".bias")) {
        let w = weights.get(&m.param).ok_or_else(|| Error::Invalid(format!("no weight `{}`", m.param)))?;
        let fisher = stats.fisher.as_ref().and_then(|f| f.get(&m.param));
        let scores = member_importance(m.axis, criterion, w, stats.grad.get(&m.param), fisher)?;
        folded.push(m.channels.iter().map(|channels| fold_onto_unit(&scores, channels, width)).collect());
    }
    (0..group.units)
        .map(|u| {
            let members: Vec<Vec<f32>> = folded.iter().map(|m| m[u].clone()).collect();
            Ok(reduce(&members, reduction)?.iter().sum())
        })
        .collect()
}

/// How a group's member scores become one score per channel (`--grouping_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

impl Reduction {
    pub const NAMES: [(&'static str, Reduction); 6] = [
        ("sum", Reduction::Sum),
        ("mean", Reduction::Mean),
        ("max", Reduction::Max),
        ("prod", Reduction::Prod),
        ("first", Reduction::First),
        ("last", Reduction::Last),
    ];

    pub fn name(self) -> &'static str {
        name_of(&Self::NAMES, self)
    }

    pub fn from_name(name: &str) -> Result<Self> {
        by_name(&Self::NAMES, "reduction", name)
    }
}

fn name_of<T: Copy + PartialEq>(table: &[(&'static str, T)], value: T) -> &'static str {
    table.iter().find(|(_, v)| *v == value).map_or("?", |(n, _)| n)
}

fn by_name<T: Copy>(table: &[(&'static str, T)], what: &str, name: &str) -> Result<T> {
    table.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).ok_or_else(|| Error::Invalid(format!("unknown {what} `{name}`")))
}

/// Reduces aligned member scores (all of one length) to one score per channel.
pub fn reduce(members: &[Vec<f32>], how: Reduction) -> Result<Vec<f32>> {
    let first = members.first().ok_or_else(|| Error::Invalid("a group without members".into()))?;
    if let Some(bad) = members.iter().find(|m| m.len() != first.len()) {
        return Err(Error::Invalid(format!("member scores of {} and {} channels cannot be reduced", first.len(), bad.len())));
    }
    let fold = |init: f32, f: fn(f32, f32) -> f32| -> Vec<f32> {
        (0..first.len()).map(|c| members.iter().fold(init, |acc, m| f(acc, m[c]))).collect()
    };
    Ok(match how {
        Reduction::Sum => fold(0.0, |a, b| a + b),
        Reduction::Mean => fold(0.0, |a, b| a + b).into_iter().map(|s| s / members.len() as f32).collect(),
        Reduction::Max => fold(f32::NEG_INFINITY, f32::max),
        Reduction::Prod => fold(1.0, |a, b| a * b),
        Reduction::First => first.clone(),
        Reduction::Last => members[members.len() - 1].clone(),
    })
}

/// The scores of one root unit's `channels` of a member, summed onto the unit's `width`
/// channels: channel `i` of the list lands on `i mod width`. A KV head's member lists its
/// query heads one after another, so channel `c` of the KV head receives channel `c` of
/// query heads `j·n_rep .. (j+1)·n_rep`, the heads `repeat_kv` feeds from it. (The reference
/// folds with `view(n_rep, n_kv·head_dim)`, crediting query head `h` to KV head `h mod n_kv`;
/// see reference §2.5.)
fn fold_onto_unit(scores: &[f32], channels: &[usize], width: usize) -> Vec<f32> {
    let mut unit = vec![0f32; width];
    for (i, &c) in channels.iter().enumerate() {
        unit[i % width] += scores[c];
    }
    unit
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(rows: &[&[f32]]) -> Tensor {
        Tensor::new(rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>(), &Device::Cpu).unwrap()
    }

    // W = [[1, -2], [3, 4]], G = [[0.5, 0.5], [-1, 2]], F = [[2, 1], [1, 0.5]]:
    //   W⊙G = [[0.5, -1], [-3, 8]];  W⊙F⊙W = [[2, 4], [9, 8]];
    //   W⊙G − ½W⊙F⊙W = [[-0.5, -3], [-7.5, 4]].
    fn wgf() -> (Tensor, Tensor, Tensor) {
        (t(&[&[1., -2.], &[3., 4.]]), t(&[&[0.5, 0.5], &[-1., 2.]]), t(&[&[2., 1.], &[1., 0.5]]))
    }

    #[test]
    fn taylor_scores_by_hand() {
        let (w, g, f) = wgf();
        let score = |axis, c| member_importance(axis, c, &w, Some(&g), Some(&f)).unwrap();
        use Axis::*;
        use Criterion::*;
        // Rows: vectorize |0.5 − 1| = 0.5, |−3 + 8| = 5; element-wise Σ|·|: 1.5, 11.
        assert_eq!(score(Rows, Vectorize), [0.5, 5.0]);
        assert_eq!(score(Rows, ParamFirst), [1.5, 11.0]);
        assert_eq!(score(Rows, ParamSecond), [6.0, 17.0]);
        assert_eq!(score(Rows, ParamMix), [3.5, 11.5]);
        // Columns (linear inputs, embedding channels): vectorize |0.5 − 3| = 2.5, |−1 + 8| = 7;
        // element-wise 3.5, 9.
        assert_eq!(score(Cols, Vectorize), [2.5, 7.0]);
        assert_eq!(score(Cols, ParamFirst), [3.5, 9.0]);
        assert_eq!(score(Cols, ParamMix), [8.0, 7.0]);
        assert_eq!(score(Rows, L1), [3.0, 7.0]);
        assert_eq!(score(Cols, L2), [10.0, 20.0]);
    }

    #[test]
    fn norm_scores_are_elementwise() {
        let w = Tensor::new(&[2f32, -1.0, 0.5], &Device::Cpu).unwrap();
        let g = Tensor::new(&[0.25f32, 3.0, -4.0], &Device::Cpu).unwrap();
        let s = member_importance(Axis::Elements, Criterion::Vectorize, &w, Some(&g), None).unwrap();
        assert_eq!(s, [0.5, 3.0, 2.0]);
    }

    #[test]
    fn half_precision_gradients_do_not_underflow() {
        // g = 1e-5 squares to 1e-10, below f16's smallest subnormal (6e-8): the reference's
        // fp16 Fisher is zero here, ours is not.
        let w = Tensor::new(&[[1f32, 2.0]], &Device::Cpu).unwrap().to_dtype(DType::F16).unwrap();
        let fisher = Tensor::new(&[[1e-10f32, 1e-10]], &Device::Cpu).unwrap();
        let s = member_importance(Axis::Rows, Criterion::ParamSecond, &w, None, Some(&fisher)).unwrap();
        assert!((s[0] - 5e-10).abs() < 1e-15, "{s:?}");
    }

    #[test]
    fn missing_or_mismatched_statistics_are_refused() {
        let (w, g, _) = wgf();
        let err = member_importance(Axis::Rows, Criterion::ParamFirst, &w, None, None).unwrap_err();
        assert!(err.to_string().contains("ParamFirst importance needs the gradient"), "{err}");
        let err = member_importance(Axis::Rows, Criterion::ParamMix, &w, Some(&g), None).unwrap_err();
        assert!(err.to_string().contains("needs the Fisher diagonal"), "{err}");
        let short = t(&[&[1., 2.]]);
        let err = member_importance(Axis::Rows, Criterion::Vectorize, &w, Some(&short), None).unwrap_err();
        assert!(err.to_string().contains("does not match the weight"), "{err}");
        assert!(member_importance(Axis::Rows, Criterion::L1, &w, None, None).is_ok());
    }

    #[test]
    fn reductions_by_hand() {
        let m = vec![vec![1.0, 4.0], vec![3.0, -2.0], vec![2.0, 0.5]];
        assert_eq!(reduce(&m, Reduction::Sum).unwrap(), [6.0, 2.5]);
        assert_eq!(reduce(&m, Reduction::Mean).unwrap(), [2.0, 2.5 / 3.0]);
        assert_eq!(reduce(&m, Reduction::Max).unwrap(), [3.0, 4.0]);
        assert_eq!(reduce(&m, Reduction::Prod).unwrap(), [6.0, -4.0]);
        assert_eq!(reduce(&m, Reduction::First).unwrap(), [1.0, 4.0]);
        assert_eq!(reduce(&m, Reduction::Last).unwrap(), [2.0, 0.5]);
        assert!(reduce(&[vec![1.0], vec![1.0, 2.0]], Reduction::Sum).is_err());
        assert!(reduce(&[], Reduction::Sum).is_err());
    }

    #[test]
    fn query_heads_are_credited_to_their_own_kv_head() {
        // 2 KV heads × 2 query heads each, head_dim 2: query heads 0, 1 read KV head 0 and
        // query heads 2, 3 read KV head 1 (HF repeat_kv). The reference's view(2, 4).sum(0)
        // would pair heads {0, 2} and {1, 3} instead.
        // Discovery lists KV head j's query channels as query heads 2j, 2j+1 in order.
        let q = [1.0, 2.0, 10.0, 20.0, 100.0, 200.0, 1000.0, 2000.0];
        assert_eq!(fold_onto_unit(&q, &[0, 1, 2, 3], 2), [11.0, 22.0]);
        assert_eq!(fold_onto_unit(&q, &[4, 5, 6, 7], 2), [1100.0, 2200.0]);
    }
}
