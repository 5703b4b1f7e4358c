//! The HTTP front: accepts connections on TCP (HTTP/1.1, keep-alive, TCP_NODELAY) and on an optional Unix socket,
//! checks CORS and API keys (`access`), routes each request to its handler, renders every error in the caller's
//! dialect, and drains in-flight requests on shutdown. Handlers live in
//! `models`, `inference` (OpenAI pass-through), `anthropic`, `ollama` and `engines`; body and error plumbing in
//! `http`; the engine client in `forward`; calls translated from another dialect in `translated`.

pub mod access;
mod anthropic;
mod configure;
mod engines;
mod forward;
pub mod http;
mod inference;
mod inspector;
mod logs;
mod metrics;
mod models;
mod ollama;
pub mod reload;
mod translated;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ::http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use self::http::{json, percent_decode, text, ApiError, Body};
use crate::api::{native, Dialect};
use crate::config::{Config, ModelSettings};
use crate::engines::{EngineKind, Mode};
use crate::scheduler::Scheduler;
use crate::store::{Model, Store, StoreError};

/// Where the configuration came from, so that a reload reads it the same way.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The `--config` file (`None`: defaults, nothing to reload).
    pub path: Option<PathBuf>,
    /// `--listen`, which overrides the file.
    pub listen: Option<SocketAddr>,
}

/// What every handler can reach.
pub struct App {
    /// The running configuration; a reload swaps it (`config()` reads it).
    config: arc_swap::ArcSwap<Config>,
    pub source: ConfigSource,
    pub store: Arc<Store>,
    pub registries: Arc<crate::registry::Registries>,
    pub scheduler: Scheduler,
    pub engines: Arc<forward::EnginePools>,
    /// Finds how each engine is started (or why it cannot be).
    pub finder: Arc<crate::engines::EngineFinder>,
    /// Engines being installed (one install per engine at a time).
    pub installing: std::sync::Mutex<std::collections::BTreeSet<EngineKind>>,
    /// What measures memory: NVML on NVIDIA machines, host memory otherwise.
    pub memory: Arc<dyn crate::gpu::GpuProbe>,
    /// CORS and API keys (swapped by a reload).
    access: arc_swap::ArcSwap<access::Access>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub inspector: Arc<inspector::Inspector>,
    /// Predictions by (model id, context size, flags), so that requests for loaded models do not redo them.
    pub demands:
        std::sync::Mutex<std::collections::HashMap<inference::DemandKey, crate::scheduler::Demand>>,
    /// Cancelled when the server begins shutting down: ends `GET /logs?follow=1` streams so they do not hold the
    /// drain.
    pub shutdown: CancellationToken,
}

/// What handlers note about the request they serve, for metrics and the inspector.
#[derive(Default)]
struct RequestNote {
    /// The model it resolved to (set by `inference::acquire`), and its runner's context size.
    model: Option<(String, u32)>,
    /// The request body (set by `read_body`).
    body: Option<bytes::Bytes>,
}

tokio::task_local! {
    static NOTE: std::cell::RefCell<RequestNote>;
}

/// Notes the model the current request is for (outside a request: nothing).
pub fn note_model(name: &str, context_size: u32) {
    let _ = NOTE.try_with(|n| n.borrow_mut().model = Some((name.to_string(), context_size)));
}

/// Notes the current request's body (a reference count, not a copy).
pub fn note_body(body: &bytes::Bytes) {
    let _ = NOTE.try_with(|n| n.borrow_mut().body = Some(body.clone()));
}

impl App {
    /// The configuration now (a reload may swap it between two calls).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// What a request body may be, from the running `[server]` settings.
    pub fn body_limits(&self) -> http::BodyLimits {
        let server = &self.config().server;
        http::BodyLimits {
            bytes: server.max_body_bytes,
            json_elements: server.max_json_elements,
        }
    }

    pub fn access(&self) -> Arc<access::Access> {
        self.access.load_full()
    }

    /// Looks a model up by tag or id.
    pub fn resolve(&self, reference: &str) -> Result<Model, StoreError> {
        self.store.get(reference)
    }

    /// The model a request names; an unknown one is the caller's 404.
    pub fn model_named(&self, requested: &str) -> Result<Model, http::ApiError> {
        self.resolve(requested).map_err(|e| match e {
            StoreError::NotFound(_) => {
                http::ApiError::not_found(format!("model {requested:?} not found"))
            }
            other => http::ApiError::from(other),
        })
    }

    /// A model's settings in `mode`: the `[[models]]` entry of the name asked for, else of any of the model's tags,
    /// else defaults; then what `POST /engines/_configure` stored for the model and mode, which wins.
    pub fn settings_for(&self, requested: &str, model: &Model, mode: Mode) -> ModelSettings {
        crate::launch::settings(&self.config(), &self.store, requested, model, mode)
    }
}

pub struct Server {
    listener: TcpListener,
    socket: Option<(UnixListener, PathBuf)>,
    app: Arc<App>,
}

impl Server {
    pub async fn bind(app: Arc<App>) -> std::io::Result<Server> {
        let config = app.config();
        let listener = TcpListener::bind(config.server.listen).await?;
        let socket = match &config.server.socket {
            Some(path) => Some((bind_unix(path)?, path.clone())),
            None => None,
        };
        let server = &config.server;
        if !server.listen.ip().is_loopback() && server.api_keys.is_empty() {
            tracing::warn!(
                listen = %server.listen,
                "listening beyond loopback without server.api_keys: anyone who can reach this port can use it"
            );
        }
        Ok(Server {
            listener,
            socket,
            app,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` fires, then stops accepting and waits up to the grace period for in-flight
    /// requests (streams included) to finish.
    ///
    /// At most `server.max_connections` connections are open at once: past it nothing more is accepted until one
    /// closes, so further clients wait in the kernel's backlog instead of holding tasks and buffers here.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let graceful = GracefulShutdown::new();
        let unix = self.socket.as_ref().map(|(l, _)| l);
        let open = Arc::new(tokio::sync::Semaphore::new(
            self.app.config().server.max_connections,
        ));
        loop {
            let permit = tokio::select! {
                permit = open.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break, // never closed
                },
                _ = shutdown.cancelled() => break,
            };
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let caller = Caller { trusted: false, local: peer.ip().is_loopback() };
                        self.serve(stream, caller, &graceful, permit);
                    }
                    Err(e) => accept_failed(e).await,
                },
                accepted = async { unix.expect("guarded by the branch condition").accept().await }, if unix.is_some() => {
                    match accepted {
                        Ok((stream, _)) => self.serve(stream, Caller { trusted: true, local: true }, &graceful, permit),
                        Err(e) => accept_failed(e).await,
                    }
                }
                _ = shutdown.cancelled() => break,
            }
        }
        drop(self.listener);
        if let Some((listener, path)) = self.socket.take() {
            drop(listener);
            let _ = std::fs::remove_file(&path);
        }
        let grace = self.app.config().server.shutdown_grace;
        tracing::info!(?grace, "stopped accepting; draining in-flight requests");
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "requests still in flight after the grace period; closing them"
            );
        }
    }
}

impl Server {
    /// Serves one connection until it closes, holding one of the `max_connections` permits. A request head must
    /// arrive whole within `header_read_timeout` of the connection waiting for it (a slow client is cut off).
    fn serve<I>(
        &self,
        io: I,
        caller: Caller,
        graceful: &GracefulShutdown,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let app = self.app.clone();
        let header_read_timeout = app.config().server.header_read_timeout;
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(route(app, req, caller).await) }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        let conn = graceful.watch(http.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The Unix socket: no API key needed.
    pub trusted: bool,
    /// Loopback or the Unix socket.
    pub local: bool,
}

/// EMFILE and friends: back off briefly instead of spinning.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Binds the Unix socket, replacing a stale socket file left by a crash (but never another kind of file), and
/// makes it readable and writable by the owner and group only.
fn bind_unix(path: &std::path::Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Routes one request and renders any error in the dialect of its route.
async fn route(app: Arc<App>, req: Request<Incoming>, caller: Caller) -> Response<Body> {
    let path = req.uri().path().to_string();
    let anthropic = path.starts_with("/anthropic/")
        || openai_route(&path).is_some_and(|(_, rest)| rest.starts_with("messages"));
    let dialect = if anthropic {
        Dialect::Anthropic
    } else if path.starts_with("/engines/") || path.starts_with("/v1/") {
        Dialect::OpenAi
    } else if path.starts_with("/api/") {
        Dialect::Ollama
    } else {
        Dialect::Native
    };
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let cors = match app
        .access()
        .check(&method, &path, req.headers(), caller.trusted)
    {
        access::Verdict::Allow(cors) => cors,
        access::Verdict::Preflight(cors) => {
            let mut resp = Response::new(http::full(""));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp.headers_mut().extend(cors);
            return resp;
        }
        access::Verdict::Forbidden(why) => {
            return ApiError::new(crate::api::ErrorKind::Forbidden, why).into_response(dialect)
        }
        access::Verdict::Unauthorized => {
            let e = ApiError::new(
                crate::api::ErrorKind::Unauthorized,
                "missing or invalid API key: send it as \"Authorization: Bearer KEY\" or \"x-api-key: KEY\"",
            );
            let mut resp = e.into_response(dialect);
            resp.headers_mut().insert(
                ::http::header::WWW_AUTHENTICATE,
                ::http::HeaderValue::from_static("Bearer"),
            );
            return resp;
        }
    };
    let arrived = std::time::SystemTime::now();
    let (mut resp, note) = NOTE
        .scope(std::cell::RefCell::default(), async {
            let resp = dispatch(&app, req, &path, caller)
                .await
                .unwrap_or_else(|mut e| {
                    e.message = app.store.redact(&e.message);
                    e.into_response(dialect)
                });
            (resp, NOTE.with(|n| std::mem::take(&mut *n.borrow_mut())))
        })
        .await;
    let model = note.model.as_ref().map(|(m, _)| m.clone());
    resp.headers_mut().extend(cors);
    let route = metrics::route_label(&path);
    let dialect_label = match dialect {
        Dialect::Native => "native",
        Dialect::OpenAi => "openai",
        Dialect::Ollama => "ollama",
        Dialect::Anthropic => "anthropic",
    };
    app.metrics.request(
        &route,
        dialect_label,
        model.as_deref().unwrap_or(""),
        resp.status().as_u16(),
        started.elapsed(),
    );
    let streamed = resp
        .headers()
        .get(::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.starts_with("text/event-stream") || t.starts_with("application/x-ndjson")
        });
    // Inference answers are watched as they pass, by one wrapper: streams are timed to their first byte, and
    // exchanges of a resolved model are recorded for the inspector.
    let inference = route.starts_with("/v1/") || route.starts_with("/api/");
    let timer = (streamed && inference).then(|| {
        metrics::first_byte_timer(app.metrics.clone(), route.clone(), dialect_label, started)
    });
    let recorder = match (inference, note.model, note.body) {
        (true, Some((model, context_size)), Some(request)) => {
            let pending = inspector::Pending {
                model,
                dialect: dialect_label,
                route,
                status: resp.status().as_u16(),
                context_size: Some(context_size),
                request,
                started,
                arrived,
                streamed,
            };
            Some(inspector::recorder(app.inspector.clone(), pending))
        }
        _ => None,
    };
    if timer.is_some() || recorder.is_some() {
        let (parts, body) = resp.into_parts();
        resp = Response::from_parts(parts, http::tapped(body, (timer, recorder)));
    }
    tracing::debug!(%method, path, status = resp.status().as_u16(), us = started.elapsed().as_micros() as u64, "request");
    resp
}

async fn dispatch(
    app: &Arc<App>,
    req: Request<Incoming>,
    path: &str,
    caller: Caller,
) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    if let Some((named, rest)) = openai_route(path) {
        let engine = match named {
            None => None,
            Some(e) => Some(EngineKind::from_name(e).ok_or_else(|| {
                ApiError::not_found(format!(
                    "unknown engine {e:?}; engines are {}",
                    EngineKind::ALL.map(EngineKind::name).join(", ")
                ))
            })?),
        };
        let upstream = format!("/v1/{rest}");
        return match (&method, rest) {
            (&Method::GET, "models") => models::list_openai(app).await,
            (&Method::GET, r) if r.starts_with("models/") => {
                models::get_openai(app, percent_decode(&r["models/".len()..])?).await
            }
            (&Method::POST, "chat/completions" | "completions") => {
                inference::handle(app, req, Mode::Completion, engine, upstream).await
            }
            (&Method::POST, "embeddings") => {
                inference::handle(app, req, Mode::Embedding, engine, upstream).await
            }
            (&Method::POST, "images/generations") => {
                inference::handle(app, req, Mode::ImageGeneration, engine, upstream).await
            }
            (&Method::POST, "messages") => anthropic::messages(app, req).await,
            (&Method::POST, "messages/count_tokens") => anthropic::count_tokens(app, req).await,
            _ => Err(ApiError::not_found(format!("no route for {method} {path}"))),
        };
    }
    match (&method, path) {
        (&Method::GET, "/") => Ok(text(StatusCode::OK, "dmr-supervisor is running")),
        (&Method::POST, "/config/reload") => reload::handle(app, caller).await,
        (&Method::GET, "/metrics") => metrics::handle(app).await,
        (&Method::GET, "/dashboard") => Ok(dashboard()),
        (&Method::GET, "/logs") => logs::handle(app, req.uri().query()).await,
        (&Method::GET, "/health") => Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        (&Method::GET, "/version") => Ok(json(
            StatusCode::OK,
            &native::Version {
                version: env!("CARGO_PKG_VERSION"),
            },
        )),
        (&Method::GET, "/models") => models::list_native(app).await,
        (&Method::POST, "/models/create") => models::create(app, req, caller).await,
        (&Method::GET, "/engines/ps") => engines::ps(app).await,
        (&Method::POST, "/engines/unload") => engines::unload(app, req).await,
        (&Method::GET, "/engines/status") => engines::status(app).await,
        (&Method::POST, "/engines/install-backend") => {
            engines::install_backend(app, req, caller).await
        }
        (&Method::GET, "/engines/df") => engines::df(app).await,
        (&Method::GET, "/engines/requests") => inspector::list(app, req.uri().query()).await,
        (&Method::POST, "/engines/_configure") => configure::set(app, req, None).await,
        (&Method::GET, "/engines/_configure") => configure::list(app, req.uri().query()).await,
        (&Method::POST, p) if p.starts_with("/engines/") && p.ends_with("/_configure") => {
            let named = &p["/engines/".len()..p.len() - "/_configure".len()];
            match EngineKind::from_name(named) {
                Some(engine) => configure::set(app, req, Some(engine)).await,
                None => Err(ApiError::bad_request(format!(
                    "unknown engine {named:?} in {p}; engines are {}",
                    EngineKind::ALL.map(EngineKind::name).join(", ")
                ))),
            }
        }
        (&Method::GET, "/api/version") => ollama::version().await,
        (&Method::GET, "/api/tags") => ollama::tags(app).await,
        (&Method::GET, "/api/ps") => ollama::ps(app).await,
        (&Method::POST, "/api/show") => ollama::show(app, req).await,
        (&Method::POST, "/api/chat") => ollama::chat(app, req).await,
        (&Method::POST, "/api/generate") => ollama::generate(app, req).await,
        (&Method::DELETE, "/api/delete") => ollama::delete(app, req).await,
        (&Method::POST, "/api/pull") => ollama::pull(app, req).await,
        (&Method::POST, "/api/embed") => ollama::embed(app, req, false).await,
        (&Method::POST, "/api/embeddings") => ollama::embed(app, req, true).await,
        (&Method::POST, "/anthropic/v1/messages") => anthropic::messages(app, req).await,
        (&Method::POST, "/anthropic/v1/messages/count_tokens") => {
            anthropic::count_tokens(app, req).await
        }
        (&Method::POST, p) if p.starts_with("/models/") && p.ends_with("/tag") => {
            let query = req.uri().query().map(str::to_string);
            models::tag(app, percent_decode(&p[8..p.len() - 4])?, query.as_deref()).await
        }
        (&Method::DELETE, "/models/purge") => models::purge(app).await,
        (&Method::POST, "/models/load") => models::load(app, req).await,
        (&Method::GET, p) if p.starts_with("/models/") && p.ends_with("/export") => {
            models::export(app, percent_decode(&p[8..p.len() - 7])?).await
        }
        (&Method::POST, p) if p.starts_with("/models/") && p.ends_with("/repackage") => {
            let name = percent_decode(&p[8..p.len() - 10])?;
            models::repackage(app, req, name).await
        }
        (&Method::POST, p) if p.starts_with("/models/") && p.ends_with("/push") => {
            let name = percent_decode(&p[8..p.len() - 5])?;
            models::push(app, req, name).await
        }
        (&Method::GET, p) if p.starts_with("/models/") => {
            models::get_native(app, percent_decode(&p[8..])?).await
        }
        (&Method::DELETE, p) if p.starts_with("/models/") => {
            let query = req.uri().query().map(str::to_string);
            models::delete(app, percent_decode(&p[8..])?, query.as_deref()).await
        }
        _ => Err(ApiError::not_found(format!("no route for {method} {path}"))),
    }
}

/// The dashboard: one static page (no build step) that polls `/engines/ps`, `/engines/df`, `/engines/requests`
/// and `/logs`.
fn dashboard() -> Response<Body> {
    let mut resp = Response::new(http::full(include_str!("dashboard.html")));
    resp.headers_mut().insert(
        ::http::header::CONTENT_TYPE,
        ::http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

/// Splits OpenAI-style paths: `/v1/REST`, `/engines/v1/REST`, `/engines/ENGINE/v1/REST` → (engine, REST).
fn openai_route(path: &str) -> Option<(Option<&str>, &str)> {
    if let Some(rest) = path.strip_prefix("/v1/") {
        return Some((None, rest));
    }
    let after = path.strip_prefix("/engines/")?;
    if let Some(rest) = after.strip_prefix("v1/") {
        return Some((None, rest));
    }
    let (engine, rest) = after.split_once('/')?;
    rest.strip_prefix("v1/").map(|r| (Some(engine), r))
}

/// The scheduler's limits from `[scheduler]`.
pub fn limits(s: &crate::config::SchedulerConfig) -> crate::scheduler::Limits {
    crate::scheduler::Limits {
        budget: s.memory_budget,
        reserve: s.memory_reserve,
        max_loaded_models: s.max_loaded_models,
        max_queue: s.max_queue,
        queue_timeout: s.queue_timeout,
        max_in_flight: s.max_in_flight,
    }
}

fn access_from(config: &Config) -> access::Access {
    access::Access {
        api_keys: config.server.api_keys.clone(),
        allowed_origins: config.server.allowed_origins.clone(),
    }
}

/// Wires the daemon from an opened store: logs which engines were found, then starts the scheduler and the
/// registries (the store is opened and the configured models imported by `lib.rs`'s `start`).
pub fn build_app(config: Config, source: ConfigSource, store: Store) -> App {
    let finder = crate::engines::EngineFinder {
        config: config.engines.clone(),
        path_var: std::env::var("PATH").ok(),
        data_dir: crate::config::data_dir(),
    };
    for (engine, command) in &finder.all() {
        match command {
            Ok(c) => {
                tracing::info!(engine = engine.name(), binary = %c.program.display(), args = ?c.prefix, "engine")
            }
            Err(e) => tracing::info!(
                engine = engine.name(),
                error = e,
                "engine not available; its models will not load"
            ),
        }
    }
    let finder = Arc::new(finder);
    let timeouts = crate::engines::Timeouts {
        startup: config.scheduler.startup_timeout,
        stop: config.scheduler.stop_timeout,
        health: config.scheduler.health_interval,
    };
    let limits = limits(&config.scheduler);
    let config_registry = config.registry.clone();
    let memory: Arc<dyn crate::gpu::GpuProbe> = Arc::from(crate::gpu::detect());
    let engines = Arc::new(forward::EnginePools::default());
    let pools = engines.clone();
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let scheduler = Scheduler::start(
        finder.clone(),
        timeouts,
        limits,
        memory.clone(),
        Box::new(move |endpoint| pools.forget(endpoint)),
        metrics.clone(),
    );
    App {
        metrics,
        inspector: Arc::default(),
        demands: Default::default(),
        shutdown: CancellationToken::new(),
        access: arc_swap::ArcSwap::from_pointee(access_from(&config)),
        config: arc_swap::ArcSwap::from_pointee(config),
        source,
        registries: Arc::new(crate::registry::Registries::new(config_registry)),
        store: Arc::new(store),
        scheduler,
        engines,
        finder,
        installing: Default::default(),
        memory,
    }
}

#[cfg(test)]
mod tests {
    use super::openai_route;

    #[test]
    fn openai_paths() {
        assert_eq!(
            openai_route("/v1/chat/completions"),
            Some((None, "chat/completions"))
        );
        assert_eq!(
            openai_route("/engines/v1/models/ai/tiny"),
            Some((None, "models/ai/tiny"))
        );
        assert_eq!(
            openai_route("/engines/llama.cpp/v1/embeddings"),
            Some((Some("llama.cpp"), "embeddings"))
        );
        assert_eq!(
            openai_route("/engines/foo/v1/completions"),
            Some((Some("foo"), "completions"))
        );
        assert_eq!(openai_route("/engines/ps"), None);
        assert_eq!(openai_route("/models"), None);
    }
}
