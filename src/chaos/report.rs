//! A chaos run's figures: per fault kind, how many were injected and the fault -> first dispatch by the new leader
//! times (median, p99, max); workflow throughput; duplicate deliveries; violations. As a table for people and as
//! JSON for tools.

use std::collections::BTreeMap;

use comfy_table::{presets, Table};
use serde::Serialize;

use super::checks::Violation;
use super::faults::{FaultKind, FaultRecord};

/// Fault -> first dispatch figures of one fault kind, ms.
#[derive(Debug, Clone, Serialize)]
pub struct FaultFigures {
    /// Faults of this kind injected.
    pub count: usize,
    /// Faults after which a dispatch was seen (the others are `dispatch-after-fault` violations).
    pub measured: usize,
    /// Median, ms.
    pub median_ms: Option<f64>,
    /// 99th percentile (nearest rank), ms.
    pub p99_ms: Option<f64>,
    /// Maximum, ms.
    pub max_ms: Option<f64>,
}

/// Workflow figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkflowFigures {
    /// Starts the cluster acknowledged.
    pub acknowledged: usize,
    /// Starts never acknowledged within their deadline (they need not exist).
    pub unacknowledged: u64,
    /// Acknowledged workflows that ended COMPLETED.
    pub completed: usize,
    /// `completed` over the time from the first start to the last completion (the leaders' clocks), per second.
    pub completed_per_s: f64,
}

/// Task figures, as the workers saw them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskFigures {
    /// Completions the cluster acknowledged.
    pub completed: u64,
    /// Completions refused for a stale lease (the task had been handed out again).
    pub refused_stale_lease: u64,
    /// Deliveries of a task id beyond its first (at-least-once delivery allows them).
    pub duplicate_deliveries: u64,
    /// Tasks held by killed workers and never reported.
    pub abandoned_by_killed_workers: u64,
}

/// Everything a run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The directory holding the nodes' configs, data and logs.
    pub dir: String,
    /// Load and fault phase, seconds.
    pub duration_s: f64,
    /// Workflow starts per second asked for.
    pub rate: f64,
    /// Seconds between faults.
    pub fault_interval_s: f64,
    /// Per fault kind.
    pub faults: BTreeMap<FaultKind, FaultFigures>,
    /// Every fault, in order.
    pub fault_log: Vec<FaultRecord>,
    /// Workflow figures.
    pub workflows: WorkflowFigures,
    /// Task figures.
    pub tasks: TaskFigures,
    /// Terms in which the sampler saw a leader.
    pub terms_with_a_leader: usize,
    /// Leader ids (openraft's `(term, node id)`) the sampler saw leading; more than the terms when a term elected
    /// two leaders in turn, which openraft's default leader id allows.
    pub leaders_elected: usize,
    /// The final applied index every replica agreed on (0 when they did not).
    pub converged_at_index: u64,
    /// Broken promises; empty for a good run.
    pub violations: Vec<Violation>,
}

/// Nearest-rank percentile `p` (0-100) of sorted samples.
fn percentile(sorted: &[f64], p: usize) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// Figures per fault kind, for the kinds in `kinds` (each listed, injected or not).
pub fn fault_figures(kinds: &[FaultKind], log: &[FaultRecord]) -> BTreeMap<FaultKind, FaultFigures> {
    kinds
        .iter()
        .map(|kind| {
            let of_kind: Vec<&FaultRecord> = log.iter().filter(|r| r.kind == *kind).collect();
            let mut samples: Vec<f64> = of_kind.iter().filter_map(|r| r.dispatch_ms).collect();
            samples.sort_by(f64::total_cmp);
            let figures = FaultFigures {
                count: of_kind.len(),
                measured: samples.len(),
                median_ms: percentile(&samples, 50),
                p99_ms: percentile(&samples, 99),
                max_ms: samples.last().copied(),
            };
            (*kind, figures)
        })
        .collect()
}

fn ms(value: Option<f64>) -> String {
    value.map_or("-".to_string(), |v| format!("{v:.0}"))
}

impl Report {
    /// The report as tables for people.
    pub fn render(&self) -> String {
        let mut faults = Table::new();
        faults.load_preset(presets::UTF8_BORDERS_ONLY);
        faults.set_header(["fault", "count", "measured", "dispatch p50 ms", "p99 ms", "max ms"]);
        for (kind, f) in &self.faults {
            faults.add_row([
                kind.name().to_string(),
                f.count.to_string(),
                f.measured.to_string(),
                ms(f.median_ms),
                ms(f.p99_ms),
                ms(f.max_ms),
            ]);
        }
        let mut totals = Table::new();
        totals.load_preset(presets::UTF8_BORDERS_ONLY);
        let w = &self.workflows;
        let t = &self.tasks;
        for (what, value) in [
            ("workflows acknowledged", w.acknowledged.to_string()),
            ("workflows unacknowledged", w.unacknowledged.to_string()),
            ("workflows completed", w.completed.to_string()),
            ("workflows completed / s", format!("{:.1}", w.completed_per_s)),
            ("tasks completed", t.completed.to_string()),
            ("duplicate deliveries", t.duplicate_deliveries.to_string()),
            ("completions refused (stale lease)", t.refused_stale_lease.to_string()),
            ("tasks abandoned by killed workers", t.abandoned_by_killed_workers.to_string()),
            ("terms with a leader", self.terms_with_a_leader.to_string()),
            ("leaders elected (term, node)", self.leaders_elected.to_string()),
            ("replicas converged at index", self.converged_at_index.to_string()),
            ("violations", self.violations.len().to_string()),
        ] {
            totals.add_row([what.to_string(), value]);
        }
        let mut out = format!("{faults}\n{totals}\n");
        if !self.violations.is_empty() {
            let mut by_check: BTreeMap<&str, Vec<&Violation>> = BTreeMap::new();
            for v in &self.violations {
                by_check.entry(v.check).or_default().push(v);
            }
            out.push_str("VIOLATIONS:\n");
            for (check, vs) in by_check {
                out.push_str(&format!("  {check} ({}):\n", vs.len()));
                for v in vs.iter().take(20) {
                    out.push_str(&format!("    {}\n", v.detail));
                }
                if vs.len() > 20 {
                    out.push_str(&format!("    ... and {} more (see the JSON report)\n", vs.len() - 20));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50), Some(50.0));
        assert_eq!(percentile(&samples, 99), Some(99.0));
        assert_eq!(percentile(&[7.0], 99), Some(7.0));
        assert_eq!(percentile(&[], 50), None);
    }
}
