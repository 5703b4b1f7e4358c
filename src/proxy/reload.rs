//! Configuration reload (SIGHUP, or `POST /config/reload`): re-read the file the daemon started with, validate
//! it whole, import new or changed GGUF files, then swap it in. Model settings, keep-alives, memory limits, body
//! limits, API keys, allowed origins, registry settings (mirrors, CA certificates) and the TLS certificate and key
//! (re-read from their files) take effect at once; idle runners of changed models are stopped so that the next
//! request starts them with the new settings (busy ones finish, and are restarted at the first request that finds
//! them idle); declared models added are pulled and loaded (`crate::declared`). Listeners, the store path and the engine binary need a restart (logged). An invalid file
//! changes nothing: its errors are logged and returned.

use std::sync::Arc;

use http::{Response, StatusCode};

use super::http::{json, ApiError, Body};
use super::{access_from, limits, App};
use crate::api::native::ReloadReport as Report;
use crate::api::ErrorKind;
use crate::config::{Config, ConfigDiff};
use crate::scheduler::Selector;
use crate::service;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("started without --config: nothing to reload")]
    NoFile,
    #[error("the new configuration is invalid; the running one is kept:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
    #[error("reload task failed: {0}")]
    Task(String),
}

/// Re-reads and applies the configuration file.
pub async fn reload(app: &Arc<App>) -> Result<Report, ReloadError> {
    let path = app.source.path.clone().ok_or(ReloadError::NoFile)?;
    service::reloading();
    let result = apply(app, &path).await;
    match &result {
        Ok(r) => tracing::info!(
            added = ?r.added, changed = ?r.changed, removed = ?r.removed, needs_restart = ?r.needs_restart,
            restarted_runners = r.restarted_runners, "configuration reloaded"
        ),
        Err(e) => tracing::error!(error = %e, "configuration reload failed"),
    }
    service::ready("serving");
    result
}

async fn apply(app: &Arc<App>, path: &std::path::Path) -> Result<Report, ReloadError> {
    let mut new = Config::load(path).map_err(|e| ReloadError::Invalid(e.lines()))?;
    if let Some(listen) = app.source.listen {
        new.server.listen = listen;
    }
    let old = app.config();
    let ConfigDiff {
        added,
        changed,
        removed,
        needs_restart,
    } = old.diff(&new);
    for key in &needs_restart {
        tracing::warn!(
            key,
            "changed in the configuration; takes effect after a restart"
        );
    }
    // Import what is new or changed before anyone can ask for it (unchanged files are skipped quickly).
    let imports: Vec<_> = new
        .models
        .iter()
        .filter(|m| added.contains(&m.name) || changed.contains(&m.name))
        .filter_map(|m| m.path.clone().map(|g| (m.name.clone(), g)))
        .collect();
    let store = app.clone();
    tokio::task::spawn_blocking(move || {
        for (name, gguf) in imports {
            if let Err(e) = store.store.import(&gguf, &name, &mut |_| {}) {
                tracing::error!(model = name, path = %gguf.display(), error = %e, "cannot import model");
            }
        }
    })
    .await
    .map_err(|e| ReloadError::Task(e.to_string()))?;
    app.access.store(Arc::new(access_from(&new)));
    app.registries.set_config(new.registry.clone());
    // The files were read and checked as a pair when the file was validated; a listener without TLS keeps none
    // until a restart (`server.tls_cert` in needs_restart).
    if let (Some(slot), Some(identity)) = (&app.tls, &new.server.tls) {
        slot.set(identity.certified.clone());
        tracing::info!(cert = %identity.cert.display(), key = %identity.key.display(), "TLS certificate reloaded");
    }
    app.scheduler.set_limits(limits(&new.scheduler));
    app.config.store(Arc::new(new));
    let ids: Vec<String> = changed
        .iter()
        .chain(&removed)
        .filter_map(|name| app.resolve(name).ok().map(|m| m.id))
        .collect();
    let restarted_runners = if ids.is_empty() {
        0
    } else {
        app.scheduler.unload(Selector::Models(ids), false).await
    };
    // Models by reference added are pulled, removed ones lose their task and aliases; changed ones start over.
    crate::declared::apply(app, &old.models, &app.config().models, &changed);
    Ok(Report {
        added,
        changed,
        removed,
        needs_restart,
        restarted_runners,
    })
}

/// `POST /config/reload`: from loopback, the Unix socket, or (when API keys are set) any authenticated caller (the
/// route's `Guard::Local`, checked by the router).
pub async fn handle(app: &Arc<App>) -> Result<Response<Body>, ApiError> {
    match reload(app).await {
        Ok(report) => Ok(json(StatusCode::OK, &report)),
        Err(e @ ReloadError::NoFile) => Err(ApiError::new(ErrorKind::Conflict, e.to_string())),
        Err(e @ ReloadError::Invalid(_)) => Err(ApiError::bad_request(e.to_string())),
        Err(e) => Err(ApiError::new(ErrorKind::Internal, e.to_string())),
    }
}
