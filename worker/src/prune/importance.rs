//! Channel importance: per group member (reference §2.3), then reduced over the members of
//! a coupled group (§2.4), with GQA query heads credited to their true KV head (§2.5).
//!
//! Everything is computed in f32 whatever the model's dtype: the reference squares and
//! accumulates gradients in fp16 on GPUs, where `g²` (g ≈ 1e-5) underflows to zero.

use super::statistics::GradientStats;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use llmprune_shared::depgraph::{Axis, Group};
use llmprune_shared::planner::ModeName;
use llmprune_shared::planner::{fold_member, scored_members, unit_scores};
pub use llmprune_shared::planner::{Criterion, Reduction};
use std::collections::HashMap;

/// One channel score per channel of a member whose channels lie along `axis` of its weight:
/// rows of a linear weight (its outputs), columns of a linear or embedding weight (inputs,
/// hidden channels), or the elements of an RMSNorm weight. `grad` is the gradient of the
/// batch-mean loss and `fisher` the diagonal Fisher, both shaped like `weight`, given when
/// the criterion needs them.
pub fn member_importance(axis: Axis, criterion: Criterion, weight: &Tensor, grad: Option<&Tensor>, fisher: Option<&Tensor>) -> Result<Vec<f32>> {
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
        let t = t.ok_or_else(|| Error::Invalid(format!("{} importance needs the {name}", criterion.name())))?;
        if t.dims() != weight.dims() {
            return Err(Error::Invalid(format!("{name} {:?} does not match the weight {:?}", t.dims(), weight.dims())));
        }
        Ok(t.to_dtype(DType::F32)?)
    };
    let w = weight.to_dtype(DType::F32)?;
    Ok(match criterion {
        Criterion::Random => return Err(Error::Invalid("random scores are drawn by the planner, not from the weights".into())),
        Criterion::Fluctuation | Criterion::Wanda | Criterion::Obs => {
            return Err(Error::Invalid(format!("{} scores come from the consumers' input statistics, not from gradients", criterion.name())))
        }
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

/// One score per root unit of `group` (a head, a neuron, a hidden channel): each scored
/// member's per-channel importance folded onto the root's units, reduced across members and
/// summed over each unit's channels (the planner's [`unit_scores`]). `weights` and `stats`
/// are looked up by parameter name.
pub fn group_scores(group: &Group, criterion: Criterion, reduction: Reduction, weights: &HashMap<String, Tensor>, stats: &GradientStats) -> Result<Vec<f32>> {
    let folded = member_scores(group, criterion, weights, stats, |_| true)?;
    Ok(unit_scores(group, &folded.into_iter().map(|(_, f)| f).collect::<Vec<_>>(), reduction)?)
}

/// The folded scores of the scored members of `group` that `take` accepts (by parameter
/// name), with each member's index among the scored members: a pipeline stage's share of a
/// group whose members lie on several stages.
pub fn member_scores(
    group: &Group,
    criterion: Criterion,
    weights: &HashMap<String, Tensor>,
    stats: &GradientStats,
    take: impl Fn(&str) -> bool,
) -> Result<Vec<(usize, Vec<f32>)>> {
    scored_members(group)
        .filter(|(_, m)| take(&m.param))
        .map(|(i, m)| {
            let w = weights.get(&m.param).ok_or_else(|| Error::Invalid(format!("no weight `{}`", m.param)))?;
            let fisher = stats.fisher.as_ref().and_then(|f| f.get(&m.param));
            let scores = member_importance(m.axis, criterion, w, stats.grad.get(&m.param), fisher)?;
            Ok((i, fold_member(group, m, &scores)?))
        })
        .collect()
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
        assert!(err.to_string().contains("param-first importance needs the gradient"), "{err}");
        let err = member_importance(Axis::Rows, Criterion::ParamMix, &w, Some(&g), None).unwrap_err();
        assert!(err.to_string().contains("needs the Fisher diagonal"), "{err}");
        let short = t(&[&[1., 2.]]);
        let err = member_importance(Axis::Rows, Criterion::Vectorize, &w, Some(&short), None).unwrap_err();
        assert!(err.to_string().contains("does not match the weight"), "{err}");
        assert!(member_importance(Axis::Rows, Criterion::L1, &w, None, None).is_ok());
    }
}
