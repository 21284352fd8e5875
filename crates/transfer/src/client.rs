//! The downloader's side of HTTP: how to reach a source (directly, or by
//! push) and how to ask it for a range (`GET`) or for what it has
//! (`HEAD`), saying where this node serves (`X-Listen`).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::mesh::{LISTEN, NEED};
use crate::path::TransferPath;

/// What a downloader says of itself on a request.
#[derive(Debug, Clone, Default)]
pub struct Sharing {
    /// `X-Listen: <port>`: where it serves HTTP itself (the source then
    /// tells other downloaders of it).
    pub listen_port: Option<u16>,
    /// `X-Need: bytes ...`: the groups it has not got and is not getting
    /// elsewhere (a rationing seed offers only these; see
    /// [`crate::ration`]).
    pub need: Option<String>,
}

/// A byte stream to a source: a TCP connection, possibly wrapped (by a
/// rate limit, say).
pub trait SourceIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> SourceIo for T {}

/// An open connection to a source.
pub type SourceStream = Box<dyn SourceIo>;

/// An open connection to a source, and how it was made.
pub struct Connected {
    /// The byte stream; the source speaks HTTP on it.
    pub stream: SourceStream,
    /// Which way it was made, for the download's report.
    pub path: TransferPath,
}

impl Connected {
    /// `stream`, made by `path`.
    pub fn new(stream: impl SourceIo, path: TransferPath) -> Self {
        Self {
            stream: Box::new(stream),
            path,
        }
    }
}

impl fmt::Debug for Connected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connected")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A connection being opened.
pub type ConnectFuture = Pin<Box<dyn Future<Output = std::io::Result<Connected>> + Send>>;

/// How to open a connection to one source.
pub trait Connector: Send + Sync + fmt::Debug {
    /// Opens a new connection that speaks HTTP to the source, saying
    /// which way it was made.
    fn connect(&self) -> ConnectFuture;
}

/// A source that accepts connections: dial it (a source known by several
/// addresses: IPv6 first, see [`crate::eyeballs`]).
#[derive(Debug, Clone)]
pub struct DirectConnector {
    addrs: Vec<SocketAddr>,
    timeout: Duration,
}

impl DirectConnector {
    /// Dials `addr`, giving up after `timeout`.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Self::racing(&[addr], timeout)
    }

    /// Dials the first of `addrs` to answer, IPv6 first, giving up after
    /// `timeout` (at most `canopy_core::family::MAX_ADDRESSES` of them).
    pub fn racing(addrs: &[SocketAddr], timeout: Duration) -> Self {
        Self {
            addrs: canopy_core::family::dial_order(addrs),
            timeout,
        }
    }
}

impl Connector for DirectConnector {
    fn connect(&self) -> ConnectFuture {
        let (addrs, timeout) = (self.addrs.clone(), self.timeout);
        Box::pin(async move {
            let stream = crate::eyeballs::connect(&addrs, timeout).await?;
            let _ = stream.set_nodelay(true);
            Ok(Connected::new(stream, TransferPath::Direct))
        })
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed.
    #[error("cannot connect: {0}")]
    Connect(#[from] std::io::Error),
    /// The HTTP exchange failed.
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// A body was longer than allowed.
    #[error("response body over {0} bytes")]
    TooLong(usize),
}

/// One HTTP/1.1 connection to a source, reusable for several requests.
#[derive(Debug)]
pub struct HttpConn {
    sender: SendRequest<Empty<Bytes>>,
}

impl HttpConn {
    /// Speaks HTTP/1.1 over `stream`.
    pub async fn handshake(stream: impl SourceIo) -> Result<Self, ClientError> {
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "http client connection ended");
            }
        });
        Ok(Self { sender })
    }

    /// True while the connection can take another request.
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }

    /// `GET path`, with an inclusive byte range if given.
    pub async fn get(
        &mut self,
        path: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Response<Incoming>, ClientError> {
        self.request(Method::GET, path, range, &Sharing::default())
            .await
    }

    /// `method path` (`GET`, or `HEAD` to ask for headers only), with an
    /// inclusive byte range if given, and what `sharing` says of this
    /// downloader.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        range: Option<(u64, u64)>,
        sharing: &Sharing,
    ) -> Result<Response<Incoming>, ClientError> {
        self.sender.ready().await?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .body(Empty::new())
            .map_err(|e| {
                ClientError::Connect(std::io::Error::other(format!("bad request: {e}")))
            })?;
        let headers = request.headers_mut();
        headers.insert(header::HOST, HeaderValue::from_static("canopy"));
        if let Some((first, last)) = range {
            if let Ok(value) = HeaderValue::from_str(&format!("bytes={first}-{last}")) {
                headers.insert(header::RANGE, value);
            }
        }
        if let Some(port) = sharing.listen_port {
            headers.insert(LISTEN, HeaderValue::from(port));
        }
        if let Some(need) = sharing.need.as_deref() {
            if let Ok(value) = HeaderValue::from_str(need) {
                headers.insert(NEED, value);
            }
        }
        Ok(self.sender.send_request(request).await?)
    }
}

/// Reads a whole body of at most `max` bytes.
pub async fn read_limited(body: Incoming, max: usize) -> Result<Bytes, ClientError> {
    let mut body = body;
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if out.len() + data.len() > max {
                return Err(ClientError::TooLong(max));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}
