//! `canopy get` through the running leaf: adds the content to the leaf's
//! queue (`POST /api/downloads`) and follows it with a progress bar (name,
//! bytes, rate, ETA, sources) until it is done, failed or skipped.
//! `--detach` returns once it is queued; Ctrl-C stops following, and the
//! download goes on in the leaf.

use std::cell::Cell;
use std::time::Duration;

use anyhow::bail;
use canopy_daemon::client::{ClientError, ControlClient};
use canopy_daemon::model::{DownloadState, DownloadView};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use super::show;
use super::wanted::Wanted;

/// How often the download is looked at while followed.
const POLL: Duration = Duration::from_millis(200);

/// What to queue and how, from `canopy get`'s arguments.
#[derive(Debug)]
pub(crate) struct Request {
    /// The content.
    pub(crate) wanted: Wanted,
    /// Save it under this name.
    pub(crate) name: Option<String>,
    /// Its priority in the queue.
    pub(crate) priority: Option<i32>,
    /// Return once queued.
    pub(crate) detach: bool,
    /// One JSON document instead of text.
    pub(crate) json: bool,
}

pub(crate) async fn run(client: ControlClient, request: Request) -> anyhow::Result<()> {
    let add = request.wanted.add(request.name, request.priority);
    let (view, added) = client.add_download(&add).await?;
    let short = show::short_id(&view.id);
    if request.detach {
        if request.json {
            say!("{}", serde_json::to_string(&view)?);
        } else if added {
            say!(
                "queued {} ({short}) in the leaf; `canopy downloads` shows it",
                view.name
            );
        } else {
            say!(
                "{} ({short}) is already in the queue: {}",
                view.name,
                show::state(view.state)
            );
        }
        return Ok(());
    }
    if !added && !request.json {
        eprintln!(
            "{} ({short}) is already in the queue ({}); following it",
            view.name,
            show::state(view.state)
        );
    }
    let bar = Bar::new(&view.name);
    let followed = follow(&client, view, &bar).await;
    bar.0.finish_and_clear();
    let Some(view) = followed? else {
        bail!(
            "stopped following; the download keeps running in the leaf \
             (`canopy downloads` shows it, `canopy pause {short}` pauses it)"
        );
    };
    if request.json {
        say!("{}", serde_json::to_string(&view)?);
    }
    match view.state {
        DownloadState::Done => {
            if !request.json {
                say!(
                    "saved {} ({})",
                    view.path.as_deref().unwrap_or(&view.name),
                    HumanBytes(view.size.unwrap_or(view.verified_bytes))
                );
            }
            Ok(())
        }
        DownloadState::Skipped => {
            if !request.json {
                say!(
                    "not downloaded: {}{}",
                    view.error
                        .as_deref()
                        .unwrap_or("the content is already here"),
                    view.path
                        .as_deref()
                        .map(|path| format!(" ({path})"))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        DownloadState::Paused => bail!(
            "{} was paused in the leaf (`canopy resume {short}` continues it)",
            view.name
        ),
        _ => bail!(
            "{} failed: {}",
            view.name,
            view.error.as_deref().unwrap_or("no reason given")
        ),
    }
}

/// Follows the download until it ends (done, skipped, failed, or paused
/// by someone); `None` on Ctrl-C.
async fn follow(
    client: &ControlClient,
    mut view: DownloadView,
    bar: &Bar,
) -> anyhow::Result<Option<DownloadView>> {
    let interrupted = super::get::interrupted();
    tokio::pin!(interrupted);
    loop {
        bar.show(&view);
        if matches!(
            view.state,
            DownloadState::Done
                | DownloadState::Skipped
                | DownloadState::Failed
                | DownloadState::Paused
        ) {
            return Ok(Some(view));
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = &mut interrupted => return Ok(None),
        }
        view = match client.download(&view.id).await {
            Ok(view) => view,
            Err(ClientError::Api { status: 404, .. }) => {
                bail!("{} was cancelled in the leaf", view.name)
            }
            Err(error) => return Err(error.into()),
        };
    }
}

/// The progress bar on stderr (drawn only on a terminal); a bar once the
/// size is known, a spinner before.
struct Bar(ProgressBar, Cell<bool>);

impl Bar {
    fn new(name: &str) -> Self {
        let bar = crate::output::progress("{spinner} {prefix}  {msg}", None);
        bar.set_prefix(name.to_owned());
        Self(bar, Cell::new(false))
    }

    fn show(&self, view: &DownloadView) {
        let bar = &self.0;
        bar.set_prefix(view.name.clone());
        if let Some(size) = view.size {
            if !self.1.replace(true) || bar.length() != Some(size) {
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {prefix}  [{bar:30}] {bytes}/{total_bytes}  {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_length(size);
            }
            bar.set_position(view.verified_bytes.min(size));
        }
        bar.set_message(message(view));
    }
}

/// The bar's message: what the download is doing.
fn message(view: &DownloadView) -> String {
    match view.state {
        DownloadState::Active if view.sources == 0 => "finding sources…".to_owned(),
        DownloadState::Active if view.verified_bytes == 0 && view.rate == 0 => format!(
            "connecting to {}…",
            show::count(view.sources, "source", "sources")
        ),
        DownloadState::Active => format!(
            "{}  eta {}  {} of {}",
            show::rate(view.rate),
            show::eta(view.eta_secs),
            view.active_sources,
            show::count(view.sources, "source", "sources")
        ),
        state => show::state(state).to_owned(),
    }
}
