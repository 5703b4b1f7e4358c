//! Ollama's model management beyond listing: `POST /api/copy` (a new tag), `HEAD`/`POST /api/blobs/sha256:…`
//! (uploads, streamed into the store under `[server] max_blob_bytes`), `POST /api/create` (a GGUF model from an
//! uploaded blob, or one derived from a stored model with parameters, a system prompt, a template, a license) and
//! `POST /api/push` (the native push, its progress in Ollama's lines). No server path is ever taken from a request:
//! `files` name uploaded blobs by digest, `from` names a stored model.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Response, StatusCode};
use hyper::body::Incoming;

use super::super::http::{full, ndjson, parse_json, read_body, ApiError, Body};
use super::super::models::{blocking, prepare_push, start_push, PushEvent};
use super::super::routes::Ctx;
use super::super::{App, Caller};
use crate::api::ollama::{self, CreateIn, Progress};
use crate::api::ErrorKind;
use crate::store::{name, Base, Recipe, StoreError};

/// A model name a request gives for a new model: normalised, and a tag (not a digest).
fn new_name(given: &str, what: &str) -> Result<String, ApiError> {
    if given.trim().is_empty() {
        return Err(ApiError::bad_request(format!("\"{what}\" is required")));
    }
    name::normalize(given)
        .ok()
        .filter(|n| !n.contains('@'))
        .ok_or_else(|| ApiError::bad_request(format!("invalid {what} {given:?}: not a model name")))
}

/// `POST /api/copy {"source","destination"}` → 200 with an empty body, as Ollama; 404 unknown source, 400 bad
/// names.
pub async fn copy(
    app: &Arc<App>,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (_, body) = read_body(req, app.body_limits()).await?;
    let input: ollama::CopyIn = parse_json(&body)?;
    if input.source.trim().is_empty() {
        return Err(ApiError::bad_request("\"source\" is required"));
    }
    let destination = new_name(&input.destination, "destination")?;
    let source = input.source.clone();
    blocking(app, move |s| s.tag(&source, &destination))
        .await
        .map_err(|e| match e.kind {
            ErrorKind::NotFound => {
                ApiError::not_found(format!("model '{}' not found", input.source))
            }
            _ => e,
        })?;
    Ok(Response::new(full(Bytes::new())))
}

/// The `sha256:<64 hex>` of `/api/blobs/{digest}`; anything else is a 400.
fn blob_digest(ctx: &Ctx) -> Result<String, ApiError> {
    let given = ctx.param("digest").unwrap_or_default();
    let hex = given.strip_prefix("sha256:").unwrap_or("");
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(given.to_string())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid digest {given:?}: expected sha256:<64 lower-case hex>"
        )))
    }
}

/// `HEAD /api/blobs/sha256:…` → 200 if the store has the blob (uploaded, or a layer of a model), else 404.
pub async fn blob_exists(app: &Arc<App>, ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let digest = blob_digest(ctx)?;
    let d = digest.clone();
    if blocking(app, move |s| Ok(s.has_upload(&d))).await? {
        Ok(Response::new(full(Bytes::new())))
    } else {
        Err(ApiError::not_found(format!("blob {digest} not found")))
    }
}

/// `POST /api/blobs/sha256:…` with the blob as the body: streamed into the store (never held in memory), at most
/// `[server] max_blob_bytes`, kept only if it hashes to the digest named → 201; 200 if the store has it already;
/// 400 a bad digest or one the bytes do not have (nothing kept); 413 past the cap.
pub async fn blob_upload(
    app: &Arc<App>,
    ctx: &Ctx,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let digest = blob_digest(ctx).map_err(ApiError::body_unread)?;
    let cap = app.config().server.max_blob_bytes as u64;
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap) {
        return Err(too_large(cap).body_unread());
    }
    let d = digest.clone();
    if blocking(app, move |s| Ok(s.has_upload(&d))).await? {
        let mut body = req.into_body();
        if super::super::http::drain(&mut body, 1 << 30).await {
            return Ok(Response::new(full(Bytes::new())));
        }
        let mut resp = Response::new(full(Bytes::new()));
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        return Ok(resp);
    }
    let stream = http_body_util::BodyExt::into_data_stream(req.into_body())
        .map(|r| r.map_err(std::io::Error::other));
    let mut reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let app2 = app.clone();
    let d = digest.clone();
    let stored = tokio::task::spawn_blocking(move || app2.store.upload(&d, &mut reader, cap))
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("store task failed: {e}")))?;
    match stored {
        Ok(_) => {
            tracing::info!(digest, "blob uploaded");
            let mut resp = Response::new(full(Bytes::new()));
            *resp.status_mut() = StatusCode::CREATED;
            Ok(resp)
        }
        Err(StoreError::DigestMismatch { actual, .. }) => Err(ApiError::bad_request(format!(
            "digest mismatch: the body hashes to {actual}, not {digest}"
        ))),
        Err(StoreError::TooLarge { limit }) => Err(too_large(limit).body_unread()),
        Err(StoreError::Io { source, .. }) if source.kind() != std::io::ErrorKind::StorageFull => {
            Err(ApiError::bad_request(format!("reading the blob: {source}")))
        }
        Err(e) => Err(e.into()),
    }
}

fn too_large(cap: u64) -> ApiError {
    ApiError::new(
        ErrorKind::PayloadTooLarge,
        format!("the blob is larger than [server] max_blob_bytes ({cap} bytes)"),
    )
}

/// An Ollama (Go `text/template`) template: llama-server runs Jinja chat templates only.
fn is_go_template(t: &str) -> bool {
    [
        ".Prompt",
        ".System",
        ".Messages",
        ".Response",
        ".Tools",
        "{{ .",
        "{{- .",
    ]
    .iter()
    .any(|m| t.contains(m))
}

/// A create, checked before anything is written: the new model's name, what it is made from, and what changes.
#[derive(Debug)]
struct Plan {
    model: String,
    from: Source,
    recipe: Recipe,
}

/// What a created model is made from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// An uploaded GGUF blob (`files`), by digest.
    Blob(String),
    /// A stored model (`from`).
    Model(String),
}

fn plan(input: &CreateIn) -> Result<Plan, ApiError> {
    let model = input
        .model
        .as_deref()
        .or(input.name.as_deref())
        .unwrap_or_default();
    let model = new_name(model, "model")?;
    let refuse = |what: &str| {
        Err(ApiError::bad_request(format!(
            "{what} is not supported here"
        )))
    };
    if input.modelfile.is_some() && input.files.is_empty() && input.from.is_none() {
        return Err(ApiError::bad_request(
            "\"modelfile\" is not supported: send \"from\" or \"files\" (as Ollama clients since 0.5.5 do)",
        ));
    }
    if input.quantize.is_some() {
        return refuse("\"quantize\" (quantising a model)");
    }
    if !input.adapters.is_empty() {
        return refuse("\"adapters\" (LoRA adapters)");
    }
    if !input.messages.is_empty() {
        return refuse("\"messages\" (a packaged conversation)");
    }
    let from = match (input.files.iter().next(), input.files.len(), &input.from) {
        (None, _, None) => return Err(ApiError::bad_request("\"from\" or \"files\" is required")),
        (None, _, Some(m)) => Source::Model(m.clone()),
        (Some(_), _, Some(_)) => {
            return Err(ApiError::bad_request(
                "give \"from\" or \"files\", not both",
            ))
        }
        (Some((file, digest)), 1, None) => {
            if !file.to_ascii_lowercase().ends_with(".gguf") {
                return Err(ApiError::bad_request(format!(
                    "files: {file:?} is not a .gguf file (only GGUF models can be created from files)"
                )));
            }
            Source::Blob(digest.clone())
        }
        (Some(_), _, None) => {
            return Err(ApiError::bad_request(
                "files: give one .gguf file (safetensors models cannot be created from files here)",
            ))
        }
    };
    if input.template.as_deref().is_some_and(is_go_template) {
        return Err(ApiError::bad_request(
            "template: this is an Ollama (Go) template; the engine runs Jinja chat templates (as in a GGUF's \
             tokenizer.chat_template)",
        ));
    }
    let recipe = Recipe {
        context_size: input.num_ctx().map_err(ApiError::bad_request)?,
        system: input.system.clone(),
        options: input.options().map_err(ApiError::bad_request)?,
        chat_template: input.template.clone().filter(|t| !t.is_empty()),
        license: input.license.as_ref().map(ollama::Input::joined),
    };
    Ok(Plan {
        model,
        from,
        recipe,
    })
}

/// `POST /api/create`: a new GGUF model from an uploaded blob (`files: {"x.gguf": "sha256:…"}`) or from a stored
/// model (`from`), with `parameters` (`num_ctx` → its context size; the rest → default options of its requests),
/// `system`, `template` (Jinja: its chat template) and `license`. The model is made before the answer (it is
/// quick: the weights are linked, not copied), so a failure is a 4xx; then Ollama's progress lines (`parsing
/// GGUF`, `using existing layer …`, `writing manifest`, `success`), or only the last with `"stream": false`.
pub async fn create(
    app: &Arc<App>,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (_, body) = read_body(req, app.body_limits()).await?;
    let input: CreateIn = parse_json(&body)?;
    let Plan {
        model,
        from,
        recipe,
    } = plan(&input)?;
    let (tag, base) = (model.clone(), from.clone());
    let made = blocking(app, move |s| {
        let base = match &base {
            Source::Blob(d) => Base::Blob(d),
            Source::Model(m) => Base::Model(m),
        };
        Ok(s.create_model(base, &tag, &recipe))
    })
    .await?
    .map_err(|e| match (e, &from) {
        (StoreError::NotFound(_), Source::Blob(d)) => ApiError::bad_request(format!(
            "blob {d} has not been uploaded: POST /api/blobs/{d} first"
        )),
        (StoreError::NotFound(_), Source::Model(m)) => {
            ApiError::not_found(format!("model '{m}' not found"))
        }
        (e @ (StoreError::Gguf { .. } | StoreError::Conflict(_)), _) => {
            ApiError::bad_request(e.to_string())
        }
        (e, _) => e.into(),
    })?;
    tracing::info!(model, id = made.id, "model created");
    let mut lines = vec![Progress::status(match from {
        Source::Blob(_) => "parsing GGUF",
        Source::Model(_) => "reading model metadata",
    })];
    // A model's files are its layers, then its config (`Store::commit_artifact`).
    let layers = made
        .files
        .split_last()
        .map_or(&[][..], |(_, layers)| layers);
    lines.extend(
        layers
            .iter()
            .map(|d| Progress::status(format!("using existing layer {d}"))),
    );
    lines.push(Progress::status("writing manifest"));
    lines.push(Progress::status("success"));
    Ok(progress_answer(
        lines.iter().map(Progress::to_line).collect(),
        input.stream,
    ))
}

/// Lines already made, as Ollama answers them: NDJSON, or with `"stream": false` the last one alone.
fn progress_answer(lines: Vec<Vec<u8>>, stream: Option<bool>) -> Response<Body> {
    if stream == Some(false) {
        return last_line(lines.into_iter().last().unwrap_or_default());
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for l in lines {
        let _ = tx.send(l);
    }
    ndjson(rx, "application/x-ndjson")
}

/// One line as a JSON answer.
pub(super) fn last_line(line: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(line)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// `POST /api/push {"model", "insecure"?, "stream"?}`: the native push (to the registry the name gives; a
/// loopback registry only for local callers), with Ollama's lines: `retrieving manifest`, `pushing <12 hex>` with
/// `digest`, `total`, `completed`, then `pushing manifest` and `success`, or `{"error"}`.
pub async fn push(
    app: &Arc<App>,
    req: http::Request<Incoming>,
    caller: Caller,
) -> Result<Response<Body>, ApiError> {
    let (_, body) = read_body(req, app.body_limits()).await?;
    let input: ollama::PullIn = parse_json(&body)?;
    let reference = input
        .model
        .or(input.name)
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("\"model\" is required"))?;
    name::normalize(&reference)
        .map_err(|e| ApiError::bad_request(format!("invalid model name {reference:?}: {e}")))?;
    let target = prepare_push(app, reference.clone(), caller)
        .await
        .map_err(|e| match e.kind {
            ErrorKind::NotFound => ApiError::not_found(format!("model '{reference}' not found")),
            _ => e,
        })?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let _ = tx.send(Progress::status("retrieving manifest").to_line());
    start_push(app, target, None, tx, |event| match event {
        PushEvent::Progress(p) => {
            Progress::layer("pushing", &p.layer, p.layer_size, p.layer_done).to_line()
        }
        PushEvent::Done(Ok(_)) => {
            let mut b = Progress::status("pushing manifest").to_line();
            b.extend(Progress::status("success").to_line());
            b
        }
        PushEvent::Done(Err(e)) => ollama::error_line(&e),
    });
    if input.stream == Some(false) {
        // The outcome is the last line.
        let mut last = Vec::new();
        while let Some(chunk) = rx.recv().await {
            last = chunk;
        }
        let text = String::from_utf8_lossy(&last).into_owned();
        let mut line = text.lines().last().unwrap_or_default().as_bytes().to_vec();
        line.push(b'\n');
        return Ok(last_line(line));
    }
    Ok(ndjson(rx, "application/x-ndjson"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(json: serde_json::Value) -> CreateIn {
        serde_json::from_value(json).expect("parses")
    }

    #[test]
    fn creates_are_planned_or_refused_before_anything_is_written() {
        let d = format!("sha256:{}", "a".repeat(64));
        let Plan {
            model,
            from,
            recipe,
        } = plan(&create(serde_json::json!({
            "model": "me/m", "files": {"m.gguf": d}, "parameters": {"num_ctx": 512, "temperature": 0.2, "stop": ["x"]},
            "system": "hi", "license": ["a", "b"]
        })))
        .expect("planned");
        assert_eq!(model, "me/m:latest");
        assert_eq!(from, Source::Blob(d.clone()));
        assert_eq!(recipe.context_size, Some(512));
        assert!(!recipe.options.contains_key("num_ctx"));
        assert_eq!(recipe.options["temperature"], serde_json::json!(0.2));
        assert_eq!(recipe.license.as_deref(), Some("a\nb"));
        for (bad, why) in [
            (
                serde_json::json!({"files": {"m.gguf": d}}),
                "\"model\" is required",
            ),
            (
                serde_json::json!({"model": "a/../b", "from": "x"}),
                "invalid model",
            ),
            (
                serde_json::json!({"model": "m"}),
                "\"from\" or \"files\" is required",
            ),
            (
                serde_json::json!({"model": "m", "from": "x", "files": {"m.gguf": d}}),
                "not both",
            ),
            (
                serde_json::json!({"model": "m", "files": {"m.bin": d}}),
                "not a .gguf",
            ),
            (
                serde_json::json!({"model": "m", "from": "x", "quantize": "q4_K_M"}),
                "quantize",
            ),
            (
                serde_json::json!({"model": "m", "from": "x", "adapters": {"a": d}}),
                "adapters",
            ),
            (
                serde_json::json!({"model": "m", "from": "x", "parameters": {"num_ctx": 0}}),
                "num_ctx",
            ),
            (
                serde_json::json!({"model": "m", "from": "x", "parameters": {"tempreature": 1}}),
                "tempreature",
            ),
            (
                serde_json::json!({"model": "m", "from": "x", "template": "{{ .Prompt }}"}),
                "Go",
            ),
            (
                serde_json::json!({"model": "m", "modelfile": "FROM x"}),
                "modelfile",
            ),
        ] {
            let e = plan(&create(bad.clone())).expect_err(&bad.to_string());
            assert_eq!(e.kind, ErrorKind::BadRequest, "{bad}");
            assert!(e.message.contains(why), "{bad}: {}", e.message);
        }
    }
}
