//! Who may use the API: a client that shows the token (an
//! `Authorization: Bearer` header, or the `canopy_token` cookie a browser
//! got from the start-up URL `/?token=...`), and no request a page of
//! another site made (its `Origin` must be the origin it was sent to).
//!
//! The cookie is `HttpOnly` (no script reads it) and `SameSite=Strict`
//! (no other site's page sends it); the Origin check refuses what a
//! browser sends cross-site anyway, and a DNS-rebound name gets no cookie,
//! since cookies belong to the name the token was handed to.

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use super::Body;
use super::errors::{empty, error};
use super::token::Token;

/// The cookie's name.
pub(crate) const COOKIE: &str = "canopy_token";

/// Whether the request shows `token`, in a header or a cookie.
pub(crate) fn authorized(token: &Token, headers: &HeaderMap) -> bool {
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(|value| value.strip_prefix("Bearer "))
        .any(|offered| token.matches(offered.trim()));
    bearer || cookie_token(headers).any(|offered| token.matches(offered))
}

/// The values of every `canopy_token` cookie sent.
fn cookie_token(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// Whether the request's `Origin`, if any, is the origin it was sent to
/// (`http://` and its `Host`): a browser names the page's origin on every
/// request a page makes other than a plain same-origin GET.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST) else {
        return false;
    };
    match (origin.to_str(), host.to_str()) {
        (Ok(origin), Ok(host)) => origin
            .strip_prefix("http://")
            .is_some_and(|origin_host| origin_host.eq_ignore_ascii_case(host)),
        _ => false,
    }
}

/// 401 for a request without the token.
pub(crate) fn unauthorized() -> Response<Body> {
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong token: send `Authorization: Bearer <token>` with the token in \
         the data directory's control.token, or open the URL the leaf printed at start-up",
        None,
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// 403 for a request another site's page made.
pub(crate) fn cross_site() -> Response<Body> {
    error(
        StatusCode::FORBIDDEN,
        "cross-origin request refused: the Origin header is not this server's",
        None,
    )
}

/// The token a `?token=` query carries, if any.
pub(crate) fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

/// 303 to `/`, setting the cookie to `token`.
pub(crate) fn log_in(token: &Token) -> Response<Body> {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Hex only: always a valid header value.
    if let Ok(cookie) = HeaderValue::from_str(&format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
        token.as_str()
    )) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_token_in_a_header_or_a_cookie() {
        let token = Token::parse(&"ab".repeat(32)).unwrap();
        let bearer: &'static str = format!("Bearer {}", "ab".repeat(32)).leak();
        let cookie: &'static str = format!("theme=dark; canopy_token={}", "ab".repeat(32)).leak();
        assert!(authorized(&token, &headers(&[("authorization", bearer)])));
        assert!(authorized(&token, &headers(&[("cookie", cookie)])));
        assert!(!authorized(&token, &headers(&[])));
        assert!(!authorized(
            &token,
            &headers(&[
                ("authorization", "Bearer abab"),
                ("cookie", "canopy_token=x")
            ])
        ));
        assert!(!authorized(
            &token,
            &headers(&[("cookie", "xcanopy_token=x")])
        ));
    }

    #[test]
    fn origins() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:6347")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:6347"),
            ("origin", "http://127.0.0.1:6347")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:6347"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:6347"),
            ("origin", "null")
        ])));
        assert!(!same_origin(&headers(&[(
            "origin",
            "http://127.0.0.1:6347"
        )])));
    }

    #[test]
    fn the_query_token() {
        assert_eq!(query_token(Some("a=1&token=xyz")), Some("xyz"));
        assert_eq!(query_token(Some("a=1")), None);
        assert_eq!(query_token(None), None);
    }
}
