//! Which units of each group to keep, given their scores: the reference's ratio semantics
//! (MetaPruner `prune_local` / `prune_global`, reference §2.4), ties broken by unit order.

use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum SelectionError {
    #[error("pruning ratio {0} is outside (0, 1)")]
    Ratio(f64),
    #[error("group `{group}`: pruning would remove all {units} of its units")]
    Emptied { group: String, units: usize },
    #[error("group `{group}`: {scores} scores for {units} units")]
    Scores { group: String, scores: usize, units: usize },
}

/// One group to select in: its name (for errors), unit width in channels, and unit scores.
#[derive(Debug, Clone)]
pub struct Scored<'a> {
    pub name: &'a str,
    pub unit_width: usize,
    pub scores: &'a [f32],
}

fn check_ratio(ratio: f64) -> Result<(), SelectionError> {
    if ratio > 0.0 && ratio < 1.0 {
        Ok(())
    } else {
        Err(SelectionError::Ratio(ratio))
    }
}

/// Units to remove from a group of `units` units of `unit_width` channels: the reference
/// removes `C − int(C·(1 − ratio))` of its `C` channels, in whole units (heads floored).
pub fn units_to_prune(units: usize, unit_width: usize, ratio: f64) -> usize {
    let channels = units * unit_width;
    let kept = (channels as f64 * (1.0 - ratio)) as usize;
    (channels - kept) / unit_width.max(1)
}

/// The kept units (ascending) of each group when every group loses the same share, its
/// lowest-scoring units.
pub fn keep_local(groups: &[Scored], ratio: f64) -> Result<Vec<Vec<usize>>, SelectionError> {
    check_ratio(ratio)?;
    groups
        .iter()
        .map(|g| {
            let n = units_to_prune(g.scores.len(), g.unit_width, ratio);
            if n >= g.scores.len() {
                return Err(SelectionError::Emptied { group: g.name.to_string(), units: g.scores.len() });
            }
            let mut order: Vec<usize> = (0..g.scores.len()).collect();
            order.sort_by(|&a, &b| g.scores[a].total_cmp(&g.scores[b]).then(a.cmp(&b)));
            let mut kept = order[n..].to_vec();
            kept.sort_unstable();
            Ok(kept)
        })
        .collect()
}

/// The kept units of each group when all units compete in one ranking: the
/// `total − int(total·(1 − ratio))` lowest-scoring units of all groups go (`total` counts
/// units: heads for attention groups, neurons for MLP groups). With `normalize`, each group's
/// scores are first divided by their mean, since raw scores are not comparable across layers.
pub fn keep_global(groups: &[Scored], ratio: f64, normalize: bool) -> Result<Vec<Vec<usize>>, SelectionError> {
    check_ratio(ratio)?;
    let mut all: Vec<(f32, usize, usize)> = Vec::new();
    for (gi, g) in groups.iter().enumerate() {
        let scale = if normalize {
            let mean = g.scores.iter().sum::<f32>() / g.scores.len().max(1) as f32;
            if mean > 0.0 {
                1.0 / mean
            } else {
                1.0
            }
        } else {
            1.0
        };
        all.extend(g.scores.iter().enumerate().map(|(u, &s)| (s * scale, gi, u)));
    }
    let total = all.len();
    let n = total - (total as f64 * (1.0 - ratio)) as usize;
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut pruned: Vec<Vec<bool>> = groups.iter().map(|g| vec![false; g.scores.len()]).collect();
    for &(_, gi, u) in &all[..n] {
        pruned[gi][u] = true;
    }
    groups
        .iter()
        .zip(pruned)
        .map(|(g, p)| {
            let kept: Vec<usize> = (0..p.len()).filter(|&u| !p[u]).collect();
            if kept.is_empty() {
                return Err(SelectionError::Emptied { group: g.name.to_string(), units: p.len() });
            }
            Ok(kept)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_semantics_of_the_reference() {
        // LLaMA-7B (reference §2.4): 32 heads of 128, ratio 0.25 -> 8 heads; 0.2 -> 6 (floored);
        // 11008 neurons, 0.25 -> 2752.
        assert_eq!(units_to_prune(32, 128, 0.25), 8);
        assert_eq!(units_to_prune(32, 128, 0.2), 6);
        assert_eq!(units_to_prune(11008, 1, 0.25), 2752);
        // SmolLM2's 3 KV heads of 64 lose none at 0.25 (48 channels < one head), 1 at 0.4.
        assert_eq!(units_to_prune(3, 64, 0.25), 0);
        assert_eq!(units_to_prune(3, 64, 0.4), 1);
    }

    #[test]
    fn local_keeps_the_highest_scores_of_each_group() {
        let a = [0.5, 0.1, 0.9, 0.3];
        let b = [2.0, 1.0, 3.0, 1.0, 5.0, 0.0, 4.0, 6.0];
        let groups = [
            Scored { name: "heads", unit_width: 2, scores: &a },
            Scored { name: "neurons", unit_width: 1, scores: &b },
        ];
        // 0.5: heads 8 channels -> 4 go = 2 heads (1 and 3); neurons lose 4: 5, then the tie
        // 1.0/1.0 broken by order (1, 3), then 0 (2.0).
        assert_eq!(keep_local(&groups, 0.5).unwrap(), vec![vec![0, 2], vec![2, 4, 6, 7]]);
        assert_eq!(keep_local(&groups, 1.0).unwrap_err(), SelectionError::Ratio(1.0));
        let one = [1.0];
        let err = keep_local(&[Scored { name: "layer 3 heads", unit_width: 4, scores: &one }], 0.99).unwrap_err();
        assert_eq!(err.to_string(), "group `layer 3 heads`: pruning would remove all 1 of its units");
    }

    #[test]
    fn global_ranks_all_units_together() {
        let a = [10.0, 20.0, 30.0];
        let b = [1.0, 2.0, 3.0];
        let groups = [Scored { name: "a", unit_width: 1, scores: &a }, Scored { name: "b", unit_width: 1, scores: &b }];
        // 6 units, ratio 0.5: 6 − int(3.0) = 3 go, all from b's small raw scores -> refused.
        assert!(matches!(keep_global(&groups, 0.5, false), Err(SelectionError::Emptied { .. })));
        // 6 − int(6·(2/3)) = 2 go: b's 1.0 and 2.0.
        assert_eq!(keep_global(&groups, 1.0 / 3.0, false).unwrap(), vec![vec![0, 1, 2], vec![2]]);
        // Normalised by their means (20 and 2) the groups are alike; ties go by group order.
        assert_eq!(keep_global(&groups, 0.5, true).unwrap(), vec![vec![2], vec![1, 2]]);
    }
}
