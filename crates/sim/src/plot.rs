//! The report's figure: messages per query (mean, the query's own and
//! routing filter patches amortized: what the goals count; log scale)
//! against success, one colour per kind of query and replication ratio;
//! floods at growing TTL are joined by a line, dynamic querying is a
//! triangle. Written as SVG text
//! with plotters' SVG backend (no fonts, no bitmaps).

use plotters::prelude::*;

use crate::report::{QueryKind, RunReport};

/// Why the figure could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing the plot: {0}")]
pub struct PlotError(String);

fn failed<E: std::fmt::Display>(error: E) -> PlotError {
    PlotError(error.to_string())
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
];

/// The kinds of query and replication ratios in `rows`, in order of
/// first appearance.
fn series(rows: &[RunReport]) -> Vec<(QueryKind, f64)> {
    let mut seen: Vec<(QueryKind, f64)> = Vec::new();
    for row in rows {
        if !seen.contains(&(row.kind, row.replication)) {
            seen.push((row.kind, row.replication));
        }
    }
    seen
}

/// The figure for `rows` as an SVG document.
pub fn svg(title: &str, rows: &[RunReport]) -> Result<String, PlotError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let most = rows
            .iter()
            .map(RunReport::goal_messages)
            .fold(10.0, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d((1.0..most * 2.0).log_scale(), 0.0..105.0)
            .map_err(failed)?;
        chart
            .configure_mesh()
            .x_desc("messages per query (mean, filter patches amortized; log scale)")
            .y_desc("success (%)")
            .draw()
            .map_err(failed)?;
        for (i, (kind, replication)) in series(rows).into_iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let point = |r: &RunReport| (r.goal_messages().max(1.0), r.success_rate * 100.0);
            let ours = |r: &&RunReport| r.kind == kind && r.replication == replication;
            let floods: Vec<&RunReport> = rows
                .iter()
                .filter(ours)
                .filter(|r| r.strategy.starts_with("flood"))
                .collect();
            chart
                .draw_series(LineSeries::new(floods.iter().map(|r| point(r)), colour))
                .map_err(failed)?
                .label(format!("flood, {kind}, {}%", replication * 100.0))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour));
            chart
                .draw_series(floods.iter().map(|r| {
                    let ttl = r.strategy.trim_start_matches("flood ttl ").to_owned();
                    EmptyElement::at(point(r))
                        + Circle::new((0, 0), 4, colour.filled())
                        + Text::new(format!("ttl {ttl}"), (6, -14), ("sans-serif", 12))
                }))
                .map_err(failed)?;
            chart
                .draw_series(
                    rows.iter()
                        .filter(ours)
                        .filter(|r| r.strategy == "dynamic")
                        .map(|r| TriangleMarker::new(point(r), 8, colour.filled())),
                )
                .map_err(failed)?
                .label(format!("dynamic, {kind}, {}%", replication * 100.0))
                .legend(move |(x, y)| TriangleMarker::new((x + 9, y), 6, colour.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(failed)?;
        root.present().map_err(failed)?;
    }
    Ok(out)
}
