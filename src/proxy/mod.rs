//! The HTTP front: accepts connections (HTTP/1.1, keep-alive, TCP_NODELAY), routes each request to its handler,
//! renders every error in the caller's dialect, and drains in-flight requests on shutdown. Handlers live in
//! `models`, `inference` (OpenAI pass-through), `anthropic`, `ollama` and `engines`; body and error plumbing in
//! `http`; the engine client in `forward`; calls translated from another dialect in `translated`.

mod anthropic;
mod engines;
mod forward;
pub mod http;
mod inference;
mod models;
mod ollama;
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
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::http::{json, percent_decode, text, ApiError, Body};
use crate::api::{native, Dialect};
use crate::config::{Config, ModelSettings};
use crate::engines::{llamacpp, Mode};
use crate::scheduler::Scheduler;
use crate::store::{name, Model, Store, StoreError};

/// What every handler can reach.
pub struct App {
    pub config: Config,
    pub store: Store,
    pub scheduler: Scheduler,
    pub engines: Arc<forward::EnginePools>,
    pub llama_binary: Result<PathBuf, String>,
    /// What measures memory: NVML on NVIDIA machines, host memory otherwise.
    pub memory: Arc<dyn crate::gpu::GpuProbe>,
}

impl App {
    /// Looks a model up by tag or id.
    pub fn resolve(&self, reference: &str) -> Result<Model, StoreError> {
        self.store.get(reference)
    }

    /// The `[[models]]` settings for a request: those of the name asked for, else of any of the model's tags,
    /// else defaults.
    pub fn settings_for(&self, requested: &str, tags: &[String]) -> ModelSettings {
        let requested = name::normalize(requested).ok();
        let by_name = |n: &str| self.config.models.iter().find(|m| m.name == n);
        requested
            .as_deref()
            .and_then(by_name)
            .or_else(|| tags.iter().find_map(|t| by_name(t)))
            .cloned()
            .unwrap_or_else(|| {
                ModelSettings::defaults_for(requested.as_deref().unwrap_or_default())
            })
    }
}

pub struct Server {
    listener: TcpListener,
    app: Arc<App>,
}

impl Server {
    pub async fn bind(app: Arc<App>) -> std::io::Result<Server> {
        let listener = TcpListener::bind(app.config.server.listen).await?;
        Ok(Server { listener, app })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` fires, then stops accepting and waits up to the grace period for in-flight
    /// requests (streams included) to finish.
    pub async fn run(self, shutdown: CancellationToken) {
        let graceful = GracefulShutdown::new();
        let http = hyper::server::conn::http1::Builder::new();
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            let _ = stream.set_nodelay(true);
            let app = self.app.clone();
            let service = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(route(app, req).await) }
            });
            let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        drop(self.listener);
        let grace = self.app.config.server.shutdown_grace;
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

/// Routes one request and renders any error in the dialect of its route.
async fn route(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
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
    let resp = dispatch(&app, req, &path)
        .await
        .unwrap_or_else(|e| e.into_response(dialect));
    tracing::debug!(%method, path, status = resp.status().as_u16(), us = started.elapsed().as_micros() as u64, "request");
    resp
}

async fn dispatch(
    app: &Arc<App>,
    req: Request<Incoming>,
    path: &str,
) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    if let Some((engine, rest)) = openai_route(path) {
        if let Some(e) = engine.filter(|e| *e != llamacpp::NAME) {
            return Err(ApiError::not_found(format!(
                "unknown engine {e:?}; this server runs {}",
                llamacpp::NAME
            )));
        }
        return match (&method, rest) {
            (&Method::GET, "models") => models::list_openai(app).await,
            (&Method::GET, r) if r.starts_with("models/") => {
                models::get_openai(app, percent_decode(&r["models/".len()..])?).await
            }
            (&Method::POST, "chat/completions") => {
                inference::handle(app, req, Mode::Completion, format!("/v1/{rest}")).await
            }
            (&Method::POST, "completions") => {
                inference::handle(app, req, Mode::Completion, format!("/v1/{rest}")).await
            }
            (&Method::POST, "embeddings") => {
                inference::handle(app, req, Mode::Embedding, format!("/v1/{rest}")).await
            }
            (&Method::POST, "messages") => anthropic::messages(app, req).await,
            (&Method::POST, "messages/count_tokens") => anthropic::count_tokens(app, req).await,
            _ => Err(ApiError::not_found(format!("no route for {method} {path}"))),
        };
    }
    match (&method, path) {
        (&Method::GET, "/") => Ok(text(StatusCode::OK, "dmr-supervisor is running")),
        (&Method::GET, "/version") => Ok(json(
            StatusCode::OK,
            &native::Version {
                version: env!("CARGO_PKG_VERSION"),
            },
        )),
        (&Method::GET, "/models") => models::list_native(app).await,
        (&Method::POST, "/models/create") => models::create(app, req).await,
        (&Method::GET, "/engines/ps") => engines::ps(app).await,
        (&Method::POST, "/engines/unload") => engines::unload(app, req).await,
        (&Method::GET, "/engines/status") => engines::status(app).await,
        (&Method::GET, "/engines/df") => engines::df(app).await,
        (&Method::GET, "/api/version") => ollama::version().await,
        (&Method::GET, "/api/tags") => ollama::tags(app).await,
        (&Method::GET, "/api/ps") => ollama::ps(app).await,
        (&Method::POST, "/api/show") => ollama::show(app, req).await,
        (&Method::POST, "/api/chat") => ollama::chat(app, req).await,
        (&Method::POST, "/api/generate") => ollama::generate(app, req).await,
        (&Method::DELETE, "/api/delete") => ollama::delete(app, req).await,
        (&Method::POST, "/api/embed") => ollama::embed(app, req, false).await,
        (&Method::POST, "/api/embeddings") => ollama::embed(app, req, true).await,
        (&Method::POST, "/anthropic/v1/messages") => anthropic::messages(app, req).await,
        (&Method::POST, "/anthropic/v1/messages/count_tokens") => {
            anthropic::count_tokens(app, req).await
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

/// Opens the store, imports configured GGUF files, resolves the engine binary and starts the scheduler.
pub fn build_app(config: Config, store: Store) -> App {
    let llama_binary = llamacpp::resolve_binary(
        config.engines.llamacpp.binary.as_deref(),
        std::env::var("PATH").ok().as_deref(),
        &crate::config::data_dir(),
    );
    match &llama_binary {
        Ok(p) => tracing::info!(binary = %p.display(), "llama.cpp engine"),
        Err(e) => tracing::warn!(error = e, "llama.cpp engine not available; loads will fail"),
    }
    let timeouts = crate::engines::Timeouts {
        startup: config.scheduler.startup_timeout,
        stop: config.scheduler.stop_timeout,
    };
    let s = &config.scheduler;
    let limits = crate::scheduler::Limits {
        budget: s.memory_budget,
        reserve: s.memory_reserve,
        max_loaded_models: s.max_loaded_models,
        max_queue: s.max_queue,
        queue_timeout: s.queue_timeout,
    };
    let memory: Arc<dyn crate::gpu::GpuProbe> = Arc::from(crate::gpu::detect());
    let engines = Arc::new(forward::EnginePools::default());
    let pools = engines.clone();
    let scheduler = Scheduler::start(
        llama_binary.clone(),
        timeouts,
        limits,
        memory.clone(),
        Box::new(move |endpoint| pools.forget(endpoint)),
    );
    App {
        config,
        store,
        scheduler,
        engines,
        llama_binary,
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
