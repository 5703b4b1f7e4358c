//! What the benchmark examples share (each includes this file with `#[path]`): starting the supervisor and
//! reading the address it prints, a free port, percentiles.
#![allow(dead_code)] // each example uses its own subset

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts `dmr-supervisor --config CONFIG` (logging at warn) and waits for its `listening on ADDR` line.
pub async fn spawn_supervisor(binary: &Path, config: &Path) -> (Child, String) {
    let mut sup = Command::new(binary)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn dmr-supervisor");
    let mut lines = BufReader::new(sup.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next_line().await.unwrap().expect("supervisor exited");
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.to_string();
        }
    };
    (sup, addr)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `p` quantile (0..=1) of `v`, nearest rank.
pub fn pct(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
