//! Ollama's native API wire shapes (`/api/chat`, `/api/generate`, `/api/embed`, `/api/embeddings`, `/api/tags`,
//! `/api/show`, `/api/ps`, `/api/version`, `/api/delete`) and their typed translation to and from OpenAI chat
//! completions and embeddings, which every engine speaks. Pure: no I/O. Durations on the wire are nanoseconds;
//! streaming is NDJSON with a final `done: true` object. Tool calls carry `arguments` as an object; images are
//! bare base64 (sent on as data URLs); `format` is `"json"` or a JSON schema; `think` is accepted and ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::openai::{
    ChatMessage, ChatRequest, ChatResponse, EmbeddingsRequest, FunctionCall, FunctionDef, ImageUrl,
    JsonSchema, MessageContent, Part, ResponseFormat, SseDecoder, SseItem, StreamOptions, Timings,
    Tool, ToolCall, ToolCallOut, Usage,
};
use super::StreamTranslate;
use crate::config::KeepAlive;
use crate::engines::RunnerWishes;

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
    pub repeat_penalty: Option<f64>,
    /// The context size to run the model with; a different value reloads it.
    pub num_ctx: Option<i64>,
}

impl Options {
    /// These options, each one unset taken from `defaults` (a model's parameters, by Ollama's names; ones that do
    /// not parse are ignored: `/api/create` checked them).
    pub fn or_defaults(self, defaults: &BTreeMap<String, Value>) -> Options {
        if defaults.is_empty() {
            return self;
        }
        let object = Value::Object(defaults.clone().into_iter().collect());
        let d: Options = serde_json::from_value(object).unwrap_or_default();
        Options {
            temperature: self.temperature.or(d.temperature),
            top_p: self.top_p.or(d.top_p),
            top_k: self.top_k.or(d.top_k),
            num_predict: self.num_predict.or(d.num_predict),
            stop: self.stop.or(d.stop),
            seed: self.seed.or(d.seed),
            presence_penalty: self.presence_penalty.or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.or(d.frequency_penalty),
            repeat_penalty: self.repeat_penalty.or(d.repeat_penalty),
            num_ctx: self.num_ctx.or(d.num_ctx),
        }
    }
}

/// `keep_alive`: a Go duration string (`"5m"`, `"0"`, `"-1"`) or a number of seconds; negative means forever.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum KeepAliveIn {
    Seconds(f64),
    Text(String),
}

impl KeepAliveIn {
    pub fn parse(&self) -> Result<KeepAlive, String> {
        match self {
            KeepAliveIn::Seconds(s) if *s < 0.0 => Ok(KeepAlive::Forever),
            KeepAliveIn::Seconds(s) if s.is_finite() && *s < 1e10 => {
                Ok(KeepAlive::For(std::time::Duration::from_secs_f64(*s)))
            }
            KeepAliveIn::Seconds(s) => Err(format!("keep_alive: {s} is out of range")),
            KeepAliveIn::Text(t) => KeepAlive::parse(t).map_err(|e| format!("keep_alive: {e}")),
        }
    }
}

fn wishes(
    options: Option<&Options>,
    keep_alive: Option<&KeepAliveIn>,
) -> Result<RunnerWishes, String> {
    let context_size = match options.and_then(|o| o.num_ctx) {
        None => None,
        Some(n) if (1..=i64::from(u32::MAX)).contains(&n) => Some(n as u32),
        Some(n) => {
            return Err(format!(
                "options.num_ctx: must be a positive number, got {n}"
            ))
        }
    };
    let keep_alive = keep_alive.map(KeepAliveIn::parse).transpose()?;
    Ok(RunnerWishes {
        context_size,
        keep_alive,
    })
}

#[derive(Debug, Deserialize)]
pub struct ToolCallIn {
    #[serde(default)]
    pub id: Option<String>,
    pub function: FunctionIn,
}

#[derive(Debug, Deserialize)]
pub struct FunctionIn {
    pub name: String,
    #[serde(default)]
    pub arguments: Value,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default)]
    pub tool_calls: Vec<ToolCallIn>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// Which tool a `role: "tool"` message answers (Ollama's spelling).
    #[serde(default)]
    pub tool_name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ToolDef {
    pub function: ToolFunction,
}

#[derive(Debug, Deserialize)]
pub struct ToolFunction {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct ChatIn {
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub messages: Vec<Message>,
    pub stream: Option<bool>,
    #[serde(default)]
    pub options: Option<Options>,
    #[serde(default)]
    pub format: Option<Value>,
    #[serde(default)]
    pub tools: Vec<ToolDef>,
    #[serde(default)]
    pub keep_alive: Option<KeepAliveIn>,
}

#[derive(Debug, Deserialize)]
pub struct GenerateIn {
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub images: Vec<String>,
    pub stream: Option<bool>,
    #[serde(default)]
    pub options: Option<Options>,
    #[serde(default)]
    pub format: Option<Value>,
    #[serde(default)]
    pub keep_alive: Option<KeepAliveIn>,
}

/// One text or several: `input` of `/api/embed`, `license` of `/api/create`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    One(String),
    Many(Vec<String>),
}

impl Input {
    /// The texts as one, a line between each.
    pub fn joined(&self) -> String {
        match self {
            Input::One(t) => t.clone(),
            Input::Many(ts) => ts.join("\n"),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct EmbedIn {
    #[serde(default)]
    pub model: String,
    pub input: Option<Input>,
    /// The legacy `/api/embeddings` spelling.
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub options: Option<Options>,
    #[serde(default)]
    pub keep_alive: Option<KeepAliveIn>,
    #[serde(default)]
    pub dimensions: Option<u32>,
}

impl EmbedIn {
    pub fn texts(&self) -> Vec<String> {
        match (&self.input, &self.prompt) {
            (Some(Input::One(s)), _) => vec![s.clone()],
            (Some(Input::Many(v)), _) => v.clone(),
            (None, Some(p)) => vec![p.clone()],
            (None, None) => Vec::new(),
        }
    }

    pub fn wishes(&self) -> Result<RunnerWishes, String> {
        wishes(self.options.as_ref(), self.keep_alive.as_ref())
    }

    pub fn to_openai(&self) -> EmbeddingsRequest {
        EmbeddingsRequest {
            model: self.model.clone(),
            input: self.texts(),
            dimensions: self.dimensions,
        }
    }
}

/// `/api/embed`'s answer.
#[derive(Debug, Serialize)]
pub struct EmbedOut {
    pub model: String,
    pub embeddings: Vec<Vec<f32>>,
    pub total_duration: u64,
    pub load_duration: u64,
    pub prompt_eval_count: u64,
}

/// `/api/embeddings`' (legacy) answer.
#[derive(Debug, Serialize)]
pub struct EmbeddingOut {
    pub embedding: Vec<f32>,
}

/// Which Ollama call a translated stream answers: chat puts text in `message.content`, generate in `response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Chat,
    Generate,
}

/// Ollama sends bare base64; OpenAI-style engines want a data URL with the media type, read off the magic bytes.
fn image_part(b64: &str) -> Part {
    let media = [
        ("iVBORw0KGgo", "image/png"),
        ("/9j/", "image/jpeg"),
        ("R0lGOD", "image/gif"),
        ("UklGR", "image/webp"),
    ]
    .iter()
    .find(|(magic, _)| b64.starts_with(magic))
    .map_or("image/jpeg", |(_, m)| m);
    Part::ImageUrl {
        image_url: ImageUrl {
            url: format!("data:{media};base64,{b64}"),
        },
    }
}

fn content(text: &str, images: &[String]) -> MessageContent {
    if images.is_empty() {
        return MessageContent::Text(text.to_string());
    }
    let mut parts: Vec<Part> = images.iter().map(|i| image_part(i)).collect();
    if !text.is_empty() {
        parts.push(Part::Text {
            text: text.to_string(),
        });
    }
    MessageContent::Parts(parts)
}

fn response_format(format: Option<&Value>) -> Result<Option<ResponseFormat>, String> {
    match format {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(ResponseFormat::JsonObject)),
        Some(schema @ Value::Object(_)) => Ok(Some(ResponseFormat::JsonSchema {
            json_schema: JsonSchema {
                name: "schema".into(),
                schema: schema.clone(),
                strict: true,
            },
        })),
        Some(other) => Err(format!(
            "format: expected \"json\" or a JSON schema object, got {other}"
        )),
    }
}

impl ChatIn {
    /// A model's own defaults (from `/api/create`), as Ollama applies them: its parameters under the request's
    /// options, and its system prompt first unless the messages bring one.
    pub fn with_model_defaults(
        mut self,
        system: Option<&str>,
        options: &BTreeMap<String, Value>,
    ) -> Self {
        if !options.is_empty() {
            self.options = Some(self.options.take().unwrap_or_default().or_defaults(options));
        }
        let has_system = self.messages.iter().any(|m| m.role == "system");
        if let Some(system) =
            system.filter(|s| !s.is_empty() && !has_system && !self.messages.is_empty())
        {
            self.messages.insert(
                0,
                Message {
                    role: "system".into(),
                    content: system.to_string(),
                    images: Vec::new(),
                    tool_calls: Vec::new(),
                    tool_call_id: None,
                    tool_name: None,
                },
            );
        }
        self
    }

    /// Ollama streams unless told not to.
    pub fn streaming(&self) -> bool {
        self.stream.unwrap_or(true)
    }

    pub fn wishes(&self) -> Result<RunnerWishes, String> {
        wishes(self.options.as_ref(), self.keep_alive.as_ref())
    }

    /// The OpenAI chat request, or the message of a 400.
    pub fn to_openai(&self) -> Result<ChatRequest, String> {
        let mut messages = Vec::new();
        for (i, m) in self.messages.iter().enumerate() {
            let tool_calls: Vec<ToolCall> = m
                .tool_calls
                .iter()
                .enumerate()
                .map(|(n, c)| ToolCall {
                    id: c.id.clone().unwrap_or_else(|| format!("call_{i}_{n}")),
                    kind: "function",
                    function: FunctionCall {
                        name: c.function.name.clone(),
                        arguments: match &c.function.arguments {
                            Value::String(s) => s.clone(),
                            Value::Null => "{}".into(),
                            v => v.to_string(),
                        },
                    },
                })
                .collect();
            let tool_call_id = match m.role.as_str() {
                "tool" => m.tool_call_id.clone().or_else(|| {
                    // Ollama names the tool, not the call: answer the latest call of that name.
                    let name = m.tool_name.as_deref()?;
                    messages.iter().rev().find_map(|prev: &ChatMessage| {
                        prev.tool_calls
                            .iter()
                            .find(|c| c.function.name == name)
                            .map(|c| c.id.clone())
                    })
                }),
                "system" | "user" | "assistant" => None,
                other => {
                    return Err(format!(
                    "messages[{i}].role: unknown role {other:?} (system, user, assistant or tool)"
                ))
                }
            };
            let content = if m.content.is_empty() && !tool_calls.is_empty() {
                None
            } else {
                Some(content(&m.content, &m.images))
            };
            messages.push(ChatMessage {
                role: m.role.clone(),
                content,
                tool_calls,
                tool_call_id,
            });
        }
        let mut req = openai_request(
            &self.model,
            messages,
            self.options.as_ref(),
            self.streaming(),
        );
        req.response_format = response_format(self.format.as_ref())?;
        req.tools = self
            .tools
            .iter()
            .map(|t| Tool {
                kind: "function",
                function: FunctionDef {
                    name: t.function.name.clone(),
                    description: t.function.description.clone(),
                    parameters: t
                        .function
                        .parameters
                        .clone()
                        .unwrap_or_else(|| serde_json::json!({"type": "object"})),
                },
            })
            .collect();
        Ok(req)
    }
}

impl GenerateIn {
    /// A model's own defaults (from `/api/create`): its parameters under the request's options, its system prompt
    /// unless the request gives one.
    pub fn with_model_defaults(
        mut self,
        system: Option<&str>,
        options: &BTreeMap<String, Value>,
    ) -> Self {
        if !options.is_empty() {
            self.options = Some(self.options.take().unwrap_or_default().or_defaults(options));
        }
        if self.system.is_none() {
            self.system = system.map(str::to_string);
        }
        self
    }

    pub fn streaming(&self) -> bool {
        self.stream.unwrap_or(true)
    }

    pub fn wishes(&self) -> Result<RunnerWishes, String> {
        wishes(self.options.as_ref(), self.keep_alive.as_ref())
    }

    pub fn to_openai(&self) -> Result<ChatRequest, String> {
        let mut messages = Vec::new();
        if let Some(system) = self.system.as_ref().filter(|s| !s.is_empty()) {
            messages.push(ChatMessage::text("system", system.clone()));
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: Some(content(&self.prompt, &self.images)),
            tool_calls: Vec::new(),
            tool_call_id: None,
        });
        let mut req = openai_request(
            &self.model,
            messages,
            self.options.as_ref(),
            self.streaming(),
        );
        req.response_format = response_format(self.format.as_ref())?;
        Ok(req)
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
        repeat_penalty: o.repeat_penalty,
        ..ChatRequest::default()
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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<OutToolCall>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutToolCall {
    pub function: OutFunction,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutFunction {
    pub index: usize,
    pub name: String,
    /// An object, unlike OpenAI's JSON text.
    pub arguments: Value,
}

/// Tool calls as Ollama shows them, from an engine's (whole or reassembled) OpenAI calls.
pub fn tool_calls(calls: &[ToolCallOut]) -> Vec<OutToolCall> {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let args = c.function.arguments.as_deref().unwrap_or_default();
            OutToolCall {
                function: OutFunction {
                    index: c.index.unwrap_or(i),
                    name: c.function.name.clone().unwrap_or_default(),
                    arguments: match serde_json::from_str::<Value>(args) {
                        Ok(v @ Value::Object(_)) => v,
                        _ if args.trim().is_empty() => serde_json::json!({}),
                        _ => serde_json::json!({ "arguments": args }),
                    },
                },
            }
        })
        .collect()
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
                    tool_calls: Vec::new(),
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

    /// The answer to an empty request, which only loads (`"load"`) or unloads (`"unload"`) the model.
    pub fn lifecycle(call: Call, model: &str, created_at: &str, reason: &str) -> Out {
        let mut out = Out::new(call, model, created_at, String::new(), None);
        out.done = true;
        out.done_reason = Some(reason.to_string());
        out
    }

    /// Adds tool calls (chat only: generate has nowhere to put them).
    pub fn with_tool_calls(mut self, calls: Vec<OutToolCall>) -> Out {
        if let Some(m) = self.message.as_mut() {
            m.tool_calls = calls;
        }
        self
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
/// out as soon as an event is complete. Tool calls arrive in pieces; they are reassembled and sent in one line
/// when the engine finishes, as Ollama sends whole calls.
pub struct StreamTranslator {
    call: Call,
    model: String,
    created_at: String,
    load_ns: u64,
    sse: SseDecoder,
    usage: Usage,
    timings: Option<Timings>,
    finish_reason: Option<String>,
    calls: BTreeMap<usize, ToolCallOut>,
}

impl StreamTranslator {
    pub fn new(call: Call, model: &str, created_at: &str, load_ns: u64) -> Self {
        StreamTranslator {
            call,
            model: model.to_string(),
            created_at: created_at.to_string(),
            load_ns,
            sse: SseDecoder::default(),
            usage: Usage::default(),
            timings: None,
            finish_reason: None,
            calls: BTreeMap::new(),
        }
    }

    fn out(&self, text: String) -> Out {
        Out::new(self.call, &self.model, &self.created_at, text, None)
    }

    fn chunk(&mut self, chunk: &ChatResponse, lines: &mut Vec<Vec<u8>>) {
        if let Some(u) = chunk.usage {
            self.usage = u;
        }
        if chunk.timings.is_some() {
            self.timings = chunk.timings;
        }
        let text = chunk.text();
        if !text.is_empty() {
            lines.push(self.out(text).to_line());
        }
        for piece in chunk
            .content()
            .map(|c| c.tool_calls.as_slice())
            .unwrap_or_default()
        {
            let n = piece.index.unwrap_or(self.calls.len());
            let call = self.calls.entry(n).or_default();
            call.index = Some(n);
            if piece.id.is_some() {
                call.id.clone_from(&piece.id);
            }
            if let Some(name) = &piece.function.name {
                call.function
                    .name
                    .get_or_insert_with(String::new)
                    .push_str(name);
            }
            if let Some(args) = &piece.function.arguments {
                call.function
                    .arguments
                    .get_or_insert_with(String::new)
                    .push_str(args);
            }
        }
        if let Some(r) = chunk.finish_reason() {
            self.finish_reason = Some(r.to_string());
            if !self.calls.is_empty() {
                let calls: Vec<ToolCallOut> =
                    std::mem::take(&mut self.calls).into_values().collect();
                lines.push(
                    self.out(String::new())
                        .with_tool_calls(tool_calls(&calls))
                        .to_line(),
                );
            }
        }
    }
}

impl StreamTranslate for StreamTranslator {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        for item in self.sse.push(bytes) {
            match item {
                SseItem::Chunk(chunk) => self.chunk(&chunk, &mut lines),
                // Ollama streams a failure as an `{"error": …}` line.
                SseItem::Error(message) => {
                    let mut line = error_body(&message);
                    line.push(b'\n');
                    lines.push(line);
                }
                SseItem::Done => {}
            }
        }
        lines
    }

    /// The final `done: true` line.
    fn finish(&mut self, total_ns: u64) -> Vec<Vec<u8>> {
        let totals = totals(
            self.usage,
            self.timings,
            self.finish_reason.as_deref(),
            total_ns,
            self.load_ns,
        );
        vec![Out::new(
            self.call,
            &self.model,
            &self.created_at,
            String::new(),
            Some(&totals),
        )
        .to_line()]
    }

    fn fail(&mut self, message: &str) -> Vec<Vec<u8>> {
        let mut line = error_body(message);
        line.push(b'\n');
        vec![line]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub details: Details,
    pub model_info: BTreeMap<String, Value>,
    pub capabilities: Vec<&'static str>,
    pub modified_at: String,
}

/// What `/api/show` says a model can do, as Ollama names it: `embedding` alone for an embedding model (its GGUF has
/// `<arch>.pooling_type`, as Ollama decides), else `completion`, with `tools` when the chat template mentions
/// tools and `vision` when a multimodal projector is packaged.
pub fn capabilities(embedding_only: bool, template: &str, vision: bool) -> Vec<&'static str> {
    if embedding_only {
        return vec!["embedding"];
    }
    let mut caps = vec!["completion"];
    if template.contains("tools") {
        caps.push("tools");
    }
    if vision {
        caps.push("vision");
    }
    caps
}

/// GGUF metadata (kept as strings in the model's config) as Ollama's `model_info` shows it: numbers as numbers,
/// except under `general.` where only counts and types are numeric.
pub fn model_info(gguf: &BTreeMap<String, String>) -> BTreeMap<String, Value> {
    const GENERAL_NUMBERS: [&str; 3] = [
        "general.parameter_count",
        "general.file_type",
        "general.quantization_version",
    ];
    gguf.iter()
        .map(|(k, v)| {
            let numeric = !k.starts_with("general.") || GENERAL_NUMBERS.contains(&k.as_str());
            let value = if !numeric {
                Value::String(v.clone())
            } else if let Ok(n) = v.parse::<i64>() {
                n.into()
            } else if let Some(f) = v.parse::<f64>().ok().filter(|f| f.is_finite()) {
                f.into()
            } else if v == "true" || v == "false" {
                Value::Bool(v == "true")
            } else {
                Value::String(v.clone())
            };
            (k.clone(), value)
        })
        .collect()
}

/// Model parameters as Ollama's `/api/show` writes them: one `name value` line each (strings quoted, a list one
/// line per element, as Ollama writes `stop`).
pub fn parameters_text(options: &BTreeMap<String, Value>) -> String {
    let mut lines = Vec::new();
    for (k, v) in options {
        let values = match v {
            Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        };
        for v in values {
            lines.push(format!("{k:<30} {v}"));
        }
    }
    lines.join("\n")
}

/// The Ollama API version we answer `/api/version` with: the release whose model API (create from `files`,
/// `show` with `capabilities`, push and copy) and chat API we match, so clients that switch features on by
/// version turn them on.
pub const API_VERSION: &str = "0.12.6";

#[derive(Debug, Serialize)]
pub struct Version {
    pub version: &'static str,
}

/// `POST /api/copy`.
#[derive(Debug, Deserialize)]
pub struct CopyIn {
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub destination: String,
}

/// `POST /api/create` as Ollama's clients send it since 0.5.5 (no Modelfile: its parts as fields).
#[derive(Debug, Deserialize)]
pub struct CreateIn {
    #[serde(default)]
    pub model: Option<String>,
    /// The older spelling.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    /// File name → `sha256:<hex>` of an uploaded blob.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    #[serde(default)]
    pub adapters: BTreeMap<String, String>,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub license: Option<Input>,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub parameters: BTreeMap<String, Value>,
    #[serde(default)]
    pub messages: Vec<Value>,
    #[serde(default)]
    pub quantize: Option<String>,
    /// The pre-0.5.5 form: refused with a 400 that says what to send.
    #[serde(default)]
    pub modelfile: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
}

impl CreateIn {
    /// `num_ctx` from `parameters`, checked (1 to 2^31-1).
    pub fn num_ctx(&self) -> Result<Option<u64>, String> {
        match self.parameters.get("num_ctx") {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=i32::MAX as u64).contains(n))
                .map(Some)
                .ok_or_else(|| {
                    format!(
                        "parameters.num_ctx: {v} is not a context size (1 to {})",
                        i32::MAX
                    )
                }),
        }
    }

    /// The other parameters, checked against the options a request may carry (so a typo is a 400 now, not a
    /// failed chat later).
    pub fn options(&self) -> Result<BTreeMap<String, Value>, String> {
        let rest: BTreeMap<String, Value> = self
            .parameters
            .iter()
            .filter(|(k, _)| *k != "num_ctx")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let as_object = Value::Object(rest.clone().into_iter().collect());
        serde_json::from_value::<StrictOptions>(as_object)
            .map_err(|e| format!("parameters: {e}"))?;
        Ok(rest)
    }
}

/// The parameters `/api/create` keeps: [`Options`] without `num_ctx` (it becomes the context size), strictly.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // parsed only to check the parameters
struct StrictOptions {
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    num_predict: Option<i64>,
    stop: Option<Vec<String>>,
    seed: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    repeat_penalty: Option<f64>,
}

/// A progress line of `/api/pull`, `/api/push` and `/api/create`: `{"status", "digest"?, "total"?,
/// "completed"?}`.
#[derive(Debug, Serialize)]
pub struct Progress {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed: Option<u64>,
}

impl Progress {
    pub fn status(status: impl Into<String>) -> Progress {
        Progress {
            status: status.into(),
            digest: None,
            total: None,
            completed: None,
        }
    }

    /// A layer's transfer: `"<verb> <12 hex>"` with its digest, size and bytes done.
    pub fn layer(verb: &str, digest: &str, total: u64, completed: u64) -> Progress {
        let short: String = digest
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect();
        Progress {
            status: format!("{verb} {short}"),
            digest: Some(digest.to_string()),
            total: Some(total),
            completed: Some(completed),
        }
    }

    pub fn to_line(&self) -> Vec<u8> {
        let mut b = serde_json::to_vec(self).unwrap_or_default();
        b.push(b'\n');
        b
    }
}

/// An `{"error"}` line ending a progress stream.
pub fn error_line(message: &str) -> Vec<u8> {
    let mut b = error_body(message);
    b.push(b'\n');
    b
}

/// `{"error": "..."}`, Ollama's error body.
pub fn error_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn show_reports_model_info_capabilities_and_parameters_as_ollama_does() {
        let gguf = BTreeMap::from([
            ("general.architecture".to_string(), "llama".to_string()),
            ("general.name".to_string(), "123".to_string()),
            ("general.file_type".to_string(), "15".to_string()),
            ("llama.context_length".to_string(), "8192".to_string()),
            ("llama.rope.freq_base".to_string(), "10000.5".to_string()),
        ]);
        let info = model_info(&gguf);
        assert_eq!(info["general.architecture"], json!("llama"));
        assert_eq!(info["general.name"], json!("123"), "names stay text");
        assert_eq!(info["general.file_type"], json!(15));
        assert_eq!(info["llama.context_length"], json!(8192));
        assert_eq!(info["llama.rope.freq_base"], json!(10000.5));
        assert_eq!(capabilities(false, "{{ messages }}", false), ["completion"]);
        assert_eq!(
            capabilities(false, "{% if tools %}{% endif %}", true),
            ["completion", "tools", "vision"]
        );
        assert_eq!(capabilities(true, "tools", false), ["embedding"]);
        let params = BTreeMap::from([
            ("stop".to_string(), json!(["a", "b"])),
            ("temperature".to_string(), json!(0.5)),
        ]);
        let text = parameters_text(&params);
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(lines, ["stop \"a\"", "stop \"b\"", "temperature 0.5"]);
    }

    #[test]
    fn a_models_defaults_go_under_the_requests_own() {
        let defaults = BTreeMap::from([
            ("temperature".to_string(), json!(0.1)),
            ("num_predict".to_string(), json!(4)),
        ]);
        let chat: ChatIn = serde_json::from_value(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 2}
        }))
        .unwrap();
        let chat = chat.with_model_defaults(Some("be brief"), &defaults);
        let o = chat.options.as_ref().unwrap();
        assert_eq!((o.temperature, o.num_predict), (Some(0.1), Some(2)));
        assert_eq!(chat.messages[0].role, "system");
        assert_eq!(chat.messages[0].content, "be brief");
        let own: ChatIn = serde_json::from_value(json!({
            "model": "m", "messages": [{"role": "system", "content": "mine"}, {"role": "user", "content": "hi"}]
        }))
        .unwrap();
        let own = own.with_model_defaults(Some("be brief"), &defaults);
        assert_eq!(own.messages.len(), 2);
        assert_eq!(own.messages[0].content, "mine");
        let gen: GenerateIn = serde_json::from_value(json!({"model": "m", "prompt": "x"})).unwrap();
        let gen = gen.with_model_defaults(Some("be brief"), &defaults);
        assert_eq!(gen.system.as_deref(), Some("be brief"));
        assert_eq!(gen.options.as_ref().unwrap().num_predict, Some(4));
    }

    #[test]
    fn tools_images_and_format_translate() {
        let req: ChatIn = serde_json::from_value(json!({
            "model": "m", "stream": false, "format": "json",
            "messages": [
                {"role": "user", "content": "what is in it?", "images": ["iVBORw0KGgoAAA", "/9j/4AAQ"]},
                {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "look", "arguments": {"x": 1}}}]},
                {"role": "tool", "content": "a cat", "tool_name": "look"}
            ],
            "tools": [{"type": "function", "function": {"name": "look", "description": "d", "parameters": {"type": "object"}}}]
        }))
        .unwrap();
        let v = serde_json::to_value(req.to_openai().unwrap()).unwrap();
        assert_eq!(
            v["messages"],
            json!([
                {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAA"}},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                    {"type": "text", "text": "what is in it?"}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1_0", "type": "function", "function": {"name": "look", "arguments": "{\"x\":1}"}}
                ]},
                {"role": "tool", "content": "a cat", "tool_call_id": "call_1_0"}
            ])
        );
        assert_eq!(v["response_format"], json!({"type": "json_object"}));
        assert_eq!(v["tools"][0]["function"]["name"], "look");
        let schema: GenerateIn = serde_json::from_value(json!({
            "model": "m", "prompt": "p", "format": {"type": "object", "properties": {"a": {"type": "number"}}}
        }))
        .unwrap();
        let v = serde_json::to_value(schema.to_openai().unwrap()).unwrap();
        assert_eq!(v["response_format"]["type"], "json_schema");
        assert_eq!(
            v["response_format"]["json_schema"]["schema"]["properties"]["a"]["type"],
            "number"
        );
        let bad: GenerateIn =
            serde_json::from_value(json!({"model": "m", "format": "yaml"})).unwrap();
        assert!(bad.to_openai().unwrap_err().starts_with("format:"));
        let bad: ChatIn = serde_json::from_value(
            json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}),
        )
        .unwrap();
        assert!(bad.to_openai().unwrap_err().contains("unknown role"));
    }

    #[test]
    fn keep_alive_and_num_ctx_become_runner_wishes() {
        let w = |v: serde_json::Value| serde_json::from_value::<GenerateIn>(v).unwrap().wishes();
        assert_eq!(
            w(json!({"model": "m", "keep_alive": "10m", "options": {"num_ctx": 2048}})).unwrap(),
            RunnerWishes {
                context_size: Some(2048),
                keep_alive: Some(KeepAlive::For(std::time::Duration::from_secs(600)))
            }
        );
        assert_eq!(
            w(json!({"model": "m", "keep_alive": 0}))
                .unwrap()
                .keep_alive,
            Some(KeepAlive::For(std::time::Duration::ZERO))
        );
        assert_eq!(
            w(json!({"model": "m", "keep_alive": -1}))
                .unwrap()
                .keep_alive,
            Some(KeepAlive::Forever)
        );
        assert_eq!(
            w(json!({"model": "m", "keep_alive": "-1m"}))
                .unwrap()
                .keep_alive,
            Some(KeepAlive::Forever)
        );
        assert_eq!(w(json!({"model": "m"})).unwrap(), RunnerWishes::default());
        assert!(w(json!({"model": "m", "keep_alive": "soon"})).is_err());
        assert!(w(json!({"model": "m", "options": {"num_ctx": 0}})).is_err());
    }

    #[test]
    fn streamed_tool_calls_are_reassembled_into_one_line_with_object_arguments() {
        let sse = concat!(
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"2}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: [DONE]\n\n"
        );
        let mut t = StreamTranslator::new(Call::Chat, "m", "now", 0);
        let lines = t.feed(sse.as_bytes());
        assert_eq!(lines.len(), 1);
        let v: serde_json::Value = serde_json::from_slice(&lines[0]).unwrap();
        assert_eq!(
            v["message"]["tool_calls"],
            json!([{"function": {"index": 0, "name": "f", "arguments": {"a": 2}}}])
        );
        assert_eq!(v["done"], false);
    }

    #[test]
    fn chat_translates_options_and_streams_by_default() {
        let req: ChatIn = serde_json::from_str(
            r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],
                "options":{"temperature":0,"num_predict":5,"stop":["\n"],"seed":7,"num_ctx":2048}}"#,
        )
        .unwrap();
        assert!(req.streaming());
        let v = serde_json::to_value(req.to_openai().unwrap()).unwrap();
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
        let v = serde_json::to_value(req.to_openai().unwrap()).unwrap();
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
        let mut t = StreamTranslator::new(Call::Chat, "ai/tiny:latest", "now", 10);
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
        let last: serde_json::Value = serde_json::from_slice(&t.finish(100).concat()).unwrap();
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

/// `POST /api/pull` and `POST /api/push`.
#[derive(Debug, Deserialize)]
pub struct PullIn {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
    /// Accepted for compatibility; loopback and `[registry] insecure` hosts decide plain HTTP.
    #[serde(default)]
    pub insecure: Option<bool>,
}
