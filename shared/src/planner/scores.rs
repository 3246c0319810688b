//! From member scores to unit scores (reference §2.4–§2.5), with no tensor: a worker folds
//! each member's channel scores onto the group's units, and whoever holds every member of a
//! group (the worker, or the coordinator gathering a group that spans pipeline stages)
//! reduces them here, in the group's member order, so the bits never depend on where the
//! members lived.

use super::modes::Reduction;
use super::PlannerError;
use crate::depgraph::{Group, GroupMember};
use crate::PyRandom;

/// The members whose weights are scored, in the group's order: biases are not, as in the
/// reference (its linear handler reads only the weight).
pub fn scored_members(group: &Group) -> impl Iterator<Item = (usize, &GroupMember)> {
    group.members.iter().filter(|m| !m.param.ends_with(".bias")).enumerate()
}

/// How many members [`scored_members`] yields.
pub fn scored_member_count(group: &Group) -> usize {
    scored_members(group).count()
}

/// One member's channel scores gathered per root unit and summed onto the unit's
/// `unit_width` channels, flattened `[unit][channel of the unit]`: channel `i` of a unit's list
/// lands on `i mod width`. A KV head's member lists its query heads one after another, so
/// channel `c` of the KV head receives channel `c` of query heads `j·n_rep .. (j+1)·n_rep`, the
/// heads `repeat_kv` feeds from it. (The reference folds with `view(n_rep, n_kv·head_dim)`,
/// crediting query head `h` to KV head `h mod n_kv`; see reference §2.5.)
pub fn fold_member(group: &Group, member: &GroupMember, channel_scores: &[f32]) -> Result<Vec<f32>, PlannerError> {
    let width = group.unit_width;
    let mut folded = vec![0f32; group.units * width];
    for (u, channels) in member.channels.iter().enumerate() {
        for (i, &c) in channels.iter().enumerate() {
            let s = channel_scores
                .get(c)
                .ok_or_else(|| PlannerError::Scores(format!("member `{}` of group `{}`: no score for channel {c}", member.param, group.root)))?;
            folded[u * width + i % width] += s;
        }
    }
    Ok(folded)
}

/// Reduces aligned member scores (all of one length) to one score per channel.
pub fn reduce(members: &[Vec<f32>], how: Reduction) -> Result<Vec<f32>, PlannerError> {
    let first = members.first().ok_or_else(|| PlannerError::Scores("a group without scored members".into()))?;
    if let Some(bad) = members.iter().find(|m| m.len() != first.len()) {
        return Err(PlannerError::Scores(format!("member scores of {} and {} channels cannot be reduced", first.len(), bad.len())));
    }
    let fold = |init: f32, f: fn(f32, f32) -> f32| -> Vec<f32> { (0..first.len()).map(|c| members.iter().fold(init, |acc, m| f(acc, m[c]))).collect() };
    Ok(match how {
        Reduction::Sum => fold(0.0, |a, b| a + b),
        Reduction::Mean => fold(0.0, |a, b| a + b).into_iter().map(|s| s / members.len() as f32).collect(),
        Reduction::Max => fold(f32::NEG_INFINITY, f32::max),
        Reduction::Prod => fold(1.0, |a, b| a * b),
        Reduction::First => first.clone(),
        Reduction::Last => members[members.len() - 1].clone(),
    })
}

/// One score per root unit of `group` from every scored member's folded scores (in
/// [`scored_members`] order): reduced across members channel by channel, then summed over
/// the unit's channels.
pub fn unit_scores(group: &Group, folded: &[Vec<f32>], how: Reduction) -> Result<Vec<f32>, PlannerError> {
    if folded.len() != scored_member_count(group) {
        return Err(PlannerError::Scores(format!("group `{}`: {} member scores for {} scored members", group.root, folded.len(), scored_member_count(group))));
    }
    let reduced = reduce(folded, how)?;
    if reduced.len() != group.units * group.unit_width {
        return Err(PlannerError::Scores(format!("group `{}`: {} folded scores for {} units of {}", group.root, reduced.len(), group.units, group.unit_width)));
    }
    Ok(reduced.chunks(group.unit_width.max(1)).map(|unit| unit.iter().sum()).collect())
}

/// A group's unit scores from the folded member scores that several holders sent (member
/// index in [`scored_members`] order, folded scores): every scored member exactly once.
pub fn assemble_members(group: &Group, parts: Vec<(usize, Vec<f32>)>, how: Reduction) -> Result<Vec<f32>, PlannerError> {
    let mut by_member: Vec<Option<Vec<f32>>> = vec![None; scored_member_count(group)];
    for (i, folded) in parts {
        let slot = by_member.get_mut(i).ok_or_else(|| PlannerError::Scores(format!("group `{}` has no scored member {i}", group.root)))?;
        if slot.replace(folded).is_some() {
            return Err(PlannerError::Scores(format!("group `{}`: member {i} scored twice", group.root)));
        }
    }
    let folded = by_member
        .into_iter()
        .enumerate()
        .map(|(i, f)| f.ok_or_else(|| PlannerError::Scores(format!("group `{}`: nobody scored member {i}", group.root))))
        .collect::<Result<Vec<_>, _>>()?;
    unit_scores(group, &folded, how)
}

/// Seeded uniform scores for `groups`, drawn in group order.
pub fn random_scores(groups: &[Group], rng: &mut PyRandom) -> Vec<Vec<f32>> {
    groups.iter().map(|g| (0..g.units).map(|_| rng.random() as f32).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::depgraph::Axis;

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

    fn member(param: &str, channels: Vec<Vec<usize>>) -> GroupMember {
        GroupMember { param: param.into(), axis: Axis::Rows, channels }
    }

    #[test]
    fn query_heads_are_credited_to_their_own_kv_head() {
        // 2 KV heads × 2 query heads each, head_dim 2: query heads 0, 1 read KV head 0 and
        // query heads 2, 3 read KV head 1 (HF repeat_kv). The reference's view(2, 4).sum(0)
        // would pair heads {0, 2} and {1, 3} instead.
        let q = [1.0, 2.0, 10.0, 20.0, 100.0, 200.0, 1000.0, 2000.0];
        let m = member("q", vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
        let g = Group { root: "layers.0.k".into(), units: 2, unit_width: 2, spaces: vec![], members: vec![m.clone()] };
        assert_eq!(fold_member(&g, &m, &q).unwrap(), [11.0, 22.0, 1100.0, 2200.0]);
        assert!(fold_member(&g, &m, &q[..5]).is_err());
    }

    #[test]
    fn members_gathered_from_several_holders_give_the_whole_groups_scores() {
        // Hidden channels of width 1; biases are not scored.
        let members = vec![member("a", vec![vec![0], vec![1]]), member("a.bias", vec![vec![0], vec![1]]), member("b", vec![vec![1], vec![0]])];
        let g = Group { root: "embed_tokens.out".into(), units: 2, unit_width: 1, spaces: vec![], members };
        assert_eq!(scored_member_count(&g), 2);
        let fa = fold_member(&g, &g.members[0], &[1.0, 5.0]).unwrap();
        let fb = fold_member(&g, &g.members[2], &[3.0, 0.5]).unwrap();
        assert_eq!(fb, [0.5, 3.0]);
        let whole = unit_scores(&g, &[fa.clone(), fb.clone()], Reduction::Max).unwrap();
        assert_eq!(whole, [1.0, 5.0]);
        assert_eq!(assemble_members(&g, vec![(1, fb.clone()), (0, fa.clone())], Reduction::Max).unwrap(), whole);
        let missing = assemble_members(&g, vec![(1, fb.clone())], Reduction::Sum).unwrap_err();
        assert_eq!(missing.to_string(), "scores: group `embed_tokens.out`: nobody scored member 0");
        assert!(assemble_members(&g, vec![(0, fa.clone()), (0, fa), (1, fb)], Reduction::Sum).is_err());
    }
}
