//! The control API's HTTP server: HTTP/1.1 + JSON over the [`Control`]
//! trait, plus the web UI's static files, on one origin.
//!
//! - [`router`]: which handler a method and path reach (and the list of
//!   routes the OpenAPI document is checked against);
//! - [`auth`]: the token (header or cookie), the cookie login and the
//!   Origin / Host checks against cross-site requests;
//! - [`body`]: JSON request bodies, bounded and decoded with the failing
//!   field named;
//! - [`errors`]: JSON responses and error bodies;
//! - [`sse`]: a search's results as Server-Sent Events;
//! - [`assets`]: the embedded web UI;
//! - [`token`]: the token file in the data directory;
//! - [`validate`]: the checks the OpenAPI document promises.
//!
//! Every input is hostile: connections are capped, a client has a time
//! to send each request's head (idle keep-alive connections close after
//! it too) and another for its body ([`ServeLimits`]), and bodies over
//! [`MAX_BODY`] are refused before they are read.

mod assets;
mod auth;
mod body;
mod errors;
mod router;
mod sse;
mod token;
pub mod validate;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::Control;

pub use assets::asset_paths;
pub use router::{ROUTES, RouteSpec};
pub use sse::MIN_INTERVAL as EVENT_INTERVAL;
pub use token::{TOKEN_FILE, Token};

/// The largest JSON body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// What one client may hold of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time a client has to send a request's head, and the longest an
    /// idle keep-alive connection stays open.
    pub header_timeout: Duration,
    /// Time a client has to send a request's body.
    pub body_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
        }
    }
}

/// A response body: whole JSON or a stream of events.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What every request's handler shares.
#[derive(Debug)]
pub(crate) struct Server<C> {
    pub(crate) control: Arc<C>,
    pub(crate) token: Token,
    pub(crate) limits: ServeLimits,
    pub(crate) shutdown: CancellationToken,
}

/// Serves the control API and the web UI on `listener` until `shutdown`
/// is cancelled; returns once every connection is closed.
pub async fn serve<C: Control>(
    control: Arc<C>,
    listener: TcpListener,
    token: Token,
    shutdown: CancellationToken,
) {
    serve_with_limits(control, listener, token, ServeLimits::default(), shutdown).await;
}

/// [`serve`] with other limits.
pub async fn serve_with_limits<C: Control>(
    control: Arc<C>,
    listener: TcpListener,
    token: Token,
    limits: ServeLimits,
    shutdown: CancellationToken,
) {
    let server = Arc::new(Server {
        control,
        token,
        limits,
        shutdown: shutdown.clone(),
    });
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let tracker = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors, most likely: let some close.
                    tracing::warn!(%error, "control API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        let shutdown = shutdown.clone();
        tracing::trace!(%peer, "control API connection");
        tracker.spawn(async move {
            let service = service_fn(move |request| {
                let server = server.clone();
                async move {
                    let method = request.method().clone();
                    // The path only: a query may hold the token.
                    let path = request.uri().path().to_owned();
                    let response = router::handle(&server, request).await;
                    tracing::debug!(%peer, %method, path, status = response.status().as_u16(), "control API request");
                    Ok::<_, Infallible>(response)
                }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "control API connection ended with an error");
                    }
                }
            }
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
}
