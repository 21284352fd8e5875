//! The election run's report: Markdown (settings, the goals with
//! pass or fail, a table of samples) and an SVG figure (supernodes over
//! time above, leaf sessions per supernode against the target range
//! below), drawn with plotters' SVG backend like [`crate::plot`].

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::election::{ElectionReport, UPLOAD_TIERS};

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ElectionOutputError {
    /// The files could not be written.
    #[error("writing the election report: {0}")]
    Io(#[from] std::io::Error),
    /// The figure could not be drawn.
    #[error("drawing the election figure: {0}")]
    Plot(String),
}

/// The goals of issue 12.
const COVERAGE_GOAL: f64 = 0.95;
const FLAP_GOAL: f64 = 0.01;
/// Coverage is judged from this minute on: the first minutes are the
/// start-up election (every leaf dials at once at minute 0).
pub const WARM_UP_MINUTES: u64 = 10;

fn failed<E: std::fmt::Display>(error: E) -> ElectionOutputError {
    ElectionOutputError::Plot(error.to_string())
}

fn minutes(d: std::time::Duration) -> f64 {
    d.as_secs_f64() / 60.0
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}

/// The report as Markdown; `command` is how to reproduce it.
pub fn markdown(report: &ElectionReport, command: &str) -> String {
    let c = &report.config;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# Supernode election: {} nodes, {} seed supernodes, seed {}\n",
        c.nodes, c.seeds, c.seed
    );
    let _ = writeln!(text, "Reproduce: `{command}`\n");
    let tiers: Vec<String> = UPLOAD_TIERS
        .iter()
        .map(|(rate, share)| format!("{:.0}% at {} KB/s", share * 100.0, rate / 1000))
        .collect();
    let _ = writeln!(
        text,
        "Population: {:.0}% reachable (the rest firewalled); upload {} (download 4x upload); \
         {:.0}% with 50 MiB of memory for leaves, the rest 1 GiB. Sessions log-normal, median \
         {:.0} min (sigma {}); offline log-normal, median {:.0} min (sigma {}); every node \
         online at the start, up for a uniform share of its session. Each leaf keeps {} \
         sessions (real `LeafSet`), each supernode at most {} leaf sessions (the core's \
         `max_leaves`); every node runs the real `Election` with its defaults (uptime {:.0} \
         min, switches {:.0} min apart, step down after {:.0} min with <= {} leaves). \
         Simulated {:.0} min.\n",
        c.reachable * 100.0,
        tiers.join(", "),
        c.low_memory * 100.0,
        minutes(c.session_median),
        c.session_sigma,
        minutes(c.offline_median),
        c.offline_sigma,
        c.sessions_per_leaf,
        c.max_leaves,
        minutes(c.election.min_uptime),
        minutes(c.election.switch_spacing),
        minutes(c.election.idle_for),
        c.election.few_leaves,
        minutes(c.duration),
    );
    let _ = writeln!(
        text,
        "Model limits (see `crates/sim/src/election.rs`): no queries are carried; leaves know \
         every online supernode (a perfect host cache, so a step-down's try-list adds \
         nothing); a supernode hears {} other supernodes' free slots at random at each \
         evaluation; a supernode's own leaf is not modelled.\n",
        c.peer_pongs
    );
    let (low, high) = c.target;
    let settled = report.settled_minute();
    let first = report.first_in_range_minute();
    // Through churn: after the start-up election's first minutes.
    let from = WARM_UP_MINUTES;
    let (cov_min, cov_mean) = report.coverage_from(from);
    let (all_min, all_mean) = report.coverage_from(0);
    let last = report.last();
    let _ = writeln!(text, "## Goals\n");
    let _ = writeln!(text, "| goal | measured | verdict |\n|---|---|---|");
    let _ = writeln!(
        text,
        "| leaf sessions per supernode within {low:.0}..={high:.0} within simulated minutes, \
         and staying there | first in range at minute {}, in range for good from minute {} \
         (last: {} supernodes, {:.1} sessions each) | {} |",
        first.map_or("never".to_owned(), |m| m.to_string()),
        settled.map_or("never".to_owned(), |m| m.to_string()),
        last.map_or(0, |s| s.supernodes),
        last.map_or(0.0, |s| s.per_supernode()),
        verdict(settled.is_some_and(|m| m <= 30)),
    );
    let _ = writeln!(
        text,
        "| search coverage (online leaves with >= 1 supernode session; not query success) \
         >= 95% through churn | from minute {from}: min {:.2}%, mean {:.2}% (whole run: min \
         {:.2}%, mean {:.2}%) | {} |",
        cov_min * 100.0,
        cov_mean * 100.0,
        all_min * 100.0,
        all_mean * 100.0,
        verdict(cov_min >= COVERAGE_GOAL),
    );
    let _ = writeln!(
        text,
        "| nodes switching mode more than once within an hour < 1% | {} of {} nodes ({:.3}%); \
         {} nodes switched at all; shortest spacing {} | {} |\n",
        report.flapped,
        c.nodes,
        report.flap_share() * 100.0,
        report.switched,
        report
            .min_switch_spacing
            .map_or("n/a".to_owned(), |d| format!("{:.1} min", minutes(d))),
        verdict(report.flap_share() < FLAP_GOAL),
    );
    let _ = writeln!(
        text,
        "Capable of promoting at the start (reachable, up >= {:.0} min, rates, memory): {} \
         nodes. Promotions {}, step-downs {}, rejoins {}.\n",
        minutes(c.election.min_uptime),
        report.capable_at_start,
        last.map_or(0, |s| s.promotions),
        last.map_or(0, |s| s.demotions),
        report.rejoins
    );
    let _ = writeln!(text, "## Samples (every 10 min)\n");
    let _ = writeln!(
        text,
        "| minute | online | supernodes | leaves | sessions per supernode | \
         supernodes under {low:.0} | coverage | all sessions open | refusals (last min) | promotions | step-downs |\n\
         |---|---|---|---|---|---|---|---|---|---|---|"
    );
    for s in report
        .samples
        .iter()
        .filter(|s| s.minute % 10 == 0 || s.minute < 5)
    {
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {:.1} | {} | {:.2}% | {:.2}% | {} | {} | {} |",
            s.minute,
            s.online,
            s.supernodes,
            s.leaves,
            s.per_supernode(),
            s.under_target,
            s.coverage() * 100.0,
            s.served_share() * 100.0,
            s.refusals,
            s.promotions,
            s.demotions
        );
    }
    text
}

/// The figure as an SVG document.
pub fn svg(report: &ElectionReport) -> Result<String, ElectionOutputError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 720)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let (top, bottom) = root.split_vertically(380);
        let end = report.samples.last().map_or(1, |s| s.minute.max(1)) as f64;
        let most = report
            .samples
            .iter()
            .map(|s| s.supernodes)
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let c = &report.config;
        let mut chart = ChartBuilder::on(&top)
            .caption(
                format!(
                    "Supernodes over time: {} nodes, {} seeds, seed {}",
                    c.nodes, c.seeds, c.seed
                ),
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..end, 0.0..most * 1.1)
            .map_err(failed)?;
        chart
            .configure_mesh()
            .x_desc("simulated minutes")
            .y_desc("supernodes online")
            .draw()
            .map_err(failed)?;
        chart
            .draw_series(LineSeries::new(
                report
                    .samples
                    .iter()
                    .map(|s| (s.minute as f64, s.supernodes as f64)),
                RGBColor(31, 119, 180).stroke_width(2),
            ))
            .map_err(failed)?;

        let (low, high) = c.target;
        let peak = report
            .samples
            .iter()
            .map(|s| s.per_supernode())
            .fold(high, f64::max);
        let mut chart = ChartBuilder::on(&bottom)
            .caption(
                "Leaf sessions per supernode (log) and the target range",
                ("sans-serif", 16),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..end, (1.0..peak * 2.0).log_scale())
            .map_err(failed)?;
        chart
            .configure_mesh()
            .x_desc("simulated minutes")
            .y_desc("sessions per supernode")
            .draw()
            .map_err(failed)?;
        let band = RGBColor(44, 160, 44);
        for bound in [low, high] {
            chart
                .draw_series(LineSeries::new(
                    [(0.0, bound), (end, bound)],
                    band.stroke_width(1),
                ))
                .map_err(failed)?;
        }
        chart
            .draw_series(LineSeries::new(
                report
                    .samples
                    .iter()
                    .map(|s| (s.minute as f64, s.per_supernode().max(1.0))),
                RGBColor(214, 39, 40).stroke_width(2),
            ))
            .map_err(failed)?;
        root.present().map_err(failed)?;
    }
    Ok(out)
}

/// Writes `report.md` and `report.svg` into `dir` (created if missing).
pub fn write(
    dir: &Path,
    report: &ElectionReport,
    command: &str,
) -> Result<(), ElectionOutputError> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.md"), markdown(report, command))?;
    std::fs::write(dir.join("report.svg"), svg(report)?)?;
    Ok(())
}
