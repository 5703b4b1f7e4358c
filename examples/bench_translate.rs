//! Translation benchmark: what answering in another dialect costs, measured on one llama-server process in one run.
//! Run through `scripts/bench-translate` (which builds in release mode, installs the pinned LiteLLM and supplies the
//! paths).
//!
//! Four paths, interleaved round by round (request by request, batch by batch) so they share the machine's noise:
//! - OpenAI pass-through through dmr-supervisor, `POST /v1/chat/completions` (the reference),
//! - Anthropic → OpenAI translation through dmr-supervisor, `POST /v1/messages` (`n/a` while the route answers 404),
//! - Ollama → OpenAI translation through dmr-supervisor, `POST /api/chat`,
//! - Anthropic → OpenAI translation by LiteLLM's proxy, `POST /v1/messages`, in front of the supervisor's own engine
//!   (its port read from `GET /engines/ps`).
//!
//! Per path: non-streaming latency p50/p99 at concurrency 1 and requests/s at concurrency 8 (8-token answers),
//! streamed tokens/s of a 256-token stream at concurrency 1 (content deltas ÷ whole stream time; the tiny model never
//! emits an end token, so every stream is exactly 256 tokens), and time to first content delta (TTFT) of 8-token
//! streams.
//! Prints a Markdown report with ratios to the pass-through and whether the targets are met.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use serde_json::Value;
use tokio::process::{Child, Command};

#[path = "common/mod.rs"]
mod common;
use common::free_port;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Tokens per non-streaming answer and per stream.
const SHORT: u32 = 8;
const LONG: u32 = 256;
/// Per round and path: sequential chats, 256-token streams, 8-token streams (for TTFT), concurrent batches of
/// CONCURRENCY × PER_WORKER chats.
const SEQUENTIAL: usize = 100;
const STREAMS: usize = 10;
const TTFT_STREAMS: usize = 50;
const BATCHES: usize = 2;
const CONCURRENCY: usize = 8;
const PER_WORKER: usize = 20;
/// Translation may add at most this much to the pass-through (latencies ×1.03, rates ÷1.03).
const MAX_ADDED: f64 = 0.03;
/// The supervisor's Anthropic requests/s over LiteLLM's should be at least this.
const MIN_SPEEDUP: f64 = 20.0;

/// Pause after each of LiteLLM's steps, for it to finish what it does after answering.
const SETTLE: Duration = Duration::from_millis(200);
/// Index of the LiteLLM path in the list of paths.
const LITELLM: usize = 3;

/// Runtime flags of the engine: one compute thread leaves a core for the client and the proxies (as on a GPU box,
/// where the CPU is mostly free), and enough HTTP threads that every concurrent connection is served.
const FLAGS: [&str; 4] = ["--threads", "1", "--threads-http", "32"];
/// LiteLLM's proxy refuses to start without a master key (no database: it is only compared).
const LITELLM_KEY: &str = "sk-bench-0123456789abcdef0123456789abcdef";

struct Args {
    supervisor: PathBuf,
    llama: PathBuf,
    gguf: PathBuf,
    /// The `litellm` executable; empty to leave LiteLLM out.
    litellm: PathBuf,
    rounds: usize,
}

fn args() -> Args {
    let mut a = std::env::args().skip(1);
    let mut get = |name: &str| {
        a.next().unwrap_or_else(|| {
            panic!("usage: bench_translate SUPERVISOR LLAMA_SERVER GGUF LITELLM [ROUNDS]; missing {name}")
        })
    };
    let supervisor = get("SUPERVISOR").into();
    let llama = get("LLAMA_SERVER").into();
    let gguf = get("GGUF").into();
    let litellm = get("LITELLM").into();
    let rounds = a.next().and_then(|r| r.parse().ok()).unwrap_or(5);
    Args {
        supervisor,
        llama,
        gguf,
        litellm,
        rounds,
    }
}

fn new_client() -> HttpClient {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .pool_idle_timeout(Duration::from_secs(2)) // below llama-server's and uvicorn's 5 s keep-alive
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(c)
}

#[derive(Clone, Copy, PartialEq)]
enum Dialect {
    OpenAi,
    Anthropic,
    Ollama,
}

/// The request body of a chat answering "hi" with `tokens` tokens at temperature 0, in the path's dialect.
fn body(dialect: Dialect, tokens: u32, stream: bool) -> Bytes {
    let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
    Bytes::from(match dialect {
        Dialect::OpenAi => format!(
            r#"{{"model":"ai/tiny",{msgs},"max_tokens":{tokens},"temperature":0,"stream":{stream}}}"#
        ),
        Dialect::Anthropic => format!(
            r#"{{"model":"ai/tiny","max_tokens":{tokens},"temperature":0,{msgs},"stream":{stream}}}"#
        ),
        Dialect::Ollama => format!(
            r#"{{"model":"ai/tiny",{msgs},"stream":{stream},"options":{{"num_predict":{tokens},"temperature":0}}}}"#
        ),
    })
}

/// Whether one line of a streamed answer carries generated text: an SSE `data:` line with a non-empty
/// `choices[0].delta.content` (OpenAI) or a `content_block_delta` with non-empty text (Anthropic), or an NDJSON line
/// with a non-empty `message.content` (Ollama).
fn is_content_delta(dialect: Dialect, line: &[u8]) -> bool {
    let json = match dialect {
        Dialect::Ollama => line,
        _ => match line.strip_prefix(b"data:") {
            Some(rest) => rest.trim_ascii_start(),
            None => return false,
        },
    };
    if !json.starts_with(b"{") {
        return false; // `data: [DONE]`, blank lines, `event:` lines
    }
    let v: Value = serde_json::from_slice(json)
        .unwrap_or_else(|e| panic!("bad stream line {:?}: {e}", String::from_utf8_lossy(line)));
    let text = match dialect {
        Dialect::OpenAi => &v["choices"][0]["delta"]["content"],
        Dialect::Anthropic if v["type"] == "content_block_delta" => &v["delta"]["text"],
        Dialect::Anthropic => return false,
        Dialect::Ollama => &v["message"]["content"],
    };
    text.as_str().is_some_and(|t| !t.is_empty())
}

/// One way of asking the engine for a chat, and what was measured on it.
struct Target {
    name: String,
    url: String,
    dialect: Dialect,
    headers: Vec<(&'static str, &'static str)>,
    short: Bytes,
    short_stream: Bytes,
    long_stream: Bytes,
    /// Why the path is left out (`n/a` in the report), if it is.
    unavailable: Option<String>,
    c1: Vec<Duration>,
    c8_n: usize,
    c8_wall: Duration,
    ttft: Vec<Duration>,
    stream_time: Duration,
    stream_deltas: usize,
    streams: usize,
}

impl Target {
    fn new(name: &str, url: String, dialect: Dialect) -> Target {
        let mut headers = vec![("content-type", "application/json")];
        if dialect == Dialect::Anthropic {
            headers.push(("anthropic-version", "2023-06-01"));
        }
        Target {
            name: name.to_string(),
            url,
            dialect,
            headers,
            short: body(dialect, SHORT, false),
            short_stream: body(dialect, SHORT, true),
            long_stream: body(dialect, LONG, true),
            unavailable: None,
            c1: Vec::new(),
            c8_n: 0,
            c8_wall: Duration::ZERO,
            ttft: Vec::new(),
            stream_time: Duration::ZERO,
            stream_deltas: 0,
            streams: 0,
        }
    }

    fn request(&self, body: &Bytes) -> hyper::Request<Full<Bytes>> {
        let mut req = hyper::Request::post(&self.url);
        for (k, v) in &self.headers {
            req = req.header(*k, *v);
        }
        req.body(Full::new(body.clone())).expect("request")
    }

    /// Sends one request; the status and whole body, or a transport error.
    async fn send(&self, client: &HttpClient, body: &Bytes) -> Result<(u16, Bytes), String> {
        let resp = client
            .request(self.request(body))
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, body.to_bytes()))
    }

    /// One non-streaming chat; the total time. Panics on anything but success: a path that passed `probe` must not
    /// start failing half-way through the measurements.
    async fn chat(&self, client: &HttpClient) -> Duration {
        let t0 = Instant::now();
        match self.send(client, &self.short).await {
            Ok((200, _)) => t0.elapsed(),
            Ok((status, body)) => panic!(
                "{}: HTTP {status}: {}",
                self.name,
                String::from_utf8_lossy(&body)
            ),
            Err(e) => panic!("{}: {e}", self.name),
        }
    }

    /// One streamed chat, read line by line as frames arrive: (time to first content delta, total time, deltas).
    async fn stream(&self, client: &HttpClient, body: &Bytes) -> (Duration, Duration, usize) {
        let t0 = Instant::now();
        let resp = client
            .request(self.request(body))
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", self.name));
        let status = resp.status();
        let mut body = resp.into_body();
        assert!(status.is_success(), "{}: stream HTTP {status}", self.name);
        let (mut first, mut deltas, mut buf) = (None, 0, Vec::new());
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.expect("stream body").into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                if is_content_delta(self.dialect, line.trim_ascii_end()) {
                    deltas += 1;
                    first.get_or_insert_with(|| t0.elapsed());
                }
            }
        }
        let total = t0.elapsed();
        (first.unwrap_or(total), total, deltas)
    }

    /// Checks that the path answers a chat and a stream in its dialect; otherwise marks it unavailable.
    async fn probe(&mut self, client: &HttpClient) {
        let check = async {
            match self.send(client, &self.short).await? {
                (200, body) => {
                    let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                    let ok = match self.dialect {
                        Dialect::OpenAi => v["choices"][0]["message"]["content"].is_string(),
                        Dialect::Anthropic => v["type"] == "message",
                        Dialect::Ollama => v["done"] == true,
                    };
                    if !ok {
                        return Err(format!("unexpected answer: {v}"));
                    }
                }
                (status, body) => {
                    let body = String::from_utf8_lossy(&body);
                    return Err(format!(
                        "HTTP {status}: {}",
                        body.chars().take(200).collect::<String>()
                    ));
                }
            }
            match self.send(client, &self.short_stream).await? {
                (200, _) => Ok(()),
                (status, _) => Err(format!("stream: HTTP {status}")),
            }
        };
        if let Err(e) = check.await {
            eprintln!("{}: not measured: {e}", self.name);
            self.unavailable = Some(e);
        }
    }
}

/// `CONCURRENCY` workers sending `PER_WORKER` non-streaming chats each; the number of chats and the wall time.
async fn batch(client: &HttpClient, t: &Target) -> (usize, Duration) {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let client = client.clone();
        let (url, headers, body) = (t.url.clone(), t.headers.clone(), t.short.clone());
        let name = t.name.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..PER_WORKER {
                let mut req = hyper::Request::post(&url);
                for (k, v) in &headers {
                    req = req.header(*k, *v);
                }
                let req = req.body(Full::new(body.clone())).unwrap();
                let resp = client
                    .request(req)
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {e:?}"));
                assert!(resp.status().is_success(), "{name}: HTTP {}", resp.status());
                resp.into_body().collect().await.expect("body");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    (CONCURRENCY * PER_WORKER, t0.elapsed())
}

/// One kind of measurement, repeated `count` times per round and path.
#[derive(Clone, Copy)]
enum Step {
    Chats,
    Streams,
    FirstTokens,
    Batches,
}

impl Step {
    fn count(self) -> usize {
        match self {
            Step::Chats => SEQUENTIAL,
            Step::Streams => STREAMS,
            Step::FirstTokens => TTFT_STREAMS,
            Step::Batches => BATCHES,
        }
    }

    /// Measures once on `t` and records the figures there.
    async fn run(self, client: &HttpClient, t: &mut Target) {
        match self {
            Step::Chats => {
                let d = t.chat(client).await;
                t.c1.push(d);
            }
            Step::Streams => {
                let (_, total, deltas) = t.stream(client, &t.long_stream).await;
                t.stream_time += total;
                t.stream_deltas += deltas;
                t.streams += 1;
            }
            Step::FirstTokens => {
                let (ttft, _, _) = t.stream(client, &t.short_stream).await;
                t.ttft.push(ttft);
            }
            Step::Batches => {
                let (n, wall) = batch(client, t).await;
                t.c8_n += n;
                t.c8_wall += wall;
            }
        }
    }
}

async fn get_json(client: &HttpClient, url: &str) -> Result<Value, String> {
    let req = hyper::Request::get(url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("{url}: HTTP {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))
}

/// The (pid, port) of every engine the supervisor runs, from `GET /engines/ps`.
async fn engines(client: &HttpClient, addr: &str) -> Vec<(u64, u64)> {
    let ps = get_json(client, &format!("http://{addr}/engines/ps"))
        .await
        .expect("GET /engines/ps");
    ps.as_array()
        .expect("/engines/ps is a list")
        .iter()
        .filter_map(|e| Some((e["pid"].as_u64()?, e["port"].as_u64()?)))
        .collect()
}

/// Starts the supervisor with `ai/tiny` kept loaded forever; its address once it prints `listening on`.
async fn start_supervisor(a: &Args, dir: &Path) -> (Child, String) {
    let config = dir.join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndrain_delay = \"0s\"\n[store]\npath = \"{}\"\n[engines.llamacpp]\nbinary = \"{}\"\n\
             [[models]]\nname = \"ai/tiny\"\ngguf = \"{}\"\ncontext_size = 512\nkeep_alive = \"-1\"\n\
             runtime_flags = {:?}\n",
            dir.join("store").display(),
            a.llama.display(),
            a.gguf.display(),
            FLAGS,
        ),
    )
    .unwrap();
    let (sup, addr) = common::spawn_supervisor(&a.supervisor, &config).await;
    (sup, addr)
}

/// Starts LiteLLM's proxy (one uvicorn worker, its default) in its own process group, mapping `ai/tiny` to the
/// OpenAI-compatible engine on `engine_port`, offline; its port once `/health/liveliness` answers, or why not.
async fn start_litellm(
    a: &Args,
    dir: &Path,
    engine_port: u64,
    client: &HttpClient,
) -> Result<(Child, u16), String> {
    let config = dir.join("litellm.yaml");
    std::fs::write(&config, litellm_config(engine_port)).unwrap();
    let log_path = dir.join("litellm.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let port = free_port();
    let mut child = Command::new(&a.litellm)
        .args(["--config", config.to_str().unwrap(), "--host", "127.0.0.1"])
        .args(["--port", &port.to_string()])
        // Offline: the bundled model cost map instead of fetching it from GitHub, no telemetry; LITELLM_LOG=ERROR
        // also drops uvicorn's per-request access log (the supervisor logs at warn).
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_TELEMETRY_DISABLED", "true")
        .env("LITELLM_LOG", "ERROR")
        .env("DISABLE_ADMIN_UI", "true")
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", a.litellm.display()))?;
    let t0 = Instant::now();
    let url = format!("http://127.0.0.1:{port}/health/liveliness");
    loop {
        let req = hyper::Request::get(&url)
            .body(Full::new(Bytes::new()))
            .unwrap();
        if matches!(client.request(req).await, Ok(r) if r.status() == 200) {
            eprintln!("LiteLLM ready in {:.1} s", t0.elapsed().as_secs_f64());
            return Ok((child, port));
        }
        let gone = child.try_wait().ok().flatten();
        if gone.is_some() || t0.elapsed() > Duration::from_secs(180) {
            kill_group(&mut child).await;
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!("LiteLLM log (last lines):");
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
            return Err(match gone {
                Some(status) => format!("LiteLLM exited ({status}) before answering"),
                None => "LiteLLM did not answer /health/liveliness within 180 s".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// LiteLLM's proxy config: `ai/tiny` → the OpenAI provider at the engine, Anthropic `/v1/messages` translated to
/// chat completions (its default for the OpenAI provider is the Responses API), no database.
fn litellm_config(engine_port: u64) -> String {
    format!(
        "model_list:\n  - model_name: ai/tiny\n    litellm_params:\n      model: openai/ai/tiny:latest\n      \
         api_base: http://127.0.0.1:{engine_port}/v1\n      api_key: dummy\nlitellm_settings:\n  \
         use_chat_completions_url_for_anthropic_messages: true\ngeneral_settings:\n  master_key: {LITELLM_KEY}\n"
    )
}

async fn kill_group(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.wait().await;
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One column of the report: its heading, the value of a path, and whether larger is better.
struct Metric {
    heading: &'static str,
    value: fn(&Target) -> f64,
    higher_is_better: bool,
}

const METRICS: [Metric; 5] = [
    Metric {
        heading: "chat p50, c=1 (µs)",
        value: |t| us(pct(t.c1.clone(), 0.5)),
        higher_is_better: false,
    },
    Metric {
        heading: "chat p99, c=1 (µs)",
        value: |t| us(pct(t.c1.clone(), 0.99)),
        higher_is_better: false,
    },
    Metric {
        heading: "requests/s, c=8",
        value: |t| t.c8_n as f64 / t.c8_wall.as_secs_f64(),
        higher_is_better: true,
    },
    Metric {
        heading: "stream tokens/s",
        value: |t| t.stream_deltas as f64 / t.stream_time.as_secs_f64(),
        higher_is_better: true,
    },
    Metric {
        heading: "stream TTFT p50 (µs)",
        value: |t| us(pct(t.ttft.clone(), 0.5)),
        higher_is_better: false,
    },
];

/// Whether a ratio to the pass-through is within the allowed cost.
fn within(m: &Metric, ratio: f64) -> bool {
    if m.higher_is_better {
        ratio >= 1.0 / (1.0 + MAX_ADDED)
    } else {
        ratio <= 1.0 + MAX_ADDED
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let client = new_client();
    let dir = std::env::temp_dir().join(format!("dmr-bench-translate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut sup, addr) = start_supervisor(&a, &dir).await;

    let mut targets = vec![
        Target::new(
            "OpenAI pass-through, supervisor `POST /v1/chat/completions`",
            format!("http://{addr}/v1/chat/completions"),
            Dialect::OpenAi,
        ),
        Target::new(
            "Anthropic → OpenAI, supervisor `POST /v1/messages`",
            format!("http://{addr}/v1/messages"),
            Dialect::Anthropic,
        ),
        Target::new(
            "Ollama → OpenAI, supervisor `POST /api/chat`",
            format!("http://{addr}/api/chat"),
            Dialect::Ollama,
        ),
    ];
    // Loads the engine (one request), then finds it.
    targets[0].chat(&client).await;
    let engine = *engines(&client, &addr)
        .await
        .first()
        .expect("no engine after a chat");
    eprintln!("engine pid {} on port {}", engine.0, engine.1);

    let mut litellm_child = None;
    let mut lite = Target::new(
        "Anthropic → OpenAI, LiteLLM proxy `POST /v1/messages`",
        String::new(),
        Dialect::Anthropic,
    );
    lite.headers.push(("x-api-key", LITELLM_KEY));
    if a.litellm.as_os_str().is_empty() {
        lite.unavailable = Some("not run (no LITELLM given)".into());
    } else {
        match start_litellm(&a, &dir, engine.1, &client).await {
            Ok((child, port)) => {
                lite.url = format!("http://127.0.0.1:{port}/v1/messages");
                litellm_child = Some(child);
            }
            Err(e) => {
                eprintln!("{e}");
                lite.unavailable = Some(e);
            }
        }
    }
    targets.push(lite);
    assert_eq!(targets.len() - 1, LITELLM);

    for t in targets.iter_mut() {
        if t.unavailable.is_none() {
            t.probe(&client).await;
        }
    }
    let live: Vec<usize> = (0..targets.len())
        .filter(|i| targets[*i].unavailable.is_none())
        .collect();
    assert!(
        live.contains(&0),
        "the OpenAI pass-through must work: {:?}",
        targets[0].unavailable
    );
    // Warm-up (LiteLLM imports lazily on its first requests).
    for &i in &live {
        for _ in 0..20 {
            targets[i].chat(&client).await;
        }
        targets[i].stream(&client, &targets[i].long_stream).await;
    }

    // The supervisor's paths alternate request by request (batch by batch), each time starting with the next one, so
    // none always follows the same other. LiteLLM keeps a core busy for a moment after it has answered (interleaved
    // with it, whichever request came next was ~1 ms slower): its share of each step runs right after theirs, in the
    // same round, followed by a pause.
    let sup_live: Vec<usize> = live.iter().copied().filter(|&i| i != LITELLM).collect();
    for round in 0..a.rounds {
        eprintln!("round {}/{}", round + 1, a.rounds);
        for step in [Step::Chats, Step::Streams, Step::FirstTokens, Step::Batches] {
            for k in 0..step.count() {
                for j in 0..sup_live.len() {
                    let i = sup_live[(k + j) % sup_live.len()];
                    step.run(&client, &mut targets[i]).await;
                }
            }
            if live.contains(&LITELLM) {
                for _ in 0..step.count() {
                    step.run(&client, &mut targets[LITELLM]).await;
                }
                tokio::time::sleep(SETTLE).await;
            }
        }
    }
    let engines_after = engines(&client, &addr).await;

    if let Some(mut child) = litellm_child {
        kill_group(&mut child).await;
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = sup.wait().await;
    let _ = std::fs::remove_dir_all(&dir);

    report(&a, &targets, engine, &engines_after);
}

fn report(a: &Args, targets: &[Target], engine: (u64, u64), engines_after: &[(u64, u64)]) {
    let base: Vec<f64> = METRICS.iter().map(|m| (m.value)(&targets[0])).collect();
    let headings: Vec<&str> = METRICS.iter().map(|m| m.heading).collect();
    println!("| path | {} |", headings.join(" | "));
    println!("| --- |{}", " ---: |".repeat(METRICS.len()));
    for (row, t) in targets.iter().enumerate() {
        let cells: Vec<String> = METRICS
            .iter()
            .zip(&base)
            .map(|(m, b)| match (&t.unavailable, row) {
                (Some(_), _) => "n/a".into(),
                (None, 0) => format!("{:.0}", (m.value)(t)),
                (None, _) => format!("{:.0} (×{:.3})", (m.value)(t), (m.value)(t) / b),
            })
            .collect();
        println!("| {} | {} |", t.name, cells.join(" | "));
    }

    println!(
        "\nTargets (ratios are to the OpenAI pass-through: latencies ≤ ×{:.2}, rates ≥ ×{:.3}):\n",
        1.0 + MAX_ADDED,
        1.0 / (1.0 + MAX_ADDED)
    );
    for t in &targets[1..3] {
        let verdict = match &t.unavailable {
            Some(why) => format!("n/a ({why})"),
            None => {
                let missed: Vec<String> = METRICS
                    .iter()
                    .zip(&base)
                    .filter(|(m, b)| !within(m, (m.value)(t) / **b))
                    .map(|(m, b)| format!("{} ×{:.3}", m.heading, (m.value)(t) / b))
                    .collect();
                if missed.is_empty() {
                    "**met**".into()
                } else {
                    format!("**not met**: {}", missed.join(", "))
                }
            }
        };
        println!(
            "- {}: translation adds ≤ {:.0} %: {verdict}",
            t.name,
            MAX_ADDED * 100.0
        );
    }
    let rps = |t: &Target| (METRICS[2].value)(t);
    let lite = &targets[LITELLM];
    let speedup = |t: &Target| match (&t.unavailable, &lite.unavailable) {
        (Some(why), _) | (None, Some(why)) => Err(why.clone()),
        (None, None) => Ok(rps(t) / rps(lite)),
    };
    match speedup(&targets[1]) {
        Ok(x) => println!(
            "- supervisor's Anthropic requests/s ÷ LiteLLM's, c=8: {x:.1}× (target ≥ {MIN_SPEEDUP:.0}×): {}",
            if x >= MIN_SPEEDUP { "**met**" } else { "**not met**" }
        ),
        Err(why) => println!(
            "- supervisor's Anthropic requests/s ÷ LiteLLM's, c=8 (target ≥ {MIN_SPEEDUP:.0}×): n/a ({why})"
        ),
    }
    for t in [&targets[2], &targets[0]] {
        if let Ok(x) = speedup(t) {
            println!("  (for reference, {} ÷ LiteLLM: {x:.1}×)", t.name);
        }
    }

    let deltas: Vec<String> = targets
        .iter()
        .filter(|t| t.unavailable.is_none() && t.streams > 0)
        .map(|t| format!("{:.0}", t.stream_deltas as f64 / t.streams as f64))
        .collect();
    println!(
        "\n{} round(s); per round and path: {SEQUENTIAL} sequential {SHORT}-token chats, {STREAMS} {LONG}-token \
         streams, {TTFT_STREAMS} {SHORT}-token streams (TTFT), {BATCHES} batches of {CONCURRENCY}×{PER_WORKER} \
         concurrent chats. The supervisor's paths alternate request by request (batch by batch); LiteLLM takes its \
         turn after them at each step of the round. One engine throughout (pid {}, port {}){}; content deltas per \
         {LONG}-token stream, by path: {} (llama-server holds back incomplete UTF-8, so fewer deltas than tokens).",
        a.rounds,
        engine.0,
        engine.1,
        if engines_after == [engine] {
            String::new()
        } else {
            format!(" — **but /engines/ps changed to {engines_after:?}: figures not comparable**")
        },
        deltas.join(", "),
    );
}
