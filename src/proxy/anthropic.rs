//! Anthropic's Messages API (`/anthropic/v1/messages`, `/v1/messages`, `/engines[/{engine}]/v1/messages`, each
//! with `/count_tokens`) over any engine: the request is translated to an OpenAI chat completion, sent to the
//! runner, and the answer translated back — event by event when streaming. Token counts come from the engine's
//! own tokenizer with the chat template applied.

use std::sync::Arc;
use std::time::Instant;

use http::{Response, StatusCode};
use hyper::body::Incoming;

use super::http::{json, parse_json, read_body, ApiError, Body};
use super::inference::acquire;
use super::routes::Ctx;
use super::{translated, App};
use crate::api::anthropic::{self, CountTokensOut, MessagesIn, Purpose, StreamTranslator};
use crate::api::openai;
use crate::api::ErrorKind;
use crate::engines::{Mode, RunnerWishes};

async fn read(
    app: &Arc<App>,
    ctx: &Ctx,
    req: http::Request<Incoming>,
) -> Result<MessagesIn, ApiError> {
    let (_, body) = read_body(req, app.body_limits()).await?;
    ctx.note.body(&body);
    parse_json(&body)
}

pub async fn messages(
    app: &Arc<App>,
    ctx: &Ctx,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let started = Instant::now();
    let input = read(app, ctx, req).await?;
    let request = input
        .to_openai(Purpose::Generate)
        .map_err(ApiError::bad_request)?;
    translated::check_images(app, request.image_urls(), &input.model)?;
    let (mut lease, model) = acquire(
        app,
        &ctx.note,
        &input.model,
        Mode::Completion,
        &RunnerWishes::default(),
    )
    .await?;
    let resp = translated::post(
        &app.engines,
        &mut lease,
        "/v1/chat/completions",
        &request,
        &model,
        request.stream,
    )
    .await?;
    if request.stream {
        return Ok(translated::stream(
            resp,
            lease,
            StreamTranslator::new(&model),
            "text/event-stream",
            started,
        ));
    }
    let answer: openai::ChatResponse = translated::collect(resp, &model).await?;
    drop(lease);
    Ok(json(
        StatusCode::OK,
        &anthropic::from_openai(&answer, &model),
    ))
}

pub async fn count_tokens(
    app: &Arc<App>,
    ctx: &Ctx,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let input = read(app, ctx, req).await?;
    let request = input
        .to_openai(Purpose::CountTokens)
        .map_err(ApiError::bad_request)?;
    let (mut lease, model) = acquire(
        app,
        &ctx.note,
        &input.model,
        Mode::Completion,
        &RunnerWishes::default(),
    )
    .await?;
    let counting = lease.engine.token_counting().ok_or_else(|| {
        ApiError::bad_request(format!("{} cannot count tokens", lease.engine.name()))
    })?;
    let chat = serde_json::to_value(&request).map_err(|e| {
        ApiError::new(
            ErrorKind::Internal,
            format!("cannot encode the request: {e}"),
        )
    })?;
    let body = (counting.body)(chat);
    let resp = translated::post(
        &app.engines,
        &mut lease,
        counting.path,
        &body,
        &model,
        false,
    )
    .await?;
    let answer: serde_json::Value = translated::collect(resp, &model).await?;
    let input_tokens = (counting.count)(answer).map_err(|e| {
        ApiError::new(
            ErrorKind::BadGateway,
            format!("unreadable answer from the engine serving {model}: {e}"),
        )
    })?;
    Ok(json(StatusCode::OK, &CountTokensOut { input_tokens }))
}
