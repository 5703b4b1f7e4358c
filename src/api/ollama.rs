//! Ollama's native API wire shapes (`/api/chat`, `/api/generate`, `/api/tags`, `/api/show`, `/api/ps`,
//! `/api/version`, `/api/delete`) and their typed translation to and from OpenAI chat completions, which every
//! engine speaks. Fields we do not act on yet (`keep_alive`, `options.num_ctx`, tools, images) are accepted and
//! ignored. Pure: no I/O. Durations on the wire are nanoseconds; streaming is NDJSON with a final `done: true` object.

use serde::{Deserialize, Serialize};

use super::openai::{ChatMessage, ChatRequest, ChatResponse, StreamOptions, Timings, Usage};

#[derive(Debug, Default, Deserialize)]
pub struct Options {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub num_predict: Option<i64>,
    pub stop: Option<Vec<String>>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: String,
}

#[derive(Debug, Deserialize)]
pub struct ChatIn {
    pub model: String,
    #[serde(default)]
    pub messages: Vec<Message>,
    pub stream: Option<bool>,
    #[serde(default)]
    pub options: Option<Options>,
}

#[derive(Debug, Deserialize)]
pub struct GenerateIn {
    pub model: String,
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub system: Option<String>,
    pub stream: Option<bool>,
    #[serde(default)]
    pub options: Option<Options>,
}

/// Which Ollama call a translated stream answers: chat puts text in `message.content`, generate in `response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Chat,
    Generate,
}

impl ChatIn {
    /// Ollama streams unless told not to.
    pub fn streaming(&self) -> bool {
        self.stream.unwrap_or(true)
    }

    pub fn to_openai(&self) -> ChatRequest {
        let messages = self.messages.iter().map(|m| ChatMessage {
            role: m.role.clone(),
            content: m.content.clone(),
        });
        openai_request(
            &self.model,
            messages.collect(),
            self.options.as_ref(),
            self.streaming(),
        )
    }
}

impl GenerateIn {
    pub fn streaming(&self) -> bool {
        self.stream.unwrap_or(true)
    }

    pub fn to_openai(&self) -> ChatRequest {
        let mut messages = Vec::new();
        if let Some(system) = self.system.as_ref().filter(|s| !s.is_empty()) {
            messages.push(ChatMessage {
                role: "system".into(),
                content: system.clone(),
            });
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: self.prompt.clone(),
        });
        openai_request(
            &self.model,
            messages,
            self.options.as_ref(),
            self.streaming(),
        )
    }
}

fn openai_request(
    model: &str,
    messages: Vec<ChatMessage>,
    o: Option<&Options>,
    stream: bool,
) -> ChatRequest {
    let none = Options::default();
    let o = o.unwrap_or(&none);
    ChatRequest {
        model: model.to_string(),
        messages,
        stream,
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
        temperature: o.temperature,
        top_p: o.top_p,
        top_k: o.top_k,
        // Ollama's -1 means "no limit"; OpenAI expresses that by leaving max_tokens out.
        max_tokens: o.num_predict.filter(|n| *n >= 0),
        stop: o.stop.clone(),
        seed: o.seed,
        presence_penalty: o.presence_penalty,
        frequency_penalty: o.frequency_penalty,
    }
}

/// Figures for the final `done: true` object, in nanoseconds and tokens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub total_ns: u64,
    pub load_ns: u64,
    pub prompt_tokens: u64,
    pub prompt_ns: u64,
    pub completion_tokens: u64,
    pub completion_ns: u64,
    pub done_reason: String,
}

#[derive(Debug, Serialize)]
pub struct OutMessage {
    pub role: &'static str,
    pub content: String,
}

/// One object of a chat or generate answer (a stream line, or the whole answer when not streaming).
#[derive(Debug, Serialize)]
pub struct Out {
    pub model: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<OutMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    pub done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_duration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_duration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_eval_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_eval_duration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_duration: Option<u64>,
}

impl Out {
    /// A piece of text; `totals` set makes it the final object.
    pub fn new(
        call: Call,
        model: &str,
        created_at: &str,
        text: String,
        totals: Option<&Totals>,
    ) -> Out {
        let (message, response) = match call {
            Call::Chat => (
                Some(OutMessage {
                    role: "assistant",
                    content: text,
                }),
                None,
            ),
            Call::Generate => (None, Some(text)),
        };
        Out {
            model: model.to_string(),
            created_at: created_at.to_string(),
            message,
            response,
            done: totals.is_some(),
            done_reason: totals.map(|t| t.done_reason.clone()),
            total_duration: totals.map(|t| t.total_ns),
            load_duration: totals.map(|t| t.load_ns),
            prompt_eval_count: totals.map(|t| t.prompt_tokens),
            prompt_eval_duration: totals.map(|t| t.prompt_ns),
            eval_count: totals.map(|t| t.completion_tokens),
            eval_duration: totals.map(|t| t.completion_ns),
        }
    }

    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// OpenAI's `finish_reason` in Ollama's words.
pub fn done_reason(finish_reason: Option<&str>) -> String {
    match finish_reason {
        Some("length") => "length".into(),
        _ => "stop".into(),
    }
}

/// Turns an engine's OpenAI SSE stream into Ollama NDJSON lines, incrementally: bytes in as they arrive, lines
/// out as soon as an event is complete. Never collects the stream.
pub struct StreamTranslator {
    call: Call,
    model: String,
    created_at: String,
    buf: Vec<u8>,
    usage: Usage,
    timings: Option<Timings>,
    finish_reason: Option<String>,
}

impl StreamTranslator {
    pub fn new(call: Call, model: &str, created_at: &str) -> Self {
        StreamTranslator {
            call,
            model: model.to_string(),
            created_at: created_at.to_string(),
            buf: Vec::new(),
            usage: Usage::default(),
            timings: None,
            finish_reason: None,
        }
    }

    /// Feeds engine bytes; returns the NDJSON lines of every event they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            for data in event
                .split(|b| *b == b'\n')
                .filter_map(|l| l.strip_prefix(b"data:"))
            {
                let data = data.trim_ascii();
                if data == b"[DONE]" {
                    continue;
                }
                let Ok(chunk) = serde_json::from_slice::<ChatResponse>(data) else {
                    continue;
                };
                if let Some(u) = chunk.usage {
                    self.usage = u;
                }
                if chunk.timings.is_some() {
                    self.timings = chunk.timings;
                }
                if let Some(r) = chunk.finish_reason() {
                    self.finish_reason = Some(r.to_string());
                }
                let text = chunk.text();
                if !text.is_empty() {
                    lines.push(
                        Out::new(self.call, &self.model, &self.created_at, text, None).to_line(),
                    );
                }
            }
        }
        lines
    }

    /// The final `done: true` line.
    pub fn finish(&self, total_ns: u64, load_ns: u64) -> Vec<u8> {
        let totals = totals(
            self.usage,
            self.timings,
            self.finish_reason.as_deref(),
            total_ns,
            load_ns,
        );
        Out::new(
            self.call,
            &self.model,
            &self.created_at,
            String::new(),
            Some(&totals),
        )
        .to_line()
    }
}

/// The final figures from an engine's usage and timings.
pub fn totals(
    usage: Usage,
    timings: Option<Timings>,
    finish: Option<&str>,
    total_ns: u64,
    load_ns: u64,
) -> Totals {
    let t = timings.unwrap_or_default();
    Totals {
        total_ns,
        load_ns,
        prompt_tokens: usage.prompt_tokens,
        prompt_ns: (t.prompt_ms * 1e6) as u64,
        completion_tokens: usage.completion_tokens,
        completion_ns: (t.predicted_ms * 1e6) as u64,
        done_reason: done_reason(finish),
    }
}

#[derive(Debug, Serialize)]
pub struct Details {
    pub format: String,
    pub family: String,
    pub families: Vec<String>,
    pub parameter_size: String,
    pub quantization_level: String,
}

#[derive(Debug, Serialize)]
pub struct TagModel {
    pub name: String,
    pub model: String,
    pub modified_at: String,
    pub size: u64,
    pub digest: String,
    pub details: Details,
}

#[derive(Debug, Serialize)]
pub struct Tags {
    pub models: Vec<TagModel>,
}

#[derive(Debug, Serialize)]
pub struct PsModel {
    pub name: String,
    pub model: String,
    pub size: u64,
    pub digest: String,
    pub details: Details,
    pub expires_at: String,
    pub size_vram: u64,
}

#[derive(Debug, Serialize)]
pub struct Ps {
    pub models: Vec<PsModel>,
}

#[derive(Debug, Deserialize)]
pub struct ShowIn {
    #[serde(default)]
    pub model: Option<String>,
    /// The older spelling.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Show {
    pub modelfile: String,
    pub parameters: String,
    pub template: String,
    pub details: Details,
    pub model_info: std::collections::BTreeMap<String, String>,
    pub capabilities: Vec<&'static str>,
    pub modified_at: String,
}

#[derive(Debug, Serialize)]
pub struct Version {
    pub version: &'static str,
}

/// `{"error": "..."}`, Ollama's error body.
pub fn error_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_translates_options_and_streams_by_default() {
        let req: ChatIn = serde_json::from_str(
            r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],
                "options":{"temperature":0,"num_predict":5,"stop":["\n"],"seed":7,"num_ctx":2048}}"#,
        )
        .unwrap();
        assert!(req.streaming());
        let v = serde_json::to_value(req.to_openai()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model":"tiny","messages":[{"role":"user","content":"hi"}],"stream":true,
                "stream_options":{"include_usage":true},"temperature":0.0,"max_tokens":5,"stop":["\n"],"seed":7})
        );
    }

    #[test]
    fn generate_puts_system_then_prompt_and_unlimited_predict_drops_max_tokens() {
        let req: GenerateIn = serde_json::from_str(
            r#"{"model":"tiny","prompt":"p","system":"s","stream":false,"options":{"num_predict":-1}}"#,
        )
        .unwrap();
        let v = serde_json::to_value(req.to_openai()).unwrap();
        assert_eq!(
            v["messages"],
            serde_json::json!([{"role":"system","content":"s"},{"role":"user","content":"p"}])
        );
        assert_eq!(v["stream"], false);
        assert!(
            v.get("max_tokens").is_none() && v.get("stream_options").is_none(),
            "{v}"
        );
    }

    #[test]
    fn streams_translate_event_by_event_even_when_split_mid_event() {
        let sse = concat!(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}],\"timings\":{\"prompt_ms\":1.5,\"predicted_ms\":2.0}}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n"
        );
        let mut t = StreamTranslator::new(Call::Chat, "ai/tiny:latest", "now");
        let mut lines = Vec::new();
        for piece in sse.as_bytes().chunks(13) {
            lines.extend(t.feed(piece));
        }
        let texts: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(texts.len(), 2);
        assert_eq!(texts[0]["message"]["content"], "Hel");
        assert_eq!(texts[1]["message"]["content"], "lo");
        assert!(texts.iter().all(|v| v["done"] == false));
        let last: serde_json::Value = serde_json::from_slice(&t.finish(100, 10)).unwrap();
        assert_eq!(last["done"], true);
        assert_eq!(last["done_reason"], "length");
        assert_eq!(last["prompt_eval_count"], 7);
        assert_eq!(last["eval_count"], 2);
        assert_eq!(last["prompt_eval_duration"], 1_500_000);
        assert_eq!(last["eval_duration"], 2_000_000);
        assert_eq!(last["total_duration"], 100);
        assert_eq!(last["load_duration"], 10);
    }

    #[test]
    fn final_objects_carry_the_totals() {
        let t = Totals {
            total_ns: 9,
            load_ns: 1,
            prompt_tokens: 3,
            prompt_ns: 2,
            completion_tokens: 4,
            completion_ns: 5,
            done_reason: "length".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(
            &Out::new(Call::Generate, "m", "t", String::new(), Some(&t)).to_line(),
        )
        .unwrap();
        assert_eq!(v["done"], true);
        assert_eq!(v["done_reason"], "length");
        assert_eq!(v["eval_count"], 4);
        assert_eq!(v["response"], "");
        assert!(v.get("message").is_none());
        let v: serde_json::Value =
            serde_json::from_slice(&Out::new(Call::Chat, "m", "t", "x".into(), None).to_line())
                .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model":"m","created_at":"t","message":{"role":"assistant","content":"x"},"done":false})
        );
    }
}
