//! The control API over a fake daemon (the one the API's tests use), for
//! exercising the HTTP layer from outside, e.g. `.ci/schemathesis.sh`
//! before a real leaf is at hand:
//!
//! `cargo run -p canopy-daemon --example fake_api -- DATA_DIR [ADDR]`
//!
//! Creates (or reuses) `DATA_DIR/control.token`, listens on ADDR (default
//! 127.0.0.1:0), writes `DATA_DIR/control.json` like a leaf does, prints
//! the URL and serves until Ctrl-C.

#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "../tests/support/fake_control.rs"]
mod fake_control;

use std::path::PathBuf;
use std::sync::Arc;

use canopy_daemon::api::{self, Token};
use canopy_daemon::client::{CONTROL_FILE, ControlFile};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(data_dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: fake_api DATA_DIR [ADDR]");
        std::process::exit(2);
    };
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let token = Token::load_or_create(&data_dir)?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let control = ControlFile {
        url: url.clone(),
        pid: std::process::id(),
    };
    let temporary = data_dir.join(format!(".{CONTROL_FILE}.tmp"));
    std::fs::write(&temporary, serde_json::to_vec(&control)?)?;
    std::fs::rename(&temporary, data_dir.join(CONTROL_FILE))?;
    println!("{url}");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(api::serve(
        Arc::new(fake_control::FakeControl::new(true)),
        listener,
        token,
        shutdown.clone(),
    ));
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
    let _ = server.await;
    let _ = std::fs::remove_file(data_dir.join(CONTROL_FILE));
    Ok(())
}
