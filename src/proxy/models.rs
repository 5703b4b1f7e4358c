//! Model handlers: DMR's `/models` API (list, inspect, delete, create from a local GGUF with NDJSON progress) and
//! OpenAI's `/v1/models`. Store work runs on the blocking pool; nothing here touches files directly.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use http::{header, Response, StatusCode};
use hyper::body::Incoming;

use super::http::{json, ndjson, parse_json, query_flag, read_body, ApiError, Body};
use super::App;
use crate::api::{native, openai, ErrorKind};
use crate::scheduler::Selector;
use crate::store::{self, name, Model, StoreError};

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let kind = match &e {
            StoreError::NotFound(_) => ErrorKind::NotFound,
            StoreError::BadName(_) | StoreError::BadArchive(_) => ErrorKind::BadRequest,
            StoreError::Conflict(_) => ErrorKind::Conflict,
            // A manifest that disagrees with its blobs: the model cannot be exported or pushed as it is.
            StoreError::SizeMismatch { .. } => ErrorKind::Unprocessable,
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
        vision: m.vision(),
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

/// One entry per model (its first tag, as DMR lists them), and one per `[[models]] aliases` name it answers to.
pub async fn list_openai(app: &Arc<App>) -> Result<Response<Body>, ApiError> {
    let models = blocking(app, |s| s.list()).await?;
    let config = app.config();
    let entries = models.iter().flat_map(|m| {
        let aliases = m.tags.iter().skip(1).filter(|t| config.is_alias(t));
        std::iter::once(openai_model(m))
            .chain(aliases.map(|a| openai::ModelObject::new(a.clone(), m.created)))
    });
    Ok(json(
        StatusCode::OK,
        &openai::ModelList::new(entries.collect()),
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
    // Asked by a configured alias, it is listed under that alias: answer the same.
    let config = app.config();
    let alias = crate::store::name::normalize(&reference)
        .ok()
        .filter(|a| config.is_alias(a));
    Ok(json(
        StatusCode::OK,
        &match alias {
            Some(a) => openai::ModelObject::new(a, model.created),
            None => openai_model(&model),
        },
    ))
}

/// `DELETE /models/purge`: unloads every runner, then deletes every model (DMR's purge). Answers what
/// `DELETE /models/{name}` does, for every model.
pub async fn purge(app: &Arc<App>) -> Result<Response<Body>, ApiError> {
    app.scheduler.unload(Selector::All, true).await;
    let removed = blocking(app, |s| s.purge()).await?;
    tracing::info!(
        models = removed
            .iter()
            .filter(|r| matches!(r, store::Removed::Deleted(_)))
            .count(),
        "store purged"
    );
    Ok(json(StatusCode::OK, &removed_json(removed)))
}

/// `POST /models/{name}/repackage` (`{"target", "context_size"?}`): a new model with the same layers and the
/// config changed, under `target` → 201 `{"message","source","target"}`, as DMR answers.
pub async fn repackage(
    app: &Arc<App>,
    req: http::Request<Incoming>,
    reference: String,
) -> Result<Response<Body>, ApiError> {
    let (_, body) = read_body(req, app.body_limits()).await?;
    let request: native::RepackageRequest = parse_json(&body)?;
    let target = request
        .target
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("target is required"))?;
    let target = name::normalize(&target)
        .ok()
        .filter(|t| !t.contains('@'))
        .ok_or_else(|| {
            ApiError::bad_request(format!("invalid target {target:?}: not a model tag"))
        })?;
    if let Some(n) = request.context_size {
        if n == 0 || n > i32::MAX as u64 {
            return Err(ApiError::bad_request(format!(
                "context_size {n} is out of range (1 to {})",
                i32::MAX
            )));
        }
    }
    let (r, t) = (reference.clone(), target.clone());
    let model = blocking(app, move |s| s.repackage(&r, &t, request.context_size)).await?;
    tracing::info!(
        source = reference,
        target,
        id = model.id,
        "model repackaged"
    );
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({
            "message": format!("Model repackaged successfully as {target:?}"),
            "source": reference,
            "target": target,
        }),
    ))
}

fn removed_json(removed: Vec<store::Removed>) -> Vec<native::Removed> {
    removed
        .into_iter()
        .map(|r| match r {
            store::Removed::Untagged(t) => native::Removed::Untagged(t),
            store::Removed::Deleted(id) => native::Removed::Deleted(id),
        })
        .collect()
}

/// `DELETE /models/{name}`: stops the model's idle runners first (and those loading it as their draft), as `ollama
/// rm` does; 409 while one of them still has requests in flight (or is loading), unless `?force=true`, which stops
/// it regardless.
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
        // Its runners, and the runners that load it as their speculative draft.
        let runs = |rs: &[crate::scheduler::RunnerInfo]| rs.iter().any(|r| r.uses(&model.id));
        if runs(&app.scheduler.snapshot().await) {
            // Idle runners only, unless forced; `unload` waits until their processes are gone.
            app.scheduler
                .unload(Selector::Models(vec![model.id.clone()]), force)
                .await;
            if !force && runs(&app.scheduler.snapshot().await) {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!(
                        "model {reference} has requests in flight; retry when they end, or add ?force=true"
                    ),
                ));
            }
        }
    }
    let removed = blocking(app, move |s| s.delete(&reference, force)).await?;
    Ok(json(StatusCode::OK, &removed_json(removed)))
}

/// `POST /models/create {"from": REF}`: pulls a registry or Hugging Face reference; or, with `"from": "/abs/path"`
/// (and `license`, `chat_template`, `mmproj` paths), imports a GGUF file, safetensors or diffusers directory, or `.dduf` file
/// of the server's. Server paths are an operator's tool: only a local caller (loopback or the Unix socket) may name
/// them, and only below `[store] import_roots` (`store::sources`); anyone else uploads a model archive
/// (`POST /models/load`, which `dmr-supervisor package` uses). Streams DMR's NDJSON progress lines.
pub async fn create(
    app: &Arc<App>,
    req: http::Request<Incoming>,
    caller: super::Caller,
) -> Result<Response<Body>, ApiError> {
    let content_type = progress_type(req.headers());
    let (_, body) = read_body(req, app.body_limits()).await?;
    let create: native::CreateRequest = parse_json(&body)?;
    let from = create.from.trim();
    if from.is_empty() {
        return Err(ApiError::bad_request("\"from\" is empty"));
    }
    let looks_like_path = from.starts_with('/') || from.starts_with('.') || from.ends_with(".gguf");
    let extras_given =
        create.license.is_some() || create.chat_template.is_some() || create.mmproj.is_some();
    if !looks_like_path && !extras_given {
        return pull(
            app,
            from,
            create.bearer_token.as_deref(),
            content_type,
            caller,
        )
        .await;
    }
    if !caller.local {
        // Nothing about the path is looked at, so the answer says nothing about the server's files.
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            "importing a server path is only allowed from loopback or the Unix socket; upload the model instead \
             (dmr-supervisor package, or POST /models/load with a model archive)",
        ));
    }
    let config = app.config();
    let allowed = |given: &str| {
        store::sources::allowed(given, &config.store.import_roots, app.store.root()).map_err(|e| {
            let kind = match e {
                store::sources::SourceError::NotPlain(_) => ErrorKind::BadRequest,
                store::sources::SourceError::Missing(_) => ErrorKind::NotFound,
                _ => ErrorKind::Forbidden,
            };
            ApiError::new(kind, e.to_string())
        })
    };
    let src = allowed(from)?;
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

    let mut extras: [Option<PathBuf>; 3] = [None, None, None];
    let [license, template, mmproj] = &mut extras;
    for (given, slot, what) in [
        (&create.license, license, "license"),
        (&create.chat_template, template, "chat_template"),
        (&create.mmproj, mmproj, "mmproj"),
    ] {
        if let Some(p) = given {
            let path = allowed(p)?;
            if !path.is_file() {
                return Err(ApiError::bad_request(format!("{what} {p:?} is not a file")));
            }
            if what == "mmproj" {
                // Refused before the import streams, without echoing the file's bytes.
                let probe = path.clone();
                let gguf =
                    tokio::task::spawn_blocking(move || store::gguf::read_file(&probe).is_ok())
                        .await
                        .unwrap_or(false);
                if !gguf {
                    return Err(ApiError::bad_request(format!(
                        "mmproj {p:?} is not a GGUF file (a multimodal projector is one)"
                    )));
                }
            }
            *slot = Some(path);
        }
    }
    let extras_given = extras.iter().any(Option::is_some);
    if extras_given && src.is_dir() {
        return Err(ApiError::bad_request(
            "a license, chat template or mmproj can only be packaged with a GGUF file",
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        let mut report = |p: store::ImportProgress| {
            let id = p
                .digest
                .clone()
                .unwrap_or_else(|| src.display().to_string());
            let _ = tx.send(native::ProgressLine::progress(p.total, id, p.current).to_line());
        };
        let imported = if extras_given {
            let [license, chat_template, mmproj] = &extras;
            let extras = store::GgufExtras {
                license: license.as_deref(),
                chat_template: chat_template.as_deref(),
                mmproj: mmproj.as_deref(),
            };
            app.store.package_gguf(&src, &tag, extras, &mut report)
        } else {
            app.store.import(&src, &tag, &mut report)
        };
        let line = match imported {
            Ok(model) => {
                tracing::info!(model = tag, id = model.id, "model imported");
                native::ProgressLine::success()
            }
            Err(e) => {
                tracing::warn!(model = tag, error = %e, "import failed");
                native::ProgressLine::error(&app.store.redact(&e.to_string()))
            }
        };
        let _ = tx.send(line.to_line());
    });
    Ok(ndjson(rx, content_type))
}

/// DMR's progress streams are `application/json` when the request accepts it, else `text/plain` (both NDJSON).
fn progress_type(headers: &http::HeaderMap) -> &'static str {
    let json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    if json {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    }
}

pub use crate::registry::pull::{Pull, PullEvent};

/// [`Pull::prepare`] with the app's registries and store; its failures are the caller's HTTP statuses.
pub async fn prepare_pull(
    app: &App,
    from: &str,
    bearer: Option<&str>,
    caller: super::Caller,
) -> Result<Pull, ApiError> {
    app.registries
        .check_caller(from, caller.local)
        .map_err(registry_error)?;
    Pull::prepare(&app.registries, &app.store, from, bearer)
        .await
        .map_err(registry_error)
}

/// [`Pull::start`] with the app's registries and store.
pub fn start_pull(
    app: &Arc<App>,
    pull: Pull,
    encode: impl Fn(PullEvent) -> Vec<u8> + Send + Sync + 'static,
) -> tokio::sync::mpsc::UnboundedReceiver<Vec<u8>> {
    pull.start(app.registries.clone(), app.store.clone(), encode)
}

/// A pull for `POST /models/create`: DMR's NDJSON progress lines, ending with `success` (or "Using cached model"
/// when nothing had to be downloaded) or an `error` line.
pub async fn pull(
    app: &Arc<App>,
    from: &str,
    bearer: Option<&str>,
    content_type: &'static str,
    caller: super::Caller,
) -> Result<Response<Body>, ApiError> {
    let pull = prepare_pull(app, from, bearer, caller).await?;
    let total = pull.total();
    let rx = start_pull(app, pull, move |event| {
        let line = match event {
            PullEvent::Progress(p) => native::ProgressLine::transfer(
                native::Transfer::Pull,
                p.total,
                p.layer,
                p.layer_size,
                p.layer_done,
                p.done,
            ),
            PullEvent::Done(Ok(true)) => native::ProgressLine::message(
                "success",
                format!("Using cached model: {}", store::gguf::format_size(total)),
            ),
            PullEvent::Done(Ok(false)) => native::ProgressLine::success(),
            PullEvent::Done(Err(e)) => native::ProgressLine::error(&e),
        };
        line.to_line()
    });
    Ok(ndjson(rx, content_type))
}

/// `POST /models/{name}/tag?repo=R&tag=T` → 201 `{"message","target":"R:T"}`.
pub async fn tag(
    app: &Arc<App>,
    reference: String,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let repo = super::http::query_value(query, "repo")?
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::bad_request("the \"repo\" query parameter is required"))?;
    let target = match super::http::query_value(query, "tag")?.filter(|t| !t.is_empty()) {
        Some(t) => format!("{repo}:{t}"),
        None => repo,
    };
    let target = name::normalize(&target)
        .map_err(|e| ApiError::bad_request(format!("invalid target {target:?}: {e}")))?;
    let t = target.clone();
    blocking(app, move |s| s.tag(&reference, &t)).await?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({"message": "Model tagged successfully", "target": target}),
    ))
}

/// `POST /models/{name}/push` (`{"bearer-token"?}`): pushes the model to the registry its name gives, streaming
/// "Uploaded" progress lines, then `success` or `error`.
pub async fn push(
    app: &Arc<App>,
    req: http::Request<Incoming>,
    reference: String,
    caller: super::Caller,
) -> Result<Response<Body>, ApiError> {
    let content_type = progress_type(req.headers());
    let (_, body) = read_body(req, app.body_limits()).await?;
    let bearer = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        parse_json::<native::PushRequest>(&body)?.bearer_token
    };
    let target = prepare_push(app, reference, caller).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    start_push(app, target, bearer, tx, |event| match event {
        PushEvent::Progress(p) => native::ProgressLine::transfer(
            native::Transfer::Push,
            p.total,
            p.layer,
            p.layer_size,
            p.layer_done,
            p.done,
        )
        .to_line(),
        PushEvent::Done(Ok(_)) => {
            native::ProgressLine::message("success", "Model pushed successfully".into()).to_line()
        }
        PushEvent::Done(Err(e)) => native::ProgressLine::error(&e).to_line(),
    });
    Ok(ndjson(rx, content_type))
}

/// What a push reports: a layer's progress, then its outcome (the pushed manifest's digest, or the error).
pub enum PushEvent {
    Progress(crate::registry::Progress),
    Done(Result<String, String>),
}

/// The tag a push of `reference` sends (the one named, else the model's first), checked: the model exists, the
/// name gives a registry, and the caller may push there (a push to a loopback registry is local callers' only).
pub async fn prepare_push(
    app: &Arc<App>,
    reference: String,
    caller: super::Caller,
) -> Result<String, ApiError> {
    let r = reference.clone();
    let model = blocking(app, move |s| s.get(&r)).await?;
    let target = if model
        .tags
        .iter()
        .any(|t| name::normalize(&reference).is_ok_and(|n| n == *t))
    {
        name::normalize(&reference).unwrap_or(reference.clone())
    } else {
        model
            .tags
            .first()
            .cloned()
            .ok_or_else(|| ApiError::bad_request("the model has no tag to push to"))?
    };
    app.registries.resolve(&target).map_err(registry_error)?;
    app.registries
        .check_caller(&target, caller.local)
        .map_err(registry_error)?;
    Ok(target)
}

/// Pushes `target` in the background; each event becomes a line through `encode`, sent on `tx`.
pub fn start_push(
    app: &Arc<App>,
    target: String,
    bearer: Option<String>,
    tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    encode: impl Fn(PushEvent) -> Vec<u8> + Send + Sync + 'static,
) {
    let app = app.clone();
    tokio::spawn(async move {
        let report = |p: crate::registry::Progress| {
            let _ = tx.send(encode(PushEvent::Progress(p)));
        };
        let result = app
            .registries
            .push(app.store.clone(), &target, bearer.as_deref(), &report)
            .await;
        let outcome = match result {
            Ok(id) => {
                tracing::info!(model = target, id, "model pushed");
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(model = target, error = %e, "push failed");
                Err(e.to_string())
            }
        };
        let _ = tx.send(encode(PushEvent::Done(outcome)));
    });
}

/// `GET /models/{name}/export`: the model as DMR's archive (`application/x-tar`; see `store::archive`), streamed
/// as it is written. An unknown model is a 404 before anything is sent.
pub async fn export(app: &Arc<App>, reference: String) -> Result<Response<Body>, ApiError> {
    let r = reference.clone();
    let artifact = blocking(app, move |s| s.artifact(&r)).await?;
    let file = name::normalize(&reference)
        .unwrap_or_else(|_| reference.clone())
        .replace(['/', ':', '@'], "_");
    let (writer, reader) = tokio::io::duplex(1 << 20);
    let mut sync_writer = tokio_util::io::SyncIoBridge::new(writer);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    tokio::task::spawn_blocking(move || {
        let result = store::archive::write_archive(&artifact, &mut sync_writer);
        if let Err(e) = &result {
            tracing::warn!(model = reference, error = %e, "export failed");
        }
        drop(sync_writer);
        let _ = done_tx.send(result.map_err(|e| e.to_string()));
    });
    // After the archive's last byte, the writer's outcome: a failure (a blob unreadable, say) is a body error,
    // so the response ends without its last chunk and the client knows the archive is cut short.
    let outcome = futures_util::stream::once(done_rx).filter_map(|r| async move {
        match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(Err(std::io::Error::other(e))),
            Err(_) => Some(Err(std::io::Error::other("the export stopped"))),
        }
    });
    let frames = tokio_util::io::ReaderStream::new(reader)
        .chain(outcome)
        .map(|chunk| chunk.map(hyper::body::Frame::data).map_err(Into::into));
    let mut resp = Response::new(http_body_util::BodyExt::boxed(
        http_body_util::StreamBody::new(frames),
    ));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-tar"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&format!("attachment; filename=\"{file}.tar\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// The first `n` bytes of `body` (fewer if it is shorter), to check before streaming the rest.
async fn read_head(body: &mut Incoming, n: usize) -> Result<bytes::BytesMut, ApiError> {
    let mut head = bytes::BytesMut::new();
    while head.len() < n {
        match http_body_util::BodyExt::frame(body).await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    head.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => {
                return Err(ApiError::bad_request(format!("reading the body: {e}")).body_unread())
            }
            None => break,
        }
    }
    Ok(head)
}

/// How much of a refused load's body is read (and dropped) so the client sees the refusal.
const DRAIN_BEFORE_REFUSING: u64 = 256 << 20;
/// What is read of a body after the archive in it ends (tar pads to 10 KiB records; writers add zero blocks).
const TRAILER_AFTER_ARCHIVE: u64 = 1 << 20;

/// A load's `tag` query parameter, normalised; a digest reference is not a tag.
fn load_tag(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(t) = super::http::query_value(query, "tag")? else {
        return Ok(None);
    };
    let n = name::normalize(&t)
        .map_err(|e| ApiError::bad_request(format!("invalid tag {t:?}: {e}")))?;
    if n.contains('@') {
        return Err(ApiError::bad_request(format!(
            "invalid tag {t:?}: a digest cannot be a tag"
        )));
    }
    Ok(Some(n))
}

/// `POST /models/load[?tag=NAME]` with a model archive as the body (any size: it is streamed into the store,
/// not buffered): DMR's NDJSON progress lines ("Loaded: … MB" per blob), then `success` ("Model loaded
/// successfully", with the model's `id`) or `error`. Without `tag` the model is stored untagged, as DMR does. A
/// body that does not start with a tar header is a 400 before streaming starts.
pub async fn load(
    app: &Arc<App>,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let content_type = progress_type(req.headers());
    let query = req.uri().query().map(str::to_string);
    let mut body = req.into_body();
    let head = read_head(&mut body, 512).await?;
    let checked = load_tag(query.as_deref()).and_then(|tag| {
        if store::archive::starts_like_tar(&head) {
            Ok(tag)
        } else {
            Err(ApiError::bad_request(
                "the body is not a model archive: expected a tar (as `GET /models/{name}/export` writes)",
            ))
        }
    });
    let tag = match checked {
        Ok(tag) => tag,
        // Clients that send the whole body before reading the answer (most do) only see a refusal once the body
        // is read, so a bounded amount of it is read and dropped; past that the connection is closed instead.
        Err(e) if super::http::drain(&mut body, DRAIN_BEFORE_REFUSING).await => return Err(e),
        Err(e) => return Err(e.body_unread()),
    };
    let rest =
        http_body_util::BodyExt::into_data_stream(body).map(|r| r.map_err(std::io::Error::other));
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(head.freeze())]).chain(rest);
    let mut reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let app = app.clone();
    let max_manifest = app.config().registry.max_manifest_bytes;
    tokio::task::spawn_blocking(move || {
        let mut report = |p: store::archive::LoadProgress| {
            let line = native::ProgressLine::transfer(
                native::Transfer::Load,
                p.done,
                p.digest,
                p.size,
                p.current,
                p.done,
            );
            let _ = tx.send(line.to_line());
        };
        let loaded = app
            .store
            .load_archive(&mut reader, tag.as_deref(), max_manifest, &mut report);
        // A tar ends at its first zero block; the padding after it is read too (a little of it at most), so the
        // connection stays usable for the client's next request instead of being closed with its body unread.
        let _ = std::io::copy(
            &mut std::io::Read::take(&mut reader, TRAILER_AFTER_ARCHIVE),
            &mut std::io::sink(),
        );
        let line = match loaded {
            Ok(model) => {
                tracing::info!(tag, id = model.id, "model loaded");
                let mut line =
                    native::ProgressLine::message("success", "Model loaded successfully".into());
                line.id = Some(model.id);
                line
            }
            Err(e) => {
                tracing::warn!(tag, error = %e, "load failed");
                native::ProgressLine::error(&app.store.redact(&e.to_string()))
            }
        };
        let _ = tx.send(line.to_line());
    });
    Ok(ndjson(rx, content_type))
}

/// A registry failure as the HTTP status DMR gives it.
pub fn registry_error(e: crate::registry::RegistryError) -> ApiError {
    use crate::registry::RegistryError as R;
    let kind = match &e {
        R::BadReference(..) => ErrorKind::BadRequest,
        R::Unauthorized(_) => ErrorKind::Unauthorized,
        R::Forbidden(_) => ErrorKind::Forbidden,
        R::NotFound(_) => ErrorKind::NotFound,
        R::Unsupported(_) => ErrorKind::Unprocessable,
        R::Registry(_) | R::Interrupted(_) => ErrorKind::BadGateway,
        R::Store(_) => ErrorKind::Internal,
    };
    ApiError::new(kind, e.to_string())
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
