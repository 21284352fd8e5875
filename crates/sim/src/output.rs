//! Writes a finished set of runs beside each other: `report.md` (a
//! Markdown table), `report.csv` and `report.svg` (the plot).

use std::path::Path;

use crate::plot::{PlotError, svg};
use crate::report::RunReport;

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The files could not be written.
    #[error("writing the report: {0}")]
    Io(#[from] std::io::Error),
    /// The plot could not be drawn.
    #[error(transparent)]
    Plot(#[from] PlotError),
}

/// The Markdown report: `title` as heading, `preamble` below it, then the
/// table.
pub fn markdown(title: &str, preamble: &str, rows: &[RunReport]) -> String {
    let mut text = format!(
        "# {title}\n\n{preamble}\n\n{}\n",
        RunReport::markdown_header()
    );
    for row in rows {
        text.push_str(&row.markdown_row());
        text.push('\n');
    }
    text.push('\n');
    text.push_str(&crate::goals::markdown(rows));
    text
}

/// The CSV report.
pub fn csv(rows: &[RunReport]) -> String {
    let mut text = format!("{}\n", RunReport::csv_header());
    for row in rows {
        text.push_str(&row.csv_row());
        text.push('\n');
    }
    text
}

/// Writes `report.md`, `report.csv` and `report.svg` into `dir`
/// (created if missing).
pub fn write_report(
    dir: &Path,
    title: &str,
    preamble: &str,
    rows: &[RunReport],
) -> Result<(), OutputError> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.md"), markdown(title, preamble, rows))?;
    std::fs::write(dir.join("report.csv"), csv(rows))?;
    std::fs::write(dir.join("report.svg"), svg(title, rows)?)?;
    Ok(())
}
