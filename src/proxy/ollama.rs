//! Ollama's API (`/api/...`) over any engine: requests are translated to OpenAI chat completions, sent to the
//! runner, and answers translated back — NDJSON lines as the engine's SSE frames arrive when streaming (Ollama's
//! default), one JSON object otherwise. Model listing and details come from the store and the scheduler.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Response, StatusCode};
use hyper::body::Incoming;

use super::http::{json, parse_json, read_body, ApiError, Body};
use super::inference::acquire;
use super::models::{blocking, PullEvent};
use super::routes::Ctx;
use super::{translated, App};
use crate::api::ollama::{self, Call, StreamTranslator};
use crate::api::openai;
use crate::config::KeepAlive;
use crate::engines::{Mode, RunnerWishes};
use crate::scheduler::Selector;
use crate::store::{self, Model};

mod manage;
pub use manage::{blob_exists, blob_upload, copy, create, push};

pub async fn version() -> Result<Response<Body>, ApiError> {
    Ok(json(
        StatusCode::OK,
        &ollama::Version {
            version: ollama::API_VERSION,
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
            // As Ollama: the memory the loaded model takes (measured, else predicted), and the part on GPUs.
            size: r.measured.unwrap_or(r.predicted),
            digest: digest(&m),
            details: details(&m),
            expires_at: store::rfc3339(expires),
            size_vram: if app.scheduler.probe_kind() == crate::gpu::ProbeKind::Nvml {
                r.measured.unwrap_or(r.predicted)
            } else {
                0
            },
        });
    }
    Ok(json(StatusCode::OK, &ollama::Ps { models }))
}

/// The model a `{"model": ...}` (or older `{"name": ...}`) body names.
async fn model_named_in(app: &Arc<App>, req: http::Request<Incoming>) -> Result<String, ApiError> {
    let (_, body) = read_body(req, app.body_limits()).await?;
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
    let m = app
        .resolve(&requested)
        .map_err(|e| not_found(e, &requested))?;
    let model = m.clone();
    let vision = m.vision();
    let template = blocking(app, move |_| {
        // A packaged chat template (DMR's layer, or `/api/create`'s `template`) is what the engine runs.
        Ok(model
            .chat_template
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok()))
    })
    .await?;
    let template = template
        .or_else(|| m.config.gguf.get("tokenizer.chat_template").cloned())
        .unwrap_or_default();
    let settings = app.settings_for(&requested, &m, crate::engines::Mode::Completion);
    let mut parameters = ollama::parameters_text(&m.config.options);
    let flags = settings.runtime_flags.join(" ");
    if !flags.is_empty() {
        if !parameters.is_empty() {
            parameters.push('\n');
        }
        parameters.push_str(&flags);
    }
    let arch = &m.config.architecture;
    let embedding_only = m.config.gguf.contains_key(&format!("{arch}.pooling_type"));
    let show = ollama::Show {
        modelfile: format!("FROM {}\n", name(&m)),
        parameters,
        capabilities: ollama::capabilities(embedding_only, &template, vision),
        template,
        system: m.config.system.clone(),
        details: details(&m),
        model_info: ollama::model_info(&m.config.gguf),
        modified_at: store::rfc3339(m.created),
    };
    Ok(json(StatusCode::OK, &show))
}

/// The model a request names, if the store has it: for its defaults (from `/api/create`) before its request is
/// translated. An unknown model is left to the lease, which answers its 404.
fn defaults_of(
    app: &App,
    requested: &str,
) -> (
    Option<String>,
    std::collections::BTreeMap<String, serde_json::Value>,
) {
    // The shared copy: this runs per request.
    match app.store.get_shared(requested) {
        Ok(m) => (m.config.system.clone(), m.config.options.clone()),
        Err(_) => (None, Default::default()),
    }
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
    ctx: &Ctx,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (_, body) = read_body(req, app.body_limits()).await?;
    ctx.note.body(&body);
    let chat: ollama::ChatIn = parse_json(&body)?;
    let (system, options) = defaults_of(app, &chat.model);
    let chat = chat.with_model_defaults(system.as_deref(), &options);
    let wishes = chat.wishes().map_err(ApiError::bad_request)?;
    let request = chat.to_openai().map_err(ApiError::bad_request)?;
    let call = Generation {
        call: Call::Chat,
        requested: &chat.model,
        streaming: chat.streaming(),
        // No messages only loads (or, with keep_alive 0, unloads) the model.
        empty: chat.messages.is_empty(),
        wishes,
    };
    generate_with(app, ctx, call, request).await
}

pub async fn generate(
    app: &Arc<App>,
    ctx: &Ctx,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (_, body) = read_body(req, app.body_limits()).await?;
    ctx.note.body(&body);
    let gen: ollama::GenerateIn = parse_json(&body)?;
    let (system, options) = defaults_of(app, &gen.model);
    let gen = gen.with_model_defaults(system.as_deref(), &options);
    let wishes = gen.wishes().map_err(ApiError::bad_request)?;
    let request = gen.to_openai().map_err(ApiError::bad_request)?;
    let call = Generation {
        call: Call::Generate,
        requested: &gen.model,
        streaming: gen.streaming(),
        empty: gen.prompt.is_empty() && gen.images.is_empty(),
        wishes,
    };
    generate_with(app, ctx, call, request).await
}

struct Generation<'a> {
    call: Call,
    requested: &'a str,
    streaming: bool,
    empty: bool,
    wishes: RunnerWishes,
}

fn now_rfc3339() -> String {
    store::rfc3339_at(SystemTime::now(), false)
}

fn require_model(requested: &str) -> Result<(), ApiError> {
    if requested.is_empty() {
        return Err(ApiError::bad_request("\"model\" is required"));
    }
    Ok(())
}

async fn generate_with(
    app: &Arc<App>,
    ctx: &Ctx,
    g: Generation<'_>,
    request: openai::ChatRequest,
) -> Result<Response<Body>, ApiError> {
    require_model(g.requested)?;
    translated::check_images(app, request.image_urls(), g.requested)?;
    let started = Instant::now();
    if g.empty && g.wishes.keep_alive == Some(KeepAlive::For(Duration::ZERO)) {
        let m = app
            .resolve(g.requested)
            .map_err(|e| not_found(e, g.requested))?;
        app.scheduler
            .unload(Selector::Models(vec![m.id.clone()]), false)
            .await;
        let out = ollama::Out::lifecycle(g.call, &name(&m), &now_rfc3339(), "unload");
        return Ok(json(StatusCode::OK, &out));
    }
    let (mut lease, model) =
        acquire(app, &ctx.note, g.requested, Mode::Completion, &g.wishes).await?;
    let load_ns = started.elapsed().as_nanos() as u64;
    let created_at = now_rfc3339();
    if g.empty {
        drop(lease);
        let out = ollama::Out::lifecycle(g.call, &model, &created_at, "load");
        return Ok(json(StatusCode::OK, &out));
    }
    let resp = translated::post(
        &app.engines,
        &mut lease,
        "/v1/chat/completions",
        &request,
        &model,
        g.streaming,
    )
    .await?;
    if g.streaming {
        let translator = StreamTranslator::new(g.call, &model, &created_at, load_ns);
        return Ok(translated::stream(
            resp,
            lease,
            translator,
            "application/x-ndjson",
            started,
        ));
    }
    let answer: openai::ChatResponse = translated::collect(resp, &model).await?;
    drop(lease);
    let totals = ollama::totals(
        answer.usage.unwrap_or_default(),
        answer.timings,
        answer.finish_reason(),
        started.elapsed().as_nanos() as u64,
        load_ns,
    );
    let calls = answer
        .content()
        .map(|c| ollama::tool_calls(&c.tool_calls))
        .unwrap_or_default();
    let out = ollama::Out::new(g.call, &model, &created_at, answer.text(), Some(&totals))
        .with_tool_calls(calls);
    Ok(json(StatusCode::OK, &out))
}

fn not_found(e: store::StoreError, requested: &str) -> ApiError {
    match e {
        store::StoreError::NotFound(_) => {
            ApiError::not_found(format!("model '{requested}' not found"))
        }
        other => ApiError::from(other),
    }
}

/// `POST /api/embed` (`legacy: false`) and `POST /api/embeddings` (`legacy: true`), over the engine's
/// `/v1/embeddings` in an embedding runner.
pub async fn embed(
    app: &Arc<App>,
    ctx: &Ctx,
    req: http::Request<Incoming>,
    legacy: bool,
) -> Result<Response<Body>, ApiError> {
    let (_, body) = read_body(req, app.body_limits()).await?;
    ctx.note.body(&body);
    let input: ollama::EmbedIn = parse_json(&body)?;
    require_model(&input.model)?;
    let wishes = input.wishes().map_err(ApiError::bad_request)?;
    let started = Instant::now();
    let (mut lease, model) =
        acquire(app, &ctx.note, &input.model, Mode::Embedding, &wishes).await?;
    let load_ns = started.elapsed().as_nanos() as u64;
    let texts = input.texts();
    let (embeddings, prompt_tokens) = if texts.is_empty() || (legacy && texts[0].is_empty()) {
        (Vec::new(), 0)
    } else {
        let resp = translated::post(
            &app.engines,
            &mut lease,
            "/v1/embeddings",
            &input.to_openai(),
            &model,
            false,
        )
        .await?;
        let mut answer: openai::EmbeddingsResponse = translated::collect(resp, &model).await?;
        answer.data.sort_by_key(|e| e.index);
        let tokens = answer.usage.map_or(0, |u| u.prompt_tokens);
        (
            answer.data.into_iter().map(|e| e.embedding).collect(),
            tokens,
        )
    };
    drop(lease);
    if legacy {
        let embedding = embeddings.into_iter().next().unwrap_or_default();
        return Ok(json(StatusCode::OK, &ollama::EmbeddingOut { embedding }));
    }
    Ok(json(
        StatusCode::OK,
        &ollama::EmbedOut {
            model,
            embeddings,
            total_duration: started.elapsed().as_nanos() as u64,
            load_duration: load_ns,
            prompt_eval_count: prompt_tokens,
        },
    ))
}

/// `POST /api/pull {"model"|"name", "stream"?, "insecure"?}`: a registry pull with its progress re-encoded in
/// Ollama's shape (`{"status":"pulling <12 hex>","digest","total","completed"}`, then `{"status":"success"}`, or
/// `{"error":…}`); with `"stream": false`, only the last line.
pub async fn pull(
    app: &Arc<App>,
    req: http::Request<Incoming>,
    caller: super::Caller,
) -> Result<Response<Body>, ApiError> {
    let (_, body) = read_body(req, app.body_limits()).await?;
    let input: ollama::PullIn = parse_json(&body)?;
    let from = input
        .model
        .or(input.name)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad_request("model is required"))?;
    let pull = super::models::prepare_pull(app, &from, None, caller).await?;
    let mut lines = super::models::start_pull(app, pull, move |e| match e {
        PullEvent::Progress(p) => {
            ollama::Progress::layer("pulling", &p.layer, p.layer_size, p.layer_done).to_line()
        }
        PullEvent::Done(Ok(_)) => ollama::Progress::status("success").to_line(),
        PullEvent::Done(Err(e)) => ollama::error_line(&e),
    });
    if input.stream == Some(false) {
        // The last line is the outcome.
        let mut last = Vec::new();
        while let Some(l) = lines.recv().await {
            last = l;
        }
        return Ok(manage::last_line(last));
    }
    Ok(super::http::ndjson(lines, "application/x-ndjson"))
}
