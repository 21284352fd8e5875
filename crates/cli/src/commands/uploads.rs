//! `canopy uploads`: what the running leaf is sending to other peers now.

use canopy_daemon::model::UploadView;
use indicatif::HumanBytes;

use super::running::LeafArgs;
use super::show::{self, Align};

/// Arguments of `canopy uploads`.
#[derive(Debug, clap::Args)]
#[command(mut_arg("json", |json| json.help(
    "Print one JSON object per line per upload (the API's `UploadView`)"
)))]
pub(crate) struct Args {
    #[command(flatten)]
    leaf: LeafArgs,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let uploads = args.leaf.leaf().await?.uploads().await?;
    show::list(&uploads, args.leaf.json, "no uploads running", table)
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
