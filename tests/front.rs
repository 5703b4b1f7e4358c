//! Fast tests of the HTTP front in `cargo test`: the daemon runs in this process (`dmr_supervisor::start`), and
//! its llama.cpp engine is this test binary re-executed as a fake llama-server (a few dozen lines of hyper, chosen
//! by `FAKE_ENGINE` in the environment the daemon passes on), so the whole path — route, plan, lease, spawn,
//! readiness, forward, translate, render — runs against an engine that answers in microseconds. Forwarding,
//! streaming, a client that leaves mid-stream, the Anthropic translation and each dialect's error shape are
//! checked in about a second; the Python suite stays the end-to-end proof against the real llama-server.
//!
//! `harness = false`: the child is started with llama-server's argv, which libtest would refuse.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const FAKE: &str = "DMR_FRONT_FAKE_ENGINE";

fn main() {
    if std::env::var_os(FAKE).is_some() {
        return fake_engine();
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let failed = runtime.block_on(run_all());
    if failed > 0 {
        eprintln!("{failed} front test(s) failed");
        std::process::exit(1);
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// The fake llama-server: `/health`, `/v1/chat/completions` (echoing what it received; streamed when asked, and
/// endless when the last message says "forever"; a 500 when it says "fail"), and llama-server's token count.
fn fake_engine() {
    let args: Vec<String> = std::env::args().collect();
    let after = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let port: u16 = after("--port")
        .and_then(|p| p.parse().ok())
        .expect("--port");
    let alias = after("--alias").unwrap_or_default();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let alias = alias.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(req, alias.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

async fn answer(req: Request<Incoming>, alias: String) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json_answer = |status: u16, v: Value| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(full(v.to_string()))
            .expect("response"))
    };
    match path.as_str() {
        "/health" => json_answer(200, json!({"status": "ok"})),
        "/v1/chat/completions/input_tokens" => json_answer(200, json!({"input_tokens": 42})),
        "/v1/chat/completions" => {
            let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let last = request["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .unwrap_or_default()
                .to_string();
            if last == "roles" {
                let roles: Vec<&str> = request["messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| m["role"].as_str().unwrap_or("?"))
                    .collect();
                return json_answer(
                    200,
                    json!({"id": "c3", "choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": format!("roles: {}", roles.join(" "))}}]}),
                );
            }
            if last == "fail" {
                return json_answer(
                    500,
                    json!({"error": {"code": 500, "message": "the fake engine failed", "type": "server_error"}}),
                );
            }
            // A forced tool call is answered with one (the real tiny model's template has no tools).
            if request["tool_choice"] == json!("required") && request["stream"] != json!(true) {
                return json_answer(
                    200,
                    json!({
                        "id": "c2", "object": "chat.completion", "created": 1, "model": alias,
                        "choices": [{"index": 0, "finish_reason": "tool_calls",
                                     "message": {"role": "assistant", "content": null, "tool_calls": [
                                         {"id": "call_7", "type": "function",
                                          "function": {"name": request["tools"][0]["function"]["name"], "arguments": "{\"city\":\"Paris\"}"}}]}}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                        "received": String::from_utf8_lossy(&body),
                    }),
                );
            }
            if request["stream"] != json!(true) {
                return json_answer(
                    200,
                    json!({
                        "id": "c1", "object": "chat.completion", "created": 1, "model": alias,
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": format!("echo: {last}")}}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                        "received": String::from_utf8_lossy(&body),
                    }),
                );
            }
            let forever = last == "forever";
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                let chunk = |content: &str| {
                    let c = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                   "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
                    Ok(Frame::data(Bytes::from(format!("data: {c}\n\n"))))
                };
                let mut n = 0u64;
                loop {
                    if tx.send(chunk(&format!("t{n} "))).await.is_err() {
                        return; // the supervisor hung up
                    }
                    n += 1;
                    if !forever && n == 3 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(if forever { 20 } else { 1 })).await;
                }
                let end = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                 "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}});
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from(format!("data: {end}\n\n")))))
                    .await;
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))))
                    .await;
            });
            let stream = tokio_stream_from(rx);
            Ok(Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .expect("response"))
        }
        _ => json_answer(
            404,
            json!({"error": {"code": 404, "message": "no such route"}}),
        ),
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A minimal GGUF (v3, no tensors, `general.architecture = llama`): enough for the store to import it.
fn tiny_gguf(path: &Path) {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // metadata entries
    let key = b"general.architecture";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&8u32.to_le_bytes()); // string
    b.extend_from_slice(&5u64.to_le_bytes());
    b.extend_from_slice(b"llama");
    std::fs::write(path, b).expect("write gguf");
}

struct Daemon {
    addr: SocketAddr,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// The daemon, the token that stops it and its serving task.
    async fn start() -> (Daemon, CancellationToken, tokio::task::JoinHandle<()>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let gguf = dir.path().join("tiny.gguf");
        tiny_gguf(&gguf);
        let mut config = dmr_supervisor::config::Config::default();
        config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.store.path = dir.path().join("store");
        config.engines.llamacpp.binary = Some(std::env::current_exe().expect("current exe"));
        config.scheduler.startup_timeout = Duration::from_secs(20);
        config.scheduler.stop_timeout = Duration::from_secs(2);
        let mut model = dmr_supervisor::config::ModelSettings::defaults_for("ai/tiny:latest");
        model.path = Some(gguf);
        config.models.push(model);
        // The daemon's engines inherit this: they become fake llama-servers.
        std::env::set_var(FAKE, "1");
        let running = dmr_supervisor::start(config, Default::default())
            .await
            .expect("start");
        let addr = running.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let done = tokio::spawn(running.run(shutdown.clone()));
        let daemon = Daemon {
            addr,
            client: reqwest::Client::new(),
            _dir: dir,
        };
        (daemon, shutdown, done)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("send");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn send(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let resp = self
            .client
            .request(method, self.url(path))
            .send()
            .await
            .expect("send");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn in_flight(&self) -> u64 {
        let ps: Value = self
            .client
            .get(self.url("/engines/ps"))
            .send()
            .await
            .expect("ps")
            .json()
            .await
            .expect("ps json");
        ps.as_array()
            .into_iter()
            .flatten()
            .map(|r| r["in_flight"].as_u64().unwrap_or(0))
            .sum()
    }
}

fn chat(content: &str, stream: bool) -> Value {
    json!({"model": "ai/tiny", "stream": stream, "unknown_field": [1, 2],
           "messages": [{"role": "user", "content": content}]})
}

type Test = fn(Arc<Daemon>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        [$((stringify!($name), (|d| Box::pin($name(d))) as Test)),*]
    };
}

async fn run_all() -> usize {
    let started = Instant::now();
    let (daemon, shutdown, done) = Daemon::start().await;
    let daemon = Arc::new(daemon);
    let tests = tests![
        openai_bodies_reach_the_engine_untouched,
        streams_pass_through_to_done,
        a_client_leaving_mid_stream_releases_the_runner,
        anthropic_is_translated_both_ways,
        responses_are_translated_kept_and_chained,
        errors_take_the_shape_of_each_dialect,
        engine_errors_reach_the_client,
    ];
    let mut failed = 0;
    for (name, test) in tests {
        let t = Instant::now();
        // On its own task, so that a failed assertion is caught as a `JoinError`.
        let outcome =
            tokio::time::timeout(Duration::from_secs(30), tokio::spawn(test(daemon.clone()))).await;
        match outcome {
            Ok(Ok(())) => println!("test {name} ... ok ({:?})", t.elapsed()),
            Ok(Err(e)) => {
                failed += 1;
                println!("test {name} ... FAILED: {e}");
            }
            Err(_) => {
                failed += 1;
                println!("test {name} ... FAILED: timed out");
            }
        }
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), done).await;
    println!(
        "front: {} passed, {failed} failed in {:?}",
        tests.len() - failed,
        started.elapsed()
    );
    failed
}

async fn openai_bodies_reach_the_engine_untouched(d: Arc<Daemon>) {
    let (status, body) = d
        .post("/engines/v1/chat/completions", chat("hi", false))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "echo: hi");
    let received: Value =
        serde_json::from_str(body["received"].as_str().expect("the engine's echo")).expect("json");
    assert_eq!(
        received,
        chat("hi", false),
        "unknown fields reach the engine"
    );
    let (status, body) = d.post("/v1/chat/completions", chat("again", false)).await;
    assert_eq!(
        (status, &body["choices"][0]["message"]["content"]),
        (200, &json!("echo: again"))
    );
}

async fn streams_pass_through_to_done(d: Arc<Daemon>) {
    let resp = d
        .client
        .post(d.url("/engines/v1/chat/completions"))
        .json(&chat("hi", true))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = resp.text().await.expect("stream");
    let data: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(data.len(), 5, "{text}");
    assert_eq!(data.last(), Some(&"[DONE]"));
    let first: Value = serde_json::from_str(data[0]).expect("chunk");
    assert_eq!(first["choices"][0]["delta"]["content"], "t0 ");
}

async fn a_client_leaving_mid_stream_releases_the_runner(d: Arc<Daemon>) {
    let mut resp = d
        .client
        .post(d.url("/engines/v1/chat/completions"))
        .json(&chat("forever", true))
        .send()
        .await
        .expect("send");
    let first = resp.chunk().await.expect("chunk").expect("a first chunk");
    assert!(first.starts_with(b"data: "), "{first:?}");
    assert_eq!(d.in_flight().await, 1, "the stream holds its lease");
    drop(resp);
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.in_flight().await != 0 {
        assert!(
            Instant::now() < deadline,
            "the lease outlived its client by 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn anthropic_is_translated_both_ways(d: Arc<Daemon>) {
    let (status, body) = d
        .post(
            "/anthropic/v1/messages",
            json!({"model": "ai/tiny", "max_tokens": 8, "messages": [{"role": "user", "content": "hello"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["content"][0]["type"], "text");
    assert_eq!(body["content"][0]["text"], "echo: hello");
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["usage"]["output_tokens"], 2);
    let (status, body) = d
        .post(
            "/anthropic/v1/messages/count_tokens",
            json!({"model": "ai/tiny", "messages": [{"role": "user", "content": "hello"}]}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"input_tokens": 42})));
}

async fn responses_are_translated_kept_and_chained(d: Arc<Daemon>) {
    use reqwest::Method;
    let (status, first) = d
        .post(
            "/v1/responses",
            json!({"model": "ai/tiny", "input": "hello", "instructions": "be brief"}),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["object"], "response");
    assert_eq!(first["status"], "completed");
    assert_eq!(first["model"], "ai/tiny:latest");
    assert_eq!(first["output"][0]["content"][0]["text"], "echo: hello");
    assert_eq!(first["usage"]["total_tokens"], 5);
    let id = first["id"].as_str().expect("an id").to_string();
    assert!(id.starts_with("resp_"), "{id}");
    // Kept: GET returns the very object, input_items its input.
    assert_eq!(
        d.send(Method::GET, &format!("/responses/{id}")).await,
        (200, first.clone())
    );
    let (status, items) = d
        .send(
            Method::GET,
            &format!("/engines/v1/responses/{id}/input_items"),
        )
        .await;
    assert_eq!(status, 200, "{items}");
    assert_eq!(
        items["data"][0]["content"][0],
        json!({"type": "input_text", "text": "hello"})
    );
    assert_eq!(items["has_more"], false);
    // A forced tool call, then its output in a chained turn: the engine is sent the whole conversation.
    let tools =
        json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]);
    let (status, call) = d
        .post(
            "/engines/llama.cpp/v1/responses",
            json!({"model": "ai/tiny", "input": "weather?", "tools": tools,
               "tool_choice": "required", "previous_response_id": id}),
        )
        .await;
    assert_eq!(status, 200, "{call}");
    let item = &call["output"][0];
    assert_eq!(
        (
            &item["type"],
            &item["call_id"],
            &item["name"],
            &item["arguments"]
        ),
        (
            &json!("function_call"),
            &json!("call_7"),
            &json!("get_weather"),
            &json!("{\"city\":\"Paris\"}")
        )
    );
    let (status, last) = d
        .post("/v1/responses", json!({"model": "ai/tiny", "previous_response_id": call["id"], "tools": tools,
               "input": [{"type": "function_call_output", "call_id": "call_7", "output": "sunny"}]}))
        .await;
    assert_eq!(status, 200, "{last}");
    assert_eq!(last["output"][0]["content"][0]["text"], "echo: sunny");
    // Every turn reaches the engine, instructions only with the turn that gave them ("roles" makes the fake
    // engine answer with the roles it was sent).
    let (status, roles) = d
        .post(
            "/v1/responses",
            json!({"model": "ai/tiny", "previous_response_id": last["id"], "input": "roles"}),
        )
        .await;
    assert_eq!(status, 200, "{roles}");
    assert_eq!(
        roles["output"][0]["content"][0]["text"],
        "roles: user assistant user assistant tool assistant user"
    );
    // DELETE, then it is gone; store:false is never kept.
    let (status, deleted) = d.send(Method::DELETE, &format!("/v1/responses/{id}")).await;
    assert_eq!(
        (status, deleted),
        (
            200,
            json!({"id": id, "object": "response.deleted", "deleted": true})
        )
    );
    let (status, gone) = d.send(Method::GET, &format!("/v1/responses/{id}")).await;
    assert_eq!(status, 404, "{gone}");
    assert_eq!(gone["error"]["type"], "not_found_error");
    let (_, unstored) = d
        .post(
            "/v1/responses",
            json!({"model": "ai/tiny", "input": "x", "store": false}),
        )
        .await;
    assert_eq!(unstored["store"], false);
    let (status, _) = d
        .send(
            Method::GET,
            &format!("/v1/responses/{}", unstored["id"].as_str().unwrap_or("")),
        )
        .await;
    assert_eq!(status, 404);
    // Streams: the Responses events, ending with the whole response, which is kept too.
    let resp = d
        .client
        .post(d.url("/v1/responses"))
        .json(&json!({"model": "ai/tiny", "input": "hi", "stream": true}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.expect("body");
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.split_once("\ndata: "))
        .map(|(_, d)| serde_json::from_str(d).expect("json"))
        .collect();
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(deltas, "t0 t1 t2 ");
    let done = events.last().expect("events");
    assert_eq!(done["type"], "response.completed", "{text}");
    assert_eq!(done["response"]["usage"]["output_tokens"], 3);
    let streamed_id = done["response"]["id"].as_str().unwrap_or_default();
    let (status, kept) = d
        .send(Method::GET, &format!("/v1/responses/{streamed_id}"))
        .await;
    assert_eq!(status, 200, "{kept}");
    assert_eq!(kept, done["response"]);
}

async fn errors_take_the_shape_of_each_dialect(d: Arc<Daemon>) {
    let nope = json!({"model": "ai/nope", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]});
    let (status, body) = d.post("/v1/chat/completions", nope.clone()).await;
    assert_eq!(status, 404);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("ai/nope")),
        "OpenAI: {body}"
    );
    let (status, body) = d.post("/anthropic/v1/messages", nope.clone()).await;
    assert_eq!(status, 404);
    assert_eq!(body["type"], "error", "Anthropic: {body}");
    assert!(body["error"]["type"].is_string(), "Anthropic: {body}");
    let (status, body) = d.post("/api/chat", nope).await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string(), "Ollama: {body}");
    let resp = d
        .client
        .get(d.url("/models/ai/nope"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 404);
    let text = resp.text().await.expect("text");
    assert!(
        serde_json::from_str::<Value>(&text).is_err(),
        "native routes answer plain text: {text}"
    );
    let (status, body) = d
        .post(
            "/engines/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("model")),
        "{body}"
    );
}

async fn engine_errors_reach_the_client(d: Arc<Daemon>) {
    let (status, body) = d
        .post("/engines/v1/chat/completions", chat("fail", false))
        .await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["message"], "the fake engine failed");
}
