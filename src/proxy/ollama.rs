//! Ollama's API (`/api/...`) over any engine: requests are translated to OpenAI chat completions, sent to the
//! runner, and answers translated back — NDJSON lines as the engine's SSE frames arrive when streaming (Ollama's
//! default), one JSON object otherwise. Model listing and details come from the store and the scheduler.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::forward::send;
use super::http::{json, parse_json, read_body, ApiError, Body, BoxError};
use super::inference::acquire;
use super::models::blocking;
use super::App;
use crate::api::ollama::{self, Call, StreamTranslator};
use crate::api::{openai, ErrorKind};
use crate::engines::Mode;
use crate::scheduler::Lease;
use crate::store::{self, Model};

pub async fn version() -> Result<Response<Body>, ApiError> {
    Ok(json(
        StatusCode::OK,
        &ollama::Version {
            version: env!("CARGO_PKG_VERSION"),
        },
    ))
}

fn details(m: &Model) -> ollama::Details {
    let c = &m.config;
    ollama::Details {
        format: c.format.clone(),
        family: c.architecture.clone(),
        families: vec![c.architecture.clone()],
        parameter_size: c.parameters.clone(),
        quantization_level: c.quantization.clone(),
    }
}

fn digest(m: &Model) -> String {
    m.id.trim_start_matches("sha256:").to_string()
}

/// Size of the weights file (one stat: run it on the blocking pool when listing the whole store).
fn weights_size(m: &Model) -> u64 {
    std::fs::metadata(&m.weights)
        .map(|md| md.len())
        .unwrap_or(0)
}

fn name(m: &Model) -> String {
    m.tags.first().cloned().unwrap_or_else(|| m.id.clone())
}

pub async fn tags(app: &Arc<App>) -> Result<Response<Body>, ApiError> {
    let models = blocking(app, |s| {
        let models = s.list()?;
        Ok(models
            .into_iter()
            .map(|m| (weights_size(&m), m))
            .collect::<Vec<_>>())
    })
    .await?;
    // Ollama lists one entry per name, so a model with two tags appears twice.
    let models = models
        .iter()
        .flat_map(|(size, m)| {
            m.tags.iter().map(move |tag| ollama::TagModel {
                name: tag.clone(),
                model: tag.clone(),
                modified_at: store::rfc3339(m.created),
                size: *size,
                digest: digest(m),
                details: details(m),
            })
        })
        .collect();
    Ok(json(StatusCode::OK, &ollama::Tags { models }))
}

pub async fn ps(app: &Arc<App>) -> Result<Response<Body>, ApiError> {
    let mut models = Vec::new();
    for r in app
        .scheduler
        .snapshot()
        .await
        .into_iter()
        .filter(|r| r.mode == Mode::Completion)
    {
        let Ok(m) = app.resolve(&r.model_id) else {
            continue;
        };
        let expires = match (r.keep_alive, r.last_used) {
            (crate::config::KeepAlive::For(d), Some(t)) => t + d,
            _ => SystemTime::now() + std::time::Duration::from_secs(100 * 365 * 86400),
        };
        let expires = expires
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        models.push(ollama::PsModel {
            name: name(&m),
            model: name(&m),
            // Running models are few; one stat each.
            size: weights_size(&m),
            digest: digest(&m),
            details: details(&m),
            expires_at: store::rfc3339(expires),
            size_vram: 0,
        });
    }
    Ok(json(StatusCode::OK, &ollama::Ps { models }))
}

/// The model a `{"model": ...}` (or older `{"name": ...}`) body names.
async fn model_named_in(app: &Arc<App>, req: http::Request<Incoming>) -> Result<String, ApiError> {
    let (_, body) = read_body(req, app.config.server.max_body_bytes).await?;
    let named: ollama::ShowIn = parse_json(&body)?;
    named
        .model
        .or(named.name)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad_request("\"model\" is required"))
}

pub async fn show(
    app: &Arc<App>,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let requested = model_named_in(app, req).await?;
    let m = app.resolve(&requested).map_err(|e| match e {
        store::StoreError::NotFound(_) => {
            ApiError::not_found(format!("model '{requested}' not found"))
        }
        other => ApiError::from(other),
    })?;
    let template = m
        .config
        .gguf
        .get("tokenizer.chat_template")
        .cloned()
        .unwrap_or_default();
    let settings = app.settings_for(&requested, &m.tags);
    let parameters = settings.runtime_flags.join(" ");
    let show = ollama::Show {
        modelfile: format!("FROM {}\n", name(&m)),
        parameters,
        template,
        details: details(&m),
        model_info: m.config.gguf.clone(),
        capabilities: vec!["completion"],
        modified_at: store::rfc3339(m.created),
    };
    Ok(json(StatusCode::OK, &show))
}

/// `DELETE /api/delete {"model"}`: as DMR's delete of a tag; 404 when unknown.
pub async fn delete(
    app: &Arc<App>,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let requested = model_named_in(app, req).await?;
    super::models::delete(app, requested, None).await?;
    Ok(Response::new(super::http::full(Bytes::new())))
}

pub async fn chat(
    app: &Arc<App>,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (_, body) = read_body(req, app.config.server.max_body_bytes).await?;
    let chat: ollama::ChatIn = parse_json(&body)?;
    let (streaming, openai) = (chat.streaming(), chat.to_openai());
    generate_with(app, Call::Chat, &chat.model, streaming, openai).await
}

pub async fn generate(
    app: &Arc<App>,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (_, body) = read_body(req, app.config.server.max_body_bytes).await?;
    let gen: ollama::GenerateIn = parse_json(&body)?;
    let (streaming, openai) = (gen.streaming(), gen.to_openai());
    generate_with(app, Call::Generate, &gen.model, streaming, openai).await
}

async fn generate_with(
    app: &Arc<App>,
    call: Call,
    requested: &str,
    streaming: bool,
    request: openai::ChatRequest,
) -> Result<Response<Body>, ApiError> {
    if requested.is_empty() {
        return Err(ApiError::bad_request("\"model\" is required"));
    }
    let started = Instant::now();
    let (lease, model) = acquire(app, requested, Mode::Completion).await?;
    let load_ns = started.elapsed().as_nanos() as u64;
    let body = Bytes::from(serde_json::to_vec(&request).unwrap_or_default());
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let path = "/v1/chat/completions";
    let resp = send(
        &app.engines,
        lease.endpoint,
        Method::POST,
        headers,
        path,
        body,
        &model,
        streaming,
    )
    .await?;
    let created_at = store::rfc3339(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    );
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let kind = if status.is_client_error() {
            ErrorKind::BadRequest
        } else {
            ErrorKind::BadGateway
        };
        return Err(ApiError::new(
            kind,
            format!(
                "the engine answered {status}: {}",
                String::from_utf8_lossy(&text)
            ),
        ));
    }
    if !streaming {
        let bytes = resp.into_body().collect().await.map_err(|e| {
            ApiError::new(
                ErrorKind::BadGateway,
                format!("the engine serving {model} stopped mid-response: {e}"),
            )
        })?;
        drop(lease);
        let answer: openai::ChatResponse =
            serde_json::from_slice(&bytes.to_bytes()).map_err(|e| {
                ApiError::new(
                    ErrorKind::BadGateway,
                    format!("unreadable engine answer: {e}"),
                )
            })?;
        let totals = ollama::totals(
            answer.usage.unwrap_or_default(),
            answer.timings,
            answer.finish_reason(),
            started.elapsed().as_nanos() as u64,
            load_ns,
        );
        let out = ollama::Out::new(call, &model, &created_at, answer.text(), Some(&totals));
        return Ok(json(StatusCode::OK, &out));
    }
    let body = NdjsonBody {
        inner: resp.into_body(),
        lease: Some(lease),
        translator: StreamTranslator::new(call, &model, &created_at),
        out: VecDeque::new(),
        done: false,
        started,
        load_ns,
    };
    let mut resp = Response::new(body.boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

/// The engine's SSE stream, translated to Ollama NDJSON frame by frame while holding the runner's lease.
struct NdjsonBody {
    inner: Incoming,
    lease: Option<Lease>,
    translator: StreamTranslator,
    out: VecDeque<Vec<u8>>,
    done: bool,
    started: Instant,
    load_ns: u64,
}

impl http_body::Body for NdjsonBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(line) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(line)))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.out.extend(this.translator.feed(data));
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    this.lease = None;
                    this.out.push_back(
                        this.translator
                            .finish(this.started.elapsed().as_nanos() as u64, this.load_ns),
                    );
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    this.lease = None;
                    tracing::warn!(error = %e, "engine stream broke (ollama)");
                    let mut line = ollama::error_body(&format!(
                        "the engine stopped mid-response (it may have crashed): {e}"
                    ));
                    line.push(b'\n');
                    this.out.push_back(line);
                }
            }
        }
    }
}
