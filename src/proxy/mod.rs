//! The HTTP front: accepts connections on TCP (HTTP/1.1, keep-alive, TCP_NODELAY) and on an optional Unix socket,
//! matches each request against the route table (`routes::ROUTES`), checks CORS, API keys and local-only routes
//! (`access`, the route's `Guard`), calls the route's handler with the request's `routes::Ctx`, renders every error
//! in the route's dialect, counts and times it, hands inference answers to the inspector, and drains in-flight
//! requests on shutdown. Handlers live in
//! `models`, `inference` (OpenAI pass-through), `anthropic`, `ollama` and `engines`; body and error plumbing in
//! `http`; the engine client in `forward`; calls translated from another dialect in `translated`.

pub mod access;
mod anthropic;
mod configure;
mod engines;
mod forward;
pub mod http;
pub(crate) mod inference;
mod inspector;
mod load;
mod logs;
mod metrics;
mod models;
mod ollama;
pub mod reload;
mod rerank;
mod responses;
pub mod routes;
mod translated;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ::http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use self::http::{ApiError, Body};
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
    /// Cancelled when the node turns not-ready (SIGTERM): `/readyz` and `/health` answer 503 while it serves on for
    /// `drain_delay`, so that routers stop sending before it stops accepting.
    pub draining: CancellationToken,
    /// The Responses API's kept responses (`[server] responses_max`, `responses_ttl`).
    pub responses: responses::store::ResponseStore,
    /// Where each model the configuration declares by reference, with aliases, preloaded or pinned stands.
    pub declared: Arc<crate::declared::Declared>,
    /// The certificate the TCP listener presents when `[server] tls_cert` is set (a reload swaps it).
    pub tls: Option<Arc<crate::tls::CertSlot>>,
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
    /// Set when the TCP listener speaks TLS.
    tls: Option<tokio_rustls::TlsAcceptor>,
    socket: Option<(UnixListener, PathBuf)>,
    app: Arc<App>,
}

impl Server {
    pub async fn bind(app: Arc<App>) -> std::io::Result<Server> {
        routes::build();
        let config = app.config();
        let listener = TcpListener::bind(config.server.listen).await?;
        let socket = match &config.server.socket {
            Some(path) => Some((bind_unix(path)?, path.clone())),
            None => None,
        };
        let tls = match &app.tls {
            Some(slot) => Some(
                crate::tls::acceptor(slot.clone())
                    .map_err(|e| std::io::Error::other(format!("TLS: {e}")))?,
            ),
            None => None,
        };
        let server = &config.server;
        if let Some(identity) = &server.tls {
            tracing::info!(cert = %identity.cert.display(), "serving HTTPS (TLS) on the TCP listener");
        }
        if !server.listen.ip().is_loopback() && server.api_keys.is_empty() {
            tracing::warn!(
                listen = %server.listen,
                "listening beyond loopback without server.api_keys: anyone who can reach this port can use it"
            );
        }
        Ok(Server {
            listener,
            tls,
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
                        self.serve_tcp(stream, caller, &graceful, permit);
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
    /// Serves one TCP connection, over TLS when the listener has it: the handshake runs in the connection's task,
    /// and must end within `header_read_timeout` (a client that never finishes it is cut off like a slow head).
    fn serve_tcp(
        &self,
        stream: tokio::net::TcpStream,
        caller: Caller,
        graceful: &GracefulShutdown,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let Some(acceptor) = self.tls.clone() else {
            return self.serve(stream, caller, graceful, permit);
        };
        let (app, watcher) = (self.app.clone(), graceful.watcher());
        tokio::spawn(async move {
            let limit = app.config().server.header_read_timeout;
            match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => connection(app, tls, caller, watcher).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(?limit, "TLS handshake timed out"),
            }
            drop(permit);
        });
    }

    /// Serves one connection until it closes, holding one of the `max_connections` permits.
    fn serve<I>(
        &self,
        io: I,
        caller: Caller,
        graceful: &GracefulShutdown,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (app, watcher) = (self.app.clone(), graceful.watcher());
        tokio::spawn(async move {
            connection(app, io, caller, watcher).await;
            drop(permit);
        });
    }
}

/// HTTP/1.1 on one connection until it closes. A request head must arrive whole within `header_read_timeout` of
/// the connection waiting for it (a slow client is cut off).
async fn connection<I>(
    app: Arc<App>,
    io: I,
    caller: Caller,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_read_timeout = app.config().server.header_read_timeout;
    let service = service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(route(app, req, caller).await) }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    if let Err(e) = watcher
        .watch(http.serve_connection(TokioIo::new(io), service))
        .await
    {
        tracing::debug!(error = %e, "connection ended with an error");
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

/// Routes one request through the table (`routes`) and renders any error in the dialect of its route.
async fn route(app: Arc<App>, req: Request<Incoming>, caller: Caller) -> Response<Body> {
    let started = std::time::Instant::now();
    let found = routes::find(req.method(), req.uri().path());
    let dialect = found.as_ref().map_or_else(
        || routes::dialect_of_prefix(req.uri().path()),
        |f| f.route.dialect,
    );
    let guard = found.as_ref().map_or(routes::Guard::Key, |f| f.route.guard);
    let method = req.method().clone();
    let access = app.access();
    let cors = match access.check(
        &method,
        guard == routes::Guard::Open,
        req.headers(),
        caller.trusted,
    ) {
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
    let Some(found) = found else {
        let e = ApiError::not_found(format!("no route for {method} {}", req.uri().path()));
        let mut resp = e.into_response(dialect);
        resp.headers_mut().extend(cors);
        app.metrics.request(
            "other",
            routes::dialect_label(dialect),
            "",
            resp.status().as_u16(),
            started.elapsed(),
        );
        return resp;
    };
    if found.route.guard == routes::Guard::Local && !caller.local && access.api_keys.is_empty() {
        let mut resp = routes::local_only(found.route).into_response(dialect);
        resp.headers_mut().extend(cors);
        return resp;
    }
    let arrived = std::time::SystemTime::now();
    let load_format = req
        .headers()
        .get(load::FORMAT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let ctx = Arc::new(routes::Ctx::new(caller, found));
    let route = ctx.route;
    let path = req.uri().path().to_string();
    let mut resp = (route.handler)(app.clone(), req, ctx.clone())
        .await
        .unwrap_or_else(|mut e| {
            e.message = app.store.redact(&e.message);
            e.into_response(dialect)
        });
    let note = ctx.note.take();
    let model = note.model.as_ref().map(|(m, _)| m.as_str());
    resp.headers_mut().extend(cors);
    if let Some(format) = load_format {
        let report = load::measure(&app).await.orca(&format);
        if let Some(value) = report.and_then(|r| ::http::HeaderValue::try_from(r).ok()) {
            resp.headers_mut().insert(load::REPORT_HEADER, value);
        }
    }
    let dialect_label = route.dialect_label();
    app.metrics.request(
        route.label,
        dialect_label,
        model.unwrap_or(""),
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
    let timer = (streamed && route.inference).then(|| {
        metrics::first_byte_timer(
            app.metrics.clone(),
            route.label.to_string(),
            dialect_label,
            started,
        )
    });
    let recorder = match (route.inference, note.model, note.body) {
        (true, Some((model, context_size)), Some(request)) => {
            let pending = inspector::Pending {
                model,
                dialect: dialect_label,
                route: route.label.to_string(),
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
pub fn build_app(
    config: Config,
    source: ConfigSource,
    store: Store,
    sandbox: crate::engines::sandbox::confine::Sandbox,
) -> App {
    let finder = crate::engines::EngineFinder {
        config: config.engines.clone(),
        path_var: std::env::var("PATH").ok(),
        data_dir: crate::config::data_dir(),
        sandbox: Arc::new(sandbox),
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
    let tls = config
        .server
        .tls
        .as_ref()
        .map(|t| Arc::new(crate::tls::CertSlot::new(t.certified.clone())));
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
        draining: CancellationToken::new(),
        responses: responses::new_store(),
        declared: Arc::default(),
        tls,
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
