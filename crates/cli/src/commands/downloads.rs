//! `canopy downloads`: the running leaf's download queue, numbered (the
//! numbers `canopy pause|resume|cancel N` take), with progress, rate, ETA
//! and sources.

use canopy_daemon::model::{DownloadState, DownloadView};

use super::running::LeafArgs;
use super::show::{self, Align};

/// Arguments of `canopy downloads`.
#[derive(Debug, clap::Args)]
#[command(mut_arg("json", |json| json.help(
    "Print one JSON object per line per download (the API's `DownloadView`)"
)))]
pub(crate) struct Args {
    #[command(flatten)]
    leaf: LeafArgs,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let queue = args.leaf.leaf().await?.downloads().await?;
    show::list(
        &queue,
        args.leaf.json,
        "the queue is empty (add to it with `canopy get`)",
        table,
    )
}

/// The queue as a numbered table; a failed or skipped download says why
/// on the line under it.
pub(crate) fn table(queue: &[DownloadView]) -> String {
    const HEADER: [(&str, Align); 9] = [
        ("#", Align::Right),
        ("STATE", Align::Left),
        ("NAME", Align::Left),
        ("PROGRESS", Align::Right),
        ("%", Align::Right),
        ("RATE", Align::Right),
        ("ETA", Align::Right),
        ("SOURCES", Align::Right),
        ("ID", Align::Left),
    ];
    let rows: Vec<Vec<String>> = queue
        .iter()
        .enumerate()
        .map(|(index, d)| {
            let moving = d.state == DownloadState::Active;
            vec![
                (index + 1).to_string(),
                show::state(d.state).to_owned(),
                d.name.clone(),
                show::progress(d.verified_bytes, d.size),
                show::percent(d.verified_bytes, d.size),
                if moving {
                    show::rate(d.rate)
                } else {
                    "-".to_owned()
                },
                if moving {
                    show::eta(d.eta_secs)
                } else {
                    "-".to_owned()
                },
                if moving {
                    show::sources(d)
                } else {
                    "-".to_owned()
                },
                show::short_id(&d.id),
            ]
        })
        .collect();
    let text = show::table(&HEADER, &rows, 40);
    let mut lines = text.lines();
    let mut out = String::new();
    if let Some(header) = lines.next() {
        out.push_str(header);
        out.push('\n');
    }
    for (line, download) in lines.zip(queue) {
        out.push_str(line);
        out.push('\n');
        let why = match (download.state, &download.error, &download.path) {
            (DownloadState::Failed | DownloadState::Skipped, Some(error), _) => Some(error),
            (DownloadState::Done, _, Some(path)) => Some(path),
            _ => None,
        };
        if let Some(why) = why {
            let label = match download.state {
                DownloadState::Done => "saved to",
                state => show::state(state),
            };
            out.push_str(&format!("    {label}: {why}\n"));
        }
    }
    out
}
