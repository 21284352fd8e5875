//! `canopy uploads`: what the running leaf is sending to other peers now.

use canopy_daemon::model::UploadView;
use indicatif::HumanBytes;

use super::running::DataDir;
use super::show::{self, Align};

/// Arguments of `canopy uploads`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    leaf: DataDir,
    /// Print one JSON object per line per upload (the API's `UploadView`).
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let client = args.leaf.leaf().await?;
    let uploads = client.uploads().await?;
    if args.json {
        for upload in &uploads {
            say!("{}", serde_json::to_string(upload)?);
        }
        return Ok(());
    }
    if uploads.is_empty() {
        say!("no uploads running");
        return Ok(());
    }
    say!("{}", table(&uploads).trim_end());
    Ok(())
}

/// The uploads as a table.
fn table(uploads: &[UploadView]) -> String {
    const HEADER: [(&str, Align); 6] = [
        ("PEER", Align::Left),
        ("NAME", Align::Left),
        ("SENT", Align::Right),
        ("%", Align::Right),
        ("RATE", Align::Right),
        ("ID", Align::Left),
    ];
    let rows: Vec<Vec<String>> = uploads
        .iter()
        .map(|u| {
            vec![
                u.peer.clone(),
                u.name.clone(),
                format!("{} / {}", HumanBytes(u.bytes), HumanBytes(u.length)),
                show::percent(u.bytes, Some(u.length)),
                show::rate(u.rate),
                show::short_id(&u.content_id),
            ]
        })
        .collect();
    show::table(&HEADER, &rows, 40)
}
