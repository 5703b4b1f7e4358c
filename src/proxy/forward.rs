//! Forwarding a request to an engine over pooled HTTP/1 connections, and streaming the answer back frame by frame.
//! The lease on the runner lives in the response body, so the scheduler sees the request end when the last byte
//! is sent or the client goes away (dropping the body also drops the upstream connection, which cancels the
//! engine's work). An engine that dies mid-stream ends an SSE stream with an OpenAI error frame.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};

use super::http::{ApiError, Body, BoxError};
use crate::api::{openai, ErrorKind};
use crate::scheduler::{Endpoint, Lease};

type EngineClient = Client<HttpConnector, Full<Bytes>>;

/// One connection pool per engine process. Engines listen on loopback ports that the OS hands out again once
/// an engine is gone; a single shared pool would then reuse an idle connection to the dead engine on a new
/// engine's port. Keying the pool by (port, pid) makes a new engine always start with fresh connections.
#[derive(Default)]
pub struct EnginePools {
    by_port: Mutex<HashMap<u16, (u32, EngineClient)>>,
}

impl EnginePools {
    fn get(&self, endpoint: Endpoint) -> EngineClient {
        // A poisoned lock only means a panic elsewhere mid-insert; the map is still a valid cache.
        let mut pools = self.by_port.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((pid, client)) = pools.get(&endpoint.port) {
            if *pid == endpoint.pid {
                return client.clone();
            }
        }
        if pools.len() >= 256 {
            // Bound the map: forget pools of engines that are gone.
            pools.retain(|_, (pid, _)| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), None).is_ok()
            });
        }
        let client = new_client();
        pools.insert(endpoint.port, (endpoint.pid, client.clone()));
        client
    }

    /// A GET on the engine over its pool; the body as text when it answers 200 (its `/metrics`).
    pub async fn get_text(&self, endpoint: Endpoint, path: &str) -> Result<String, String> {
        let uri = format!("http://127.0.0.1:{}{path}", endpoint.port);
        let req = Request::get(uri)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = self
            .get(endpoint)
            .request(req)
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(resp.status().to_string());
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
    }

    /// Drops the pool of an engine about to be stopped, closing its idle connections: llama-server exits several
    /// milliseconds sooner on SIGTERM when no idle keep-alive connection is open, and a swap waits for that exit.
    pub fn forget(&self, endpoint: Endpoint) {
        let mut pools = self.by_port.lock().unwrap_or_else(|p| p.into_inner());
        if pools
            .get(&endpoint.port)
            .is_some_and(|(pid, _)| *pid == endpoint.pid)
        {
            pools.remove(&endpoint.port);
        }
    }
}

fn new_client() -> EngineClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    // llama-server (cpp-httplib) closes keep-alive connections idle for 5 s; reusing one at that instant fails the
    // request with IncompleteMessage. Retiring idle connections well before that avoids the race.
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(2))
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(connector)
}

/// Headers that belong to one connection and are not forwarded.
const HOP_BY_HOP: [header::HeaderName; 8] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::HOST,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    headers.remove("keep-alive");
}

/// Sends `body` to `path_and_query` on the leased engine and returns its answer, streaming.
pub async fn forward(
    pools: &EnginePools,
    mut lease: Lease,
    parts: http::request::Parts,
    path_and_query: &str,
    body: Bytes,
    model: &str,
    streaming: bool,
) -> Result<Response<Body>, ApiError> {
    let resp = send(
        pools,
        &mut lease,
        parts.method,
        parts.headers,
        path_and_query,
        body,
        model,
        streaming,
    )
    .await?;
    let (mut parts, incoming) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let body = EngineBody {
        inner: incoming,
        lease: Some(lease),
        sse,
        done: false,
        model: model.to_string(),
    };
    Ok(Response::from_parts(parts, body.boxed()))
}

/// `body` with its `model` set to `name` (engines such as vLLM answer only to the name they serve, while callers
/// may say `qwen`, `ai/qwen` or an id). Bodies that are not JSON objects with a `model` go as they are.
fn with_model(body: Bytes, name: &str) -> Bytes {
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice::<serde_json::Value>(&body)
    else {
        return body;
    };
    match map.get("model") {
        Some(serde_json::Value::String(m)) if m != name => {
            map.insert("model".into(), name.into());
            serde_json::to_vec(&map).map(Bytes::from).unwrap_or(body)
        }
        _ => body,
    }
}

/// One request to an engine; the answer's body is left to the caller (who must hold the lease while reading it).
/// When the engine could not be reached because it had just died (granted in the moment before the scheduler heard
/// of it), the request goes once more on a fresh lease (`Lease::renew`), which replaces `lease`.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    pools: &EnginePools,
    lease: &mut Lease,
    method: http::Method,
    headers: HeaderMap,
    path_and_query: &str,
    body: Bytes,
    model: &str,
    streaming: bool,
) -> Result<Response<Incoming>, ApiError> {
    let again = lease
        .renew
        .is_some()
        .then(|| (method.clone(), headers.clone(), body.clone()));
    let to = Target {
        path_and_query,
        model,
        streaming,
    };
    let first = send_once(pools, lease, method, headers, body, &to).await;
    let Err(Failure::Unreachable(e)) = first else {
        return first.map_err(ApiError::from);
    };
    let Some((method, headers, body)) = again else {
        return Err(e);
    };
    let Some(renew) = lease.take_renewal(RENEW_WAIT).await else {
        return Err(e);
    };
    let Some(fresh) = renew().await else {
        return Err(e);
    };
    tracing::info!(
        model,
        "the engine died before the request reached it; sending it to a fresh one"
    );
    *lease = fresh;
    send_once(pools, lease, method, headers, body, &to)
        .await
        .map_err(ApiError::from)
}

/// Where a request goes on its engine, and how.
struct Target<'a> {
    path_and_query: &'a str,
    model: &'a str,
    streaming: bool,
}

/// A request that fails this soon after it was sent never reached a working engine.
const FAILED_AT_ONCE: std::time::Duration = std::time::Duration::from_millis(5);

/// How long a request whose engine died waits for the scheduler to let that runner go before it asks again.
const RENEW_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why one attempt failed.
enum Failure {
    /// No connection to the engine could be made (it may have died).
    Unreachable(ApiError),
    Other(ApiError),
}

impl From<Failure> for ApiError {
    fn from(f: Failure) -> ApiError {
        match f {
            Failure::Unreachable(e) | Failure::Other(e) => e,
        }
    }
}

async fn send_once(
    pools: &EnginePools,
    lease: &Lease,
    method: http::Method,
    headers: HeaderMap,
    body: Bytes,
    to: &Target<'_>,
) -> Result<Response<Incoming>, Failure> {
    let Target {
        path_and_query,
        model,
        streaming,
    } = *to;
    let endpoint = lease.endpoint;
    let body = match &lease.served_name {
        Some(name) => with_model(body, name),
        None => body,
    };
    let uri = format!("http://127.0.0.1:{}{}", endpoint.port, path_and_query);
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(body))
        .map_err(|e| {
            Failure::Other(ApiError::new(
                ErrorKind::Internal,
                format!("cannot build the engine request: {e}"),
            ))
        })?;
    *req.headers_mut() = headers;
    strip_hop_by_hop(req.headers_mut());
    req.headers_mut().remove(header::CONTENT_LENGTH); // Full sets the real length
    if streaming {
        // llama-server closes the connection after a chunked (SSE) response without saying so; a pooled
        // connection reused after a stream would fail the next request. Streams get a connection of their own.
        req.headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    // An engine that stops answering its health checks while we wait is killed and replaced: 504.
    let sent = std::time::Instant::now();
    tokio::select! {
        answer = pools.get(endpoint).request(req) => answer.map_err(|e| {
            let error = ApiError::new(
                ErrorKind::BadGateway,
                format!(
                    "the engine serving {model} failed before answering (it may have crashed): {e}"
                ),
            );
            // No connection, or one that failed at once (a pooled connection to an engine already dead): the
            // engine never worked on it. A request that fails later was being served when the engine died.
            if e.is_connect() || sent.elapsed() < FAILED_AT_ONCE {
                Failure::Unreachable(error)
            } else {
                Failure::Other(error)
            }
        }),
        () = lease.unresponsive() => Err(Failure::Other(ApiError::new(
            ErrorKind::GatewayTimeout,
            format!("the engine serving {model} stopped responding to its health checks; it was killed and will be replaced"),
        ))),
    }
}

/// The engine's response body, passed through frame by frame while holding the runner's lease.
struct EngineBody {
    inner: Incoming,
    lease: Option<Lease>,
    sse: bool,
    done: bool,
    model: String,
}

impl http_body::Body for EngineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) => {
                this.done = true;
                this.lease = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                this.lease = None;
                let message = format!(
                    "the engine serving {} stopped mid-response (it may have crashed): {e}",
                    this.model
                );
                tracing::warn!(model = %this.model, error = %e, "engine stream broke");
                if this.sse {
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from(
                        openai::stream_error_frame(&message),
                    )))))
                } else {
                    Poll::Ready(Some(Err(message.into())))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
