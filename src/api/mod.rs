//! Wire types: the only place JSON field names of the public APIs live. Each dialect module has its request and
//! response shapes and renders its own error envelope. No I/O here.

pub mod native;
pub mod ollama;
pub mod openai;

/// Who is calling, which decides the shape of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// DMR's model-management API: plain-text errors, like DMR's `http.Error`.
    Native,
    OpenAi,
    /// Ollama's `/api/...`: `{"error": "..."}`.
    Ollama,
}

/// What went wrong, classified once at the edge; each dialect renders it its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    NotFound,
    Conflict,
    PayloadTooLarge,
    NotImplemented,
    BadGateway,
    Unavailable,
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::NotImplemented => 501,
            ErrorKind::BadGateway => 502,
            ErrorKind::Unavailable => 503,
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
    }
}
