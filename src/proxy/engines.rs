//! Engine management routes: `/engines/ps`, `/engines/unload`, `/engines/status`.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use http::{Response, StatusCode};
use hyper::body::Incoming;

use super::http::{json, parse_json, read_body, ApiError, Body};
use super::App;
use crate::api::native;
use crate::engines::llamacpp;
use crate::scheduler::Selector;

pub async fn ps(app: &Arc<App>) -> Result<Response<Body>, ApiError> {
    let runners: Vec<native::RunnerStatus> = app
        .scheduler
        .snapshot()
        .await
        .into_iter()
        .map(|r| native::RunnerStatus {
            backend_name: llamacpp::NAME,
            model_name: r.model_name,
            mode: r.mode.as_str(),
            last_used: r
                .last_used
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64),
            in_use: r.in_use,
            loading: r.loading,
            keep_alive: r.keep_alive.to_string(),
            pid: r.endpoint.map(|e| e.pid),
            port: r.endpoint.map(|e| e.port),
        })
        .collect();
    Ok(json(StatusCode::OK, &runners))
}

/// `POST /engines/unload {"all":true}` or `{"models":[...]}`: stops idle runners and answers how many.
pub async fn unload(
    app: &Arc<App>,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (_, body) = read_body(req, app.config.server.max_body_bytes).await?;
    let request: native::UnloadRequest = if body.is_empty() {
        Default::default()
    } else {
        parse_json(&body)?
    };
    if let Some(b) = request
        .backend
        .as_deref()
        .filter(|b| !b.is_empty() && *b != llamacpp::NAME)
    {
        return Err(ApiError::bad_request(format!("unknown backend {b:?}")));
    }
    let selector = if request.all {
        Selector::All
    } else {
        let mut ids = Vec::new();
        for m in &request.models {
            ids.push(app.resolve(m).map_err(ApiError::from)?.id);
        }
        Selector::Models(ids)
    };
    let n = app.scheduler.unload(selector, false).await;
    Ok(json(
        StatusCode::OK,
        &native::UnloadResponse {
            unloaded_runners: n,
        },
    ))
}

pub async fn status(app: &Arc<App>) -> Result<Response<Body>, ApiError> {
    let mut s = native::EngineStatus::new();
    let line = match &app.llama_binary {
        Ok(p) => format!("Running: {}", p.display()),
        Err(e) => format!("Not Installed: {e}"),
    };
    s.insert(llamacpp::NAME, line);
    Ok(json(StatusCode::OK, &s))
}
