//! Medians and 95th percentiles of samples.

use serde::Serialize;

/// The summary of one series of samples.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    /// How many samples.
    pub n: usize,
    /// The median.
    pub median: f64,
    /// The 95th percentile (nearest rank).
    pub p95: f64,
}

impl Summary {
    /// Summarize `samples`; None when there are none.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        // Nearest rank: the smallest value with at least 95% of samples at or below it.
        let rank = (n * 95).div_ceil(100).max(1);
        Some(Summary {
            n,
            median,
            p95: v[rank - 1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p95() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        let sum = Summary::of(&s).unwrap();
        assert_eq!(sum.median, 50.5);
        assert_eq!(sum.p95, 95.0);
        assert_eq!(Summary::of(&[3.0]).unwrap().p95, 3.0);
        assert!(Summary::of(&[]).is_none());
    }
}
