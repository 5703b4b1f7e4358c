//! HTTP plumbing shared by the handlers: the response body type, the single error type handlers return (rendered in
//! the caller's dialect at the edge), body reading under a size limit, and path/query decoding.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;

use crate::api::{render_error, Dialect, ErrorKind};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// An error a handler returns; classified once, rendered by the router in the dialect of the route.
#[derive(Debug)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// Answered before the request body was read: the response says `Connection: close`, so the client does not
    /// send its next request on a connection the server is about to drop with the unread body.
    pub close: bool,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            retry_after: None,
            close: false,
        }
    }
    /// This error, answered before the body was read (see [`ApiError::close`]).
    pub fn body_unread(self) -> Self {
        ApiError {
            close: true,
            ..self
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, m)
    }

    pub fn into_response(self, dialect: Dialect) -> Response<Body> {
        let status = self.kind.status();
        if status >= 500 {
            tracing::warn!(status, error = %self.message, "request failed");
        }
        let (content_type, body) = render_error(dialect, self.kind, &self.message);
        let mut resp = Response::new(full(body));
        *resp.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.close {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// A streamed body of NDJSON lines as they arrive on `rx` (the progress of imports, pulls, pushes and installs);
/// it ends when every sender is gone.
pub fn ndjson(
    rx: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    content_type: &'static str,
) -> Response<Body> {
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| {
            let frame = hyper::body::Frame::data(Bytes::from(line));
            (Ok::<_, std::convert::Infallible>(frame), rx)
        })
    });
    let mut resp = Response::new(
        http_body_util::StreamBody::new(lines)
            .map_err(|never| match never {})
            .boxed(),
    );
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Reads the whole request body, refusing more than `limits.bytes` (413; early when Content-Length says so), and
/// a JSON body that is not UTF-8, too deep or too many values (400, [`check_json`]).
pub async fn read_body(
    req: http::Request<Incoming>,
    limits: BodyLimits,
) -> Result<(http::request::Parts, Bytes), ApiError> {
    let limit = limits.bytes;
    let too_large = || {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large().body_unread());
    }
    let (parts, body) = req.into_parts();
    match Limited::new(body, limit).collect().await {
        Ok(collected) => {
            let body = collected.to_bytes();
            check_json(&body, limits.json_elements)?;
            Ok((parts, body))
        }
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large().body_unread()),
        Err(e) => Err(ApiError::bad_request(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

/// Reads and drops what is left of `body`, up to `cap` bytes; whether it reached the end.
pub async fn drain(body: &mut Incoming, cap: u64) -> bool {
    let mut seen = 0u64;
    while seen <= cap {
        match body.frame().await {
            Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len() as u64),
            Some(Err(_)) => return false,
            None => return true,
        }
    }
    false
}

/// Parses a JSON body into `T`, answering 400 with serde's message (which names the line and column).
pub fn parse_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; expected a JSON object",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON in the request body: {e}")))
}

/// How deep JSON may nest in a body (serde's own limit for the bodies we parse; engines' parsers may recurse
/// without one).
pub const MAX_JSON_DEPTH: usize = 128;

/// What a request body may be: its size, and how many JSON values it may hold (`[server]` `max_body_bytes` and
/// `max_json_elements`).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub bytes: usize,
    pub json_elements: usize,
}

/// Refuses a JSON body that is not UTF-8 (RFC 8259: engines answer it with a 500), nests deeper than
/// [`MAX_JSON_DEPTH`], or holds more than `max_elements` values (array elements and object members at any depth:
/// 100 000 keys held llama-server for 48 s). Bodies that do not start like JSON are left to the parser's error.
/// One linear scan, aware of strings and escapes; values are counted as commas plus containers, so `{}` counts 1.
pub fn check_json(body: &[u8], max_elements: usize) -> Result<(), ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if !matches!(first, Some(b'{' | b'[')) {
        return Ok(());
    }
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::bad_request(format!(
            "the request body is not valid UTF-8 (byte {}); JSON must be UTF-8",
            e.valid_up_to()
        )));
    }
    let (mut depth, mut elements, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                elements += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(ApiError::bad_request(format!(
                        "the request body nests JSON deeper than {MAX_JSON_DEPTH} levels"
                    )));
                }
            }
            b',' => elements += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => continue,
        }
        if elements > max_elements {
            return Err(ApiError::bad_request(format!(
                "the request body holds more than {max_elements} JSON values (server.max_json_elements)"
            )));
        }
    }
    Ok(())
}

/// Decodes `%XX` escapes in a path segment; invalid escapes or invalid UTF-8 are a 400.
pub fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request(format!("invalid percent-encoding in {s:?}"));
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// True when the query string sets `key` to a true value (`?force`, `?force=true`, `?force=1`).
pub fn query_flag(query: Option<&str>, key: &str) -> bool {
    query.unwrap_or("").split('&').any(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        k == key && matches!(v, "true" | "1" | "")
    })
}

/// The percent-decoded value of `key` in the query string, if given (`?model=ai%2Ftiny` → `ai/tiny`).
pub fn query_value(query: Option<&str>, key: &str) -> Result<Option<String>, ApiError> {
    query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .map(percent_decode)
        .transpose()
}

/// Something that watches an answer's bytes as they pass to the client (metrics, the request inspector).
pub trait Tap: Send + Sync + Unpin + 'static {
    /// A data frame, before the client gets it.
    fn data(&mut self, bytes: &Bytes);
    /// Once: the body ended (`complete`), failed, or was dropped early (the client left).
    fn end(&mut self, complete: bool);
}

/// No tap.
impl<T: Tap> Tap for Option<T> {
    fn data(&mut self, bytes: &Bytes) {
        if let Some(t) = self {
            t.data(bytes);
        }
    }
    fn end(&mut self, complete: bool) {
        if let Some(t) = self {
            t.end(complete);
        }
    }
}

/// Two taps on one wrapper.
impl<A: Tap, B: Tap> Tap for (A, B) {
    fn data(&mut self, bytes: &Bytes) {
        self.0.data(bytes);
        self.1.data(bytes);
    }
    fn end(&mut self, complete: bool) {
        self.0.end(complete);
        self.1.end(complete);
    }
}

/// `body` with `tap` watching it.
pub fn tapped<T: Tap>(body: Body, tap: T) -> Body {
    Tapped {
        inner: body,
        tap: Some(tap),
    }
    .boxed()
}

struct Tapped<T: Tap> {
    inner: Body,
    /// Taken when told of the end.
    tap: Option<T>,
}

impl<T: Tap> Tapped<T> {
    fn end(&mut self, complete: bool) {
        if let Some(mut tap) = self.tap.take() {
            tap.end(complete);
        }
    }
}

impl<T: Tap> http_body::Body for Tapped<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(tap), Some(data)) = (this.tap.as_mut(), frame.data_ref()) {
                    tap.data(data);
                }
                // hyper stops polling once a body says it has ended, so the last frame may be all we see.
                if this.inner.is_end_stream() {
                    this.end(true);
                }
            }
            Poll::Ready(None) => this.end(true),
            Poll::Ready(Some(Err(_))) => this.end(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<T: Tap> Drop for Tapped<T> {
    fn drop(&mut self) {
        self.end(false);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn depth_is_counted_outside_strings_only() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(super::check_json(deep(128).as_bytes(), 1000).is_ok());
        assert!(super::check_json(deep(129).as_bytes(), 1000).is_err());
        let in_string = format!("{{\"a\":\"{}\\\"{}\"}}", "[".repeat(500), "{".repeat(500));
        assert!(
            super::check_json(in_string.as_bytes(), 10).is_ok(),
            "{in_string}"
        );
    }

    #[test]
    fn values_are_counted_at_every_depth_outside_strings() {
        let keys = |n: usize| {
            let members: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
            format!("{{\"model\":\"m\",\"x\":{{{}}}}}", members.join(","))
        };
        // {"model", "x": {n members}}: 2 members of the outer object + n inner; the count is commas + containers.
        assert!(super::check_json(keys(98).as_bytes(), 100).is_ok());
        let err = super::check_json(keys(100).as_bytes(), 100).unwrap_err();
        assert!(
            err.message.contains("more than 100 JSON values"),
            "{}",
            err.message
        );
        let commas_in_strings = format!("[\"{}\"]", ",".repeat(10_000));
        assert!(super::check_json(commas_in_strings.as_bytes(), 5).is_ok());
        let array = format!("[{}]", ["1"; 6].join(","));
        assert!(super::check_json(array.as_bytes(), 6).is_ok());
        assert!(super::check_json(array.as_bytes(), 5).is_err());
    }

    #[test]
    fn json_bodies_must_be_utf8_and_others_are_left_to_their_parser() {
        let bad = b"{\"model\":\"ai/tiny\",\"messages\":\"\xff\xfe\"}";
        let err = super::check_json(bad, 100).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadRequest);
        assert!(err.message.contains("not valid UTF-8"), "{}", err.message);
        assert!(super::check_json(b"\xff\xfe not json", 1).is_ok());
        assert!(super::check_json(b"", 1).is_ok());
    }

    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("ai%2Ftiny").unwrap(), "ai/tiny");
        assert_eq!(percent_decode("%2e%2e").unwrap(), "..");
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%2").is_err());
        assert!(percent_decode("%ff").is_err());
    }

    #[test]
    fn query_flags() {
        assert!(query_flag(Some("force=true"), "force"));
        assert!(query_flag(Some("a=1&force"), "force"));
        assert!(!query_flag(Some("force=false"), "force"));
        assert!(!query_flag(None, "force"));
    }
}
