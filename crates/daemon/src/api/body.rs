//! JSON request bodies: the content type checked, the size bounded before
//! anything is read (by its `Content-Length`, then while reading a chunked
//! body), the read bounded in time, and a decoding error turned into a 400
//! naming the field at fault (its path, e.g. `extensions[2]`).

use std::time::Duration;

use http::{Request, StatusCode, header};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use super::MAX_BODY;
use super::errors::Refusal;

/// The request's body decoded as `T`, or the response refusing it.
pub(crate) async fn read_json<T: DeserializeOwned>(
    request: Request<Incoming>,
    timeout: Duration,
) -> Result<T, Refusal> {
    if !is_json(request.headers().get(header::CONTENT_TYPE)) {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON (Content-Type: application/json)",
        ));
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY as u64) {
        return Err(too_large());
    }
    let limited = Limited::new(request.into_body(), MAX_BODY);
    let bytes = match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => {
            return Err(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                "the body took too long to arrive",
            ));
        }
        Ok(Err(failure)) => {
            if failure.is::<http_body_util::LengthLimitError>() {
                return Err(too_large());
            }
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("the body could not be read: {failure}"),
            ));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    decode(&bytes)
}

/// `bytes` decoded as `T`, or a 400 naming the field at fault.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Refusal> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "the body is empty; a JSON object is expected",
        ));
    }
    // Serde would take an array for a struct, field by field: only an
    // object is a request.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        ));
    }
    let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| malformed(&e))?;
    integral_floats_to_integers(&mut value);
    serde_path_to_error::deserialize(value).map_err(|failure| {
        let path = failure.path().to_string();
        let message = failure.inner().to_string();
        let field = if path == "." {
            // Missing and unknown fields are reported on the object that
            // lacks or has them: name the field itself.
            named_field(&message)
        } else {
            Some(path)
        };
        match field {
            Some(field) => Refusal::field(&field, &message),
            None => Refusal::new(StatusCode::BAD_REQUEST, message),
        }
    })
}

/// Makes `68.0` the integer `68`, everywhere in `value`: JSON (and JSON
/// Schema's `integer`) does not tell them apart, but serde would refuse
/// `68.0` for an integer field. Floats for float fields take integers.
fn integral_floats_to_integers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(number) if number.is_f64() => {
            let float = number.as_f64().unwrap_or(f64::NAN);
            #[allow(clippy::cast_possible_truncation)] // checked: integral and in range
            if float.fract() == 0.0 && float.abs() < 9.0e15 {
                let integer = float as i64;
                *number = serde_json::Number::from(integer);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        serde_json::Value::Object(fields) => {
            fields.values_mut().for_each(integral_floats_to_integers);
        }
        _ => {}
    }
}

fn malformed(failure: &serde_json::Error) -> Refusal {
    Refusal::new(
        StatusCode::BAD_REQUEST,
        format!("malformed JSON: {failure}"),
    )
}

/// The field a serde message names: "missing field `path`" -> `path`.
fn named_field(message: &str) -> Option<String> {
    ["missing field `", "unknown field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next())
        .map(str::to_owned)
}

fn too_large() -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is over {} KiB", MAX_BODY / 1024),
    )
}

/// Whether a `Content-Type` says JSON (`application/json`, any case, any
/// parameters).
fn is_json(value: Option<&http::HeaderValue>) -> bool {
    value
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{ErrorBody, SearchSpec, SharePath};

    async fn refusal<T: DeserializeOwned + std::fmt::Debug>(json: &str) -> (u16, ErrorBody) {
        let response = decode::<T>(json.as_bytes()).unwrap_err().into_response();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_wrong_type_names_its_field() {
        let (status, body) = refusal::<SearchSpec>(r#"{"query":"a","max_results":"many"}"#).await;
        assert_eq!(status, 400);
        assert_eq!(body.field.as_deref(), Some("max_results"));
        let (status, body) = refusal::<SearchSpec>(r#"{"query":"a","max_results":2.5}"#).await;
        assert_eq!(status, 400);
        assert_eq!(body.field.as_deref(), Some("max_results"));
        let (_, body) = refusal::<SearchSpec>(r#"{"extensions":["a",3]}"#).await;
        assert_eq!(body.field.as_deref(), Some("extensions[1]"));
    }

    #[test]
    fn integral_floats_are_integers() {
        let spec: SearchSpec =
            decode(br#"{"query":"a","max_results":68.0,"timeout_secs":2}"#).unwrap();
        assert_eq!(spec.max_results, Some(68));
        assert_eq!(spec.timeout_secs, Some(2.0));
    }

    #[tokio::test]
    async fn unknown_and_missing_fields_are_named() {
        let (_, body) = refusal::<SearchSpec>(r#"{"query":"a","colour":1}"#).await;
        assert_eq!(body.field.as_deref(), Some("colour"));
        let (_, body) = refusal::<SharePath>("{}").await;
        assert_eq!(body.field.as_deref(), Some("path"));
    }

    #[tokio::test]
    async fn malformed_json_and_trailing_bytes_are_refused() {
        let (status, body) = refusal::<SearchSpec>(r#"{"query":"#).await;
        assert_eq!(status, 400);
        assert!(body.error.contains("malformed"), "{}", body.error);
        let (status, _) = refusal::<SearchSpec>(r#"{} {}"#).await;
        assert_eq!(status, 400);
        let (status, _) = refusal::<SearchSpec>("  ").await;
        assert_eq!(status, 400);
    }

    #[test]
    fn json_content_types() {
        let json = |v: &'static str| is_json(Some(&http::HeaderValue::from_static(v)));
        assert!(json("application/json"));
        assert!(json("Application/JSON; charset=utf-8"));
        assert!(!json("text/plain"));
        assert!(!json("application/jsonx"));
        assert!(!is_json(None));
    }
}
