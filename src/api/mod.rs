//! Wire types: the only place JSON field names of the public APIs live. Each dialect module has its request and
//! response shapes and renders its own error envelope. No I/O here.

pub mod anthropic;
pub mod native;
pub mod ollama;
pub mod openai;
pub mod rerank;
pub mod responses;
pub mod summary;

/// Who is calling, which decides the shape of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// DMR's model-management API: plain-text errors, like DMR's `http.Error`.
    Native,
    OpenAi,
    /// Ollama's `/api/...`: `{"error": "..."}`.
    Ollama,
    /// Anthropic's Messages API: `{"type":"error","error":{"type","message"}}`.
    Anthropic,
}

/// What went wrong, classified once at the edge; each dialect renders it its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    /// No valid API key (401).
    Unauthorized,
    /// Not allowed from this origin (403).
    Forbidden,
    NotFound,
    Conflict,
    PayloadTooLarge,
    /// Understood but not supported (422): e.g. an artifact that is not a model.
    Unprocessable,
    NotImplemented,
    BadGateway,
    /// The engine stopped responding while we waited (504).
    GatewayTimeout,
    Unavailable,
    /// The model can never fit in the memory the scheduler may use (507).
    InsufficientMemory,
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::Unprocessable => 422,
            ErrorKind::NotImplemented => 501,
            ErrorKind::BadGateway => 502,
            ErrorKind::GatewayTimeout => 504,
            ErrorKind::Unavailable => 503,
            ErrorKind::InsufficientMemory => 507,
            ErrorKind::Internal => 500,
        }
    }
}

/// Renders an error body and its content type in `dialect`.
pub fn render_error(dialect: Dialect, kind: ErrorKind, message: &str) -> (&'static str, Vec<u8>) {
    match dialect {
        Dialect::Native => (
            "text/plain; charset=utf-8",
            format!("{message}\n").into_bytes(),
        ),
        Dialect::OpenAi => ("application/json", openai::error_body(kind, message)),
        Dialect::Ollama => ("application/json", ollama::error_body(message)),
        Dialect::Anthropic => ("application/json", anthropic::error_body(kind, message)),
    }
}

/// An incremental stream translation: the engine's OpenAI SSE bytes in, as they arrive; the caller's dialect
/// out, as soon as each engine event is complete. Never collects the stream.
pub trait StreamTranslate: Send + Sync + 'static {
    /// Frames to send before the engine's first byte.
    fn begin(&mut self) -> Vec<Vec<u8>> {
        Vec::new()
    }
    /// Frames for the engine bytes just received.
    fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>>;
    /// Frames once the engine's stream has ended cleanly, `total_ns` after the request arrived.
    fn finish(&mut self, total_ns: u64) -> Vec<Vec<u8>>;
    /// The frame that reports an engine failing mid-stream; nothing follows it.
    fn fail(&mut self, message: &str) -> Vec<Vec<u8>>;
}

/// A chat-chunk translator whose answer ends exactly once (Anthropic's and the Responses API's events): the parts
/// that differ. [`feed_chunks`] and [`finish_chunks`] are its `StreamTranslate::feed` and `finish`, written once.
pub trait ChunkEvents {
    fn decoder(&mut self) -> &mut openai::SseDecoder;
    /// Its last event has been written: nothing more is.
    fn ended(&self) -> bool;
    /// The engine said why it stopped, so a stream that ends without `[DONE]` is still a whole answer.
    fn answered(&self) -> bool;
    fn on_chunk(&mut self, chunk: openai::ChatResponse, out: &mut Vec<Vec<u8>>);
    /// The answer is whole: write its closing events.
    fn on_end(&mut self, out: &mut Vec<Vec<u8>>);
    /// The engine failed: the dialect's error events (nothing after them).
    fn on_error(&mut self, message: &str) -> Vec<Vec<u8>>;
}

/// `StreamTranslate::feed` for a [`ChunkEvents`]: each complete engine event in, its events out; nothing once ended.
pub fn feed_chunks(t: &mut impl ChunkEvents, bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for item in t.decoder().push(bytes) {
        if t.ended() {
            break;
        }
        match item {
            openai::SseItem::Chunk(chunk) => t.on_chunk(*chunk, &mut out),
            openai::SseItem::Error(message) => out.extend(t.on_error(&message)),
            openai::SseItem::Done => t.on_end(&mut out),
        }
    }
    out
}

/// `StreamTranslate::finish` for a [`ChunkEvents`]: an engine that ended without `[DONE]` after saying why it
/// stopped gave a whole answer; one that ended before that failed.
pub fn finish_chunks(t: &mut impl ChunkEvents) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if t.ended() {
    } else if t.answered() {
        t.on_end(&mut out);
    } else {
        out = t.on_error("the engine ended the stream before the answer was complete");
    }
    out
}
