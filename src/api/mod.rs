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
