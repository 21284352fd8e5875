//! The web UI's files, embedded in the binary from `crates/daemon/web/`:
//! `index.html` at `/` (to a browser holding the token's cookie; others
//! get a page saying how to log in), everything under `web/assets/` at
//! `/assets/...`, with its content type. None of them needs the token:
//! the UI gets its data from the API, which does.

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::errors::{full, not_found, with_type};
use super::token::Token;
use super::{Body, auth};

/// The files under `crates/daemon/web/`.
#[derive(Debug, rust_embed::Embed)]
#[folder = "web/"]
struct Web;

/// What `/` answers to a browser without the cookie.
const LOG_IN_PAGE: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Canopy leaf</title></head><body>\
<h1>Canopy leaf</h1>\
<p>To open the web UI, open the URL the leaf printed when it started \
(<code>http://&hellip;/?token=&hellip;</code>), or run <code>canopy status</code> \
to see it again.</p></body></html>\n";

/// The page's policy: its own scripts and styles only, never framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// `/`: logs in with `?token=`, else the UI or the log-in page.
pub(crate) fn index(token: &Token, request: &Request<Incoming>) -> Response<Body> {
    if let Some(offered) = auth::query_token(request.uri().query()) {
        if token.matches(offered) {
            return auth::log_in(token);
        }
        return page(StatusCode::UNAUTHORIZED, LOG_IN_PAGE.as_bytes().to_vec());
    }
    if !auth::authorized(token, request.headers()) {
        return page(StatusCode::OK, LOG_IN_PAGE.as_bytes().to_vec());
    }
    match Web::get("index.html") {
        Some(file) => page(StatusCode::OK, file.data.into_owned()),
        None => not_found(),
    }
}

/// The URL paths of the web UI's files (`/assets/...`), in no order.
pub fn asset_paths() -> Vec<String> {
    Web::iter()
        .filter_map(|file| {
            file.strip_prefix("assets/")
                .map(|path| format!("/assets/{path}"))
        })
        .collect()
}

/// `/assets/{path}`.
pub(crate) fn asset(path: &str) -> Response<Body> {
    if path
        .split('/')
        .any(|segment| segment.is_empty() || segment.starts_with('.'))
    {
        return not_found();
    }
    match Web::get(&format!("assets/{path}")) {
        Some(file) => {
            let mut response = with_type(
                StatusCode::OK,
                content_type(path),
                full(file.data.into_owned()),
            );
            // Revalidate each time: the files change with the binary.
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        None => not_found(),
    }
}

fn page(status: StatusCode, html: Vec<u8>) -> Response<Body> {
    let mut response = with_type(status, "text/html; charset=utf-8", full(html));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The content type of a file, by its extension.
fn content_type(path: &str) -> &'static str {
    let extension = path
        .rsplit_once('.')
        .map(|(_, extension)| extension.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("x/style.CSS"), "text/css; charset=utf-8");
        assert_eq!(content_type("logo.svg"), "image/svg+xml");
        assert_eq!(content_type("README"), "application/octet-stream");
    }

    #[test]
    fn the_ui_is_embedded() {
        assert!(Web::get("index.html").is_some());
    }
}
