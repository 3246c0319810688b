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

/// One group to select in: its name (for errors), unit width in channels, unit scores, and
/// the units it had before the first of iterative steps (the ratio is of those).
#[derive(Debug, Clone)]
pub struct Scored<'a> {
    pub name: &'a str,
    pub unit_width: usize,
    pub scores: &'a [f32],
    pub initial_units: usize,
}

impl<'a> Scored<'a> {
    /// A group in one-shot pruning: its initial units are its units.
    pub fn new(name: &'a str, unit_width: usize, scores: &'a [f32]) -> Self {
        Self { name, unit_width, scores, initial_units: scores.len() }
    }
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
    units_to_prune_toward(units, units, unit_width, ratio)
}

/// The same when the group had `initial_units` before earlier iterative steps and `ratio` is
/// this step's target share of those (Torch-Pruning's `current − int(initial·(1 − target))`).
pub fn units_to_prune_toward(initial_units: usize, units: usize, unit_width: usize, ratio: f64) -> usize {
    let target = (initial_units as f64 * unit_width as f64 * (1.0 - ratio)) as usize;
    (units * unit_width).saturating_sub(target) / unit_width.max(1)
}

/// The kept units (ascending) of each group when every group loses the same share, its
/// lowest-scoring units.
pub fn keep_local(groups: &[Scored], ratio: f64) -> Result<Vec<Vec<usize>>, SelectionError> {
    check_ratio(ratio)?;
    groups
        .iter()
        .map(|g| {
            let n = units_to_prune_toward(g.initial_units, g.scores.len(), g.unit_width, ratio);
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
/// `total − int(initial·(1 − ratio))` lowest-scoring units of all groups go (units count
/// heads for attention groups, neurons for MLP groups; `initial` is the total before any
/// iterative step). With `normalize`, each group's
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
    let initial: usize = groups.iter().map(|g| g.initial_units).sum();
    let n = all.len().saturating_sub((initial as f64 * (1.0 - ratio)) as usize);
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

/// The kept units of each group when all units compete after each group's scores are
/// standardised (`(s − mean) / std`, unbiased std; a group of equal scores is all zeros) and a
/// unit costs `costs[g]` parameters: the lowest standardised units go, as long as their
/// parameters fit in the budget that every group losing its local share would free (so the
/// result has local pruning's size, distributed where the scores say). FLAP's adaptive
/// structure search (AL-AM). A group keeps at least one unit; ties go by group, then unit.
pub fn keep_standardized(groups: &[Scored], costs: &[usize], ratio: f64) -> Result<Vec<Vec<usize>>, SelectionError> {
    check_ratio(ratio)?;
    let budget: usize = groups.iter().zip(costs).map(|(g, &c)| units_to_prune_toward(g.initial_units, g.scores.len(), g.unit_width, ratio) * c).sum();
    let mut all: Vec<(f64, usize, usize)> = Vec::new();
    for (gi, g) in groups.iter().enumerate() {
        let n = g.scores.len() as f64;
        let mean = g.scores.iter().map(|&s| s as f64).sum::<f64>() / n;
        let var = if g.scores.len() > 1 { g.scores.iter().map(|&s| (s as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        let std = var.sqrt();
        all.extend(g.scores.iter().enumerate().map(|(u, &s)| (if std > 0.0 { (s as f64 - mean) / std } else { 0.0 }, gi, u)));
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut left: Vec<usize> = groups.iter().map(|g| g.scores.len()).collect();
    let mut pruned: Vec<Vec<bool>> = groups.iter().map(|g| vec![false; g.scores.len()]).collect();
    let mut freed = 0usize;
    for &(_, gi, u) in &all {
        if freed + costs[gi] <= budget && left[gi] > 1 {
            freed += costs[gi];
            left[gi] -= 1;
            pruned[gi][u] = true;
        }
    }
    Ok(pruned.into_iter().map(|p| (0..p.len()).filter(|&u| !p[u]).collect()).collect())
}

/// Widens each group's `kept` units (ascending) until its kept channels are a multiple of
/// `multiple`, adding back its best-scoring pruned units (or keeping all): kernels run
/// fastest on aligned widths.
pub fn round_kept(groups: &[Scored], kept: &mut [Vec<usize>], multiple: usize) {
    if multiple <= 1 {
        return;
    }
    for (g, kept) in groups.iter().zip(kept.iter_mut()) {
        let mut pruned: Vec<usize> = (0..g.scores.len()).filter(|u| kept.binary_search(u).is_err()).collect();
        // Best last, so `pop` takes the highest score (ties: the lower unit first).
        pruned.sort_by(|&a, &b| g.scores[a].total_cmp(&g.scores[b]).then(b.cmp(&a)));
        while (kept.len() * g.unit_width) % multiple != 0 {
            let Some(u) = pruned.pop() else { break };
            kept.push(u);
        }
        kept.sort_unstable();
    }
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
        let groups = [Scored::new("heads", 2, &a), Scored::new("neurons", 1, &b)];
        // 0.5: heads 8 channels -> 4 go = 2 heads (1 and 3); neurons lose 4: 5, then the tie
        // 1.0/1.0 broken by order (1, 3), then 0 (2.0).
        assert_eq!(keep_local(&groups, 0.5).unwrap(), vec![vec![0, 2], vec![2, 4, 6, 7]]);
        assert_eq!(keep_local(&groups, 1.0).unwrap_err(), SelectionError::Ratio(1.0));
        let one = [1.0];
        let err = keep_local(&[Scored::new("layer 3 heads", 4, &one)], 0.99).unwrap_err();
        assert_eq!(err.to_string(), "group `layer 3 heads`: pruning would remove all 1 of its units");
    }

    #[test]
    fn global_ranks_all_units_together() {
        let a = [10.0, 20.0, 30.0];
        let b = [1.0, 2.0, 3.0];
        let groups = [Scored::new("a", 1, &a), Scored::new("b", 1, &b)];
        // 6 units, ratio 0.5: 6 − int(3.0) = 3 go, all from b's small raw scores -> refused.
        assert!(matches!(keep_global(&groups, 0.5, false), Err(SelectionError::Emptied { .. })));
        // 6 − int(6·(2/3)) = 2 go: b's 1.0 and 2.0.
        assert_eq!(keep_global(&groups, 1.0 / 3.0, false).unwrap(), vec![vec![0, 1, 2], vec![2]]);
        // Normalised by their means (20 and 2) the groups are alike; ties go by group order.
        assert_eq!(keep_global(&groups, 0.5, true).unwrap(), vec![vec![2], vec![1, 2]]);
    }

    #[test]
    fn standardized_scores_share_one_parameter_budget() {
        // Heads: 3 units of width 2 costing 10 parameters each; neurons: 4 of width 1 costing 1.
        let heads = [5.0, 1.0, 3.0];
        let neurons = [100.0, 400.0, 200.0, 300.0];
        let groups = [Scored::new("heads", 2, &heads), Scored::new("neurons", 1, &neurons)];
        // Ratio 0.5: locally heads lose int-share 1 head (6 ch -> keep int(3)=3 -> 3 ch = 1
        // head: 10 parameters) and neurons 2 (2 parameters): budget 12. Standardised: heads
        // (mean 3, std 2) -> [1, −1, 0]; neurons (mean 250, std 129.1) -> [−1.16, 1.16, −0.39,
        // 0.39]. Ascending: neuron 0 (1), head 1 (10): 11 freed; neuron 2 would make 12: fits;
        // head 2 (10) does not, neuron 3 would make 13: does not.
        assert_eq!(keep_standardized(&groups, &[10, 1], 0.5).unwrap(), vec![vec![0, 2], vec![1, 3]]);
        // Raw scale does not matter, only the ranking within each group.
        let scaled: Vec<f32> = neurons.iter().map(|s| s * 1e-6).collect();
        let groups2 = [Scored::new("heads", 2, &heads), Scored::new("neurons", 1, &scaled)];
        assert_eq!(keep_standardized(&groups2, &[10, 1], 0.5).unwrap(), vec![vec![0, 2], vec![1, 3]]);
        // A group never empties; equal scores standardise to zero.
        let flat = [2.0, 2.0];
        let g = [Scored::new("flat", 1, &flat)];
        assert_eq!(keep_standardized(&g, &[1], 0.9).unwrap(), vec![vec![1]]);
    }

    #[test]
    fn iterative_steps_prune_toward_a_share_of_the_initial_width() {
        // 11008 neurons in 2 steps to 0.25: 1376 go first (0.125), then 1376 more.
        assert_eq!(units_to_prune_toward(11008, 11008, 1, 0.125), 1376);
        assert_eq!(units_to_prune_toward(11008, 9632, 1, 0.25), 1376);
        // 32 heads of 128, 0.1 then 0.2: int(4096·0.9)=3686 -> 410 ch -> 3 heads; then
        // 29 heads (3712 ch) toward int(4096·0.8)=3276 -> 436 ch -> 3 heads.
        assert_eq!(units_to_prune_toward(32, 32, 128, 0.1), 3);
        assert_eq!(units_to_prune_toward(32, 29, 128, 0.2), 3);
        // Already narrower than the target: nothing more.
        assert_eq!(units_to_prune_toward(10, 5, 1, 0.25), 0);
        // Local selection counts from the initial units.
        let s = [0.4, 0.1, 0.3, 0.2, 0.5, 0.6];
        let g = Scored { name: "mlp", unit_width: 1, scores: &s, initial_units: 8 };
        // 8 -> int(8·0.5) = 4 kept: 2 of the 6 current go.
        assert_eq!(keep_local(std::slice::from_ref(&g), 0.5).unwrap(), vec![vec![0, 2, 4, 5]]);
        // Global: initial 8 + 2 = 10 units, target int(10·0.5) = 5 kept of 8 current: 3 go.
        let h = [0.05, 0.9];
        let groups = [g, Scored::new("b", 1, &h)];
        assert_eq!(keep_global(&groups, 0.5, false).unwrap(), vec![vec![0, 2, 4, 5], vec![1]]);
    }

    #[test]
    fn rounding_adds_back_the_best_pruned_units() {
        let s = [0.9, 0.1, 0.8, 0.7, 0.2, 0.6, 0.3, 0.5, 0.4, 0.05];
        let groups = [Scored::new("mlp", 1, &s)];
        // Kept 5 of 10 -> rounded up to 8 with the pruned units scoring 0.4, 0.3, 0.2.
        let mut kept = vec![vec![0, 2, 3, 5, 7]];
        round_kept(&groups, &mut kept, 4);
        assert_eq!(kept, vec![vec![0, 2, 3, 4, 5, 6, 7, 8]]);
        // Not enough units to reach a multiple: all are kept.
        let mut kept = vec![vec![0, 2, 3, 5, 7, 8, 6, 4, 1].into_iter().collect::<Vec<_>>()];
        kept[0].sort_unstable();
        round_kept(&groups, &mut kept, 8);
        assert_eq!(kept[0].len(), 10);
        // Heads of 64 channels are aligned to 8 already.
        let h = [1.0, 2.0, 3.0];
        let mut kept = vec![vec![1, 2]];
        round_kept(&[Scored::new("heads", 64, &h)], &mut kept, 8);
        assert_eq!(kept, vec![vec![1, 2]]);
    }
}
