//! The route table: every route the front serves, once. Each [`Route`] says its method, its path pattern (matched
//! by `matchit`, the router axum uses), its dialect (how its errors are rendered), its metric label, who may call
//! it, whether it is an inference route (its answers are timed and recorded by the inspector) and its handler.
//! [`find`] matches a request against the table; a request that matches nothing is a 404 in the dialect of its
//! path's prefix ([`dialect_of_prefix`]). [`Ctx`] is what a handler knows about its request besides the request
//! itself: who called, the matched route and its path parameters, and what the handler notes (the model it
//! resolved, the body) for the metrics and the inspector.
//!
//! Patterns use `matchit`'s syntax (`{engine}` one segment, `{*name}` the rest of the path, so model names keep
//! their slashes), with one addition: a catch-all may be followed by a fixed suffix (`/models/{*name}/export`),
//! which matchit cannot express; such routes share the catch-all's entry and are told apart by the suffix, longest
//! first. Routes marked [`Mount::OpenAi`] are served at `/v1/…`, `/engines/v1/…` and `/engines/{engine}/v1/…`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};

use ::http::{Method, Request, Response, StatusCode};
use bytes::Bytes;
use hyper::body::Incoming;

use super::http::{json, percent_decode, text, ApiError, Body};
use super::{
    anthropic, configure, engines, inference, inspector, logs, metrics, models, ollama, reload,
    rerank, responses, App, Caller,
};
use crate::api::{native, Dialect, ErrorKind};
use crate::engines::{EngineKind, EngineRoute, Mode};

/// What a handler returns.
pub type Answer = Pin<Box<dyn Future<Output = Result<Response<Body>, ApiError>> + Send>>;
/// A route's handler: the application, the request, and its context.
pub type Handler = fn(Arc<App>, Request<Incoming>, Arc<Ctx>) -> Answer;

/// The methods routes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum M {
    Get,
    Head,
    Post,
    Delete,
}

impl M {
    fn is(self, method: &Method) -> bool {
        *method
            == match self {
                M::Get => Method::GET,
                M::Head => Method::HEAD,
                M::Post => Method::POST,
                M::Delete => Method::DELETE,
            }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            M::Get => "GET",
            M::Head => "HEAD",
            M::Post => "POST",
            M::Delete => "DELETE",
        }
    }
}

/// Who may call a route (the origin check of CORS applies to every route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// An API key when `[server] api_keys` is set.
    Key,
    /// No API key needed (`GET /health`, the static dashboard page).
    Open,
    /// Operator routes: an API key when keys are set; without keys, only a local caller (loopback or the Unix
    /// socket), since anyone who reaches the port could otherwise use them.
    Local,
}

/// Where a route is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mount {
    /// At its pattern.
    Here,
    /// An OpenAI `/v1/…` pattern: also at `/engines/v1/…` and `/engines/{engine}/v1/…`.
    OpenAi,
}

pub struct Route {
    pub method: M,
    pub pattern: &'static str,
    pub mount: Mount,
    pub dialect: Dialect,
    /// The `route` label of metrics and the inspector: the pattern as a template, parameters as `{name}`.
    pub label: &'static str,
    pub guard: Guard,
    /// An inference route: streamed answers are timed to their first byte, and exchanges of a resolved model are
    /// recorded by the inspector.
    pub inference: bool,
    pub handler: Handler,
}

impl Route {
    const fn new(
        method: M,
        pattern: &'static str,
        dialect: Dialect,
        label: &'static str,
        handler: Handler,
    ) -> Route {
        Route {
            method,
            pattern,
            mount: Mount::Here,
            dialect,
            label,
            guard: Guard::Key,
            inference: false,
            handler,
        }
    }

    const fn openai(mut self) -> Route {
        self.mount = Mount::OpenAi;
        self
    }

    const fn inference(mut self) -> Route {
        self.inference = true;
        self
    }

    const fn guard(mut self, guard: Guard) -> Route {
        self.guard = guard;
        self
    }

    /// The dialect's name in metrics and the inspector.
    pub fn dialect_label(&self) -> &'static str {
        dialect_label(self.dialect)
    }
}

pub fn dialect_label(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Native => "native",
        Dialect::OpenAi => "openai",
        Dialect::Ollama => "ollama",
        Dialect::Anthropic => "anthropic",
    }
}

/// A handler from an expression over `app` (`&Arc<App>`), `req` and `ctx` (`&Ctx`).
macro_rules! h {
    (|$app:ident, $req:ident, $ctx:ident| $e:expr) => {
        |app: Arc<App>, $req: Request<Incoming>, ctx: Arc<Ctx>| -> Answer {
            Box::pin(async move {
                let ($app, $ctx) = (&app, &*ctx);
                let _ = (&$app, &$ctx, &$req);
                $e.await
            })
        }
    };
}

use Dialect::{Anthropic, Native, Ollama, OpenAi};
use M::{Delete, Get, Head, Post};

/// Every route the front serves: method, pattern, dialect, label, handler; then who may call it (`guard`, else an
/// API key when keys are set), `openai()` for the `/engines[/{engine}]` mounts, `inference()` for the inspector.
#[rustfmt::skip]
pub static ROUTES: &[Route] = &[
    // DMR's native routes: plain-text errors.
    Route::new(Get, "/", Native, "/", h!(|app, req, ctx| async { Ok(text(StatusCode::OK, "dmr-supervisor is running")) })),
    // Ollama's CLI checks that its server is up with `HEAD /`.
    Route::new(Head, "/", Native, "/", h!(|app, req, ctx| async { Ok(text(StatusCode::OK, "dmr-supervisor is running")) })),
    Route::new(Get, "/health", Native, "/health", h!(|app, req, ctx| async { Ok(readiness(app, "ok")) }))
        .guard(Guard::Open),
    // Probes for routers and Kubernetes: alive while the process serves; ready until it starts draining.
    Route::new(Get, "/livez", Native, "/livez", h!(|app, req, ctx| async { Ok(json(StatusCode::OK, &serde_json::json!({"status": "alive"}))) }))
        .guard(Guard::Open),
    Route::new(Get, "/readyz", Native, "/readyz", h!(|app, req, ctx| async { Ok(readiness(app, "ready")) }))
        .guard(Guard::Open),
    // vLLM Router's power_of_two policy polls each worker's load here.
    Route::new(Get, "/get_load", Native, "/get_load", h!(|app, req, ctx| async {
        let load = super::load::measure_counts(app).await;
        Ok(json(StatusCode::OK, &serde_json::json!({ "load": load })))
    }))
        .guard(Guard::Open),
    Route::new(Get, "/version", Native, "/version", h!(|app, req, ctx| async { Ok(version()) })),
    Route::new(Get, "/dashboard", Native, "/dashboard", h!(|app, req, ctx| async { Ok(dashboard()) }))
        .guard(Guard::Open),
    Route::new(Get, "/metrics", Native, "/metrics", h!(|app, req, ctx| metrics::handle(app))),
    Route::new(Get, "/logs", Native, "/logs", h!(|app, req, ctx| logs::handle(app, req.uri().query()))),
    Route::new(Post, "/config/reload", Native, "/config/reload", h!(|app, req, ctx| reload::handle(app)))
        .guard(Guard::Local),
    Route::new(Get, "/models", Native, "/models", h!(|app, req, ctx| models::list_native(app))),
    Route::new(Post, "/models/create", Native, "/models/create", h!(|app, req, ctx| models::create(app, req, ctx.caller))),
    Route::new(Post, "/models/load", Native, "/models/load", h!(|app, req, ctx| models::load(app, req))),
    Route::new(Delete, "/models/purge", Native, "/models/purge", h!(|app, req, ctx| models::purge(app))),
    Route::new(Get, "/models/{*name}/export", Native, "/models/{name}/export", h!(|app, req, ctx| async {
        models::export(app, ctx.name()?).await
    })),
    Route::new(Post, "/models/{*name}/tag", Native, "/models/{name}/tag", h!(|app, req, ctx| async {
        models::tag(app, ctx.name()?, req.uri().query()).await
    })),
    Route::new(Post, "/models/{*name}/push", Native, "/models/{name}/push", h!(|app, req, ctx| async {
        models::push(app, req, ctx.name()?, ctx.caller).await
    })),
    Route::new(Post, "/models/{*name}/repackage", Native, "/models/{name}/repackage", h!(|app, req, ctx| async {
        models::repackage(app, req, ctx.name()?).await
    })),
    Route::new(Get, "/models/{*name}", Native, "/models/{name}", h!(|app, req, ctx| async {
        models::get_native(app, ctx.name()?).await
    })),
    Route::new(Delete, "/models/{*name}", Native, "/models/{name}", h!(|app, req, ctx| async {
        models::delete(app, ctx.name()?, req.uri().query()).await
    })),
    // Engines and the seeing-inside routes: OpenAI's error shape, as everything under /engines/.
    Route::new(Get, "/engines/ps", OpenAi, "/engines/ps", h!(|app, req, ctx| engines::ps(app))),
    Route::new(Post, "/engines/unload", OpenAi, "/engines/unload", h!(|app, req, ctx| engines::unload(app, req))),
    Route::new(Get, "/engines/status", OpenAi, "/engines/status", h!(|app, req, ctx| engines::status(app))),
    Route::new(Get, "/engines/df", OpenAi, "/engines/df", h!(|app, req, ctx| engines::df(app))),
    Route::new(Post, "/engines/install-backend", OpenAi, "/engines/install-backend", h!(|app, req, ctx| engines::install_backend(app, req)))
        .guard(Guard::Local),
    Route::new(Post, "/engines/uninstall-backend", OpenAi, "/engines/uninstall-backend", h!(|app, req, ctx| engines::uninstall_backend(app, req)))
        .guard(Guard::Local),
    Route::new(Get, "/engines/requests", OpenAi, "/engines/requests", h!(|app, req, ctx| inspector::list(app, req.uri().query()))),
    Route::new(Get, "/engines/_configure", OpenAi, "/engines/_configure", h!(|app, req, ctx| configure::list(app, req.uri().query()))),
    Route::new(Post, "/engines/_configure", OpenAi, "/engines/_configure", h!(|app, req, ctx| configure::set(app, req, None))),
    Route::new(Post, "/engines/{engine}/_configure", OpenAi, "/engines/_configure", h!(|app, req, ctx| configure_engine(app, ctx, req))),
    // OpenAI, at /v1/…, /engines/v1/… and /engines/{engine}/v1/….
    Route::new(Get, "/v1/models", OpenAi, "/v1/models", h!(|app, req, ctx| async {
        ctx.engine()?;
        models::list_openai(app).await
    }))
        .openai(),
    Route::new(Get, "/v1/models/{*name}", OpenAi, "/v1/models/{name}", h!(|app, req, ctx| async {
        ctx.engine()?;
        models::get_openai(app, ctx.name()?).await
    }))
        .openai(),
    Route::new(Post, "/v1/chat/completions", OpenAi, "/v1/chat/completions", h!(|app, req, ctx| infer(app, ctx, req, Mode::Completion)))
        .openai().inference(),
    Route::new(Post, "/v1/completions", OpenAi, "/v1/completions", h!(|app, req, ctx| infer(app, ctx, req, Mode::Completion)))
        .openai().inference(),
    Route::new(Post, "/v1/embeddings", OpenAi, "/v1/embeddings", h!(|app, req, ctx| infer(app, ctx, req, Mode::Embedding)))
        .openai().inference(),
    Route::new(Post, "/v1/images/generations", OpenAi, "/v1/images/generations", h!(|app, req, ctx| infer(app, ctx, req, Mode::ImageGeneration)))
        .openai().inference(),
    // OpenAI's Responses API, at /v1/responses (and the OpenAI mounts) and /responses; translated to chat.
    Route::new(Post, "/v1/responses", OpenAi, "/v1/responses", h!(|app, req, ctx| responses::create(app, ctx, req)))
        .openai().inference(),
    Route::new(Get, "/v1/responses/{id}", OpenAi, "/v1/responses/{id}", h!(|app, req, ctx| responses::get(app, ctx)))
        .openai(),
    Route::new(Delete, "/v1/responses/{id}", OpenAi, "/v1/responses/{id}", h!(|app, req, ctx| responses::delete(app, ctx)))
        .openai(),
    Route::new(Get, "/v1/responses/{id}/input_items", OpenAi, "/v1/responses/{id}/input_items", h!(|app, req, ctx| responses::input_items(app, ctx, req.uri().query())))
        .openai(),
    Route::new(Post, "/responses", OpenAi, "/v1/responses", h!(|app, req, ctx| responses::create(app, ctx, req)))
        .inference(),
    Route::new(Get, "/responses/{id}", OpenAi, "/v1/responses/{id}", h!(|app, req, ctx| responses::get(app, ctx))),
    Route::new(Delete, "/responses/{id}", OpenAi, "/v1/responses/{id}", h!(|app, req, ctx| responses::delete(app, ctx))),
    Route::new(Get, "/responses/{id}/input_items", OpenAi, "/v1/responses/{id}/input_items", h!(|app, req, ctx| responses::input_items(app, ctx, req.uri().query()))),
    // Rerank and score (a reranking runner): at /v1/… (and the OpenAI mounts), at the root and DMR's
    // /engines[/{engine}]/… (DMR's own paths); one label per route.
    Route::new(Post, "/v1/rerank", OpenAi, "/v1/rerank", h!(|app, req, ctx| rerank::rerank(app, ctx, req)))
        .openai().inference(),
    Route::new(Post, "/rerank", OpenAi, "/v1/rerank", h!(|app, req, ctx| rerank::rerank(app, ctx, req)))
        .inference(),
    Route::new(Post, "/engines/rerank", OpenAi, "/v1/rerank", h!(|app, req, ctx| rerank::rerank(app, ctx, req)))
        .inference(),
    Route::new(Post, "/engines/{engine}/rerank", OpenAi, "/v1/rerank", h!(|app, req, ctx| rerank::rerank(app, ctx, req)))
        .inference(),
    Route::new(Post, "/v1/score", OpenAi, "/v1/score", h!(|app, req, ctx| rerank::score(app, ctx, req)))
        .openai().inference(),
    Route::new(Post, "/score", OpenAi, "/v1/score", h!(|app, req, ctx| rerank::score(app, ctx, req)))
        .inference(),
    Route::new(Post, "/engines/score", OpenAi, "/v1/score", h!(|app, req, ctx| rerank::score(app, ctx, req)))
        .inference(),
    Route::new(Post, "/engines/{engine}/score", OpenAi, "/v1/score", h!(|app, req, ctx| rerank::score(app, ctx, req)))
        .inference(),
    // Tokenize and detokenize, in the engine's own shapes, by the model's runner.
    Route::new(Post, "/engines/tokenize", OpenAi, "/tokenize", h!(|app, req, ctx| rerank::tokens(app, ctx, req, EngineRoute::Tokenize)))
        .inference(),
    Route::new(Post, "/engines/{engine}/tokenize", OpenAi, "/tokenize", h!(|app, req, ctx| rerank::tokens(app, ctx, req, EngineRoute::Tokenize)))
        .inference(),
    Route::new(Post, "/engines/detokenize", OpenAi, "/detokenize", h!(|app, req, ctx| rerank::tokens(app, ctx, req, EngineRoute::Detokenize)))
        .inference(),
    Route::new(Post, "/engines/{engine}/detokenize", OpenAi, "/detokenize", h!(|app, req, ctx| rerank::tokens(app, ctx, req, EngineRoute::Detokenize)))
        .inference(),
    // Anthropic, at /v1/messages (and the OpenAI mounts) and /anthropic/v1/messages.
    Route::new(Post, "/v1/messages", Anthropic, "/v1/messages", h!(|app, req, ctx| async {
        ctx.engine()?;
        anthropic::messages(app, ctx, req).await
    }))
        .openai().inference(),
    Route::new(Post, "/v1/messages/count_tokens", Anthropic, "/v1/messages/count_tokens", h!(|app, req, ctx| async {
        ctx.engine()?;
        anthropic::count_tokens(app, ctx, req).await
    }))
        .openai().inference(),
    Route::new(Post, "/anthropic/v1/messages", Anthropic, "/v1/messages", h!(|app, req, ctx| anthropic::messages(app, ctx, req)))
        .inference(),
    Route::new(Post, "/anthropic/v1/messages/count_tokens", Anthropic, "/v1/messages/count_tokens", h!(|app, req, ctx| anthropic::count_tokens(app, ctx, req)))
        .inference(),
    // Ollama.
    Route::new(Get, "/api/version", Ollama, "/api/version", h!(|app, req, ctx| ollama::version())),
    Route::new(Get, "/api/tags", Ollama, "/api/tags", h!(|app, req, ctx| ollama::tags(app))),
    Route::new(Get, "/api/ps", Ollama, "/api/ps", h!(|app, req, ctx| ollama::ps(app))),
    Route::new(Post, "/api/show", Ollama, "/api/show", h!(|app, req, ctx| ollama::show(app, req))),
    Route::new(Delete, "/api/delete", Ollama, "/api/delete", h!(|app, req, ctx| ollama::delete(app, req))),
    Route::new(Post, "/api/pull", Ollama, "/api/pull", h!(|app, req, ctx| ollama::pull(app, req, ctx.caller))),
    Route::new(Post, "/api/push", Ollama, "/api/push", h!(|app, req, ctx| ollama::push(app, req, ctx.caller))),
    Route::new(Post, "/api/copy", Ollama, "/api/copy", h!(|app, req, ctx| ollama::copy(app, req))),
    Route::new(Post, "/api/create", Ollama, "/api/create", h!(|app, req, ctx| ollama::create(app, req))),
    Route::new(Head, "/api/blobs/{digest}", Ollama, "/api/blobs/{digest}", h!(|app, req, ctx| ollama::blob_exists(app, ctx))),
    Route::new(Post, "/api/blobs/{digest}", Ollama, "/api/blobs/{digest}", h!(|app, req, ctx| ollama::blob_upload(app, ctx, req))),
    Route::new(Post, "/api/chat", Ollama, "/api/chat", h!(|app, req, ctx| ollama::chat(app, ctx, req)))
        .inference(),
    Route::new(Post, "/api/generate", Ollama, "/api/generate", h!(|app, req, ctx| ollama::generate(app, ctx, req)))
        .inference(),
    Route::new(Post, "/api/embed", Ollama, "/api/embed", h!(|app, req, ctx| ollama::embed(app, ctx, req, false)))
        .inference(),
    Route::new(Post, "/api/embeddings", Ollama, "/api/embeddings", h!(|app, req, ctx| ollama::embed(app, ctx, req, true)))
        .inference(),
];

/// An OpenAI pass-through: the engine named in the path (if any) must exist; the engine is sent the route's
/// own `/v1/…` path.
async fn infer(
    app: &Arc<App>,
    ctx: &Ctx,
    req: Request<Incoming>,
    mode: Mode,
) -> Result<Response<Body>, ApiError> {
    let engine = ctx.engine()?;
    inference::handle(app, ctx, req, mode, engine, ctx.route.pattern.to_string()).await
}

/// `POST /engines/{engine}/_configure`: `_configure` with the engine named; an unknown one is a 400.
async fn configure_engine(
    app: &Arc<App>,
    ctx: &Ctx,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let named = ctx.param("engine").unwrap_or_default();
    match EngineKind::from_name(named) {
        Some(engine) => configure::set(app, req, Some(engine)).await,
        None => Err(ApiError::bad_request(format!(
            "unknown engine {named:?} in {}; engines are {}",
            req.uri().path(),
            EngineKind::ALL.map(EngineKind::name).join(", ")
        ))),
    }
}

/// `{"status": ok}` with 200 while the node takes work; 503 with `{"status":"draining"}` once it is draining, or
/// `{"status":"loading","waiting_for":[...]}` until every preloaded model has loaded, so that a router's health
/// check (vLLM Router's is `/health`) or a readiness probe sends nothing here before or after.
fn readiness(app: &App, ok: &str) -> Response<Body> {
    if app.draining.is_cancelled() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "draining"}),
        );
    }
    let waiting = app.declared.not_ready();
    if waiting.is_empty() {
        json(StatusCode::OK, &serde_json::json!({ "status": ok }))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "loading", "waiting_for": waiting}),
        )
    }
}

fn version() -> Response<Body> {
    json(
        StatusCode::OK,
        &native::Version {
            version: env!("CARGO_PKG_VERSION"),
        },
    )
}

/// The dashboard: one static page (no build step) that polls `/engines/ps`, `/engines/df`, `/engines/requests`
/// and `/logs`.
fn dashboard() -> Response<Body> {
    let mut resp = Response::new(super::http::full(include_str!("dashboard.html")));
    resp.headers_mut().insert(
        ::http::header::CONTENT_TYPE,
        ::http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

/// The routes sharing one matchit pattern, and the fixed suffix each needs after a catch-all (longest first).
type Entry = Vec<(&'static str, &'static Route)>;

/// The table as matchit sees it. Building it is the collision check: matchit refuses conflicting patterns.
pub fn router() -> Result<matchit::Router<Entry>, String> {
    let mut patterns: Vec<(String, Entry)> = Vec::new();
    for route in ROUTES {
        let (base, suffix) = split_suffix(route.pattern);
        let mounts: Vec<String> = match route.mount {
            Mount::Here => vec![base.to_string()],
            Mount::OpenAi => {
                let rest = base.strip_prefix("/v1/").ok_or_else(|| {
                    format!(
                        "{} is mounted as OpenAI but is not under /v1/",
                        route.pattern
                    )
                })?;
                vec![
                    base.to_string(),
                    format!("/engines/v1/{rest}"),
                    format!("/engines/{{engine}}/v1/{rest}"),
                ]
            }
        };
        // A catch-all never matches nothing, but `GET /models/` reaches the handler with an empty name (its 400), as
        // it always has: the pattern is mounted without its catch-all too.
        let empty: Vec<String> = mounts
            .iter()
            .filter(|_| suffix.is_empty())
            .filter_map(|p| p.strip_suffix("{*name}").map(str::to_string))
            .collect();
        for pattern in mounts.into_iter().chain(empty) {
            let entry = match patterns.iter_mut().find(|(p, _)| *p == pattern) {
                Some((_, e)) => e,
                None => {
                    patterns.push((pattern, Vec::new()));
                    &mut patterns.last_mut().expect("just pushed").1
                }
            };
            if entry
                .iter()
                .any(|(s, r)| *s == suffix && r.method == route.method)
            {
                return Err(format!(
                    "{} {} is in the table twice",
                    route.method.as_str(),
                    route.pattern
                ));
            }
            entry.push((suffix, route));
            entry.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        }
    }
    let mut router = matchit::Router::new();
    for (pattern, entry) in patterns {
        router
            .insert(pattern.clone(), entry)
            .map_err(|e| format!("{pattern}: {e}"))?;
    }
    Ok(router)
}

/// `/models/{*name}/export` → (`/models/{*name}`, `/export`).
fn split_suffix(pattern: &'static str) -> (&'static str, &'static str) {
    match pattern.find("{*") {
        Some(at) => {
            let end = pattern[at..]
                .find('}')
                .map_or(pattern.len(), |e| at + e + 1);
            pattern.split_at(end)
        }
        None => (pattern, ""),
    }
}

static ROUTER: LazyLock<matchit::Router<Entry>> = LazyLock::new(|| {
    // Invariant: the table is static and `tests::the_table_builds_without_collisions` builds it, so a table that
    // does not build never leaves `cargo test`; `Server::bind` forces it, so it would fail at start, not later.
    router().unwrap_or_else(|e| panic!("the route table does not build: {e}"))
});

/// Builds the router now (it is otherwise built by the first request).
pub fn build() {
    LazyLock::force(&ROUTER);
}

/// What matched: the route, and its path parameters (still percent-encoded).
pub struct Found {
    pub route: &'static Route,
    pub params: Vec<(&'static str, String)>,
}

/// The route serving `method path`, if any.
pub fn find(method: &Method, path: &str) -> Option<Found> {
    let matched = ROUTER.at(path).ok()?;
    let mut params: Vec<(&'static str, String)> = matched
        .params
        .iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    let (suffix, route) = matched.value.iter().find(|(suffix, route)| {
        route.method.is(method)
            && (suffix.is_empty()
                || params
                    .iter()
                    .any(|(k, v)| *k == "name" && v.len() > suffix.len() && v.ends_with(suffix)))
    })?;
    if !suffix.is_empty() {
        if let Some((_, v)) = params.iter_mut().find(|(k, _)| *k == "name") {
            v.truncate(v.len() - suffix.len());
        }
    }
    Some(Found { route, params })
}

/// The dialect of a path that matches no route, from its prefix: Anthropic's `/anthropic/…` and `…/v1/messages…`,
/// OpenAI under `/engines/`, `/v1/`, `/responses` (the Responses API's root mount), `/rerank` and `/score`, Ollama under `/api/`, else
/// DMR's native API.
pub fn dialect_of_prefix(path: &str) -> Dialect {
    let openai_rest = path
        .strip_prefix("/v1/")
        .or_else(|| path.strip_prefix("/engines/v1/"))
        .or_else(|| {
            let after = path.strip_prefix("/engines/")?;
            after.split_once('/')?.1.strip_prefix("v1/")
        });
    if path.starts_with("/anthropic/") || openai_rest.is_some_and(|r| r.starts_with("messages")) {
        Dialect::Anthropic
    } else if path.starts_with("/engines/")
        || path.starts_with("/v1/")
        || path == "/responses"
        || path.starts_with("/responses/")
        || ["/rerank", "/score"].iter().any(|r| {
            path == *r
                || path
                    .strip_prefix(r)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    {
        Dialect::OpenAi
    } else if path.starts_with("/api/") {
        Dialect::Ollama
    } else {
        Dialect::Native
    }
}

/// What handlers note about the request they serve, for metrics and the inspector.
#[derive(Debug, Default)]
pub struct Noted {
    /// The model it resolved to, and its runner's context size.
    pub model: Option<(String, u32)>,
    /// The request body (a reference count, not a copy).
    pub body: Option<Bytes>,
}

/// Where a handler notes [`Noted`]; a request's [`Ctx`] holds one, and calls made outside a request (a preload
/// after `_configure`) give a fresh one that nobody reads.
#[derive(Debug, Default)]
pub struct Note(Mutex<Noted>);

impl Note {
    pub fn model(&self, name: &str, context_size: u32) {
        self.lock().model = Some((name.to_string(), context_size));
    }

    pub fn body(&self, body: &Bytes) {
        self.lock().body = Some(body.clone());
    }

    pub fn take(&self) -> Noted {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Noted> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One request's context, given to its handler.
pub struct Ctx {
    pub caller: Caller,
    pub route: &'static Route,
    /// Path parameters, percent-encoded as they arrived.
    params: Vec<(&'static str, String)>,
    pub note: Note,
}

impl Ctx {
    pub fn new(caller: Caller, found: Found) -> Ctx {
        Ctx {
            caller,
            route: found.route,
            params: found.params,
            note: Note::default(),
        }
    }

    /// A path parameter as it arrived (percent-encoded).
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The `{*name}` parameter, percent-decoded (a bad encoding is the caller's 400).
    pub fn name(&self) -> Result<String, ApiError> {
        percent_decode(self.param("name").unwrap_or_default())
    }

    /// The engine an OpenAI path names (`/engines/{engine}/v1/…`); an unknown one is a 404.
    pub fn engine(&self) -> Result<Option<EngineKind>, ApiError> {
        match self.param("engine") {
            None => Ok(None),
            Some(e) => EngineKind::from_name(e).map(Some).ok_or_else(|| {
                ApiError::not_found(format!(
                    "unknown engine {e:?}; engines are {}",
                    EngineKind::ALL.map(EngineKind::name).join(", ")
                ))
            }),
        }
    }
}

/// The error of a local-only route called from elsewhere without API keys configured.
pub fn local_only(route: &Route) -> ApiError {
    let what = match route.pattern {
        "/config/reload" => "config reload",
        "/engines/install-backend" => "installing engines",
        "/engines/uninstall-backend" => "uninstalling engines",
        other => other,
    };
    ApiError::new(
        ErrorKind::Forbidden,
        format!("{what} is only allowed from loopback, the Unix socket, or with an API key"),
    )
}

#[cfg(test)]
mod tests;
