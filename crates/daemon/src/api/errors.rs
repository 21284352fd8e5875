//! Responses: JSON bodies, and the JSON error body every refusal carries
//! (`{"error": "...", "field": ...}`), so a client always learns what was
//! wrong and, for a bad field, which.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Empty, Full};
use serde::Serialize;

use super::Body;
use crate::model::{ApiError, ErrorBody};

/// A whole body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// No body.
pub(crate) fn empty() -> Body {
    Empty::new().boxed_unsync()
}

/// `value` as JSON with `status`.
pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => with_type(status, "application/json", full(bytes)),
        Err(failure) => {
            tracing::error!(%failure, "control API: a response did not serialise");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error", None)
        }
    }
}

/// 204, no body.
pub(crate) fn no_content() -> Response<Body> {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// A response with `status`, a content type and a body; never cached.
pub(crate) fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: Body,
) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// An error body with `status`.
pub(crate) fn error(status: StatusCode, message: &str, field: Option<&str>) -> Response<Body> {
    let body = ErrorBody {
        error: message.to_owned(),
        field: field.map(str::to_owned),
    };
    match serde_json::to_vec(&body) {
        Ok(bytes) => with_type(status, "application/json", full(bytes)),
        Err(_) => with_type(status, "application/json", full("{}")),
    }
}

/// A 400 naming `field`.
pub(crate) fn bad_field(field: &str, message: &str) -> Response<Body> {
    error(
        StatusCode::BAD_REQUEST,
        &format!("{field}: {message}"),
        Some(field),
    )
}

/// What the daemon refused, as its status and body.
pub(crate) fn api_error(refusal: &ApiError) -> Response<Body> {
    let status =
        StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, &refusal.body())
}

/// A request refused, before it becomes a response (small to pass
/// around in a `Result`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) field: Option<String>,
}

impl Refusal {
    /// A refusal with `status`, for the request as a whole.
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
        }
    }

    /// A 400 naming `field`.
    pub(crate) fn field(field: &str, message: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: format!("{field}: {message}"),
            field: Some(field.to_owned()),
        }
    }

    /// The response saying so.
    pub(crate) fn into_response(self) -> Response<Body> {
        error(self.status, &self.message, self.field.as_deref())
    }
}

/// 404 for a path no route has.
pub(crate) fn not_found() -> Response<Body> {
    error(StatusCode::NOT_FOUND, "no such resource", None)
}

/// 405, with the methods the path takes.
pub(crate) fn method_not_allowed(allowed: &str) -> Response<Body> {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed; this resource takes {allowed}"),
        None,
    );
    if let Ok(value) = HeaderValue::from_str(allowed) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}
