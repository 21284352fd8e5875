//! `canopy pause|resume|cancel ID|N`: changes one download of the running
//! leaf's queue, named by its number in `canopy downloads`, its content id
//! or a start of the id only it has.

use serde::Serialize;

use super::running::{LeafArgs, Pick};
use super::show;

/// Arguments of `canopy pause`, `canopy resume` and `canopy cancel`.
#[derive(Debug, clap::Args)]
#[command(mut_arg("json", |json| json.help(
    "Print one JSON document: the download as it is now (for cancel, \
     `{\"id\", \"name\", \"cancelled\"}`)"
)))]
pub(crate) struct Args {
    #[command(flatten)]
    leaf: LeafArgs,
    /// The download: N from `canopy downloads`, its content id, or a start
    /// of the id (at least 4 hex digits).
    #[arg(value_name = "ID|N")]
    download: String,
}

/// What to do to the download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Pause,
    Resume,
    Cancel,
}

#[derive(Serialize)]
struct Cancelled<'a> {
    id: &'a str,
    name: &'a str,
    cancelled: bool,
}

pub(crate) async fn run(action: Action, args: Args) -> anyhow::Result<()> {
    let pick = Pick::parse(&args.download)?;
    let client = args.leaf.leaf().await?;
    let download = pick.find(&client).await?;
    let short = show::short_id(&download.id);
    match action {
        Action::Pause | Action::Resume => {
            let view = if action == Action::Pause {
                client.pause(&download.id).await?
            } else {
                client.resume(&download.id).await?
            };
            if args.leaf.json {
                say!("{}", serde_json::to_string(&view)?);
            } else {
                match action {
                    Action::Pause => say!("paused {} ({short})", view.name),
                    _ => say!(
                        "resumed {} ({short}): {}",
                        view.name,
                        show::state(view.state)
                    ),
                }
            }
        }
        Action::Cancel => {
            client.cancel(&download.id).await?;
            if args.leaf.json {
                let json = Cancelled {
                    id: &download.id,
                    name: &download.name,
                    cancelled: true,
                };
                say!("{}", serde_json::to_string(&json)?);
            } else {
                match &download.path {
                    Some(path) => say!(
                        "removed {} ({short}) from the queue; the file stays at {path}",
                        download.name
                    ),
                    None => say!(
                        "cancelled {} ({short}); its partial file is removed",
                        download.name
                    ),
                }
            }
        }
    }
    Ok(())
}
