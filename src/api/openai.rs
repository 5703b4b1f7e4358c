//! OpenAI wire shapes we read or write ourselves. Inference request bodies are *not* modelled: they are forwarded
//! to the engine byte for byte, so that fields we do not know pass through untouched. We only read the head.

use serde::{Deserialize, Serialize};

use super::ErrorKind;

/// The fields of an inference request the supervisor needs; everything else is ignored here and forwarded.
/// Deserialising it still checks that the whole body is well-formed JSON.
#[derive(Debug, Deserialize)]
pub struct RequestHead {
    pub model: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
}

/// The image URLs of a chat completion request that is forwarded untouched (`messages[].content[]` parts of type
/// `image_url`, whose `image_url` is `{"url": …}` or, as some clients send it, the URL itself). Only the parts are
/// modelled, strictly (a part this cannot read is an error, not an image let through unchecked); a body without the
/// text `"image_url"` is not parsed again (the common case costs one scan).
pub fn image_urls(body: &[u8]) -> Result<Vec<String>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        messages: Vec<Message>,
    }
    #[derive(Deserialize)]
    struct Message {
        #[serde(default)]
        content: Option<Content>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Content {
        Text(#[allow(dead_code)] String),
        Parts(Vec<PartIn>),
    }
    #[derive(Deserialize)]
    struct PartIn {
        #[serde(rename = "type", default)]
        kind: String,
        #[serde(default)]
        image_url: Option<UrlIn>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum UrlIn {
        Object { url: String },
        Bare(String),
    }
    const NEEDLE: &[u8] = b"\"image_url\"";
    if !body.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
        return Ok(Vec::new());
    }
    let parsed: Body = serde_json::from_slice(body)?;
    Ok(parsed
        .messages
        .into_iter()
        .filter_map(|m| match m.content {
            Some(Content::Parts(parts)) => Some(parts),
            _ => None,
        })
        .flatten()
        .filter(|p| p.kind == "image_url")
        .map(|p| match p.image_url {
            Some(UrlIn::Object { url } | UrlIn::Bare(url)) => url,
            None => String::new(),
        })
        .collect())
}

/// A chat completion request we build ourselves (when translating from another dialect).
#[derive(Debug, Default, Serialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Not OpenAI's, but llama-server and vLLM accept it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// Not OpenAI's; llama-server and vLLM accept it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// llama-server only: with `response_fields`, adds `__verbose.{stop_type, stopping_word}` to the answer, which
    /// is how we learn which stop sequence ended a generation (OpenAI's `finish_reason` only says "stop").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verbose: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_fields: Option<Vec<&'static str>>,
    /// llama-server and vLLM: generate `max_tokens` whatever the model would stop at (benchmarks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
}

impl ChatRequest {
    /// The URLs of the images the messages carry (`data:` or `http(s)://`), in order.
    pub fn image_urls(&self) -> impl Iterator<Item = &str> {
        self.messages
            .iter()
            .filter_map(|m| match &m.content {
                Some(MessageContent::Parts(parts)) => Some(parts),
                _ => None,
            })
            .flatten()
            .filter_map(|p| match p {
                Part::ImageUrl { image_url } => Some(image_url.url.as_str()),
                Part::Text { .. } => None,
            })
    }

    /// Asks llama-server to say which stop word ended the generation (see `verbose`). vLLM reports it unasked
    /// in `choices[].stop_reason`; other engines ignore the two fields.
    pub fn report_stop_word(&mut self) {
        self.verbose = Some(true);
        self.response_fields = Some(vec!["stop_type", "stopping_word"]);
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    /// `None` only for an assistant turn that is nothing but tool calls.
    pub content: Option<MessageContent>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn text(role: &str, text: impl Into<String>) -> Self {
        ChatMessage {
            role: role.to_string(),
            content: Some(MessageContent::Text(text.into())),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageUrl {
    /// An `http(s)://` address or a `data:<media type>;base64,<data>` URL.
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionCall {
    pub name: String,
    /// A JSON text, as OpenAI has it.
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionDef,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionDef {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub parameters: serde_json::Value,
}

/// `"auto" | "required" | "none"` or one named function.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(&'static str),
    Function {
        #[serde(rename = "type")]
        kind: &'static str,
        function: NamedFunction,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamedFunction {
    pub name: String,
}

/// Structured output: any JSON object, or one matching a schema.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    JsonObject,
    JsonSchema { json_schema: JsonSchema },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JsonSchema {
    pub name: String,
    pub schema: serde_json::Value,
    pub strict: bool,
}

#[derive(Debug, Serialize)]
pub struct StreamOptions {
    pub include_usage: bool,
}

/// `POST /v1/embeddings`, built when translating Ollama's embedding calls.
#[derive(Debug, Serialize)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingsResponse {
    pub data: Vec<Embedding>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
pub struct Embedding {
    #[serde(default)]
    pub index: usize,
    pub embedding: Vec<f32>,
}

/// llama-server's and vLLM's token count for a chat request (`/v1/chat/completions/input_tokens`).
#[derive(Debug, Deserialize)]
pub struct InputTokens {
    pub input_tokens: u64,
}

/// The parts of a chat completion (or of one stream chunk) that translations read.
#[derive(Debug, Default, Deserialize)]
pub struct ChatResponse {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub usage: Option<Usage>,
    /// llama-server's extension: prompt and generation times.
    #[serde(default)]
    pub timings: Option<Timings>,
    /// llama-server's debug fields, present when asked for with `ChatRequest::report_stop_word`.
    #[serde(default, rename = "__verbose")]
    pub verbose: Option<Verbose>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Choice {
    /// Whole answers.
    #[serde(default)]
    pub message: Option<Content>,
    /// Stream chunks.
    #[serde(default)]
    pub delta: Option<Content>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// vLLM's extension: the stop string (or token id) that ended the generation.
    #[serde(default)]
    pub stop_reason: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Content {
    #[serde(default)]
    pub content: Option<String>,
    /// Chain of thought, as llama-server and vLLM split it out of reasoning models' answers.
    #[serde(default)]
    pub reasoning_content: Option<String>,
    #[serde(default)]
    pub tool_calls: Vec<ToolCallOut>,
}

/// A tool call in an answer; in a stream chunk only `index` is sure to be there, the rest comes in pieces.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ToolCallOut {
    #[serde(default)]
    pub index: Option<usize>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub function: FunctionOut,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct FunctionOut {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Verbose {
    #[serde(default)]
    pub stop_type: Option<String>,
    #[serde(default)]
    pub stopping_word: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct PromptTokensDetails {
    #[serde(default)]
    pub cached_tokens: u64,
}

impl Usage {
    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details.map_or(0, |d| d.cached_tokens)
    }
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct Timings {
    #[serde(default)]
    pub prompt_ms: f64,
    #[serde(default)]
    pub predicted_ms: f64,
    /// Tokens generated, and the engine's own rate for them.
    #[serde(default)]
    pub predicted_n: u64,
    #[serde(default)]
    pub predicted_per_second: f64,
}

impl ChatResponse {
    /// The text of the first choice (whole message or delta).
    pub fn text(&self) -> String {
        self.content()
            .and_then(|m| m.content.clone())
            .unwrap_or_default()
    }

    pub fn finish_reason(&self) -> Option<&str> {
        self.choices.iter().find_map(|c| c.finish_reason.as_deref())
    }

    /// The first choice's message (whole answers) or delta (stream chunks).
    pub fn content(&self) -> Option<&Content> {
        self.choices
            .first()
            .and_then(|c| c.message.as_ref().or(c.delta.as_ref()))
    }

    /// The stop sequence that ended the generation, when the engine says so: vLLM's `stop_reason` string, or
    /// llama-server's `__verbose.stopping_word`.
    pub fn stop_sequence(&self) -> Option<String> {
        let from_vllm = self
            .choices
            .iter()
            .find_map(|c| c.stop_reason.as_ref()?.as_str().map(str::to_string));
        let from_llama = self
            .verbose
            .as_ref()
            .filter(|v| v.stop_type.as_deref() == Some("word"))
            .and_then(|v| v.stopping_word.clone());
        from_vllm.or(from_llama).filter(|s| !s.is_empty())
    }
}

/// One item of an engine's OpenAI SSE stream.
#[derive(Debug)]
pub enum SseItem {
    Chunk(Box<ChatResponse>),
    /// An error frame (`data: {"error": {"message": …}}` or `{"error": "…"}`), as engines and this proxy end a
    /// stream that fails after it began.
    Error(String),
    /// `data: [DONE]`.
    Done,
}

/// An error frame's body.
#[derive(Deserialize)]
struct ErrorFrame {
    error: ErrorFrameBody,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorFrameBody {
    Object { message: String },
    Text(String),
}

/// Splits an SSE byte stream into events as they complete and parses their `data:` lines as chat chunks or error
/// frames. Bytes may arrive cut anywhere; lines may end in LF, CRLF or CR, as the SSE spec allows; comments, pings
/// and unparsable data are skipped. The one SSE parser of the crate (the translators and the CLI's `run` use it).
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Received bytes with line ends made LF.
    buf: Vec<u8>,
    /// How far `buf` was already searched for an event end.
    scanned: usize,
    /// The last byte received was CR: an LF that follows it ends the same line.
    after_cr: bool,
}

impl SseDecoder {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseItem> {
        for &b in bytes {
            match (b, self.after_cr) {
                (b'\n', true) => {}
                (b'\r', _) => self.buf.push(b'\n'),
                _ => self.buf.push(b),
            }
            self.after_cr = b == b'\r';
        }
        let mut items = Vec::new();
        loop {
            let from = self.scanned.saturating_sub(1);
            let Some(end) = self.buf[from..]
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|p| p + from)
            else {
                self.scanned = self.buf.len();
                break;
            };
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            self.scanned = 0;
            for data in event
                .split(|b| *b == b'\n')
                .filter_map(|l| l.strip_prefix(b"data:"))
            {
                let data = data.trim_ascii();
                if data == b"[DONE]" {
                    items.push(SseItem::Done);
                } else if let Ok(frame) = serde_json::from_slice::<ErrorFrame>(data) {
                    items.push(SseItem::Error(match frame.error {
                        ErrorFrameBody::Object { message } | ErrorFrameBody::Text(message) => {
                            message
                        }
                    }));
                } else if let Ok(chunk) = serde_json::from_slice::<ChatResponse>(data) {
                    items.push(SseItem::Chunk(Box::new(chunk)));
                }
            }
        }
        items
    }
}

#[derive(Debug, Serialize)]
pub struct ModelObject {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub owned_by: &'static str,
}

impl ModelObject {
    pub fn new(id: String, created: i64) -> Self {
        ModelObject {
            id,
            object: "model",
            created,
            owned_by: "docker",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

impl ModelList {
    pub fn new(data: Vec<ModelObject>) -> Self {
        ModelList {
            object: "list",
            data,
        }
    }
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'static str>,
    code: serde_json::Value,
}

fn error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::BadRequest
        | ErrorKind::PayloadTooLarge
        | ErrorKind::Unprocessable
        | ErrorKind::Conflict
        | ErrorKind::Unauthorized
        | ErrorKind::Forbidden => "invalid_request_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::NotImplemented => "not_implemented_error",
        ErrorKind::BadGateway
        | ErrorKind::GatewayTimeout
        | ErrorKind::Internal
        | ErrorKind::InsufficientMemory => "server_error",
        ErrorKind::Unavailable => "unavailable_error",
    }
}

/// `{"error":{"message","type","param","code"}}`; a missing model gets `code: "model_not_found"` like OpenAI.
pub fn error_body(kind: ErrorKind, message: &str) -> Vec<u8> {
    let (param, code) = match kind {
        ErrorKind::NotFound if message.starts_with("model ") => {
            (Some("model"), serde_json::json!("model_not_found"))
        }
        // As OpenAI answers a wrong key.
        ErrorKind::Unauthorized => (None, serde_json::json!("invalid_api_key")),
        _ => (None, serde_json::json!(kind.status())),
    };
    let body = ErrorEnvelope {
        error: ErrorBody {
            message,
            kind: error_type(kind),
            param,
            code,
        },
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The SSE frame that ends a stream whose engine failed mid-way (no `[DONE]` follows).
pub fn stream_error_frame(message: &str) -> Vec<u8> {
    let mut frame = b"data: ".to_vec();
    frame.extend(error_body(ErrorKind::BadGateway, message));
    frame.extend(b"\n\n");
    frame
}

#[cfg(test)]
mod tests {
    #[test]
    fn sse_events_end_in_lf_crlf_or_cr_cut_anywhere_and_errors_are_items() {
        let stream = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\r\n\r\n\
                       : ping\r\rdata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"}}]}\n\n\
                       data: {\"error\":{\"message\":\"engine died\",\"type\":\"server_error\"}}\r\r\
                       data: {\"error\":\"plain\"}\n\ndata: [DONE]\r\n\r\n";
        for cut in 1..stream.len() {
            let mut d = super::SseDecoder::default();
            let mut items = d.push(&stream[..cut]);
            items.extend(d.push(&stream[cut..]));
            let shown: Vec<String> = items
                .iter()
                .map(|i| match i {
                    super::SseItem::Chunk(c) => format!("chunk {}", c.choices.len()),
                    super::SseItem::Error(m) => format!("error {m}"),
                    super::SseItem::Done => "done".into(),
                })
                .collect();
            assert_eq!(
                shown,
                [
                    "chunk 1",
                    "chunk 1",
                    "error engine died",
                    "error plain",
                    "done"
                ],
                "cut at {cut}"
            );
        }
    }

    use super::*;

    #[test]
    fn error_envelopes() {
        let v: serde_json::Value =
            serde_json::from_slice(&error_body(ErrorKind::NotFound, "model \"x\" not found"))
                .unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["type"], "not_found_error");
        let v: serde_json::Value =
            serde_json::from_slice(&error_body(ErrorKind::PayloadTooLarge, "big")).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], 413);
        let frame = String::from_utf8(stream_error_frame("engine died")).unwrap();
        assert!(frame.starts_with("data: {\"error\":{\"message\":\"engine died\""));
        assert!(frame.ends_with("\n\n"));
    }

    #[test]
    fn request_head_checks_the_whole_body_and_ignores_unknown_fields() {
        let head: RequestHead =
            serde_json::from_str(r#"{"model":"m","messages":[],"n_probs":3,"x":{"y":[1]}}"#)
                .unwrap();
        assert_eq!(head.model.as_deref(), Some("m"));
        assert!(serde_json::from_str::<RequestHead>(r#"{"model":"m","messages":[}"#).is_err());
        assert!(serde_json::from_str::<RequestHead>(r#"{"model":7}"#).is_err());
    }

    #[test]
    fn image_urls_of_a_forwarded_chat_are_found_in_every_message_and_shape() {
        let body = br#"{"model":"m","messages":[
            {"role":"system","content":"plain text"},
            {"role":"user","content":[{"type":"text","text":"what is \"image_url\"?"},
                {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBOR","detail":"low"}}]},
            {"role":"assistant","content":null},
            {"role":"user","content":[{"type":"image_url","image_url":"https://x/y.png"},{"type":"image_url"}]}]}"#;
        assert_eq!(
            image_urls(body).unwrap(),
            ["data:image/png;base64,iVBOR", "https://x/y.png", ""]
        );
        assert!(
            image_urls(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
                .unwrap()
                .is_empty()
        );
        // A text that merely mentions the word, and a body that is no chat at all.
        assert!(image_urls(br#"{"model":"m","prompt":"\"image_url\""}"#)
            .unwrap()
            .is_empty());
        assert!(
            image_urls(br#"{"messages":[{"content":[{"type":"image_url","image_url":7}]}]}"#)
                .is_err()
        );
    }
}
