//! What the request inspector shows of an exchange, in any dialect: the prompt (the last user turn, or the
//! `prompt`), and from the answer (one JSON document, or an SSE/NDJSON stream reassembled) the text and the token
//! counts. Reads loosely (`serde_json::Value`): an inspector must show what it can of any shape, never fail.

use serde_json::Value;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AnswerSummary {
    /// The generated text, reassembled from a stream's deltas.
    pub text: String,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

/// The prompt of a chat (`messages[-1]` with role user: its text), completion or generate request; a rerank's
/// `query`, a score's `text_1` (one text) and llama-server tokenize's `content`.
pub fn prompt(request: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(request).ok()?;
    for key in ["prompt", "query", "text_1", "content"] {
        if let Some(p) = v.get(key).and_then(Value::as_str) {
            return Some(p.to_string());
        }
    }
    if let Some(input) = v.get("input") {
        // The Responses API's message items: the last user turn, as for chat.
        let last_user = input.as_array().and_then(|items| {
            items
                .iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        });
        if let Some(content) = last_user.and_then(|m| m.get("content")) {
            return Some(content_text(content));
        }
        return Some(match input {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    }
    let last_user = v
        .get("messages")?
        .as_array()?
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
    Some(content_text(last_user.get("content")?))
}

/// Text of a message's `content`: a string, or the text parts of an array (OpenAI and Anthropic blocks).
fn content_text(c: &Value) -> String {
    match c {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// Summarises an answer body: a JSON document, or SSE `data:` lines, or NDJSON lines.
pub fn answer(body: &[u8]) -> AnswerSummary {
    let mut s = AnswerSummary::default();
    let text = String::from_utf8_lossy(body);
    let docs: Vec<Value> = match serde_json::from_str::<Value>(text.trim()) {
        Ok(v) => vec![v],
        Err(_) => text
            .lines()
            .map(|l| l.strip_prefix("data:").unwrap_or(l).trim())
            .filter(|l| !l.is_empty() && *l != "[DONE]")
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
    };
    for d in &docs {
        absorb(&mut s, d);
    }
    // llama-server's last chunk carries `timings` whether or not the client asked for `usage`
    // (`stream_options.include_usage`, which Open WebUI does not send): its counts stand in for a missing usage.
    // The prompt is what was evaluated (`prompt_n`) plus what the prompt cache already held (`cache_n`).
    let timings = docs.iter().rev().find_map(|d| d.get("timings"));
    let timing = |key: &str| timings.and_then(|t| t.get(key)?.as_u64());
    if s.prompt_tokens.is_none() {
        s.prompt_tokens = timing("prompt_n").map(|n| n + timing("cache_n").unwrap_or(0));
    }
    if s.completion_tokens.is_none() {
        s.completion_tokens = timing("predicted_n");
    }
    s
}

fn absorb(s: &mut AnswerSummary, d: &Value) {
    let str_at = |p: &str| d.pointer(p).and_then(Value::as_str);
    let num_at = |p: &str| d.pointer(p).and_then(Value::as_u64);
    // Text: OpenAI stream delta / message / completion text; Anthropic delta / content blocks; Ollama chat/generate.
    for p in [
        "/choices/0/delta/content",
        "/choices/0/message/content",
        "/choices/0/text",
        "/delta/text",
        "/message/content",
        "/response",
    ] {
        if let Some(t) = str_at(p) {
            s.text.push_str(t);
        }
    }
    // The Responses API: text deltas of a stream (its final event's whole response is not read again), or a
    // whole response's message items.
    if str_at("/type") == Some("response.output_text.delta") {
        if let Some(t) = str_at("/delta") {
            s.text.push_str(t);
        }
    }
    for item in d
        .get("output")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if item.get("type").and_then(Value::as_str) == Some("message") {
            if let Some(parts) = item.get("content") {
                s.text.push_str(&content_text(parts));
            }
        }
    }
    if let Some(blocks) = d.get("content").and_then(Value::as_array) {
        s.text
            .push_str(&content_text(&Value::Array(blocks.clone())));
    }
    // Counts: OpenAI usage; Anthropic usage (message_start carries input, message_delta output); Ollama's.
    for (p, prompt) in [
        ("/usage/prompt_tokens", true),
        ("/usage/completion_tokens", false),
        ("/usage/input_tokens", true),
        ("/message/usage/input_tokens", true),
        ("/usage/output_tokens", false),
        ("/response/usage/input_tokens", true),
        ("/response/usage/output_tokens", false),
        ("/prompt_eval_count", true),
        ("/eval_count", false),
    ] {
        if let Some(n) = num_at(p) {
            if prompt {
                s.prompt_tokens = Some(n);
            } else {
                s.completion_tokens = Some(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_in_each_dialect() {
        assert_eq!(
            prompt(
                br#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"hi"}]}"#
            )
            .as_deref(),
            Some("hi")
        );
        assert_eq!(
            prompt(br#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image"},{"type":"text","text":"b"}]}]}"#).as_deref(),
            Some("ab")
        );
        assert_eq!(
            prompt(br#"{"model":"m","query":"which","documents":["a"]}"#).as_deref(),
            Some("which"),
            "a rerank's query"
        );
        assert_eq!(
            prompt(br#"{"model":"m","text_1":"t","text_2":["a"]}"#).as_deref(),
            Some("t"),
            "a score's text_1"
        );
        assert_eq!(
            prompt(br#"{"model":"m","prompt":"p"}"#).as_deref(),
            Some("p")
        );
        assert_eq!(
            prompt(br#"{"input":["x","y"]}"#).as_deref(),
            Some(r#"["x","y"]"#)
        );
        assert_eq!(
            prompt(br#"{"input":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"type":"message","role":"user","content":[{"type":"input_text","text":"c"}]}]}"#).as_deref(),
            Some("c")
        );
        assert_eq!(prompt(b"not json"), None);
    }

    #[test]
    fn answers_are_reassembled_from_any_dialect() {
        let openai_stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        assert_eq!(
            answer(openai_stream),
            AnswerSummary {
                text: "Hello".into(),
                prompt_tokens: Some(5),
                completion_tokens: Some(2)
            }
        );
        let anthropic_stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":7,\"output_tokens\":0}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\n\n";
        let a = answer(anthropic_stream.as_bytes());
        assert_eq!(
            (a.text.as_str(), a.prompt_tokens, a.completion_tokens),
            ("Hi", Some(7), Some(3))
        );
        let ollama = b"{\"message\":{\"role\":\"assistant\",\"content\":\"a\"},\"done\":false}\n{\"message\":{\"role\":\"assistant\",\"content\":\"b\"},\"done\":true,\"prompt_eval_count\":4,\"eval_count\":2}\n";
        assert_eq!(
            answer(ollama),
            AnswerSummary {
                text: "ab".into(),
                prompt_tokens: Some(4),
                completion_tokens: Some(2)
            }
        );
        // Recorded from llama-server: a stream whose client did not ask for usage; the last chunk's timings count.
        let no_usage = b"data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"created\":1,\"id\":\"c\",\"model\":\"ai/tiny\",\"object\":\"chat.completion.chunk\"}\n\ndata: {\"choices\":[{\"finish_reason\":\"length\",\"index\":0,\"delta\":{}}],\"created\":1,\"id\":\"c\",\"model\":\"ai/tiny\",\"object\":\"chat.completion.chunk\",\"timings\":{\"cache_n\":4,\"prompt_n\":5,\"prompt_ms\":1.2,\"predicted_n\":6,\"predicted_ms\":3.4}}\n\ndata: [DONE]\n\n";
        assert_eq!(
            answer(no_usage),
            AnswerSummary {
                text: "Hi".into(),
                prompt_tokens: Some(9),
                completion_tokens: Some(6)
            }
        );
        // `usage`, when there, wins over timings .
        let both = br#"{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":12,"completion_tokens":1},"timings":{"prompt_n":2,"predicted_n":1}}"#;
        assert_eq!(answer(both).prompt_tokens, Some(12));
        let whole = br#"{"content":[{"type":"text","text":"x"}],"usage":{"input_tokens":1,"output_tokens":1}}"#;
        assert_eq!(answer(whole).text, "x");
        assert_eq!(answer(b"\xff garbage"), AnswerSummary::default());
        // The Responses API: a whole response, and a stream (whose last event repeats the whole response).
        let response = br#"{"object":"response","output":[{"type":"message","content":[{"type":"output_text","text":"Hi!"}]},{"type":"function_call","arguments":"{}"}],"usage":{"input_tokens":4,"output_tokens":2}}"#;
        assert_eq!(
            answer(response),
            AnswerSummary {
                text: "Hi!".into(),
                prompt_tokens: Some(4),
                completion_tokens: Some(2)
            }
        );
        let stream = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"output\":[],\"usage\":null}}\n\nevent: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hel\"}\n\nevent: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"lo\"}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"Hello\"}]}],\"usage\":{\"input_tokens\":6,\"output_tokens\":2}}}\n\n";
        assert_eq!(
            answer(stream.as_bytes()),
            AnswerSummary {
                text: "Hello".into(),
                prompt_tokens: Some(6),
                completion_tokens: Some(2)
            }
        );
    }
}
