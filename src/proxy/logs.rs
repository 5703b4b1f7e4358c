//! `GET /logs[?model=NAME][&tail=N][&follow=1][&format=json]`: the supervisor's log and every engine's output from
//! the log hub (`crate::logs`), as text lines (or NDJSON), optionally for one model; `follow=1` keeps the answer
//! open and streams new lines until the client leaves or the server shuts down.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::broadcast::error::RecvError;

use super::http::{percent_decode, ApiError, Body, BoxError};
use super::App;
use crate::logs::{hub, LogLine, KEEP};
use crate::store::name;

/// Lines sent when the caller gives no `tail`.
const DEFAULT_TAIL: usize = 200;

struct Query {
    model: Option<String>,
    tail: usize,
    follow: bool,
    json: bool,
}

fn parse(query: Option<&str>) -> Result<Query, ApiError> {
    let mut q = Query {
        model: None,
        tail: DEFAULT_TAIL,
        follow: false,
        json: false,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v)?;
        match k {
            "model" => {
                q.model = Some(
                    name::normalize(&v)
                        .map_err(|e| ApiError::bad_request(format!("model: {e}")))?,
                )
            }
            "tail" => {
                q.tail = v
                    .parse::<usize>()
                    .map_err(|_| ApiError::bad_request(format!("tail: {v:?} is not a number")))?
                    .min(KEEP)
            }
            "follow" => q.follow = matches!(v.as_str(), "1" | "true" | ""),
            "format" if v == "json" => q.json = true,
            "format" if v == "text" => q.json = false,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?} (model, tail, follow, format)"
                )))
            }
        }
    }
    Ok(q)
}

pub async fn handle(app: &Arc<App>, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let q = parse(query)?;
    let (mut lines, rx) = hub().tail(KEEP);
    let only = q.model.clone();
    let wanted = move |l: &LogLine| {
        only.as_deref()
            .is_none_or(|m| l.model.as_deref() == Some(m))
    };
    lines.retain(|l| wanted(l));
    let skip = lines.len().saturating_sub(q.tail);
    let json = q.json;
    let render = move |l: &LogLine| -> Bytes {
        let mut s = if json {
            serde_json::to_string(l).unwrap_or_default()
        } else {
            l.text()
        };
        s.push('\n');
        Bytes::from(s)
    };
    let first: Vec<Result<Frame<Bytes>, BoxError>> = lines[skip..]
        .iter()
        .map(|l| Ok(Frame::data(render(l))))
        .collect();
    let body: Body = if !q.follow {
        StreamBody::new(stream::iter(first)).boxed()
    } else {
        let shutdown = app.shutdown.clone();
        let follow = stream::unfold((rx, shutdown), move |(mut rx, shutdown)| {
            let wanted = wanted.clone();
            async move {
                loop {
                    let next = tokio::select! {
                        n = rx.recv() => n,
                        _ = shutdown.cancelled() => return None,
                    };
                    match next {
                        Ok(line) if wanted(&line) => {
                            return Some((Ok(Frame::data(render(&line))), (rx, shutdown)))
                        }
                        Ok(_) => continue,
                        Err(RecvError::Lagged(n)) => {
                            let note = Bytes::from(format!(
                                "... {n} log lines skipped (reader too slow)\n"
                            ));
                            return Some((Ok(Frame::data(note)), (rx, shutdown)));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        });
        StreamBody::new(futures_util::StreamExt::chain(stream::iter(first), follow)).boxed()
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    let kind = if json {
        "application/x-ndjson"
    } else {
        "text/plain; charset=utf-8"
    };
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    Ok(resp)
}
