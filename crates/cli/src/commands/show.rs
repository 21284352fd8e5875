//! Words and numbers for what the running leaf reports, shared by the
//! commands that talk to it: sizes, rates, ETAs, states, short ids, and
//! tables whose columns fit their widest cell.

use canopy_daemon::model::{DownloadState, DownloadView};
use indicatif::HumanBytes;
use serde::Serialize;

/// Prints a list the running leaf gave: with `json`, one JSON object a
/// line; else `empty` when there is nothing, or `table` of the items.
pub(crate) fn list<T: Serialize>(
    items: &[T],
    json: bool,
    empty: &str,
    table: impl FnOnce(&[T]) -> String,
) -> anyhow::Result<()> {
    if json {
        for item in items {
            say!("{}", serde_json::to_string(item)?);
        }
        return Ok(());
    }
    if items.is_empty() {
        say!("{empty}");
        return Ok(());
    }
    say!("{}", table(items).trim_end());
    Ok(())
}

/// Hex digits of a content id shown in tables (enough to name it to
/// `canopy pause`).
pub(crate) const SHORT_ID: usize = 12;

/// The first [`SHORT_ID`] characters of an id.
pub(crate) fn short_id(id: &str) -> String {
    id.chars().take(SHORT_ID).collect()
}

/// "1.50 MiB/s", or "-" when nothing moves.
pub(crate) fn rate(bytes_per_sec: u64) -> String {
    if bytes_per_sec == 0 {
        "-".to_owned()
    } else {
        format!("{}/s", HumanBytes(bytes_per_sec))
    }
}

/// A short ETA: "45s", "3m05s", "2h10m", "3d04h"; "-" when unknown.
pub(crate) fn eta(secs: Option<u64>) -> String {
    let Some(secs) = secs else {
        return "-".to_owned();
    };
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// A state as one word.
pub(crate) fn state(state: DownloadState) -> &'static str {
    match state {
        DownloadState::Queued => "queued",
        DownloadState::Active => "active",
        DownloadState::Paused => "paused",
        DownloadState::Done => "done",
        DownloadState::Failed => "failed",
        DownloadState::Skipped => "skipped",
    }
}

/// "256.00 MiB / 512.00 MiB", or just the bytes while the size is unknown.
pub(crate) fn progress(done: u64, size: Option<u64>) -> String {
    match size {
        Some(size) => format!("{} / {}", HumanBytes(done), HumanBytes(size)),
        None => HumanBytes(done).to_string(),
    }
}

/// "50%", or "-" while the size is unknown.
pub(crate) fn percent(done: u64, size: Option<u64>) -> String {
    match size {
        Some(0) => "100%".to_owned(),
        Some(size) => format!("{}%", u128::from(done.min(size)) * 100 / u128::from(size)),
        None => "-".to_owned(),
    }
}

/// "2 of 3": sources sending of sources known.
pub(crate) fn sources(download: &DownloadView) -> String {
    format!("{} of {}", download.active_sources, download.sources)
}

/// "1 source", "3 sources".
pub(crate) fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// How a column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// Lays `rows` out under `header`, each column as wide as its widest
/// cell (cells of a [`Align::Left`] column are cut to `max_width`); the
/// last column is not padded.
pub(crate) fn table(header: &[(&str, Align)], rows: &[Vec<String>], max_width: usize) -> String {
    let mut widths: Vec<usize> = header
        .iter()
        .map(|(name, _)| name.chars().count())
        .collect();
    let cut = |text: &str, align: Align| match align {
        Align::Left => crate::output::fit(text, max_width),
        Align::Right => text.to_owned(),
    };
    for row in rows {
        for (column, cell) in row.iter().enumerate() {
            if let (Some(width), Some((_, align))) = (widths.get_mut(column), header.get(column)) {
                *width = (*width).max(cut(cell, *align).chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (column, cell) in cells.into_iter().enumerate() {
            let (width, align) = (widths[column], header[column].1);
            let cell = cut(&cell, align);
            if column > 0 {
                text.push_str("  ");
            }
            match align {
                Align::Right => text.push_str(&format!("{cell:>width$}")),
                Align::Left if column == last => text.push_str(&cell),
                Align::Left => text.push_str(&format!("{cell:<width$}")),
            }
        }
        text.push('\n');
        text
    };
    let mut out = line(header.iter().map(|(name, _)| (*name).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etas_rates_and_percents_are_short() {
        assert_eq!(eta(None), "-");
        assert_eq!(eta(Some(45)), "45s");
        assert_eq!(eta(Some(185)), "3m05s");
        assert_eq!(eta(Some(7800)), "2h10m");
        assert_eq!(eta(Some(3 * 86_400 + 4 * 3600)), "3d04h");
        assert_eq!(rate(0), "-");
        assert_eq!(rate(3 << 20), "3.00 MiB/s");
        assert_eq!(percent(1, Some(2)), "50%");
        assert_eq!(percent(5, None), "-");
        assert_eq!(percent(0, Some(0)), "100%");
        assert_eq!(progress(1024, Some(2048)), "1.00 KiB / 2.00 KiB");
        assert_eq!(short_id(&"ab".repeat(32)), "abababababab");
    }

    #[test]
    fn columns_fit_their_widest_cell() {
        let text = table(
            &[
                ("#", Align::Right),
                ("NAME", Align::Left),
                ("ID", Align::Left),
            ],
            &[
                vec!["1".into(), "a".into(), "x".into()],
                vec!["10".into(), "a long name".into(), "y".into()],
            ],
            40,
        );
        assert_eq!(
            text,
            " #  NAME         ID\n 1  a            x\n10  a long name  y\n"
        );
    }
}
