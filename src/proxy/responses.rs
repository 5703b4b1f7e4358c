//! OpenAI's Responses API (`/v1/responses`, `/responses`, `/engines[/{engine}]/v1/responses`) over any engine:
//! the request is translated to an OpenAI chat completion (with the conversation of `previous_response_id`
//! prepended), sent to the runner, and the answer translated back — event by event when streaming — then kept
//! in the [`store`] unless `store: false`. `GET`/`DELETE …/responses/{id}` and `…/{id}/input_items` read the
//! store. Translated for every engine, never passed through: llama-server's own `/v1/responses` keeps nothing
//! (no `GET`, no `previous_response_id`) and vLLM's keeps them, if at all, in the engine, which forgets them
//! when it stops; one translation keeps the store, chaining and answers the same on every engine.

pub mod store;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{Response, StatusCode};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

use super::http::{json, parse_json, query_value, read_body, ApiError, Body};
use super::inference::acquire_on;
use super::routes::Ctx;
use super::{translated, App};
use crate::api::openai;
use crate::api::responses::{
    self, Deleted, Item, Page, ResponseObject, ResponsesIn, StreamTranslator,
};
use crate::api::StreamTranslate;
use crate::engines::{Mode, RunnerWishes};
use store::{Kept, Limits, ResponseStore};

/// A fresh response id: `resp_` and 48 hex digits, from the clock, a counter and the process id.
fn new_id() -> (String, i64) {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut h = Sha256::new();
    h.update(now.as_nanos().to_le_bytes());
    h.update(n.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    let digest = hex::encode(h.finalize());
    (format!("resp_{}", &digest[..48]), now.as_secs() as i64)
}

fn limits(app: &App) -> Limits {
    let server = &app.config().server;
    Limits {
        max: server.responses_max,
        ttl: server.responses_ttl,
    }
}

fn kept(app: &App, id: &str) -> Result<Kept, ApiError> {
    app.responses
        .get(id, limits(app).ttl, Instant::now())
        .ok_or_else(|| ApiError::not_found(format!("response with id {id:?} not found")))
}

/// `POST …/responses`.
pub async fn create(
    app: &Arc<App>,
    ctx: &Ctx,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let started = Instant::now();
    let engine = ctx.engine()?;
    let (_, body) = read_body(req, app.body_limits()).await?;
    ctx.note.body(&body);
    let input: ResponsesIn = parse_json(&body)?;
    input.check().map_err(ApiError::bad_request)?;
    let (id, created_at) = new_id();
    let items = input.items(&id).map_err(ApiError::bad_request)?;
    let previous = match &input.previous_response_id {
        None => None,
        Some(prev) => Some(Arc::new(kept(app, prev).map_err(|_| {
            ApiError::not_found(format!("previous response with id {prev:?} not found"))
        })?)),
    };
    let conversation: Vec<Item> = match &previous {
        None => items.clone(),
        Some(p) => p
            .history()
            .into_iter()
            .chain(items.iter().cloned())
            .collect(),
    };
    let request = input
        .to_chat(&conversation)
        .map_err(ApiError::bad_request)?;
    translated::check_images(app, request.image_urls(), &input.model)?;
    let (mut lease, model) = acquire_on(
        app,
        &ctx.note,
        &input.model,
        Mode::Completion,
        engine,
        &RunnerWishes::default(),
    )
    .await?;
    let skeleton = input.skeleton(&id, created_at, &model);
    let keep = input.storing().then(|| Keeper {
        app: app.clone(),
        input: Arc::new(items),
        previous,
    });
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
        let translator = Storing {
            inner: StreamTranslator::new(skeleton),
            keep,
        };
        return Ok(translated::stream(
            resp,
            lease,
            translator,
            "text/event-stream",
            started,
        ));
    }
    let answer: openai::ChatResponse = translated::collect(resp, &model).await?;
    drop(lease);
    let response = responses::from_chat(&answer, skeleton);
    if let Some(keep) = keep {
        keep.keep(&response);
    }
    Ok(json(StatusCode::OK, &response))
}

/// What keeps a response once it is whole.
struct Keeper {
    app: Arc<App>,
    input: Arc<Vec<Item>>,
    /// The turn it follows (`previous_response_id`).
    previous: Option<Arc<Kept>>,
}

impl Keeper {
    fn keep(self, response: &ResponseObject) {
        self.app.responses.insert(
            Kept {
                response: Arc::new(response.clone()),
                input: self.input,
                previous: self.previous,
            },
            limits(&self.app),
            Instant::now(),
        );
    }
}

/// The stream translator, and the store once the response is whole.
struct Storing {
    inner: StreamTranslator,
    keep: Option<Keeper>,
}

impl Storing {
    fn after(&mut self, out: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        if let Some(response) = self.inner.finished() {
            if let Some(keep) = self.keep.take() {
                keep.keep(response);
            }
        }
        out
    }
}

impl StreamTranslate for Storing {
    fn begin(&mut self) -> Vec<Vec<u8>> {
        self.inner.begin()
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let out = self.inner.feed(bytes);
        self.after(out)
    }

    fn finish(&mut self, total_ns: u64) -> Vec<Vec<u8>> {
        let out = self.inner.finish(total_ns);
        self.after(out)
    }

    fn fail(&mut self, message: &str) -> Vec<Vec<u8>> {
        let out = self.inner.fail(message);
        self.after(out)
    }
}

fn id_param(ctx: &Ctx) -> Result<String, ApiError> {
    ctx.engine()?;
    super::http::percent_decode(ctx.param("id").unwrap_or_default())
}

/// `GET …/responses/{id}`.
pub async fn get(app: &Arc<App>, ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let id = id_param(ctx)?;
    Ok(json(StatusCode::OK, &*kept(app, &id)?.response))
}

/// `DELETE …/responses/{id}`.
pub async fn delete(app: &Arc<App>, ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let id = id_param(ctx)?;
    if !app.responses.delete(&id, limits(app).ttl, Instant::now()) {
        return Err(ApiError::not_found(format!(
            "response with id {id:?} not found"
        )));
    }
    Ok(json(StatusCode::OK, &Deleted::new(&id)))
}

/// `GET …/responses/{id}/input_items[?order=&limit=&after=]`.
pub async fn input_items(
    app: &Arc<App>,
    ctx: &Ctx,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let id = id_param(ctx)?;
    let page = Page::parse(
        query_value(query, "order")?.as_deref(),
        query_value(query, "limit")?.as_deref(),
        query_value(query, "after")?,
    )
    .map_err(ApiError::bad_request)?;
    let kept = kept(app, &id)?;
    let list = page.of(&kept.input).map_err(ApiError::bad_request)?;
    Ok(json(StatusCode::OK, &list))
}

/// The store a new `App` starts with.
pub fn new_store() -> ResponseStore {
    ResponseStore::default()
}
