//! Rerank and score (`/rerank`, `/score` at the root, under `/v1/`, `/engines[/{engine}]/v1/` and DMR's
//! `/engines[/{engine}]/`), and tokenize/detokenize (`/engines[/{engine}]/tokenize`, `/detokenize`). The body is
//! checked (`api::rerank`), the model's engine says where it serves the route (`Engine::route_path`), and the
//! untouched body is forwarded to a runner of the model: a reranking runner for rerank and score (its own process,
//! like an embedding runner), and for tokenize the runner of the model already running (completion first), else a
//! completion runner. An engine without `/score` but with rerank (llama.cpp) gets score requests translated into
//! reranks; an engine with neither (diffusers) is refused with a 400 naming it.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Response, StatusCode};
use hyper::body::Incoming;

use super::forward::forward;
use super::http::{json, parse_json, read_body, ApiError, Body};
use super::inference::{acquire_on, planner};
use super::routes::Ctx;
use super::{translated, App};
use crate::api::rerank::{ModelOnly, RerankAnswer, RerankRequest, ScoreRequest};
use crate::engines::{EngineKind, EngineRoute, Mode, RunnerWishes};

/// `POST …/rerank`: checked, then passed to the engine's rerank route (llama-server and vLLM sort by score and
/// honour `top_n` themselves).
pub async fn rerank(
    app: &Arc<App>,
    ctx: &Ctx,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let in_path = ctx.engine()?;
    let (parts, body) = read_body(req, app.body_limits()).await?;
    ctx.note.body(&body);
    let checked = parse_json::<RerankRequest>(&body)?
        .check()
        .map_err(ApiError::bad_request)?;
    let path = route_of(app, &checked.model, EngineRoute::Rerank, "rerank")?;
    let (lease, name) = acquire_on(
        app,
        &ctx.note,
        &checked.model,
        Mode::Reranking,
        in_path,
        &RunnerWishes::default(),
    )
    .await?;
    let upstream = with_query(path, parts.uri.query());
    forward(&app.engines, lease, parts, &upstream, body, &name, false).await
}

/// `POST …/score`: passed to the engine's score route (vLLM), or translated into reranks for an engine that has
/// rerank only (llama.cpp), the answer in vLLM's shape and input order.
pub async fn score(
    app: &Arc<App>,
    ctx: &Ctx,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let in_path = ctx.engine()?;
    let (parts, body) = read_body(req, app.body_limits()).await?;
    ctx.note.body(&body);
    let checked = parse_json::<ScoreRequest>(&body)?
        .check()
        .map_err(ApiError::bad_request)?;
    let engine = engine_of(app, &checked.model)?;
    let passed = engine.route_path(EngineRoute::Score);
    let rerank_path = match (passed, engine.route_path(EngineRoute::Rerank)) {
        (Some(_), _) => None,
        (None, Some(rerank)) => Some(rerank),
        (None, None) => return Err(refused(engine, "score")),
    };
    let (mut lease, name) = acquire_on(
        app,
        &ctx.note,
        &checked.model,
        Mode::Reranking,
        in_path,
        &RunnerWishes::default(),
    )
    .await?;
    let Some(rerank_path) = rerank_path else {
        let upstream = with_query(passed.unwrap_or_default(), parts.uri.query());
        return forward(&app.engines, lease, parts, &upstream, body, &name, false).await;
    };
    let mut answers = Vec::new();
    for call in checked.reranks() {
        let resp =
            translated::post(&app.engines, &mut lease, rerank_path, &call, &name, false).await?;
        let answer: RerankAnswer = translated::collect(resp, &name).await?;
        answers.push((call, answer));
    }
    drop(lease);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let answer = checked
        .answer(&answers, score_id(now), now.as_secs() as i64, &name)
        .map_err(|e| {
            ApiError::new(
                crate::api::ErrorKind::BadGateway,
                format!("the engine serving {name}: {e}"),
            )
        })?;
    Ok(json(StatusCode::OK, &answer))
}

/// `POST /engines[/{engine}]/tokenize` and `/detokenize`: the body, in the engine's own shape, passed to the
/// model's runner.
pub async fn tokens(
    app: &Arc<App>,
    ctx: &Ctx,
    req: http::Request<Incoming>,
    route: EngineRoute,
) -> Result<Response<Body>, ApiError> {
    let in_path = ctx.engine()?;
    let (parts, body) = read_body(req, app.body_limits()).await?;
    ctx.note.body(&body);
    let requested = parse_json::<ModelOnly>(&body)?
        .model
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad_request("\"model\" is required"))?;
    let what = if route == EngineRoute::Tokenize {
        "tokenize"
    } else {
        "detokenize"
    };
    let path = route_of(app, &requested, route, what)?;
    // Any runner of the model knows its vocabulary: use one that runs rather than start another.
    let model = planner(app, &app.config()).model(&requested)?;
    let running: Vec<Mode> = app
        .scheduler
        .snapshot()
        .await
        .into_iter()
        .filter(|r| r.model_id == model.id)
        .map(|r| r.mode)
        .collect();
    let mode = Mode::ALL
        .into_iter()
        .find(|m| running.contains(m))
        .unwrap_or(Mode::Completion);
    let (lease, name) = acquire_on(
        app,
        &ctx.note,
        &requested,
        mode,
        in_path,
        &RunnerWishes::default(),
    )
    .await?;
    let upstream = with_query(path, parts.uri.query());
    forward(&app.engines, lease, parts, &upstream, body, &name, false).await
}

/// The engine of the model a request names (404 for an unknown model).
fn engine_of(app: &App, requested: &str) -> Result<EngineKind, ApiError> {
    let model = planner(app, &app.config()).model(requested)?;
    Ok(EngineKind::for_format(model.format))
}

/// Where the model's engine serves `route`, or a 400 naming the engine.
fn route_of(
    app: &App,
    requested: &str,
    route: EngineRoute,
    what: &str,
) -> Result<&'static str, ApiError> {
    let engine = engine_of(app, requested)?;
    engine
        .route_path(route)
        .ok_or_else(|| refused(engine, what))
}

fn refused(engine: EngineKind, what: &str) -> ApiError {
    ApiError::bad_request(format!(
        "{} does not serve {what}: its models cannot be asked for it",
        engine.name()
    ))
}

fn with_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

/// `score-` and 32 hex digits from the clock and a counter, as vLLM's ids look.
fn score_id(now: std::time::Duration) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("score-{:016x}{:016x}", now.as_nanos() as u64, n)
}
