//! The control API's client, for the CLI: finds the running leaf through
//! the data directory (`control.json` and `control.token`) and calls each
//! endpoint, returning the [`model`](crate::model) types. A refusal comes
//! back as [`ClientError::Api`] with the server's message and field.
//!
//! Each call opens its own connection (the CLI makes a handful); a
//! search's events arrive as [`SearchEvents`], one [`SearchView`] per
//! event, the last one `done`.

use std::io;
use std::path::Path;
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use crate::api::{TOKEN_FILE, Token};
use crate::model::{
    AddDownload, DownloadView, ErrorBody, PriorityPatch, SearchSpec, SearchView, Settings,
    SettingsPatch, SharePath, SharesView, Status, UploadView,
};

/// The file in the data directory that says where a running leaf's API
/// listens.
pub const CONTROL_FILE: &str = "control.json";

/// What `control.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlFile {
    /// The API's base URL, `http://127.0.0.1:6349`.
    pub url: String,
    /// The leaf's process id.
    pub pid: u32,
}

/// How long a call may take (connect, send, whole answer).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`ControlClient::find`] waits for the leaf to answer.
pub const FIND_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest answer read, bytes.
const MAX_ANSWER: usize = 64 * 1024 * 1024;
/// The largest event of a search's stream, bytes.
const MAX_EVENT: usize = 16 * 1024 * 1024;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The leaf could not be reached.
    #[error("cannot reach the leaf's control API at {url}: {source}")]
    Connect {
        /// Its URL.
        url: String,
        /// Why.
        source: io::Error,
    },
    /// The connection failed mid-call.
    #[error("the leaf's control API connection failed: {0}")]
    Http(#[from] hyper::Error),
    /// The leaf refused the request.
    #[error("{}", .body.error)]
    Api {
        /// The HTTP status.
        status: u16,
        /// The leaf's message, and the field at fault.
        body: ErrorBody,
    },
    /// The answer was not what the API promises.
    #[error("the leaf answered something unexpected: {0}")]
    Unexpected(String),
    /// The leaf took longer than [`CALL_TIMEOUT`].
    #[error("the leaf did not answer in time")]
    Timeout,
    /// The URL is not `http://host:port`.
    #[error("not a control API URL (http://host:port): {0}")]
    BadUrl(String),
}

/// A client of one leaf's control API.
#[derive(Debug, Clone)]
pub struct ControlClient {
    url: String,
    /// `host:port`, to connect to and to send as `Host`.
    authority: String,
    token: Token,
}

impl ControlClient {
    /// A client of the API at `url` (`http://host:port`) using `token`.
    pub fn new(url: &str, token: Token) -> Result<Self, ClientError> {
        let authority = url
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|rest| !rest.is_empty() && !rest.contains(['/', '?', '#', '@', ' ']))
            .ok_or_else(|| ClientError::BadUrl(url.to_owned()))?;
        Ok(Self {
            url: format!("http://{authority}"),
            authority: authority.to_owned(),
            token,
        })
    }

    /// The leaf running on `data_dir`, if one is: its `control.json` and
    /// token are there and its API answers `GET /api/status`.
    pub async fn find(data_dir: &Path) -> Option<ControlClient> {
        let control = read_small(&data_dir.join(CONTROL_FILE)).ok()?;
        let control: ControlFile = serde_json::from_slice(&control).ok()?;
        let token = match Token::load(&data_dir.join(TOKEN_FILE)) {
            Ok(token) => token,
            Err(error) => {
                tracing::warn!(%error, "a leaf seems to run, but its token can't be read");
                return None;
            }
        };
        let client = Self::new(&control.url, token).ok()?;
        match tokio::time::timeout(FIND_TIMEOUT, client.status()).await {
            Ok(Ok(_)) => Some(client),
            Ok(Err(error)) => {
                tracing::debug!(%error, url = %control.url, "control.json names no running leaf");
                None
            }
            Err(_) => None,
        }
    }

    /// The API's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The web UI's log-in URL (it carries the token).
    pub fn ui_url(&self) -> String {
        format!("{}/?token={}", self.url, self.token.as_str())
    }

    /// `GET /api/status`.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call(Method::GET, "/api/status", None::<&()>).await
    }

    /// `POST /api/searches`: starts a search.
    pub async fn start_search(&self, spec: &SearchSpec) -> Result<SearchView, ClientError> {
        self.call(Method::POST, "/api/searches", Some(spec)).await
    }

    /// `GET /api/searches/{id}`: a search's results so far.
    pub async fn search(&self, id: &str) -> Result<SearchView, ClientError> {
        self.call(
            Method::GET,
            &format!("/api/searches/{}", segment(id)),
            None::<&()>,
        )
        .await
    }

    /// `GET /api/searches/{id}/events`: a search's results as they come.
    pub async fn search_events(&self, id: &str) -> Result<SearchEvents, ClientError> {
        let path = format!("/api/searches/{}/events", segment(id));
        let response = timed(self.send(Method::GET, &path, None)).await?;
        let status = response.status();
        if !status.is_success() {
            let bytes = timed(read_limited(response.into_body())).await?;
            return Err(refusal(status, &bytes));
        }
        Ok(SearchEvents {
            body: response.into_body(),
            buffer: Vec::new(),
            ended: false,
        })
    }

    /// `DELETE /api/searches/{id}`: stops and forgets a search.
    pub async fn forget_search(&self, id: &str) -> Result<(), ClientError> {
        self.call_empty(Method::DELETE, &format!("/api/searches/{}", segment(id)))
            .await
    }

    /// `GET /api/downloads`: the queue.
    pub async fn downloads(&self) -> Result<Vec<DownloadView>, ClientError> {
        self.call(Method::GET, "/api/downloads", None::<&()>).await
    }

    /// `POST /api/downloads`: queues a download; true if added, false if
    /// that content was queued already.
    pub async fn add_download(
        &self,
        add: &AddDownload,
    ) -> Result<(DownloadView, bool), ClientError> {
        let (status, view) = self
            .call_with_status(Method::POST, "/api/downloads", Some(add))
            .await?;
        Ok((view, status == StatusCode::CREATED))
    }

    /// `GET /api/downloads/{id}`.
    pub async fn download(&self, id: &str) -> Result<DownloadView, ClientError> {
        self.call(Method::GET, &download_path(id, ""), None::<&()>)
            .await
    }

    /// `PATCH /api/downloads/{id}`: sets a download's priority.
    pub async fn set_priority(&self, id: &str, priority: i32) -> Result<DownloadView, ClientError> {
        self.call(
            Method::PATCH,
            &download_path(id, ""),
            Some(&PriorityPatch { priority }),
        )
        .await
    }

    /// `POST /api/downloads/{id}/pause`.
    pub async fn pause(&self, id: &str) -> Result<DownloadView, ClientError> {
        self.call(Method::POST, &download_path(id, "/pause"), None::<&()>)
            .await
    }

    /// `POST /api/downloads/{id}/resume`.
    pub async fn resume(&self, id: &str) -> Result<DownloadView, ClientError> {
        self.call(Method::POST, &download_path(id, "/resume"), None::<&()>)
            .await
    }

    /// `DELETE /api/downloads/{id}`: cancels a download (a finished file
    /// is kept).
    pub async fn cancel(&self, id: &str) -> Result<(), ClientError> {
        self.call_empty(Method::DELETE, &download_path(id, ""))
            .await
    }

    /// `GET /api/uploads`.
    pub async fn uploads(&self) -> Result<Vec<UploadView>, ClientError> {
        self.call(Method::GET, "/api/uploads", None::<&()>).await
    }

    /// `GET /api/shares`.
    pub async fn shares(&self) -> Result<SharesView, ClientError> {
        self.call(Method::GET, "/api/shares", None::<&()>).await
    }

    /// `POST /api/shares`: shares a folder.
    pub async fn add_share(&self, path: &str) -> Result<SharesView, ClientError> {
        let body = SharePath {
            path: path.to_owned(),
        };
        self.call(Method::POST, "/api/shares", Some(&body)).await
    }

    /// `POST /api/shares/remove`: stops sharing a folder.
    pub async fn remove_share(&self, path: &str) -> Result<SharesView, ClientError> {
        let body = SharePath {
            path: path.to_owned(),
        };
        self.call(Method::POST, "/api/shares/remove", Some(&body))
            .await
    }

    /// `POST /api/shares/rescan`.
    pub async fn rescan(&self) -> Result<SharesView, ClientError> {
        self.call(Method::POST, "/api/shares/rescan", None::<&()>)
            .await
    }

    /// `GET /api/settings`.
    pub async fn settings(&self) -> Result<Settings, ClientError> {
        self.call(Method::GET, "/api/settings", None::<&()>).await
    }

    /// `PATCH /api/settings`.
    pub async fn update_settings(&self, patch: &SettingsPatch) -> Result<Settings, ClientError> {
        self.call(Method::PATCH, "/api/settings", Some(patch)).await
    }

    /// `GET /api/openapi.json`: the API's description.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.call(Method::GET, "/api/openapi.json", None::<&()>)
            .await
    }

    /// Calls and decodes a JSON answer.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        Ok(self.call_with_status(method, path, body).await?.1)
    }

    /// Calls and decodes a JSON answer, with its status.
    async fn call_with_status<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<(StatusCode, T), ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Unexpected(e.to_string()))?;
        let (status, bytes) = timed(async {
            let response = self.send(method, path, body).await?;
            let status = response.status();
            Ok((status, read_limited(response.into_body()).await?))
        })
        .await?;
        if !status.is_success() {
            return Err(refusal(status, &bytes));
        }
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Unexpected(format!("{path}: {e}")))?;
        Ok((status, value))
    }

    /// Calls an endpoint that answers 204.
    async fn call_empty(&self, method: Method, path: &str) -> Result<(), ClientError> {
        let (status, bytes) = timed(async {
            let response = self.send(method, path, None).await?;
            let status = response.status();
            Ok((status, read_limited(response.into_body()).await?))
        })
        .await?;
        if !status.is_success() {
            return Err(refusal(status, &bytes));
        }
        Ok(())
    }

    /// Sends one request on a new connection; its answer's head.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|source| ClientError::Connect {
                url: self.url.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "control API client connection ended with an error");
            }
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.token.as_str()),
            )
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Unexpected(e.to_string()))?;
        Ok(sender.send_request(request).await?)
    }
}

/// A search's results as they come: one [`SearchView`] per event, the
/// last one with `done` set, then `None`.
#[derive(Debug)]
pub struct SearchEvents {
    body: Incoming,
    buffer: Vec<u8>,
    ended: bool,
}

impl SearchEvents {
    /// The next view, or `None` once the search is done (or the leaf
    /// closed the stream).
    pub async fn next(&mut self) -> Result<Option<SearchView>, ClientError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            if let Some(end) = find_event_end(&self.buffer) {
                let event: Vec<u8> = self.buffer.drain(..end.0).collect();
                self.buffer.drain(..end.1 - end.0);
                if let Some((name, data)) = parse_event(&event) {
                    let view: SearchView = serde_json::from_str(&data)
                        .map_err(|e| ClientError::Unexpected(format!("search event: {e}")))?;
                    if name == "done" || view.done {
                        self.ended = true;
                    }
                    return Ok(Some(view));
                }
                continue;
            }
            match self.body.frame().await {
                None => {
                    self.ended = true;
                    return Ok(None);
                }
                Some(Err(error)) => return Err(error.into()),
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        if self.buffer.len() + data.remaining() > MAX_EVENT {
                            return Err(ClientError::Unexpected(
                                "a search event over 16 MiB".into(),
                            ));
                        }
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buffer.extend_from_slice(chunk);
                            let len = chunk.len();
                            data.advance(len);
                        }
                    }
                }
            }
        }
    }

    /// The same, as a [`Stream`](futures_util::Stream).
    pub fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<SearchView, ClientError>> + Send {
        futures_util::stream::unfold(self, |mut events| async move {
            match events.next().await {
                Ok(Some(view)) => Some((Ok(view), events)),
                Ok(None) => None,
                Err(error) => {
                    events.ended = true;
                    Some((Err(error), events))
                }
            }
        })
    }
}

/// Where the first event in `buffer` ends, and where the next begins
/// (events end with a blank line: `\n\n` or `\r\n\r\n`).
fn find_event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// An event's name (`message` if unnamed) and data, or `None` for one
/// with no data (a comment, a keep-alive).
fn parse_event(event: &[u8]) -> Option<(String, String)> {
    let text = String::from_utf8_lossy(event);
    let mut name = "message".to_owned();
    let mut data: Option<String> = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => name = value.to_owned(),
            "data" => match &mut data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    data.map(|data| (name, data))
}

/// The path of a download, `/api/downloads/{id}{suffix}`.
fn download_path(id: &str, suffix: &str) -> String {
    format!("/api/downloads/{}{suffix}", segment(id))
}

/// `text` percent-encoded for one path segment.
fn segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The refusal in an error answer.
fn refusal(status: StatusCode, bytes: &[u8]) -> ClientError {
    let body = serde_json::from_slice::<ErrorBody>(bytes).unwrap_or_else(|_| ErrorBody {
        error: format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        ),
        field: None,
    });
    ClientError::Api {
        status: status.as_u16(),
        body,
    }
}

/// A body, up to [`MAX_ANSWER`] bytes.
async fn read_limited(body: Incoming) -> Result<Bytes, ClientError> {
    Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| ClientError::Unexpected(format!("reading the answer: {e}")))
}

/// `call` bounded by [`CALL_TIMEOUT`].
async fn timed<T>(call: impl Future<Output = Result<T, ClientError>>) -> Result<T, ClientError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or(Err(ClientError::Timeout))
}

/// A small file (`control.json`), read whole.
fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(64 * 1024)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let token = Token::parse(&"a".repeat(64)).unwrap();
        let client = ControlClient::new("http://127.0.0.1:6349/", token.clone()).unwrap();
        assert_eq!(client.url(), "http://127.0.0.1:6349");
        assert_eq!(
            client.ui_url(),
            format!("http://127.0.0.1:6349/?token={}", "a".repeat(64))
        );
        assert!(ControlClient::new("https://x:1", token.clone()).is_err());
        assert!(ControlClient::new("http://", token.clone()).is_err());
        assert!(ControlClient::new("http://x:1/api", token).is_err());
    }

    #[test]
    fn events_are_parsed() {
        let buffer = b"event: update\ndata: {\"a\":1}\n\n: ping\n\nrest";
        let (end, next) = find_event_end(buffer).unwrap();
        assert_eq!(
            parse_event(&buffer[..end]),
            Some(("update".to_owned(), "{\"a\":1}".to_owned()))
        );
        let (end2, _) = find_event_end(&buffer[next..]).unwrap();
        assert_eq!(parse_event(&buffer[next..next + end2]), None);
        assert_eq!(find_event_end(b"data: x\n"), None);
        assert_eq!(
            parse_event(b"data: a\r\ndata: b"),
            Some(("message".to_owned(), "a\nb".to_owned()))
        );
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(segment("ab-_~9"), "ab-_~9");
        assert_eq!(segment("../x?y"), "%2E%2E%2Fx%3Fy");
    }
}
