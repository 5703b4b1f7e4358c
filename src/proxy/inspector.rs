//! The request inspector: the last [`PER_MODEL`] inference exchanges of each model, bodies cut at [`CAP`] bytes,
//! so memory stays bounded (models × 50 × 128 KiB at most). The answer body is teed as it streams to the client
//! (`Recorder`), and the exchange is recorded when the body ends or the client leaves. What is recorded: the
//! answers of the routes the table marks `inference` (images included) whose handler noted a model and a body in
//! its `Ctx`. `GET /engines/requests` lists them, newest first; token counts come from the answer's `usage`, else
//! llama-server's `timings` (`api::summary`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{Response, StatusCode};

use super::http::{json, query_value, ApiError, Body, Tap};
use super::App;
use crate::api::native::InspectedRequest;
use crate::api::summary;
use crate::store::name;

/// Exchanges kept per model.
pub const PER_MODEL: usize = 50;
/// Bytes kept of each request and answer body.
pub const CAP: usize = 64 * 1024;

/// Exchanges are kept raw (bytes, not parsed): recording costs a copy of at most [`CAP`] bytes and a push; the
/// summary is made when someone asks.
/// One exchange as kept: what was known before the answer, and how it ended.
type Entry = Arc<(Pending, Done)>;

#[derive(Default)]
pub struct Inspector {
    by_model: Mutex<HashMap<String, VecDeque<Entry>>>,
    next: AtomicU64,
}

impl Inspector {
    fn record(&self, p: Pending, done: Done) {
        let mut map = self.by_model.lock().unwrap_or_else(|p| p.into_inner());
        let q = map.entry(p.model.clone()).or_default();
        if q.len() == PER_MODEL {
            q.pop_front();
        }
        q.push_back(Arc::new((p, done)));
    }

    /// Newest first; one model's, or all.
    pub fn list(&self, model: Option<&str>) -> Vec<InspectedRequest> {
        let entries: Vec<Entry> = {
            let map = self.by_model.lock().unwrap_or_else(|p| p.into_inner());
            map.iter()
                .filter(|(m, _)| model.is_none_or(|want| want == m.as_str()))
                .flat_map(|(_, q)| q.iter().cloned())
                .collect()
        };
        let mut out: Vec<InspectedRequest> =
            entries.iter().map(|e| summarize(&e.0, &e.1)).collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.id));
        out
    }
}

/// What is known of an exchange before its answer streams.
pub struct Pending {
    pub model: String,
    pub dialect: &'static str,
    pub route: String,
    pub status: u16,
    pub context_size: Option<u32>,
    pub request: Bytes,
    pub started: Instant,
    pub arrived: SystemTime,
    pub streamed: bool,
}

/// A tap (`http::Tap`) that keeps an answer's bytes (up to the cap) and records the exchange at its end.
pub fn recorder(inspector: Arc<Inspector>, pending: Pending) -> Recorder {
    Recorder {
        inspector,
        pending: Some(pending),
        kept: Vec::new(),
        truncated: false,
    }
}

pub struct Recorder {
    inspector: Arc<Inspector>,
    pending: Option<Pending>,
    kept: Vec<u8>,
    truncated: bool,
}

impl Tap for Recorder {
    fn data(&mut self, data: &Bytes) {
        let room = CAP.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&data[..data.len().min(room)]);
        self.truncated |= data.len() > room;
    }

    /// Records the exchange, once.
    fn end(&mut self, complete: bool) {
        let Some(mut p) = self.pending.take() else {
            return;
        };
        // A copy of the first CAP bytes: a slice would keep the whole (up to max_body_bytes) body alive.
        if p.request.len() > CAP {
            p.request = Bytes::copy_from_slice(&p.request[..CAP]);
            self.truncated = true;
        }
        let done = Done {
            id: self.inspector.next.fetch_add(1, Ordering::Relaxed) + 1,
            duration: p.started.elapsed(),
            kept: std::mem::take(&mut self.kept),
            complete,
            truncated: self.truncated,
        };
        self.inspector.record(p, done);
    }
}

/// How an exchange ended.
struct Done {
    id: u64,
    duration: std::time::Duration,
    kept: Vec<u8>,
    complete: bool,
    truncated: bool,
}

fn summarize(p: &Pending, done: &Done) -> InspectedRequest {
    let Done {
        id,
        duration,
        kept,
        complete,
        truncated,
    } = done;
    {
        let answer = summary::answer(kept);
        let tokens_per_second = answer
            .completion_tokens
            .filter(|_| duration.as_secs_f64() > 0.0)
            .map(|n| n as f64 / duration.as_secs_f64());
        let context_used_percent = match (p.context_size, answer.prompt_tokens) {
            (Some(ctx), Some(prompt)) if ctx > 0 => {
                Some((prompt + answer.completion_tokens.unwrap_or(0)) as f64 * 100.0 / ctx as f64)
            }
            _ => None,
        };
        let request = &p.request[..];
        InspectedRequest {
            id: *id,
            time: crate::store::rfc3339_at(p.arrived, false),
            model: p.model.clone(),
            dialect: p.dialect,
            route: p.route.clone(),
            status: p.status,
            duration_ms: duration.as_secs_f64() * 1000.0,
            prompt: summary::prompt(request),
            answer: answer.text,
            prompt_tokens: answer.prompt_tokens,
            completion_tokens: answer.completion_tokens,
            tokens_per_second,
            context_size: p.context_size,
            context_used_percent,
            streamed: p.streamed,
            complete: *complete,
            request: as_json(request),
            response: if p.streamed {
                serde_json::Value::String(String::from_utf8_lossy(kept).into_owned())
            } else {
                as_json(kept)
            },
            truncated: *truncated,
        }
    }
}

/// The body as JSON when it is JSON (and whole), else as text.
fn as_json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// `GET /engines/requests[?model=NAME]`.
pub async fn list(app: &Arc<App>, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let model = match query_value(query, "model")? {
        Some(m) => {
            Some(name::normalize(&m).map_err(|e| ApiError::bad_request(format!("model: {e}")))?)
        }
        None => None,
    };
    Ok(json(StatusCode::OK, &app.inspector.list(model.as_deref())))
}
