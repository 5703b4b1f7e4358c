//! Calls made on a caller's behalf in another dialect: a request we built (an OpenAI chat or embeddings body)
//! is sent to the leased engine, and the answer comes back either whole (parsed) or as a stream translated
//! frame by frame by a `StreamTranslate` while the body holds the runner's lease.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::forward::{send, EnginePools};
use super::http::{ApiError, Body, BoxError};
use crate::api::{ErrorKind, StreamTranslate};
use crate::scheduler::Lease;

/// llama-server's and vLLM's error body; we pass its message on.
#[derive(Deserialize)]
struct EngineError {
    error: EngineErrorBody,
}

#[derive(Deserialize)]
struct EngineErrorBody {
    message: String,
}

/// Posts `body` as JSON to `path` on the leased engine. An engine's 4xx becomes our 400 with its message (the
/// request we built was well-formed, so what it refused is the caller's content); anything else is a 502.
pub async fn post<T: Serialize>(
    pools: &EnginePools,
    lease: &mut Lease,
    path: &str,
    body: &T,
    model: &str,
    streaming: bool,
) -> Result<Response<Incoming>, ApiError> {
    let bytes = serde_json::to_vec(body).map_err(|e| {
        ApiError::new(
            ErrorKind::Internal,
            format!("cannot encode the engine request: {e}"),
        )
    })?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let resp = send(
        pools,
        lease,
        Method::POST,
        headers,
        path,
        Bytes::from(bytes),
        model,
        streaming,
    )
    .await?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let text = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<EngineError>(&text)
        .map(|e| e.error.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&text).into_owned());
    let kind = if status.is_client_error() {
        ErrorKind::BadRequest
    } else {
        ErrorKind::BadGateway
    };
    Err(ApiError::new(
        kind,
        format!("the engine serving {model} refused the request ({status}): {message}"),
    ))
}

/// Whether the images of a chat may go to `requested`'s engine, before anything loads: a GGUF model must be a
/// vision model (packaged with a multimodal projector, its mmproj layer, for llama.cpp), else the caller gets a 400
/// naming the model instead of the engine's 500; and each image must be a `data:` URL, or an `http(s)://` one when
/// `[server] fetch_image_urls` lets the engine fetch it (never another scheme: `file://` would read the server's
/// files). A model that does not resolve passes: the lease that follows answers its 404.
pub fn check_images<'a>(
    app: &super::App,
    urls: impl IntoIterator<Item = &'a str>,
    requested: &str,
) -> Result<(), ApiError> {
    let mut urls = urls.into_iter().peekable();
    if urls.peek().is_none() {
        return Ok(());
    }
    if let Ok(model) = app.resolve(requested) {
        // A GGUF (llama.cpp) model sees images only through a projector; vLLM serves vision-language safetensors
        // models by themselves, so it judges their images.
        if model.format == crate::store::ModelFormat::Gguf && !model.vision() {
            return Err(ApiError::bad_request(format!(
                "{requested} does not accept images: it has no multimodal projector (package it with --mmproj)"
            )));
        }
    }
    let fetch = app.config().server.fetch_image_urls;
    match urls.find_map(|url| image_url_refused(url, fetch)) {
        Some(why) => Err(ApiError::bad_request(why)),
        None => Ok(()),
    }
}

/// Why an image URL may not go to the engine, if it may not: only `data:` URLs, and `http(s)://` ones when the
/// engine may fetch them (`fetch`).
fn image_url_refused(url: &str, fetch: bool) -> Option<&'static str> {
    let scheme = url
        .split_once(':')
        .map_or("", |(s, _)| s)
        .to_ascii_lowercase();
    match scheme.as_str() {
        "data" => None,
        "http" | "https" if fetch => None,
        "http" | "https" => Some(
            "image URLs are not fetched: send the image inline as a data: URL (base64), or set \
             [server] fetch_image_urls = true to let the engine fetch http(s) URLs",
        ),
        _ => Some("an image must be a data: URL (base64) or an http(s):// URL"),
    }
}

/// Reads a whole engine answer and parses it.
pub async fn collect<T: DeserializeOwned>(
    resp: Response<Incoming>,
    model: &str,
) -> Result<T, ApiError> {
    let bytes = resp.into_body().collect().await.map_err(|e| {
        ApiError::new(
            ErrorKind::BadGateway,
            format!("the engine serving {model} stopped mid-response (it may have crashed): {e}"),
        )
    })?;
    serde_json::from_slice(&bytes.to_bytes()).map_err(|e| {
        ApiError::new(
            ErrorKind::BadGateway,
            format!("unreadable answer from the engine serving {model}: {e}"),
        )
    })
}

/// A streaming answer in the caller's dialect: the engine's SSE translated by `translator` as it arrives.
pub fn stream<T: StreamTranslate + Unpin>(
    resp: Response<Incoming>,
    lease: Lease,
    mut translator: T,
    content_type: &'static str,
    started: Instant,
) -> Response<Body> {
    let body = TranslatedBody {
        out: translator.begin().concat(),
        inner: resp.into_body(),
        lease: Some(lease),
        translator,
        done: false,
        started,
    };
    let mut resp = Response::new(body.boxed());
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if content_type.starts_with("text/event-stream") {
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    resp
}

struct TranslatedBody<T> {
    inner: Incoming,
    lease: Option<Lease>,
    translator: T,
    /// Bytes translated and not yet sent: everything one engine event made goes out in one write.
    out: Vec<u8>,
    done: bool,
    started: Instant,
}

impl<T: StreamTranslate + Unpin> http_body::Body for TranslatedBody<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let frame = std::mem::take(&mut this.out);
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(frame)))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        for piece in this.translator.feed(data) {
                            this.out.extend_from_slice(&piece);
                        }
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    this.lease = None;
                    let total_ns = this.started.elapsed().as_nanos() as u64;
                    this.out.extend(this.translator.finish(total_ns).concat());
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    this.lease = None;
                    tracing::warn!(error = %e, "engine stream broke");
                    this.out.extend(
                        this.translator
                            .fail(&format!(
                                "the engine stopped mid-response (it may have crashed): {e}"
                            ))
                            .concat(),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::image_url_refused;

    #[test]
    fn only_data_urls_pass_unless_fetching_is_allowed_and_never_other_schemes() {
        assert_eq!(
            image_url_refused("data:image/png;base64,iVBOR", false),
            None
        );
        assert_eq!(
            image_url_refused("DATA:image/png;base64,iVBOR", false),
            None
        );
        for url in ["http://10.0.0.1/x.png", "HTTPS://example.com/y.jpg"] {
            assert!(
                image_url_refused(url, false)
                    .unwrap()
                    .contains("fetch_image_urls"),
                "{url}"
            );
            assert_eq!(image_url_refused(url, true), None, "{url}");
        }
        for url in [
            "file:///etc/passwd",
            "ftp://h/x",
            "iVBORw0KGgo=",
            "",
            "/etc/passwd",
        ] {
            for fetch in [false, true] {
                assert!(
                    image_url_refused(url, fetch).unwrap().contains("data: URL"),
                    "{url}"
                );
            }
        }
    }
}
