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

/// A chat completion request we build ourselves (when translating from another dialect).
#[derive(Debug, Serialize)]
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
}

#[derive(Debug, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Serialize)]
pub struct StreamOptions {
    pub include_usage: bool,
}

/// The parts of a chat completion (or of one stream chunk) that translations read.
#[derive(Debug, Default, Deserialize)]
pub struct ChatResponse {
    #[serde(default)]
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub usage: Option<Usage>,
    /// llama-server's extension: prompt and generation times.
    #[serde(default)]
    pub timings: Option<Timings>,
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
}

#[derive(Debug, Default, Deserialize)]
pub struct Content {
    #[serde(default)]
    pub content: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct Timings {
    #[serde(default)]
    pub prompt_ms: f64,
    #[serde(default)]
    pub predicted_ms: f64,
}

impl ChatResponse {
    /// The text of the first choice (whole message or delta).
    pub fn text(&self) -> String {
        self.choices
            .first()
            .and_then(|c| c.message.as_ref().or(c.delta.as_ref()))
            .and_then(|m| m.content.clone())
            .unwrap_or_default()
    }

    pub fn finish_reason(&self) -> Option<&str> {
        self.choices.iter().find_map(|c| c.finish_reason.as_deref())
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
        ErrorKind::BadRequest | ErrorKind::PayloadTooLarge | ErrorKind::Conflict => {
            "invalid_request_error"
        }
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::NotImplemented => "not_implemented_error",
        ErrorKind::BadGateway | ErrorKind::Internal => "server_error",
        ErrorKind::Unavailable => "unavailable_error",
    }
}

/// `{"error":{"message","type","param","code"}}`; a missing model gets `code: "model_not_found"` like OpenAI.
pub fn error_body(kind: ErrorKind, message: &str) -> Vec<u8> {
    let (param, code) = match kind {
        ErrorKind::NotFound if message.starts_with("model ") => {
            (Some("model"), serde_json::json!("model_not_found"))
        }
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
}
