//! `GET /metrics`: our counters and histograms (`crate::metrics`), gauges read now (runners by state, loads
//! waiting for memory, each runner's predicted and measured memory, each device's memory), then every ready
//! engine's own `/metrics` with `model` and `mode` labels added. Before them, the load in vLLM's names that
//! cluster routers read (`load`). Also the tap that times the first byte
//! of streamed answers (labelled by the route table's `label`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::http::{ApiError, Body, Tap};
use super::App;
use crate::metrics::{family, relabel, sample, Metrics};

/// How long one engine's `/metrics` may take before it is left out of a scrape.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn handle(app: &Arc<App>) -> Result<Response<Body>, ApiError> {
    let mut out = String::new();
    app.metrics.render(&mut out);
    let runners = app.scheduler.snapshot().await;
    family(
        &mut out,
        "dmr_runners",
        "gauge",
        "Runners by state (loaded, loading, queued).",
    );
    for state in ["loaded", "loading", "queued"] {
        let n = runners
            .iter()
            .filter(|r| match state {
                "loaded" => r.endpoint.is_some(),
                "loading" => r.loading,
                _ => r.queued,
            })
            .count();
        sample(&mut out, "dmr_runners", &[("state", state)], n as f64);
    }
    family(
        &mut out,
        "dmr_queue_depth",
        "gauge",
        "Requests waiting: for memory (queued), for their model's load (loading), or for a free slot on a \
         loaded model (slot, past max_in_flight).",
    );
    for state in ["queued", "loading", "slot"] {
        let n: usize = runners
            .iter()
            .filter(|r| match state {
                "queued" => r.queued,
                "loading" => r.loading,
                _ => r.endpoint.is_some(),
            })
            .map(|r| r.waiting)
            .sum();
        sample(&mut out, "dmr_queue_depth", &[("for", state)], n as f64);
    }
    family(
        &mut out,
        "dmr_requests_in_flight",
        "gauge",
        "Requests being served, by model.",
    );
    for r in &runners {
        sample(
            &mut out,
            "dmr_requests_in_flight",
            &[("model", &r.model_name), ("mode", r.mode.as_str())],
            r.in_flight as f64,
        );
    }
    family(
        &mut out,
        "dmr_runner_memory_predicted_bytes",
        "gauge",
        "What each runner was expected to need.",
    );
    for r in &runners {
        sample(
            &mut out,
            "dmr_runner_memory_predicted_bytes",
            &[("model", &r.model_name), ("mode", r.mode.as_str())],
            r.predicted as f64,
        );
    }
    family(
        &mut out,
        "dmr_runner_memory_bytes",
        "gauge",
        "What each runner holds per device (measured once loaded).",
    );
    for r in &runners {
        for (device, bytes) in &r.usage {
            let device = device.to_string();
            sample(
                &mut out,
                "dmr_runner_memory_bytes",
                &[
                    ("model", &r.model_name),
                    ("mode", r.mode.as_str()),
                    ("device", &device),
                ],
                *bytes as f64,
            );
        }
    }
    let probe = app.memory.clone();
    if let Ok(Ok(snap)) = tokio::task::spawn_blocking(move || probe.snapshot(&[])).await {
        family(
            &mut out,
            "dmr_device_memory_bytes",
            "gauge",
            "Each device's memory (NVML GPUs, or host memory in CPU mode).",
        );
        let kind = app.memory.kind().as_str();
        for d in &snap.devices {
            let device = d.index.to_string();
            for (what, v) in [("total", d.total), ("free", d.free), ("used", d.used)] {
                sample(
                    &mut out,
                    "dmr_device_memory_bytes",
                    &[
                        ("device", &device),
                        ("name", &d.name),
                        ("probe", kind),
                        ("kind", what),
                    ],
                    v as f64,
                );
            }
        }
    }
    let mut seen = BTreeSet::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs() as f64);
    super::load::measure_runners(app, &runners)
        .await
        .render(now, &mut out, &mut seen);
    for (r, ep) in runners.iter().filter_map(|r| r.endpoint.map(|e| (r, e))) {
        match tokio::time::timeout(ENGINE_TIMEOUT, app.engines.get_text(ep, "/metrics")).await {
            Ok(Ok(text)) => relabel(
                &text,
                &[("model", &r.model_name), ("mode", r.mode.as_str())],
                &mut seen,
                &mut out,
            ),
            Ok(Err(e)) => tracing::debug!(
                model = r.model_name,
                error = e,
                "engine metrics unavailable"
            ),
            Err(_) => tracing::debug!(model = r.model_name, "engine metrics timed out"),
        }
    }
    let mut resp = Response::new(super::http::full(out));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
}

/// A tap (`http::Tap`) that times a streamed answer's first body byte.
pub fn first_byte_timer(
    metrics: Arc<Metrics>,
    route: String,
    dialect: &'static str,
    started: Instant,
) -> FirstByte {
    FirstByte {
        seen: false,
        metrics,
        route,
        dialect,
        started,
    }
}

pub struct FirstByte {
    seen: bool,
    metrics: Arc<Metrics>,
    route: String,
    dialect: &'static str,
    started: Instant,
}

impl Tap for FirstByte {
    fn data(&mut self, bytes: &Bytes) {
        if !self.seen && !bytes.is_empty() {
            self.seen = true;
            self.metrics
                .first_byte(&self.route, self.dialect, self.started.elapsed());
        }
    }

    fn end(&mut self, _complete: bool) {}
}
