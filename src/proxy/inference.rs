//! Inference routes (`/engines[/{engine}]/v1/{chat/completions,completions,embeddings,images/generations}` and
//! `/v1/...`): read the body under the limit, check it is JSON with a `model`, plan the launch (`launch`: the
//! model, its engine, settings and memory demand), get a lease on a ready runner from the scheduler (starting one
//! if needed), and forward the untouched body to the engine.

use std::sync::Arc;

use http::Response;
use hyper::body::Incoming;

use super::forward::forward;
use super::http::{parse_json, read_body, ApiError, Body};
use super::routes::{Ctx, Note};
use super::App;
use crate::api::{openai, ErrorKind};
use crate::engines::{EngineKind, Mode, RunnerWishes};
use crate::gpu::ProbeKind;
pub use crate::launch::DemandKey;
use crate::launch::{Plan, PlanError, Planner};
use crate::scheduler::{AcquireError, Lease};

/// Seconds a client is told to wait (`Retry-After`) when the queue for memory is full.
const RETRY_AFTER_SECS: u64 = 5;

pub async fn handle(
    app: &Arc<App>,
    ctx: &Ctx,
    req: http::Request<Incoming>,
    mode: Mode,
    engine: Option<EngineKind>,
    upstream: String,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = read_body(req, app.body_limits()).await?;
    ctx.note.body(&body);
    let head: openai::RequestHead = parse_json(&body)?;
    let requested = match head.model {
        Some(m) if !m.is_empty() => m,
        _ => return Err(ApiError::bad_request("\"model\" is required")),
    };
    if mode == Mode::Completion {
        let urls = openai::image_urls(&body)
            .map_err(|e| ApiError::bad_request(format!("the chat's messages do not parse: {e}")))?;
        super::translated::check_images(app, urls.iter().map(String::as_str), &requested)?;
    }
    let (lease, name) = acquire_on(
        app,
        &ctx.note,
        &requested,
        mode,
        engine,
        &RunnerWishes::default(),
    )
    .await?;
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{upstream}?{q}"),
        None => upstream,
    };
    forward(
        &app.engines,
        lease,
        parts,
        &path_and_query,
        body,
        &name,
        head.stream == Some(true),
    )
    .await
}

/// Resolves `requested` in the store and waits for a lease on a ready runner for it (starting one if needed).
/// `wishes` override the configured context size and keep-alive for this request. The model and its context size
/// are noted in `note` (the request's, for metrics and the inspector) before the wait. Returns the lease and the
/// model's display name.
pub async fn acquire(
    app: &Arc<App>,
    note: &Note,
    requested: &str,
    mode: Mode,
    wishes: &RunnerWishes,
) -> Result<(Lease, String), ApiError> {
    acquire_on(app, note, requested, mode, None, wishes).await
}

/// [`acquire`], for a request whose path names an engine (`/engines/vllm/v1/...`): it must be the model's. The
/// launch is planned (`launch::Planner`), then the scheduler is asked for a lease.
pub async fn acquire_on(
    app: &Arc<App>,
    note: &Note,
    requested: &str,
    mode: Mode,
    in_path: Option<EngineKind>,
    wishes: &RunnerWishes,
) -> Result<(Lease, String), ApiError> {
    let config = app.config();
    let Plan {
        key,
        launch,
        demand,
    } = planner(app, &config).plan(requested, mode, in_path, wishes)?;
    let name = launch.model_name.clone();
    note.model(&name, launch.context_size);
    let mut lease = app
        .scheduler
        .acquire(key, launch, demand)
        .await
        .map_err(|e| match e {
            AcquireError::ShuttingDown => ApiError::new(ErrorKind::Unavailable, e.to_string()),
            AcquireError::Unloaded => ApiError::new(
                ErrorKind::Unavailable,
                format!("{name} was unloaded while loading"),
            ),
            AcquireError::EngineFailed(msg) => ApiError::new(
                ErrorKind::BadGateway,
                format!("unable to load runner for {name}: {msg}"),
            ),
            AcquireError::NoMemory(msg) => ApiError::new(ErrorKind::InsufficientMemory, msg),
            AcquireError::Busy(msg) => ApiError {
                retry_after: Some(RETRY_AFTER_SECS),
                ..ApiError::new(ErrorKind::Unavailable, msg)
            },
        })?;
    // If the engine turns out to have died before the request reaches it, the request is planned and acquired
    // again the same way (`forward::send`).
    let (app, requested, wishes) = (app.clone(), requested.to_string(), wishes.clone());
    lease.renew = Some(Box::new(move || {
        Box::pin(async move {
            let config = app.config();
            let plan = planner(&app, &config)
                .plan(&requested, mode, in_path, &wishes)
                .ok()?;
            app.scheduler
                .acquire(plan.key, plan.launch, plan.demand)
                .await
                .ok()
        })
    }));
    Ok((lease, name))
}

/// What launch planning reads, from the app's parts.
pub fn planner<'a>(app: &'a App, config: &'a crate::config::Config) -> Planner<'a> {
    Planner {
        store: &app.store,
        config,
        probe: &*app.memory,
        gpu: app.scheduler.probe_kind() == ProbeKind::Nvml,
        devices: app.scheduler.device_count(),
        demands: &app.demands,
    }
}

impl From<PlanError> for ApiError {
    fn from(e: PlanError) -> ApiError {
        match e {
            PlanError::NotFound(_) => ApiError::not_found(e.to_string()),
            PlanError::Refused(why) => ApiError::bad_request(why),
            PlanError::Store(e) => e.into(),
        }
    }
}
