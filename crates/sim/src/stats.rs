//! The statistics the report gives with its figures: percentiles, and 95%
//! confidence intervals for a share (Wilson's score interval), a mean
//! (normal approximation) and a median (from the order statistics), so a
//! comparison between two runs can be read with its noise.

/// z for a two-sided 95% interval.
const Z95: f64 = 1.96;

/// The `p` quantile of `sorted` (nearest rank); 0 when empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Wilson's 95% interval for `successes` out of `trials` (good near 0%
/// and 100%, where the normal one is not); (0, 1) when there were none.
pub fn wilson(successes: usize, trials: usize) -> (f64, f64) {
    if trials == 0 {
        return (0.0, 1.0);
    }
    let n = trials as f64;
    let p = successes as f64 / n;
    let z2 = Z95 * Z95;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The mean of `values` and the half-width of its 95% interval.
pub fn mean_ci(values: &[u64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().map(|v| *v as f64).sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let variance = values
        .iter()
        .map(|v| (*v as f64 - mean).powi(2))
        .sum::<f64>()
        / (n - 1.0);
    (mean, Z95 * (variance / n).sqrt())
}

/// A 95% interval for the median of `sorted`: the order statistics at
/// ranks n/2 -+ 1.96 sqrt(n)/2 (distribution-free); `None` when empty.
pub fn median_ci(sorted: &[u64]) -> Option<(u64, u64)> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len() as f64;
    let half = Z95 * n.sqrt() / 2.0;
    let low = ((n / 2.0 - half).floor().max(0.0)) as usize;
    let high = ((n / 2.0 + half).ceil() as usize).min(sorted.len() - 1);
    Some((sorted[low.min(sorted.len() - 1)], sorted[high]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_is_narrow_for_many_trials_and_wide_for_few() {
        let (lo, hi) = wilson(95, 100);
        assert!(
            lo > 0.88 && lo < 0.91 && hi > 0.97 && hi < 0.99,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson(10, 10);
        assert!(
            lo > 0.65 && lo < 0.75 && (hi - 1.0).abs() < 1e-9,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson(950, 1000);
        assert!(hi - lo < 0.03, "{lo} {hi}");
    }

    #[test]
    fn mean_and_median_intervals_hold_the_estimate() {
        let values: Vec<u64> = (1..=100).collect();
        let (mean, half) = mean_ci(&values);
        assert!((mean - 50.5).abs() < 1e-9);
        // sd 29.0, / sqrt(100) x 1.96: about 5.7.
        assert!((half - 5.69).abs() < 0.05, "{half}");
        let (lo, hi) = median_ci(&values).unwrap_or((0, 0));
        assert!(lo < 50 && hi > 51 && lo >= 38 && hi <= 63, "{lo} {hi}");
        assert_eq!(median_ci(&[]), None);
        assert_eq!(percentile(&values, 0.5), 51);
    }
}
