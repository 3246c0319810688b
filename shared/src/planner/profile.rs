//! How a block-wise local prune spreads its ratio over the layers: uniformly (LLM-Pruner), or
//! by a profile of per-layer weights, e.g. keeping more of the first and last layers (OWL,
//! "outlier-weighted layerwise sparsity", and FLAP's searches find that the layers differ in
//! how much they tolerate). Layer `l` of a range loses `ratio · w_l / mean(w over the range)`
//! of its heads (attention range) or neurons (MLP range), so the parameters removed equal the
//! uniform prune's up to rounding, whatever the profile.

use super::PlannerError;
use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Default)]
pub enum LayerProfile {
    /// Every layer of a range loses the same share.
    #[default]
    Uniform,
    /// Weights rising (or falling) linearly from `first` at the first pruned layer to `last`
    /// at the last one (the first and last of the attention and MLP ranges together).
    Ramp { first: f64, last: f64 },
    /// One weight per pruned layer, in layer order over the attention and MLP ranges together.
    Weights(Vec<f64>),
}

impl LayerProfile {
    /// `uniform`, `ramp:FIRST:LAST`, or comma-separated weights `w1,w2,…`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let number = |s: &str| -> Result<f64, String> {
            let w: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number"))?;
            if w.is_finite() && w >= 0.0 {
                Ok(w)
            } else {
                Err(format!("weight {w} must be a finite number ≥ 0"))
            }
        };
        if text == "uniform" {
            return Ok(Self::Uniform);
        }
        if let Some(rest) = text.strip_prefix("ramp:") {
            let (a, b) = rest.split_once(':').ok_or("expected ramp:FIRST:LAST, e.g. ramp:0.5:1.5")?;
            return Ok(Self::Ramp { first: number(a)?, last: number(b)? });
        }
        let weights = text.split(',').map(number).collect::<Result<Vec<_>, _>>().map_err(|e| format!("{e} (expected uniform, ramp:FIRST:LAST or w1,w2,…)"))?;
        Ok(Self::Weights(weights))
    }

    /// As [`Self::parse`] reads it.
    pub fn name(&self) -> String {
        match self {
            Self::Uniform => "uniform".into(),
            Self::Ramp { first, last } => format!("ramp:{first}:{last}"),
            Self::Weights(w) => w.iter().map(f64::to_string).collect::<Vec<_>>().join(","),
        }
    }

    /// The share of its units layer `layer` of `range` loses when the step's target is
    /// `target` and the profile spans `span` (the union of the pruned ranges).
    pub fn layer_target(&self, target: f64, layer: usize, range: &Range<usize>, span: &Range<usize>) -> f64 {
        match self {
            Self::Uniform => target,
            _ => {
                let mean = range.clone().map(|l| self.weight(l, span)).sum::<f64>() / range.len().max(1) as f64;
                if mean > 0.0 {
                    target * self.weight(layer, span) / mean
                } else {
                    target
                }
            }
        }
    }

    fn weight(&self, layer: usize, span: &Range<usize>) -> f64 {
        let at = layer.saturating_sub(span.start);
        match self {
            Self::Uniform => 1.0,
            Self::Ramp { first, last } => {
                let steps = span.len().saturating_sub(1).max(1) as f64;
                first + (last - first) * at as f64 / steps
            }
            Self::Weights(w) => w.get(at).copied().unwrap_or(1.0),
        }
    }

    /// Refuses a profile that does not fit the ranges it spreads `ratio` over: a list of the
    /// wrong length, or a layer that would lose all of its units.
    pub fn check(&self, ratio: f64, ranges: &[(&'static str, &Range<usize>)]) -> Result<(), PlannerError> {
        let span = Self::span(ranges);
        if let Self::Weights(w) = self {
            if w.len() != span.len() {
                return Err(PlannerError::Profile(format!(
                    "{} weights for the {} pruned layers {}:{} (one per layer of the attention and MLP ranges together)",
                    w.len(),
                    span.len(),
                    span.start,
                    span.end
                )));
            }
        }
        for &(what, range) in ranges {
            if !range.is_empty() && range.clone().all(|l| self.weight(l, &span) == 0.0) {
                return Err(PlannerError::Profile(format!("it gives the {what} layers {}:{} no weight; empty the range instead", range.start, range.end)));
            }
            if let Some(layer) = range.clone().find(|&l| self.layer_target(ratio, l, range, &span) >= 1.0) {
                let share = self.layer_target(ratio, layer, range, &span);
                return Err(PlannerError::Profile(format!("layer {layer} would lose {share:.2} of its {what} units at ratio {ratio}; flatten the profile")));
            }
        }
        Ok(())
    }

    /// The layers a profile spans: from the first start to the last end of the non-empty ranges.
    pub fn span(ranges: &[(&'static str, &Range<usize>)]) -> Range<usize> {
        let live = ranges.iter().filter(|(_, r)| !r.is_empty());
        let start = live.clone().map(|(_, r)| r.start).min().unwrap_or(0);
        let end = live.map(|(_, r)| r.end).max().unwrap_or(0);
        start..end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_and_print_as_the_setting_spells_them() {
        assert_eq!(LayerProfile::parse("uniform"), Ok(LayerProfile::Uniform));
        assert_eq!(LayerProfile::parse("ramp:0.5:1.5"), Ok(LayerProfile::Ramp { first: 0.5, last: 1.5 }));
        assert_eq!(LayerProfile::parse("1, 2,3"), Ok(LayerProfile::Weights(vec![1.0, 2.0, 3.0])));
        for p in ["ramp:0.5:1.5", "1,2,3", "uniform"] {
            assert_eq!(LayerProfile::parse(p).unwrap().name(), p);
        }
        assert!(LayerProfile::parse("ramp:1").unwrap_err().contains("ramp:FIRST:LAST"));
        assert!(LayerProfile::parse("1,-2").unwrap_err().contains("≥ 0"));
        assert!(LayerProfile::parse("bell").unwrap_err().contains("`bell` is not a number"));
    }

    #[test]
    fn a_ramp_keeps_the_mean_ratio_and_moves_it_along_the_layers() {
        // Layers 2..6, ramp 0 → 2: weights 0, 2/3, 4/3, 2 (mean 1), so the shares are the
        // ratio times those, by hand.
        let p = LayerProfile::Ramp { first: 0.0, last: 2.0 };
        let (range, span) = (2..6, 2..6);
        let shares: Vec<f64> = range.clone().map(|l| p.layer_target(0.3, l, &range, &span)).collect();
        for (got, want) in shares.iter().zip([0.0, 0.2, 0.4, 0.6]) {
            assert!((got - want).abs() < 1e-12, "{shares:?}");
        }
        // The MLP range 4..6 within the same span: weights 4/3 and 2, renormalised to its mean.
        let mlp: Vec<f64> = (4..6).map(|l| p.layer_target(0.3, l, &(4..6), &span)).collect();
        assert!((mlp[0] - 0.3 * 0.8).abs() < 1e-12 && (mlp[1] - 0.3 * 1.2).abs() < 1e-12, "{mlp:?}");
        assert_eq!(LayerProfile::Uniform.layer_target(0.3, 4, &range, &span), 0.3);
    }

    #[test]
    fn profiles_that_do_not_fit_are_refused_by_layer() {
        let (attn, mlp) = (3..5, 3..6);
        let ranges = [("attention", &attn), ("MLP", &mlp)];
        let short = LayerProfile::Weights(vec![1.0, 1.0]);
        assert!(short.check(0.2, &ranges).unwrap_err().to_string().contains("2 weights for the 3 pruned layers 3:6"));
        let steep = LayerProfile::Weights(vec![0.2, 0.2, 3.0]);
        assert!(steep.check(0.5, &ranges).unwrap_err().to_string().contains("layer 5 would lose 1.32 of its MLP units"));
        let silent = LayerProfile::Weights(vec![0.0, 0.0, 3.0]);
        assert!(silent.check(0.2, &ranges).unwrap_err().to_string().contains("the attention layers 3:5 no weight"));
        assert!(LayerProfile::Weights(vec![1.0, 2.0, 3.0]).check(0.25, &ranges).is_ok());
    }
}
