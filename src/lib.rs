//! dmr-supervisor: serves local models behind the OpenAI, Anthropic, Ollama and Docker Model Runner APIs by
//! supervising one engine process per loaded model and mode (llama-server for GGUF, vLLM for safetensors, the
//! diffusers runner for image pipelines). `main.rs` only parses the command line; [`start`] and [`Running::run`] are
//! the daemon, callable in-process by tests. See ARCHITECTURE.md for the map and the invariants.

pub mod api;
pub mod cli;
pub mod config;
pub mod declared;
pub mod engines;
pub mod gpu;
pub mod launch;
pub mod logs;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod scheduler;
pub mod service;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use config::Config;
use proxy::{App, Server};
use store::Store;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the model store at {path}: {source}")]
    Store {
        path: String,
        source: store::StoreError,
    },
    /// The engine sandbox's settings cannot be applied (`[engines] user` names no user).
    #[error("{0}")]
    Sandbox(String),
    #[error("the start-up task failed: {0}")]
    Task(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bound, ready daemon.
pub struct Running {
    server: Server,
    app: Arc<App>,
}

/// Opens the store, imports the configured models, resolves engines and binds the listener.
/// `source` says where `config` came from, for reloads.
pub async fn start(config: Config, source: proxy::ConfigSource) -> Result<Running, StartError> {
    let sandbox = engines::sandbox::confine::Sandbox::new(&config.engines.sandbox)
        .map_err(StartError::Sandbox)?;
    let store_path = config.store.path.clone();
    let models = config.models.clone();
    let store = tokio::task::spawn_blocking(move || {
        let store = Store::open(&store_path)?;
        // Blobs no model names (a refused pull or load before a crash): nothing is in flight yet.
        match store.remove_orphan_blobs() {
            Ok(c) => tracing::info!(blobs = c.blobs, bytes = c.bytes, "removed blobs no model names"),
            Err(e) => tracing::warn!(error = %e, "cannot collect orphan blobs"),
        }
        for m in models.iter() {
            let Some(gguf) = &m.path else { continue };
            match store.import(gguf, &m.name, &mut |_| {}) {
                Ok(model) => tracing::info!(model = m.name, id = model.id, path = %gguf.display(), "model ready"),
                // One broken entry must not take the others down; requests for it answer 404.
                Err(e) => tracing::error!(model = m.name, path = %gguf.display(), error = %e, "cannot import model"),
            }
        }
        Ok(store)
    })
    .await
    .map_err(|e| StartError::Task(e.to_string()))?
    .map_err(|source| StartError::Store { path: config.store.path.display().to_string(), source })?;
    let addr = config.server.listen;
    let app = Arc::new(proxy::build_app(config, source, store, sandbox));
    let server = Server::bind(app.clone())
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    // Models by reference are pulled, and preloaded ones loaded, in the background: the node listens at once and
    // is not ready until they are.
    declared::start(&app);
    Ok(Running { server, app })
}

/// Stops a running daemon the way routers and service managers expect.
pub struct Stopper {
    app: Arc<proxy::App>,
    shutdown: CancellationToken,
}

impl Stopper {
    /// SIGTERM: turn not-ready now (`/readyz` and `/health` answer 503), keep serving for `[server] drain_delay` so
    /// that routers notice and stop sending, then stop accepting and drain.
    pub fn terminate(&self) {
        let delay = self.app.config().server.drain_delay;
        tracing::info!(
            ?delay,
            "not ready any more; serving on until routers have noticed, then draining"
        );
        self.app.draining.cancel();
        service::stopping();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            shutdown.cancel();
        });
    }

    /// SIGINT (Ctrl-C at a terminal): no drain delay, stop accepting now and drain.
    pub fn interrupt(&self) {
        self.app.draining.cancel();
        self.shutdown.cancel();
    }
}

impl Running {
    /// Re-reads the configuration file and applies it (SIGHUP); errors are logged and the running one kept.
    pub fn reloader(&self) -> impl Fn() + Send + Sync + 'static {
        let app = self.app.clone();
        move || {
            let app = app.clone();
            tokio::spawn(async move {
                let _ = proxy::reload::reload(&app).await;
            });
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.server.local_addr()
    }

    /// What the signal handler calls to stop the daemon (`Stopper::terminate` on SIGTERM, `interrupt` on SIGINT).
    pub fn stopper(&self, shutdown: CancellationToken) -> Stopper {
        Stopper {
            app: self.app.clone(),
            shutdown,
        }
    }

    /// Serves until `shutdown` fires; then drains requests and stops every engine (SIGTERM, grace, SIGKILL). The
    /// node is not-ready from the moment it starts draining (`Stopper`), or from `shutdown` at the latest.
    pub async fn run(self, shutdown: CancellationToken) {
        let status = tokio::spawn(service::supervise(
            self.app.scheduler.snapshots(),
            self.app.declared.clone(),
            shutdown.clone(),
        ));
        let (stopping, app) = (shutdown.clone(), self.app.clone());
        tokio::spawn(async move {
            stopping.cancelled().await;
            app.draining.cancel();
            service::stopping();
            app.shutdown.cancel();
        });
        self.server.run(shutdown).await;
        status.abort();
        tracing::info!("stopping engines");
        self.app.scheduler.shutdown().await;
        tracing::info!("stopped");
    }
}
