//! Which handler a request reaches. [`ROUTES`] is the one list of what the
//! server answers: the path matcher walks it (so 404 and 405 follow from
//! it), the handlers are chosen by its entries, and a test holds the
//! OpenAPI document to it, both ways.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::read_json;
use super::errors::{
    Refusal, api_error, bad_field, full, json, method_not_allowed, no_content, not_found, with_type,
};
use super::{Body, Server, assets, auth, sse, validate};
use crate::control::Control;
use crate::model::{AddDownload, PriorityPatch, SearchSpec, SettingsPatch, SharePath};

/// One route: a method and a path template (`{id}` is one segment,
/// a final `{path}` the rest of the path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// The HTTP method.
    pub method: &'static str,
    /// The path, as in the OpenAPI document.
    pub path: &'static str,
}

const fn route(method: &'static str, path: &'static str) -> RouteSpec {
    RouteSpec { method, path }
}

/// Every route the server answers.
pub const ROUTES: &[RouteSpec] = &[
    route("GET", "/"),
    route("GET", "/assets/{path}"),
    route("GET", "/api/openapi.json"),
    route("GET", "/api/status"),
    route("POST", "/api/searches"),
    route("GET", "/api/searches/{id}"),
    route("DELETE", "/api/searches/{id}"),
    route("GET", "/api/searches/{id}/events"),
    route("GET", "/api/downloads"),
    route("POST", "/api/downloads"),
    route("GET", "/api/downloads/{id}"),
    route("PATCH", "/api/downloads/{id}"),
    route("DELETE", "/api/downloads/{id}"),
    route("POST", "/api/downloads/{id}/pause"),
    route("POST", "/api/downloads/{id}/resume"),
    route("GET", "/api/uploads"),
    route("GET", "/api/shares"),
    route("POST", "/api/shares"),
    route("POST", "/api/shares/remove"),
    route("POST", "/api/shares/rescan"),
    route("GET", "/api/settings"),
    route("PATCH", "/api/settings"),
];

/// The OpenAPI document, as committed.
const OPENAPI: &str = include_str!("../../openapi.json");

/// A matched route and the value of its `{id}` or `{path}`, if it has one.
struct Matched<'a> {
    template: &'static str,
    param: Option<&'a str>,
}

/// Matches `path` against `template`; the parameter's value if it does.
fn match_template<'a>(template: &str, path: &'a str) -> Option<Option<&'a str>> {
    let mut param = None;
    let mut rest = path.strip_prefix('/')?;
    let template = template.strip_prefix('/')?;
    if template.is_empty() {
        return rest.is_empty().then_some(None);
    }
    let segments: Vec<&str> = template.split('/').collect();
    for (index, segment) in segments.iter().enumerate() {
        let last = index + 1 == segments.len();
        let (value, after) = match rest.split_once('/') {
            Some((value, after)) => (value, Some(after)),
            None => (rest, None),
        };
        if *segment == "{path}" && last {
            if rest.is_empty() {
                return None;
            }
            return Some(Some(rest));
        }
        if segment.starts_with('{') {
            if value.is_empty() {
                return None;
            }
            param = Some(value);
        } else if *segment != value {
            return None;
        }
        match (after, last) {
            (None, true) => return Some(param),
            (Some(after), false) => rest = after,
            _ => return None,
        }
    }
    None
}

/// Answers one request; never fails (every refusal is a response).
pub(crate) async fn handle<C: Control>(
    server: &Server<C>,
    request: Request<Incoming>,
) -> Response<Body> {
    if !auth::same_origin(request.headers()) {
        return auth::cross_site();
    }
    let path = request.uri().path().to_owned();
    let needs_token = path.starts_with("/api/") && path != "/api/openapi.json";
    if needs_token && !auth::authorized(&server.token, request.headers()) {
        return auth::unauthorized();
    }
    let mut allowed = Vec::new();
    let mut found = None;
    for spec in ROUTES {
        if let Some(param) = match_template(spec.path, &path) {
            allowed.push(spec.method);
            // HEAD is GET without the body, for the static files.
            let head_of_get = request.method() == Method::HEAD
                && spec.method == "GET"
                && !spec.path.starts_with("/api/");
            if request.method().as_str() == spec.method || head_of_get {
                found = Some(Matched {
                    template: spec.path,
                    param,
                });
            }
        }
    }
    let Some(matched) = found else {
        if allowed.is_empty() {
            return not_found();
        }
        return method_not_allowed(&allowed.join(", "));
    };
    let param = matched.param.map(str::to_owned);
    dispatch(server, matched.template, param, request).await
}

/// The handler for `template` (with its parameter).
async fn dispatch<C: Control>(
    server: &Server<C>,
    template: &'static str,
    param: Option<String>,
    request: Request<Incoming>,
) -> Response<Body> {
    let control = &*server.control;
    let method = request.method().clone();
    let id = param.unwrap_or_default();
    // Ids are checked before the daemon sees them.
    if template.contains("/searches/{id}") && !validate::is_search_id(&id) {
        return bad_field("id", "not a search id");
    }
    if template.contains("/downloads/{id}") && !validate::is_content_id(&id) {
        return bad_field("id", "not a content id (64 hex characters)");
    }
    match (method, template) {
        (_, "/") => assets::index(&server.token, &request),
        (_, "/assets/{path}") => assets::asset(&id),
        (Method::GET, "/api/openapi.json") => {
            with_type(StatusCode::OK, "application/json", full(OPENAPI))
        }
        (Method::GET, "/api/status") => json(StatusCode::OK, &control.status().await),
        (Method::POST, "/api/searches") => {
            let spec: SearchSpec = match read_json(request, server.limits.body_timeout).await {
                Ok(spec) => spec,
                Err(refusal) => return refusal.into_response(),
            };
            if let Err(refusal) = validate::search(&spec) {
                return api_error(&refusal);
            }
            match control.start_search(spec).await {
                Ok(view) => json(StatusCode::CREATED, &view),
                Err(refusal) => api_error(&refusal),
            }
        }
        (Method::GET, "/api/searches/{id}") => match control.watch_search(&id) {
            Some(updates) => json(StatusCode::OK, &*updates.borrow()),
            None => no_such_search(),
        },
        (Method::GET, "/api/searches/{id}/events") => match control.watch_search(&id) {
            Some(updates) => sse::events(updates, server.shutdown.clone()),
            None => no_such_search(),
        },
        (Method::DELETE, "/api/searches/{id}") => {
            if control.forget_search(&id) {
                no_content()
            } else {
                no_such_search()
            }
        }
        (Method::GET, "/api/downloads") => json(StatusCode::OK, &control.downloads()),
        (Method::POST, "/api/downloads") => {
            let add: AddDownload = match read_json(request, server.limits.body_timeout).await {
                Ok(add) => add,
                Err(refusal) => return refusal.into_response(),
            };
            if let Err(refusal) = validate::add_download(&add) {
                return api_error(&refusal);
            }
            match control.add_download(add).await {
                Ok((view, true)) => json(StatusCode::CREATED, &view),
                Ok((view, false)) => json(StatusCode::OK, &view),
                Err(refusal) => api_error(&refusal),
            }
        }
        (Method::GET, "/api/downloads/{id}") => answer(control.download(&id)),
        (Method::PATCH, "/api/downloads/{id}") => {
            let patch: PriorityPatch = match read_json(request, server.limits.body_timeout).await {
                Ok(patch) => patch,
                Err(refusal) => return refusal.into_response(),
            };
            answer(control.set_priority(&id, patch.priority))
        }
        (Method::DELETE, "/api/downloads/{id}") => {
            if let Err(refusal) = keep_flag(request.uri().query()) {
                return refusal.into_response();
            }
            match control.cancel(&id).await {
                Ok(()) => no_content(),
                Err(refusal) => api_error(&refusal),
            }
        }
        (Method::POST, "/api/downloads/{id}/pause") => answer(control.pause(&id)),
        (Method::POST, "/api/downloads/{id}/resume") => answer(control.resume(&id)),
        (Method::GET, "/api/uploads") => json(StatusCode::OK, &control.uploads()),
        (Method::GET, "/api/shares") => json(StatusCode::OK, &control.shares()),
        (Method::POST, "/api/shares") | (Method::POST, "/api/shares/remove") => {
            let share: SharePath = match read_json(request, server.limits.body_timeout).await {
                Ok(share) => share,
                Err(refusal) => return refusal.into_response(),
            };
            if let Err(refusal) = validate::share_path(&share) {
                return api_error(&refusal);
            }
            let result = if template == "/api/shares" {
                control.add_share(share.path).await
            } else {
                control.remove_share(share.path).await
            };
            answer(result)
        }
        (Method::POST, "/api/shares/rescan") => json(StatusCode::ACCEPTED, &control.rescan().await),
        (Method::GET, "/api/settings") => json(StatusCode::OK, &control.settings()),
        (Method::PATCH, "/api/settings") => {
            let patch: SettingsPatch = match read_json(request, server.limits.body_timeout).await {
                Ok(patch) => patch,
                Err(refusal) => return refusal.into_response(),
            };
            if let Err(refusal) = validate::settings(&patch) {
                return api_error(&refusal);
            }
            answer(control.update_settings(patch).await)
        }
        (method, template) => {
            // A route in ROUTES without a handler: a bug, caught by the
            // test that requests every route.
            tracing::error!(%method, template, "control API: a route has no handler");
            super::errors::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "route has no handler",
                None,
            )
        }
    }
}

/// 200 with the value, or the refusal.
fn answer<T: serde::Serialize>(result: Result<T, crate::model::ApiError>) -> Response<Body> {
    match result {
        Ok(value) => json(StatusCode::OK, &value),
        Err(refusal) => api_error(&refusal),
    }
}

fn no_such_search() -> Response<Body> {
    super::errors::error(StatusCode::NOT_FOUND, "no such search (or forgotten)", None)
}

/// Checks `?keep=` (true or false) when given.
fn keep_flag(query: Option<&str>) -> Result<(), Refusal> {
    let keep = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("keep="));
    match keep {
        None | Some("true") | Some("false") => Ok(()),
        Some(_) => Err(Refusal::field("keep", "not true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        assert_eq!(match_template("/", "/"), Some(None));
        assert_eq!(match_template("/", "/x"), None);
        assert_eq!(match_template("/api/status", "/api/status"), Some(None));
        assert_eq!(match_template("/api/status", "/api/status/"), None);
        assert_eq!(match_template("/api/status", "/api/statusx"), None);
        assert_eq!(
            match_template("/api/searches/{id}", "/api/searches/ab"),
            Some(Some("ab"))
        );
        assert_eq!(match_template("/api/searches/{id}", "/api/searches/"), None);
        assert_eq!(
            match_template("/api/searches/{id}", "/api/searches/ab/events"),
            None
        );
        assert_eq!(
            match_template("/api/searches/{id}/events", "/api/searches/ab/events"),
            Some(Some("ab"))
        );
        assert_eq!(
            match_template("/assets/{path}", "/assets/js/app.js"),
            Some(Some("js/app.js"))
        );
        assert_eq!(match_template("/assets/{path}", "/assets/"), None);
        assert_eq!(match_template("/assets/{path}", "/assets"), None);
        assert_eq!(match_template("/api/shares", "//api/shares"), None);
    }

    #[test]
    fn keep() {
        assert!(keep_flag(None).is_ok());
        assert!(keep_flag(Some("keep=true")).is_ok());
        assert!(keep_flag(Some("x=1&keep=false")).is_ok());
        assert!(keep_flag(Some("keep=yes")).is_err());
    }
}
