//! Engine management routes: `/engines/ps`, `/engines/unload`, `/engines/status`, `/engines/df`.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use http::{Response, StatusCode};
use hyper::body::Incoming;

use super::http::{json, parse_json, read_body, ApiError, Body};
use super::App;
use crate::api::{native, ErrorKind};
use crate::engines::EngineKind;
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
        })
        .collect();
    Ok(json(StatusCode::OK, &runners))
}

/// `POST /engines/unload {"all":true}` or `{"models":[...]}`: stops idle runners and answers how many.
pub async fn unload(
    app: &Arc<App>,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (_, body) = read_body(req, app.config().server.max_body_bytes).await?;
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
    for (engine, command) in app.commands.iter() {
        let line = match command {
            Ok(c) => format!("Running: {}", c.program.display()),
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
