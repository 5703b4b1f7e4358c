//! Proxy overhead benchmark: the same llama-server and model, measured directly and through dmr-supervisor in one
//! run, interleaved round by round so both see the same machine noise. Prints a Markdown report with ratios.
//! Run through `scripts/bench-proxy` (which builds in release mode and supplies the paths).
//!
//! Measures: p50/p99 latency of a non-streaming chat completion at concurrency 1 and 16, requests/s at 16,
//! time to first byte of a streaming chat (TTFT), and cold-start overhead (supervisor's time from request to first
//! byte on a cold model, minus the engine's own spawn → healthy → first byte when started directly).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use tokio::process::{Child, Command};

#[path = "common/mod.rs"]
mod common;
use common::free_port;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const CHAT: &str = r#"{"model":"ai/tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":8,"temperature":0}"#;
const STREAM: &str = r#"{"model":"ai/tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":8,"temperature":0,"stream":true}"#;

struct Args {
    supervisor: PathBuf,
    llama: PathBuf,
    gguf: PathBuf,
    rounds: usize,
}

fn args() -> Args {
    let mut a = std::env::args().skip(1);
    let mut get = |name: &str| {
        a.next().unwrap_or_else(|| {
            panic!("usage: bench_proxy SUPERVISOR LLAMA_SERVER GGUF [ROUNDS]; missing {name}")
        })
    };
    let supervisor = get("SUPERVISOR").into();
    let llama = get("LLAMA_SERVER").into();
    let gguf = get("GGUF").into();
    let rounds = a.next().and_then(|r| r.parse().ok()).unwrap_or(5);
    Args {
        supervisor,
        llama,
        gguf,
        rounds,
    }
}

fn new_client() -> HttpClient {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .pool_idle_timeout(Duration::from_secs(2)) // below llama-server's 5 s keep-alive, as the supervisor does
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(c)
}

/// Sends one POST; returns (time to first body byte, total time).
async fn post(client: &HttpClient, url: &str, body: &'static str) -> (Duration, Duration) {
    let t0 = Instant::now();
    let mut req = hyper::Request::post(url).header("content-type", "application/json");
    if body.contains("\"stream\":true") && !url.contains("/engines/") {
        // llama-server closes the connection after a stream without saying so; the supervisor sends
        // `Connection: close` upstream for streams, and so does the direct side here.
        req = req.header("connection", "close");
    }
    let req = req
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request");
    let resp = client
        .request(req)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e:?}"));
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let text = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        panic!("{url}: HTTP {status}: {}", String::from_utf8_lossy(&text));
    }
    let mut first = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body");
        if first.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
            first = Some(t0.elapsed());
        }
    }
    (first.unwrap_or_else(|| t0.elapsed()), t0.elapsed())
}

/// Runtime flags given to both engines: one compute thread leaves a core for client and proxy (as on a GPU box, where
/// the CPU is mostly free), and enough HTTP threads that 16 concurrent connections are all served.
const FLAGS: [&str; 6] = ["--temp", "0", "--threads", "1", "--threads-http", "32"];

/// The argv the supervisor gives its engine (the library's own builder), so both engines run identically.
fn engine_args(gguf: &std::path::Path, port: u16) -> Vec<String> {
    let spec = dmr_supervisor::engines::LaunchSpec {
        model_name: "ai/tiny:latest".into(),
        engine: dmr_supervisor::engines::llamacpp::ENGINE,
        vllm: Default::default(),
        model_path: gguf.to_path_buf(),
        chat_template: None,
        mode: dmr_supervisor::engines::Mode::Completion,
        context_size: 512,
        runtime_flags: FLAGS.iter().map(|f| f.to_string()).collect(),
        keep_alive: dmr_supervisor::config::KeepAlive::Forever,
    };
    dmr_supervisor::engines::llamacpp::argv(&spec, port)
}

fn spawn_engine(a: &Args, port: u16) -> Child {
    Command::new(&a.llama)
        .args(engine_args(&a.gguf, port))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn llama-server")
}

async fn healthy(client: &HttpClient, port: u16) -> bool {
    let req = hyper::Request::get(format!("http://127.0.0.1:{port}/health"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    matches!(client.request(req).await, Ok(r) if r.status() == 200)
}

/// Engine started directly: spawn → /health 200 (polled every 1 ms) → first byte of a chat answer.
async fn direct_cold(a: &Args) -> Duration {
    // A fresh pool: an idle connection to an earlier engine on a recycled port must not be reused.
    let client = &new_client();
    let port = free_port();
    let t0 = Instant::now();
    let mut child = spawn_engine(a, port);
    while !healthy(client, port).await {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    post(
        client,
        &format!("http://127.0.0.1:{port}/v1/chat/completions"),
        CHAT,
    )
    .await;
    let total = t0.elapsed();
    let _ = child.kill().await;
    total
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `n` requests per worker from `workers` concurrent workers; returns latencies and the wall time.
async fn load(
    client: &HttpClient,
    url: &str,
    workers: usize,
    n: usize,
) -> (Vec<Duration>, Duration) {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                lat.push(post(&client, &url, CHAT).await.1);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all, t0.elapsed())
}

#[derive(Default)]
struct Side {
    c1: Vec<Duration>,
    c16: Vec<Duration>,
    c16_wall: Duration,
    c16_n: usize,
    ttft: Vec<Duration>,
    cold: Vec<Duration>,
    /// A round trip that involves no engine: the direct engine's `/health`, the supervisor's `/version`.
    hop: Vec<Duration>,
}

/// One GET; the total time.
async fn get(client: &HttpClient, url: &str) -> Duration {
    let t0 = Instant::now();
    let req = hyper::Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = client
        .request(req)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e:?}"));
    let _ = resp.into_body().collect().await;
    t0.elapsed()
}

#[tokio::main]
async fn main() {
    let a = Arc::new(args());
    let client = new_client();
    let dir = std::env::temp_dir().join(format!("dmr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"{}\"\n[engines.llamacpp]\nbinary = \"{}\"\n\
             [scheduler]\nkeep_alive = \"-1\"\n[[models]]\nname = \"ai/tiny\"\ngguf = \"{}\"\ncontext_size = 512\n\
             runtime_flags = {:?}\n",
            dir.join("store").display(),
            a.llama.display(),
            a.gguf.display(),
            FLAGS,
        ),
    )
    .unwrap();
    let (mut sup, addr) = common::spawn_supervisor(&a.supervisor, &config).await;
    let proxy_url = format!("http://{addr}/engines/v1/chat/completions");
    let unload = format!("http://{addr}/engines/unload");

    let (mut d, mut p) = (Side::default(), Side::default());
    for round in 0..a.rounds {
        eprintln!("round {}/{}", round + 1, a.rounds);
        // Cold starts, alternating.
        for _ in 0..3 {
            d.cold.push(direct_cold(&a).await);
            let req = hyper::Request::post(&unload)
                .body(Full::new(Bytes::from_static(br#"{"all":true}"#)))
                .unwrap();
            let _ = client
                .request(req)
                .await
                .unwrap()
                .into_body()
                .collect()
                .await;
            p.cold.push(post(&client, &proxy_url, CHAT).await.0);
        }

        // Warm: a direct engine beside the supervisor's, measured alternately.
        let port = free_port();
        let client = &new_client();
        let mut engine = spawn_engine(&a, port);
        while !healthy(client, port).await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let direct_url = format!("http://127.0.0.1:{port}/v1/chat/completions");
        // Sequential requests and streams alternate one by one, so both sides see the same moment's noise.
        for url in [&direct_url, &proxy_url] {
            load(client, url, 1, 20).await; // warm-up
        }
        for _ in 0..100 {
            d.c1.push(post(client, &direct_url, CHAT).await.1);
            p.c1.push(post(client, &proxy_url, CHAT).await.1);
        }
        for _ in 0..100 {
            d.hop
                .push(get(client, &format!("http://127.0.0.1:{port}/health")).await);
            p.hop
                .push(get(client, &format!("http://{addr}/version")).await);
        }
        for _ in 0..50 {
            d.ttft.push(post(client, &direct_url, STREAM).await.0);
            p.ttft.push(post(client, &proxy_url, STREAM).await.0);
        }
        // Concurrent batches alternate batch by batch.
        for _ in 0..2 {
            for (side, url) in [(&mut d, &direct_url), (&mut p, &proxy_url)] {
                let (lat, wall) = load(client, url, 16, 10).await;
                side.c16_n += lat.len();
                side.c16_wall += wall;
                side.c16.extend(lat);
            }
        }
        let _ = engine.kill().await;
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = sup.wait().await;
    let _ = std::fs::remove_dir_all(&dir);

    let rps = |s: &Side| s.c16_n as f64 / s.c16_wall.as_secs_f64();
    println!("| metric | direct (µs) | via supervisor (µs) | added (µs) | ratio |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    type Pick = fn(&Side) -> &Vec<Duration>;
    let rows: [(&str, Pick, f64); 7] = [
        ("chat p50, concurrency 1", |s| &s.c1, 0.5),
        ("chat p99, concurrency 1", |s| &s.c1, 0.99),
        ("chat p50, concurrency 16", |s| &s.c16, 0.5),
        ("chat p99, concurrency 16", |s| &s.c16, 0.99),
        ("stream TTFT p50", |s| &s.ttft, 0.5),
        (
            "bare HTTP round trip p50 (engine /health vs supervisor /version)",
            |s| &s.hop,
            0.5,
        ),
        ("cold start to first byte, median", |s| &s.cold, 0.5),
    ];
    for (name, pick, p_) in rows {
        let (dv, pv) = (pct(pick(&d).clone(), p_), pct(pick(&p).clone(), p_));
        println!(
            "| {name} | {:.0} | {:.0} | {:+.0} | {:.3} |",
            us(dv),
            us(pv),
            us(pv) - us(dv),
            us(pv) / us(dv)
        );
    }
    println!(
        "| requests/s, concurrency 16 | {:.0} | {:.0} | | {:.3} |",
        rps(&d),
        rps(&p),
        rps(&p) / rps(&d)
    );
    println!(
        "\n{} rounds; per round and side: 100 sequential chats and 50 streams (alternating request by request with the other side), 2 batches of 16×10 concurrent chats (alternating batch by batch), 3 cold starts.",
        a.rounds
    );
}
