//! Proxy overhead benchmark: ONE llama-server (the one the supervisor runs) measured three ways in one run —
//! directly, through a bare hyper pass-through (`examples/bare_proxy.rs`), and through dmr-supervisor — interleaved
//! request by request so all three see the same machine noise. Prints a Markdown report with ratios.
//! Run through `scripts/bench-proxy` (which builds in release mode and supplies the paths).
//!
//! Measures: p50/p99 latency of a non-streaming chat completion at concurrency 1 and 16, requests/s at 16, time to
//! first byte of a streaming chat (TTFT), the same chat through the supervisor's Anthropic translation, each proxy's
//! own CPU per request (its threads' time on a CPU from `/proc`, engine excluded), and cold-start overhead
//! (supervisor's request to first byte on a cold model vs. the engine's own spawn → healthy → first byte).

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
/// The same chat in Anthropic's dialect: the supervisor translates it to `CHAT`'s request and back.
const MESSAGES: &str = r#"{"model":"ai/tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":8,"temperature":0}"#;

struct Args {
    supervisor: PathBuf,
    bare: PathBuf,
    llama: PathBuf,
    gguf: PathBuf,
    rounds: usize,
}

fn args() -> Args {
    let mut a = std::env::args().skip(1);
    let mut get = |name: &str| {
        a.next().unwrap_or_else(|| {
            panic!("usage: bench_proxy SUPERVISOR BARE_PROXY LLAMA_SERVER GGUF [ROUNDS]; missing {name}")
        })
    };
    let supervisor = get("SUPERVISOR").into();
    let bare = get("BARE_PROXY").into();
    let llama = get("LLAMA_SERVER").into();
    let gguf = get("GGUF").into();
    let rounds = a.next().and_then(|r| r.parse().ok()).unwrap_or(5);
    Args {
        supervisor,
        bare,
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
        draft: None,
        pinned: false,
        model_path: gguf.to_path_buf(),
        chat_template: None,
        mmproj: None,
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
    body: &'static str,
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
                lat.push(post(&client, &url, body).await.1);
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

/// One way of reaching the engine, and what was measured through it.
struct Side {
    /// The OpenAI chat URL, and the URL of the same chat in the dialect this side is measured with.
    chat: String,
    /// (URL, body) of the Anthropic row: the supervisor's `/v1/messages`; the OpenAI chat for the others.
    translated: (String, &'static str),
    /// The proxy process whose CPU is counted (none for the engine itself).
    pid: Option<i32>,
    c1: Vec<Duration>,
    c16: Vec<Duration>,
    c16_wall: Duration,
    c16_n: usize,
    ttft: Vec<Duration>,
    anthropic: Vec<Duration>,
    /// CPU seconds of `pid` and requests, for the sequential chats, the concurrent ones and the Anthropic ones.
    cpu: [(f64, usize); 3],
}

impl Side {
    fn new(base: &str, pid: Option<i32>, translated: bool) -> Side {
        let chat = format!("{base}/v1/chat/completions");
        let translated = if translated {
            (format!("{base}/v1/messages"), MESSAGES)
        } else {
            (chat.clone(), CHAT)
        };
        Side {
            chat,
            translated,
            pid,
            c1: Vec::new(),
            c16: Vec::new(),
            c16_wall: Duration::ZERO,
            c16_n: 0,
            ttft: Vec::new(),
            anthropic: Vec::new(),
            cpu: [(0.0, 0); 3],
        }
    }

    /// CPU seconds now: (the proxy's own threads, the supervisor's engine-output readers).
    fn cpu_now(&self) -> (f64, f64) {
        self.pid.map_or((0.0, 0.0), cpu_seconds)
    }

    /// Microseconds of this side's proxy CPU per request in measurement `i`.
    fn cpu_per_request(&self, i: usize) -> Option<f64> {
        let (secs, n) = self.cpu[i];
        self.pid.map(|_| secs * 1e6 / n.max(1) as f64)
    }
}

/// CPU time of a process, in seconds: the sum of its threads' time on a CPU (`/proc/PID/task/*/schedstat`,
/// nanoseconds; `/proc/PID/stat`'s utime + stime tick at only 100 Hz, too coarse for a few hundred µs a request),
/// split into (the other threads, the supervisor's engine-output reader threads, named `engine-out-*`).
fn cpu_seconds(pid: i32) -> (f64, f64) {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("proc task");
    let (mut own, mut readers) = (0u64, 0u64);
    for t in tasks.flatten() {
        let Some(ns) = std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.starts_with("engine-out") {
            readers += ns;
        } else {
            own += ns;
        }
    }
    (own as f64 / 1e9, readers as f64 / 1e9)
}

/// CPU spent between two readings, when `sides` sides' requests alternated one by one on the one engine: the
/// supervisor's engine-output readers read the log lines of every side's requests, so only their share for this
/// side's is counted (`sides` = 1 when this side ran alone).
fn spent(before: (f64, f64), after: (f64, f64), sides: usize) -> f64 {
    (after.0 - before.0) + (after.1 - before.1) / sides as f64
}

/// The `--port` of the supervisor's engine: its child process.
fn engine_port(supervisor: i32) -> u16 {
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1));
        if ppid != Some(&supervisor.to_string()) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if let Some(i) = args.iter().position(|a| a == "--port") {
            return args[i + 1].parse().expect("a port");
        }
    }
    panic!("the supervisor runs no engine");
}

async fn unload_all(client: &HttpClient, addr: &str) {
    let req = hyper::Request::post(format!("http://{addr}/engines/unload"))
        .body(Full::new(Bytes::from_static(br#"{"all":true}"#)))
        .unwrap();
    let _ = client
        .request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await;
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
            "[server]\nlisten = \"127.0.0.1:0\"\ndrain_delay = \"0s\"\n[store]\npath = \"{}\"\n[engines.llamacpp]\nbinary = \"{}\"\n\
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
    let sup_pid = sup.id().expect("supervisor pid") as i32;
    let proxy_url = format!("http://{addr}/engines/v1/chat/completions");

    let mut cold: [Vec<Duration>; 2] = Default::default();
    let mut sides: Vec<Side> = Vec::new();
    let mut bare: Option<Child> = None;
    for round in 0..a.rounds {
        eprintln!("round {}/{}", round + 1, a.rounds);
        // Cold starts, alternating: the engine started directly, and the supervisor loading it on demand.
        for _ in 0..3 {
            cold[0].push(direct_cold(&a).await);
            unload_all(&client, &addr).await;
            cold[1].push(post(&client, &proxy_url, CHAT).await.0);
        }

        // Warm: the supervisor's own engine, reached directly, through the bare hop and through the supervisor.
        let port = engine_port(sup_pid);
        if let Some(mut b) = bare.take() {
            let _ = b.kill().await;
        }
        let bare_port = free_port();
        let b = Command::new(&a.bare)
            .args([
                format!("127.0.0.1:{bare_port}"),
                format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn bare_proxy");
        let bare_pid = b.id().expect("bare pid") as i32;
        bare = Some(b);
        let client = &new_client();
        while !healthy(client, bare_port).await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let fresh = [
            Side::new(&format!("http://127.0.0.1:{port}"), None, false),
            Side::new(
                &format!("http://127.0.0.1:{bare_port}"),
                Some(bare_pid),
                false,
            ),
            Side::new(&format!("http://{addr}"), Some(sup_pid), true),
        ];
        if sides.is_empty() {
            sides.extend(fresh);
        } else {
            for (side, f) in sides.iter_mut().zip(fresh) {
                (side.chat, side.translated, side.pid) = (f.chat, f.translated, f.pid);
            }
        }
        for side in &sides {
            load(client, &side.chat, CHAT, 1, 20).await; // warm-up
            load(client, &side.translated.0, side.translated.1, 1, 5).await;
        }
        // Sequential requests alternate one by one, so all sides see the same moment's noise. A proxy is idle while
        // another side is measured, so its CPU over the whole loop is its CPU for its own requests, except the
        // supervisor's engine-output readers, which read every side's log lines (`spent`).
        let n = sides.len();
        let cpu0: Vec<(f64, f64)> = sides.iter().map(Side::cpu_now).collect();
        for _ in 0..100 {
            for side in sides.iter_mut() {
                side.c1.push(post(client, &side.chat, CHAT).await.1);
            }
        }
        for (side, c0) in sides.iter_mut().zip(&cpu0) {
            side.cpu[0].0 += spent(*c0, side.cpu_now(), n);
            side.cpu[0].1 += 100;
        }
        let cpu0: Vec<(f64, f64)> = sides.iter().map(Side::cpu_now).collect();
        for _ in 0..100 {
            for side in sides.iter_mut() {
                let (url, body) = (side.translated.0.clone(), side.translated.1);
                side.anthropic.push(post(client, &url, body).await.1);
            }
        }
        for (side, c0) in sides.iter_mut().zip(&cpu0) {
            side.cpu[2].0 += spent(*c0, side.cpu_now(), n);
            side.cpu[2].1 += 100;
        }
        for _ in 0..50 {
            for side in sides.iter_mut() {
                side.ttft.push(post(client, &side.chat, STREAM).await.0);
            }
        }
        // Concurrent batches alternate batch by batch.
        for _ in 0..2 {
            for side in sides.iter_mut() {
                let c0 = side.cpu_now();
                let (lat, wall) = load(client, &side.chat, CHAT, 16, 10).await;
                side.cpu[1].0 += spent(c0, side.cpu_now(), 1);
                side.cpu[1].1 += lat.len();
                side.c16_n += lat.len();
                side.c16_wall += wall;
                side.c16.extend(lat);
            }
        }
    }
    if let Some(mut b) = bare.take() {
        let _ = b.kill().await;
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup_pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = sup.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    report(&sides, &cold, a.rounds);
}

fn report(sides: &[Side], cold: &[Vec<Duration>; 2], rounds: usize) {
    let [d, b, s] = sides else {
        panic!("three sides")
    };
    println!("| metric | direct | bare hop | supervisor | bare added | supervisor added | supervisor / bare |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    type Pick = fn(&Side) -> &Vec<Duration>;
    let rows: [(&str, Pick, f64); 6] = [
        ("chat p50, concurrency 1 (µs)", |s| &s.c1, 0.5),
        ("chat p99, concurrency 1 (µs)", |s| &s.c1, 0.99),
        ("chat p50, concurrency 16 (µs)", |s| &s.c16, 0.5),
        ("chat p99, concurrency 16 (µs)", |s| &s.c16, 0.99),
        ("stream TTFT p50 (µs)", |s| &s.ttft, 0.5),
        (
            "Anthropic chat p50, concurrency 1 (µs; direct and bare: the OpenAI chat)",
            |s| &s.anthropic,
            0.5,
        ),
    ];
    for (name, pick, p_) in rows {
        let [dv, bv, sv] = [d, b, s].map(|x| us(pct(pick(x).clone(), p_)));
        println!(
            "| {name} | {dv:.0} | {bv:.0} | {sv:.0} | {:+.0} | {:+.0} | {:.2} |",
            bv - dv,
            sv - dv,
            (sv - dv) / (bv - dv)
        );
    }
    let rps = |s: &Side| s.c16_n as f64 / s.c16_wall.as_secs_f64();
    println!(
        "| requests/s, concurrency 16 | {:.0} | {:.0} | {:.0} | | | {:.3} |",
        rps(d),
        rps(b),
        rps(s),
        rps(s) / rps(b)
    );
    for (i, name) in [
        "proxy CPU per request, concurrency 1 (µs)",
        "proxy CPU per request, concurrency 16 (µs)",
        "proxy CPU per request, Anthropic (µs; bare: the OpenAI chat)",
    ]
    .iter()
    .enumerate()
    {
        let (bc, sc) = (
            b.cpu_per_request(i).unwrap_or(0.0),
            s.cpu_per_request(i).unwrap_or(0.0),
        );
        println!("| {name} | | {bc:.0} | {sc:.0} | | | {:.2} |", sc / bc);
    }
    let (dc, sc) = (us(pct(cold[0].clone(), 0.5)), us(pct(cold[1].clone(), 0.5)));
    println!("\n| cold start to first byte, median | engine started directly (µs) | supervisor (µs) | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    println!("| | {dc:.0} | {sc:.0} | {:.3} |", sc / dc);
    println!(
        "\n{rounds} rounds against the supervisor's own llama-server; per round and side: 100 sequential chats, 100 \
         Anthropic (or OpenAI) chats and 50 streams (alternating request by request between the sides), 2 batches of \
         16×10 concurrent chats (alternating batch by batch), 3 cold starts. `supervisor / bare` is the ratio of \
         added latency for latency rows, of CPU for CPU rows, of throughput for requests/s. Supervisor CPU counts \
         all its threads, but of its engine-output reader threads (which read llama-server's log lines of every \
         side's requests) only the share of its own requests in the alternating rows."
    );
}
