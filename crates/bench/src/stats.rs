//! The statistics of `compare`'s rounds: medians, spreads, and which
//! pairs of runs to distrust.
//!
//! A shared VM's noise comes in bursts (a neighbour's job, the hypervisor
//! giving our virtual CPUs to someone else for a minute), so one run of
//! each mode measures the neighbours as much as the code. `compare`
//! measures each mode several times, interleaved with the others, and
//! reports per figure the **median** over the rounds — one disturbed round
//! cannot move it — and the **spread** (min–max), which says how much a
//! single run could have misled.
//!
//! A ratio is computed per round from the two runs of that round (a
//! *pair*) and the median taken over the pairs: the two runs of a pair ran
//! minutes apart at most, under closer conditions than runs of different
//! rounds. A pair whose runs saw very different steal is flagged
//! ([`steal_gap_flagged`]).

use serde::{Deserialize, Serialize};

/// How far apart (percentage points of the machine) the steal of a pair's
/// two runs may be before the pair is flagged.
///
/// Why 5: a guest with steal `s` keeps `1 - s` of its CPUs, and a
/// CPU-bound run's throughput follows what it keeps. At the 32–39 % steal
/// seen on the 2-core VM these benches ran on, a 5-point gap means one run
/// had about 8 % more machine than the other (0.68 / 0.63), which already
/// moves a ratio by as much as the distance between a target and a miss
/// (e.g. 0.75 against 0.69); the gaps seen between consecutive one-minute
/// runs there were up to 7 points. Smaller gaps are the normal wobble.
pub const DEFAULT_MAX_STEAL_GAP_PP: f64 = 5.0;

/// The median and the extremes of a figure over the rounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// The middle value (the mean of the two middle ones for an even
    /// count): what a disturbed round cannot move much.
    pub median: f64,
    /// The smallest value of any round.
    pub min: f64,
    /// The largest value of any round.
    pub max: f64,
    /// How many rounds gave a value.
    pub n: usize,
}

impl Spread {
    /// The spread of `values`, NaNs ignored; `None` when none is left.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
        sorted.sort_by(f64::total_cmp);
        let (&min, &max) = (sorted.first()?, sorted.last()?);
        Some(Spread { median: median_of_sorted(&sorted), min, max, n: sorted.len() })
    }

    /// `0.52 (0.48–0.55)` with `digits` decimals; just the value when the
    /// rounds agree at that precision (or there was one).
    pub fn display(&self, digits: usize) -> String {
        format!("{:.digits$}{}", self.median, self.range(digits))
    }

    /// ` (0.48–0.55)`, or nothing when the rounds agree at `digits`
    /// decimals: the part of [`Spread::display`] after the median.
    pub fn range(&self, digits: usize) -> String {
        let (min, max) = (format!("{:.digits$}", self.min), format!("{:.digits$}", self.max));
        if min == max { String::new() } else { format!(" ({min}–{max})") }
    }
}

/// The median of `values` (NaNs ignored); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    Spread::of(values).map(|s| s.median)
}

fn median_of_sorted(sorted: &[f64]) -> f64 {
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) { (sorted[mid - 1] + sorted[mid]) / 2.0 } else { sorted[mid] }
}

/// The steal gap of a pair in percentage points, from the two runs' steal
/// shares (0..1); `None` when either is unknown (not Linux, or no time
/// passed).
pub fn steal_gap_pp(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(((a? - b?) * 100.0).abs())
}

/// Whether a pair whose steal differs by `gap_pp` points is to be
/// distrusted, with `max_gap_pp` allowed. An unknown gap is not flagged:
/// there is nothing to say about it.
pub fn steal_gap_flagged(gap_pp: Option<f64>, max_gap_pp: f64) -> bool {
    gap_pp.is_some_and(|gap| gap > max_gap_pp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
        // One wild round does not move it.
        assert_eq!(median(&[0.50, 0.52, 0.05]), Some(0.50));
    }

    #[test]
    fn spread_is_min_median_max_and_ignores_nan() {
        let spread = Spread::of(&[0.62, f64::NAN, 0.28, 0.48]).expect("values");
        assert_eq!(spread, Spread { median: 0.48, min: 0.28, max: 0.62, n: 3 });
        assert_eq!(spread.display(2), "0.48 (0.28–0.62)");
        assert_eq!(Spread::of(&[1.5]).expect("one").display(1), "1.5");
        // Rounds that agree at the precision shown show no range.
        assert_eq!(Spread::of(&[2.001, 1.998, 2.0]).expect("three").display(2), "2.00");
        assert_eq!(Spread::of(&[812.0, 790.4]).expect("two").range(0), " (790–812)");
        assert_eq!(Spread::of(&[f64::NAN]), None);
    }

    #[test]
    fn a_pair_is_flagged_only_above_the_gap() {
        let gap = steal_gap_pp(Some(0.31), Some(0.40)).expect("both known");
        assert!((gap - 9.0).abs() < 1e-9, "{gap}");
        assert!(steal_gap_flagged(Some(gap), DEFAULT_MAX_STEAL_GAP_PP));
        let gap = steal_gap_pp(Some(0.36), Some(0.32));
        assert!(!steal_gap_flagged(gap, DEFAULT_MAX_STEAL_GAP_PP));
        // Exactly at the threshold is still allowed.
        assert!(!steal_gap_flagged(Some(5.0), 5.0));
        // Unknown steal (a sample missing): no gap, no flag.
        assert_eq!(steal_gap_pp(None, Some(0.3)), None);
        assert!(!steal_gap_flagged(None, 0.0));
    }
}
