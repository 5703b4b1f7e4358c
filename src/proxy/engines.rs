//! Engine management routes: `/engines/ps`, `/engines/unload`, `/engines/status`, `/engines/df`,
//! `/engines/install-backend`.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use http::{Response, StatusCode};
use hyper::body::Incoming;

use super::http::{json, parse_json, read_body, ApiError, Body};
use super::App;
use crate::api::{native, ErrorKind};
use crate::engines::{install, EngineKind};
use crate::gpu;
use crate::scheduler::Selector;

pub async fn ps(app: &Arc<App>) -> Result<Response<Body>, ApiError> {
    let runners: Vec<native::RunnerStatus> = app
        .scheduler
        .snapshot()
        .await
        .into_iter()
        .map(|r| native::RunnerStatus {
            backend_name: r.engine.name(),
            model_name: r.model_name,
            mode: r.mode.as_str(),
            last_used: r
                .last_used
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64),
            in_use: r.in_flight > 0,
            loading: r.loading,
            keep_alive: r.keep_alive.to_string(),
            pid: r.endpoint.map(|e| e.pid),
            port: r.endpoint.map(|e| e.port),
            queued: r.queued,
            in_flight: r.in_flight,
            context_size: r.context_size,
            predicted_memory: r.predicted,
            measured_memory: r.measured,
            devices: r.usage,
            draft_model: r.draft,
            pinned: r.pinned,
        })
        .collect();
    Ok(json(StatusCode::OK, &runners))
}

/// `POST /engines/unload {"all":true}` or `{"models":[...]}`: stops idle runners and answers how many.
pub async fn unload(
    app: &Arc<App>,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (_, body) = read_body(req, app.body_limits()).await?;
    let request: native::UnloadRequest = if body.is_empty() {
        Default::default()
    } else {
        parse_json(&body)?
    };
    if let Some(b) = request
        .backend
        .as_deref()
        .filter(|b| !b.is_empty() && EngineKind::from_name(b).is_none())
    {
        return Err(ApiError::bad_request(format!("unknown backend {b:?}")));
    }
    let selector = if request.all {
        Selector::All
    } else {
        let mut ids = Vec::new();
        for m in &request.models {
            ids.push(app.resolve(m).map_err(ApiError::from)?.id);
        }
        Selector::Models(ids)
    };
    let n = app.scheduler.unload(selector, false).await;
    Ok(json(
        StatusCode::OK,
        &native::UnloadResponse {
            unloaded_runners: n,
        },
    ))
}

pub async fn status(app: &Arc<App>) -> Result<Response<Body>, ApiError> {
    let mut s = native::EngineStatus::new();
    let finder = app.finder.clone();
    let found = tokio::task::spawn_blocking(move || finder.all())
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("engine lookup failed: {e}")))?;
    let installing = app
        .installing
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for (engine, command) in found {
        let line = match command {
            _ if installing.contains(&engine) => "Installing".to_string(),
            Ok(c) => {
                let version =
                    install::version(&c.program).unwrap_or_else(|| "version unknown".into());
                format!("Running: {} {version}", c.program.display())
            }
            Err(e) => format!("Not Installed: {e}"),
        };
        s.insert(engine.name(), line);
    }
    Ok(json(StatusCode::OK, &s))
}

/// `GET /engines/df`: the store's size on disk and each device's memory, with what each runner uses on it.
pub async fn df(app: &Arc<App>) -> Result<Response<Body>, ApiError> {
    let runners: Vec<_> = app
        .scheduler
        .snapshot()
        .await
        .into_iter()
        .filter_map(|r| r.endpoint.map(|e| (r.model_name, r.mode, e.pid)))
        .collect();
    let app2 = app.clone();
    let (store, memory) = tokio::task::spawn_blocking(move || {
        let store = native::StoreUsage {
            path: app2.store.root().display().to_string(),
            models: app2.store.list().map(|m| m.len()).unwrap_or(0),
            bytes: dir_bytes(&app2.store.root().join("blobs")),
        };
        let pids: Vec<u32> = runners.iter().map(|(_, _, pid)| *pid).collect();
        let snap = app2.memory.snapshot(&pids);
        (store, snap.map(|s| (s, runners)))
    })
    .await
    .map_err(|e| ApiError::new(ErrorKind::Internal, format!("df task failed: {e}")))?;
    let (snap, runners) = memory
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("cannot read memory: {e}")))?;
    let memory = native::MemoryUsage {
        probe: app.memory.kind().as_str(),
        devices: snap
            .devices
            .iter()
            .map(|d| native::DeviceUsage {
                index: d.index,
                name: d.name.clone(),
                total: d.total,
                free: d.free,
                used: d.used,
            })
            .collect(),
        runners: runners
            .into_iter()
            .map(|(model_name, mode, pid)| native::RunnerMemory {
                model_name,
                mode: mode.as_str(),
                pid,
                devices: gpu::attribute(&snap, pid, gpu::pgid_of),
            })
            .collect(),
    };
    Ok(json(StatusCode::OK, &native::DiskFree { store, memory }))
}

/// Bytes of the regular files under `dir`, recursively (missing → 0).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// The engine a request's `backend` names; 400 naming the engines otherwise.
fn backend_named(name: &str) -> Result<EngineKind, ApiError> {
    EngineKind::from_name(name).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown backend {name:?}; backends are {}",
            EngineKind::ALL.map(EngineKind::name).join(", ")
        ))
    })
}

/// `POST /engines/install-backend {"backend": "vllm"}`: runs the engine's install recipe, streaming its output as
/// NDJSON lines (`{"type":"progress","message":…}`, then `success` or `error`). Allowed from loopback, the Unix
/// socket, or with an API key, like a reload; one install per engine at a time (409 otherwise).
pub async fn install_backend(
    app: &Arc<App>,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (_, body) = read_body(req, app.body_limits()).await?;
    let request: native::InstallRequest = parse_json(&body)?;
    let engine = backend_named(&request.backend)?;
    if let Some(v) = request
        .version
        .as_deref()
        .filter(|v| !v.is_empty() && *v != "latest")
    {
        return Err(ApiError::bad_request(format!(
            "version {v:?}: each recipe installs its pinned version; ask for \"latest\""
        )));
    }
    if !app
        .installing
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(engine)
    {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("{} is already being installed", engine.name()),
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let app2 = app.clone();
    tokio::spawn(async move {
        tracing::info!(engine = engine.name(), "installing engine");
        let progress = |line: String| {
            tracing::info!(engine = engine.name(), "{line}");
            let _ = tx.send(native::ProgressLine::message("progress", line).to_line());
        };
        let result = install::run(engine, &[], progress).await;
        app2.installing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&engine);
        let line = match result {
            Ok(at) => {
                tracing::info!(engine = engine.name(), at, "engine installed");
                native::ProgressLine::message(
                    "success",
                    format!("installed {}: {at}", engine.name()),
                )
            }
            Err(e) => {
                tracing::error!(engine = engine.name(), error = e, "engine install failed");
                native::ProgressLine::message("error", e)
            }
        };
        let _ = tx.send(line.to_line());
    });
    Ok(super::http::ndjson(rx, "application/x-ndjson"))
}

/// `POST /engines/uninstall-backend {"backend": "vllm"}`: removes what `install-backend` installed (the engine's
/// directory under the data directory; an engine found elsewhere, as `[engines.*] binary` or on `$PATH`, is the
/// operator's and is left alone). 409 while that engine runs a model or is being installed, 404 when nothing of
/// it is installed there. Local-only, like the install.
pub async fn uninstall_backend(
    app: &Arc<App>,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (_, body) = read_body(req, app.body_limits()).await?;
    let request: native::UninstallRequest = parse_json(&body)?;
    let engine = backend_named(&request.backend)?;
    let conflict = |why: String| ApiError::new(ErrorKind::Conflict, why);
    if app
        .installing
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&engine)
    {
        return Err(conflict(format!("{} is being installed", engine.name())));
    }
    let running: Vec<String> = app
        .scheduler
        .snapshot()
        .await
        .into_iter()
        .filter(|r| r.engine == engine)
        .map(|r| r.model_name)
        .collect();
    if !running.is_empty() {
        return Err(conflict(format!(
            "{} runs {}: unload first (POST /engines/unload)",
            engine.name(),
            running.join(", ")
        )));
    }
    let dir = engine.install_dir(&app.finder.data_dir);
    if !dir.exists() {
        return Err(ApiError::not_found(format!(
            "{} is not installed by dmr-supervisor (nothing at {})",
            engine.name(),
            dir.display()
        )));
    }
    let gone = dir.clone();
    tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&gone))
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("uninstall task failed: {e}")))?
        .map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                format!("cannot remove {}: {e}", dir.display()),
            )
        })?;
    tracing::info!(engine = engine.name(), dir = %dir.display(), "engine uninstalled");
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "message": format!("uninstalled {}: removed {}", engine.name(), dir.display()) }),
    ))
}
