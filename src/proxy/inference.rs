//! Inference routes (`/engines[/{engine}]/v1/{chat/completions,completions,embeddings,images/generations}` and
//! `/v1/...`): read the body under the limit, check it is JSON with a `model`, resolve the model in the store, pick
//! its engine by format (an engine named in the path must agree), get a lease on a ready runner from the scheduler
//! (starting one if needed), and forward the untouched body to the engine.

use std::sync::Arc;

use http::Response;
use hyper::body::Incoming;

use super::forward::forward;
use super::http::{parse_json, read_body, ApiError, Body};
use super::routes::{Ctx, Note};
use super::App;
use crate::api::{openai, ErrorKind};
use crate::engines::{llamacpp, EngineKind, LaunchSpec, Mode, RunnerWishes};
use crate::gpu::estimate::{self, LlamaFlags, ModelShape};
use crate::gpu::ProbeKind;
use crate::scheduler::{AcquireError, Demand, Lease, RunnerKey, Usage};
use crate::store::{Model, ModelFormat};

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

/// [`acquire`], for a request whose path names an engine (`/engines/vllm/v1/...`): it must be the model's.
pub async fn acquire_on(
    app: &Arc<App>,
    note: &Note,
    requested: &str,
    mode: Mode,
    in_path: Option<EngineKind>,
    wishes: &RunnerWishes,
) -> Result<(Lease, String), ApiError> {
    let model = app.model_named(requested)?;
    let engine = EngineKind::for_format(model.format);
    if let Some(named) = in_path.filter(|e| *e != engine) {
        return Err(ApiError::bad_request(format!(
            "model {requested} is a {} model, served by {}, not {}; use /engines/{}/v1/... or /engines/v1/...",
            model.format.as_str(),
            engine.name(),
            named.name(),
            engine.name()
        )));
    }
    if !engine.serves(mode) {
        let what = if mode == Mode::ImageGeneration {
            "cannot generate images (only diffusers models can)".to_string()
        } else {
            format!(
                "is an image model: use /v1/images/generations, not {} requests",
                mode.as_str()
            )
        };
        return Err(ApiError::bad_request(format!("model {requested} {what}")));
    }
    let settings = app.settings_for(requested, &model, mode);
    let context_size = match engine {
        EngineKind::LlamaCpp => wishes
            .context_size
            .or(settings.context_size)
            .or(llamacpp::packaged_context(&model.config))
            .unwrap_or(crate::config::DEFAULT_CONTEXT_SIZE),
        // vLLM's default is the model's own maximum (`max_position_embeddings`): 0 leaves the flag out.
        EngineKind::Vllm => wishes
            .context_size
            .or(settings.context_size)
            .or(model
                .config
                .context_size
                .and_then(|c| u32::try_from(c).ok()))
            .unwrap_or(0),
        EngineKind::Diffusers => 0,
    };
    let launch = LaunchSpec {
        model_name: model
            .tags
            .first()
            .cloned()
            .unwrap_or_else(|| model.id.clone()),
        engine,
        model_path: model.weights.clone(),
        chat_template: model.chat_template.clone(),
        mode,
        context_size,
        runtime_flags: settings.runtime_flags,
        keep_alive: wishes
            .keep_alive
            .or(settings.keep_alive)
            .unwrap_or(app.config().scheduler.keep_alive),
        vllm: settings.vllm,
    };
    let name = launch.model_name.clone();
    note.model(&name, launch.context_size);
    let demand = cached_demand(app, &model, &launch)?;
    let key = RunnerKey {
        model_id: model.id,
        mode,
    };
    let lease = app
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
    Ok((lease, name))
}

/// (model id, context size, runtime flags): what a prediction depends on.
pub type DemandKey = (String, u32, Vec<String>);

/// [`demand`], computed once per (model, context, flags): it reads the file's size and parses metadata, which
/// requests for a loaded model should not pay for.
fn cached_demand(app: &App, model: &Model, launch: &LaunchSpec) -> Result<Demand, ApiError> {
    let key = (
        model.id.clone(),
        launch.context_size,
        launch.runtime_flags.clone(),
    );
    let mut cache = app.demands.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = cache.get(&key) {
        return Ok(d.clone());
    }
    let d = demand(app, model, launch)?;
    if cache.len() >= 1024 {
        cache.clear();
    }
    cache.insert(key, d.clone());
    Ok(d)
}

/// What a vLLM or diffusers model is expected to take. vLLM takes `gpu_memory_utilization` (0.9 by default) of
/// the GPU whatever the model, so on a GPU that share of the largest device is its demand; otherwise (and for
/// diffusers) the weights plus a quarter for activations and the engine's own footprint. The first measurement
/// replaces it.
fn files_demand(app: &App, model: &Model, launch: &LaunchSpec) -> u64 {
    let weights: u64 = model
        .files
        .iter()
        .filter_map(|d| d.strip_prefix("sha256:"))
        .filter_map(|hex| std::fs::metadata(app.store.root().join("blobs/sha256").join(hex)).ok())
        .map(|m| m.len())
        .sum();
    let gpu = app.scheduler.probe_kind() == ProbeKind::Nvml;
    if gpu && launch.engine == EngineKind::Vllm {
        let share = launch.vllm.gpu_memory_utilization.unwrap_or(0.9);
        let largest = app
            .memory
            .snapshot(&[])
            .ok()
            .and_then(|s| s.devices.iter().map(|d| d.total).max())
            .unwrap_or(0);
        if largest > 0 {
            return (largest as f64 * share) as u64;
        }
    }
    let overhead = if gpu {
        estimate::ENGINE_OVERHEAD_GPU
    } else {
        estimate::ENGINE_OVERHEAD_CPU
    };
    weights + weights / 4 + overhead
}

/// What loading `model` with `launch` is expected to take: the GGUF prediction (weights, KV cache, compute
/// buffers, per the runtime flags) plus the engine's own overhead. In CPU mode that is host memory. Flags that pin
/// GPUs (`--main-gpu`, `--tensor-split`) pin the demand; otherwise the scheduler places it. An unknown
/// architecture counts its file size. Flags with bad values are the caller's error (400).
fn demand(app: &App, model: &Model, launch: &LaunchSpec) -> Result<Demand, ApiError> {
    if model.format != ModelFormat::Gguf {
        return Ok(Demand::Any(files_demand(app, model, launch)));
    }
    let flags =
        LlamaFlags::parse(&launch.runtime_flags, launch.context_size as u64).map_err(|e| {
            ApiError::bad_request(format!("runtime flags of {}: {e}", launch.model_name))
        })?;
    let bytes = std::fs::metadata(&model.weights)
        .map(|m| m.len())
        .unwrap_or(0);
    let cpu = app.scheduler.probe_kind() != ProbeKind::Nvml;
    let overhead = if cpu {
        estimate::ENGINE_OVERHEAD_CPU
    } else {
        estimate::ENGINE_OVERHEAD_GPU
    };
    let total = match ModelShape::from_gguf(&model.config.gguf, bytes) {
        Ok(shape) => estimate::predict(&shape, &flags, cpu).total() + overhead,
        Err(_) => bytes + overhead,
    };
    let pinned = flags.main_gpu.is_some() || !flags.tensor_split.is_empty();
    Ok(if pinned && !cpu {
        let per_device: Usage = estimate::spread(total, &flags, app.scheduler.device_count())
            .into_iter()
            .enumerate()
            .filter(|(_, b)| *b > 0)
            .map(|(i, b)| (i as u32, b))
            .collect();
        Demand::Pinned(per_device)
    } else {
        Demand::Any(total)
    })
}
