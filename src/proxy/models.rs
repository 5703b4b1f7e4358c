//! Model handlers: DMR's `/models` API (list, inspect, delete, create from a local GGUF with NDJSON progress) and
//! OpenAI's `/v1/models`. Store work runs on the blocking pool; nothing here touches files directly.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

use super::http::{json, parse_json, query_flag, read_body, ApiError, Body};
use super::App;
use crate::api::{native, openai, ErrorKind};
use crate::scheduler::Selector;
use crate::store::{self, name, Model, StoreError};

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let kind = match &e {
            StoreError::NotFound(_) => ErrorKind::NotFound,
            StoreError::BadName(_) => ErrorKind::BadRequest,
            StoreError::Conflict(_) => ErrorKind::Conflict,
            _ => ErrorKind::Internal,
        };
        ApiError::new(kind, e.to_string())
    }
}

/// Runs a store operation on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&store::Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || f(&app.store))
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("store task failed: {e}")))?
        .map_err(ApiError::from)
}

fn native_model(m: Model) -> native::Model<store::ModelConfig> {
    native::Model {
        id: m.id,
        tags: m.tags,
        created: m.created,
        config: m.config,
    }
}

fn openai_model(m: &Model) -> openai::ModelObject {
    openai::ModelObject::new(
        m.tags.first().cloned().unwrap_or_else(|| m.id.clone()),
        m.created,
    )
}

pub async fn list_native(app: &Arc<App>) -> Result<Response<Body>, ApiError> {
    let models = blocking(app, |s| s.list()).await?;
    Ok(json(
        StatusCode::OK,
        &models.into_iter().map(native_model).collect::<Vec<_>>(),
    ))
}

pub async fn get_native(app: &Arc<App>, reference: String) -> Result<Response<Body>, ApiError> {
    let model = blocking(app, move |s| s.get(&reference)).await?;
    Ok(json(StatusCode::OK, &native_model(model)))
}

pub async fn list_openai(app: &Arc<App>) -> Result<Response<Body>, ApiError> {
    let models = blocking(app, |s| s.list()).await?;
    Ok(json(
        StatusCode::OK,
        &openai::ModelList::new(models.iter().map(openai_model).collect()),
    ))
}

pub async fn get_openai(app: &Arc<App>, reference: String) -> Result<Response<Body>, ApiError> {
    let r = reference.clone();
    let model = blocking(app, move |s| s.get(&r))
        .await
        .map_err(|e| match e.kind {
            ErrorKind::NotFound => ApiError::not_found(format!("model {reference:?} not found")),
            _ => e,
        })?;
    Ok(json(StatusCode::OK, &openai_model(&model)))
}

/// `DELETE /models/{name}`: 409 while a runner of the model is loaded, unless `?force=true`, which stops it first.
pub async fn delete(
    app: &Arc<App>,
    reference: String,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let force = query_flag(query, "force");
    let r = reference.clone();
    let model = blocking(app, move |s| s.get(&r)).await?;
    // Deleting one of several tags only untags: the weights (and any runner) stay.
    let untag_only =
        model.tags.len() > 1 && name::normalize(&reference).is_ok_and(|t| model.tags.contains(&t));
    if !untag_only {
        let loaded = app
            .scheduler
            .snapshot()
            .await
            .iter()
            .any(|r| r.model_id == model.id);
        if loaded && !force {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!("model {reference} is loaded; unload it first (POST /engines/unload) or add ?force=true"),
            ));
        }
        if loaded {
            app.scheduler
                .unload(Selector::Models(vec![model.id.clone()]), true)
                .await;
        }
    }
    let removed = blocking(app, move |s| s.delete(&reference, force)).await?;
    let removed: Vec<native::Removed> = removed
        .into_iter()
        .map(|r| match r {
            store::Removed::Untagged(t) => native::Removed::Untagged(t),
            store::Removed::Deleted(id) => native::Removed::Deleted(id),
        })
        .collect();
    Ok(json(StatusCode::OK, &removed))
}

/// `POST /models/create {"from": "/abs/path", "name"?: "ai/x"}`: imports a local GGUF file, safetensors or
/// diffusers directory, or `.dduf` file, streaming DMR's
/// NDJSON progress lines. Registry references are refused with 501 until registries are supported.
pub async fn create(
    app: &Arc<App>,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let wants_json = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    let (_, body) = read_body(req, app.config().server.max_body_bytes).await?;
    let create: native::CreateRequest = parse_json(&body)?;
    let from = create.from.trim();
    if from.is_empty() {
        return Err(ApiError::bad_request("\"from\" is empty"));
    }
    let looks_like_path = from.starts_with('/') || from.starts_with('.') || from.ends_with(".gguf");
    if !looks_like_path {
        name::parse_reference(from)
            .map_err(|e| ApiError::bad_request(format!("invalid reference {from:?}: {e}")))?;
        return Err(ApiError::new(
            ErrorKind::NotImplemented,
            format!("pulling {from} from a registry is not supported yet; pass the absolute path of a local GGUF file"),
        ));
    }
    let src = PathBuf::from(from);
    if !src.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "{from:?} is not an absolute path"
        )));
    }
    if !src.exists() {
        return Err(ApiError::not_found(format!(
            "no file or directory at {from}"
        )));
    }
    let probe = src.clone();
    tokio::task::spawn_blocking(move || store::format::detect(&probe))
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("store task failed: {e}")))?
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let tag = match &create.name {
        Some(n) => name::normalize(n),
        None => name::normalize(&default_name(&src)),
    }
    .map_err(|e| ApiError::bad_request(format!("invalid model name: {e}")))?;

    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        let mut report = |p: store::ImportProgress| {
            let id = p
                .digest
                .clone()
                .unwrap_or_else(|| src.display().to_string());
            let _ =
                tx.blocking_send(native::ProgressLine::progress(p.total, id, p.current).to_line());
        };
        let line = match app.store.import(&src, &tag, &mut report) {
            Ok(model) => {
                tracing::info!(model = tag, id = model.id, "model imported");
                native::ProgressLine::success()
            }
            Err(e) => {
                tracing::warn!(model = tag, error = %e, "import failed");
                native::ProgressLine::error(&e.to_string())
            }
        };
        let _ = tx.blocking_send(line.to_line());
    });
    let lines = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| {
            (
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(line))),
                rx,
            )
        })
    });
    let mut resp = Response::new(
        StreamBody::new(lines)
            .map_err(|never| match never {})
            .boxed(),
    );
    let ct = if wants_json {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    Ok(resp)
}

/// `ai/<file stem>`, lower-cased, with characters names may not hold replaced by `-`.
fn default_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!(
        "ai/{}",
        clean.trim_matches(|c: char| !c.is_ascii_alphanumeric())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_come_from_the_file_stem() {
        assert_eq!(
            default_name(Path::new("/m/SmolLM2-360M Q4.gguf")),
            "ai/smollm2-360m-q4"
        );
        assert_eq!(default_name(Path::new("/m/tiny.gguf")), "ai/tiny");
    }
}
