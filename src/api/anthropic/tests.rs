//! Golden tests: Anthropic request in → OpenAI request out; OpenAI answer/stream in → Anthropic answer/events out.

use serde_json::{json, Value};

use super::*;

fn translate(body: Value) -> Value {
    let req: MessagesIn = serde_json::from_value(body).unwrap();
    serde_json::to_value(req.to_openai(Purpose::Generate).unwrap()).unwrap()
}

fn refusal(body: Value, purpose: Purpose) -> String {
    match serde_json::from_value::<MessagesIn>(body) {
        Ok(req) => req.to_openai(purpose).unwrap_err(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_full_request_translates_field_by_field() {
    let out = translate(json!({
        "model": "ai/tiny",
        "max_tokens": 64,
        "system": [{"type": "text", "text": "be brief"}, {"type": "text", "text": "be kind", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "what is the weather?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                {"type": "text", "text": "and tomorrow?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.jpg"}}
            ]}
        ],
        "temperature": 0.5, "top_p": 0.9, "top_k": 20,
        "stop_sequences": ["END"],
        "stream": true,
        "tools": [{"name": "get_weather", "description": "weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "metadata": {"user_id": "u-1"},
        "thinking": {"type": "enabled", "budget_tokens": 1024}
    }));
    assert_eq!(
        out,
        json!({
            "model": "ai/tiny",
            "messages": [
                {"role": "system", "content": "be brief\nbe kind"},
                {"role": "user", "content": "what is the weather?"},
                {"role": "assistant", "content": "Let me look.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "content": "sunny", "tool_call_id": "toolu_1"},
                {"role": "user", "content": [
                    {"type": "text", "text": "and tomorrow?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                    {"type": "image_url", "image_url": {"url": "https://x/y.jpg"}}
                ]}
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": 0.5, "top_p": 0.9, "top_k": 20,
            "max_tokens": 64,
            "stop": ["END"],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "user": "u-1",
            "verbose": true,
            "response_fields": ["stop_type", "stopping_word"]
        })
    );
}

#[test]
fn tool_choices_map_to_openai_and_need_tools() {
    let with = |choice: Value| {
        translate(
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": choice}),
        )
    };
    assert_eq!(with(json!({"type": "auto"}))["tool_choice"], "auto");
    assert_eq!(with(json!({"type": "none"}))["tool_choice"], "none");
    assert_eq!(
        with(json!({"type": "tool", "name": "f"}))["tool_choice"],
        json!({"type": "function", "function": {"name": "f"}})
    );
    let no_tools = translate(
        json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
        "tool_choice": {"type": "auto"}}),
    );
    assert!(no_tools.get("tool_choice").is_none(), "{no_tools}");
    // An assistant turn of tool calls only has no content, as OpenAI has it.
    let out = translate(json!({"model": "m", "max_tokens": 1, "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "ok"}]}
    ]}));
    assert_eq!(out["messages"][1]["content"], Value::Null);
    assert_eq!(
        out["messages"][2],
        json!({"role": "tool", "content": "ok", "tool_call_id": "t"})
    );
    assert_eq!(out["messages"].as_array().unwrap().len(), 3);
}

#[test]
fn structured_outputs_become_a_strict_json_schema_response_format() {
    let schema =
        json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]});
    let want = json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": true}});
    let with = |extra: Value| {
        let mut body =
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        translate(body)
    };
    let beta = with(json!({"output_format": {"type": "json_schema", "schema": schema}}));
    assert_eq!(beta["response_format"], want);
    let later = with(
        json!({"output_config": {"effort": "low", "format": {"type": "json_schema", "schema": schema}}}),
    );
    assert_eq!(later["response_format"], want);
    assert!(with(json!({"output_config": {"effort": "low"}}))
        .get("response_format")
        .is_none());
    let e = refusal(
        json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
            "output_format": {"type": "regex", "pattern": "x"}}),
        Purpose::Generate,
    );
    assert!(e.contains("unknown variant `regex`"), "{e}");
}

#[test]
fn bad_requests_are_refused_with_the_field_named() {
    let msgs = json!([{"role": "user", "content": "x"}]);
    assert_eq!(
        refusal(json!({"model": "m", "messages": msgs}), Purpose::Generate),
        "max_tokens: field required"
    );
    assert!(refusal(
        json!({"model": "m", "max_tokens": 0, "messages": msgs}),
        Purpose::Generate
    )
    .starts_with("max_tokens: must be at least 1"));
    assert_eq!(
        refusal(
            json!({"max_tokens": 5, "messages": msgs}),
            Purpose::Generate
        ),
        "model: field required"
    );
    assert!(refusal(
        json!({"model": "m", "max_tokens": 5, "messages": []}),
        Purpose::Generate
    )
    .starts_with("messages:"));
    let e = refusal(
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
        Purpose::Generate,
    );
    assert!(e.contains("unknown variant `system`"), "{e}");
    let e = refusal(
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "video"}]}]}),
        Purpose::Generate,
    );
    assert!(e.contains("unknown variant `video`"), "{e}");
    let e = refusal(
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": 7}]}),
        Purpose::Generate,
    );
    assert!(e.contains("a string or a list"), "{e}");
    let e = refusal(
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}),
        Purpose::Generate,
    );
    assert_eq!(e, "messages[0]: tool_use blocks belong in assistant turns");
    let e = refusal(
        json!({"model": "m", "max_tokens": 5, "messages": msgs,
            "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
        Purpose::Generate,
    );
    assert!(e.contains("server tool"), "{e}");
    let e = refusal(
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": []}]}),
        Purpose::Generate,
    );
    assert!(
        e.starts_with("messages[0]: content must be non-empty"),
        "{e}"
    );
    // A final empty assistant turn is a prefill, and an empty system prompt is none.
    let out = translate(
        json!({"model": "m", "max_tokens": 5, "system": "", "messages": [
        {"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]}),
    );
    assert_eq!(
        out["messages"],
        json!([{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}])
    );
    // Counting tokens needs no max_tokens, and never streams.
    let req: MessagesIn =
        serde_json::from_value(json!({"model": "m", "messages": msgs, "stream": true})).unwrap();
    let out = req.to_openai(Purpose::CountTokens).unwrap();
    assert!(!out.stream && out.max_tokens.is_none());
}

fn chat_response(v: Value) -> ChatResponse {
    serde_json::from_value(v).unwrap()
}

#[test]
fn whole_answers_translate_with_stop_reasons_and_usage() {
    let answer = chat_response(json!({
        "id": "chatcmpl-abc",
        "choices": [{"finish_reason": "length", "message": {"role": "assistant", "content": "Hello"}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}}
    }));
    assert_eq!(
        serde_json::to_value(from_openai(&answer, "ai/tiny:latest")).unwrap(),
        json!({
            "id": "msg_abc", "type": "message", "role": "assistant", "model": "ai/tiny:latest",
            "content": [{"type": "text", "text": "Hello"}],
            "stop_reason": "max_tokens", "stop_sequence": null,
            "usage": {"input_tokens": 6, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4}
        })
    );
    let tools = chat_response(json!({
        "choices": [{"finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
            "reasoning_content": "think",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                           {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "not json"}}]}}]
    }));
    let out = serde_json::to_value(from_openai(&tools, "m")).unwrap();
    assert_eq!(out["stop_reason"], "tool_use");
    assert_eq!(
        out["content"],
        json!([
            {"type": "thinking", "thinking": "think", "signature": ""},
            {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}},
            {"type": "tool_use", "id": "c2", "name": "g", "input": {"arguments": "not json"}}
        ])
    );
    // llama-server says which stop word hit when asked (`verbose`); vLLM says it in `stop_reason`.
    let llama = chat_response(json!({
        "choices": [{"finish_reason": "stop", "message": {"content": "ab"}}],
        "__verbose": {"stop_type": "word", "stopping_word": "END"}
    }));
    let out = from_openai(&llama, "m");
    assert_eq!(
        (out.stop_reason, out.stop_sequence.as_deref()),
        (Some("stop_sequence"), Some("END"))
    );
    let vllm = chat_response(json!({
        "choices": [{"finish_reason": "stop", "stop_reason": "###", "message": {"content": "ab"}}]
    }));
    assert_eq!(
        from_openai(&vllm, "m").stop_sequence.as_deref(),
        Some("###")
    );
    let eos = chat_response(json!({
        "choices": [{"finish_reason": "stop", "stop_reason": 2, "message": {"content": "ab"}}],
        "__verbose": {"stop_type": "eos", "stopping_word": ""}
    }));
    let out = from_openai(&eos, "m");
    assert_eq!(
        (out.stop_reason, out.stop_sequence),
        (Some("end_turn"), None)
    );
}

/// Feeds `sse` to a translator in pieces of `cut` bytes; returns (event name, data) pairs, pings dropped.
fn run_stream(sse: &str, cut: usize, end: bool) -> Vec<(String, Value)> {
    let mut t = StreamTranslator::new("ai/tiny:latest");
    let mut frames = t.begin();
    for piece in sse.as_bytes().chunks(cut) {
        frames.extend(t.feed(piece));
    }
    if end {
        frames.extend(t.finish(0));
    }
    frames
        .iter()
        .map(|f| {
            let text = std::str::from_utf8(f).unwrap();
            assert!(text.ends_with("\n\n"), "{text:?}");
            let (event, data) = text.trim_end().split_once('\n').unwrap();
            let name = event.strip_prefix("event: ").unwrap().to_string();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(
                data["type"],
                name.as_str(),
                "event line and data type agree"
            );
            (name, data)
        })
        .filter(|(n, _)| n != "ping")
        .collect()
}

fn sse(chunks: &[Value]) -> String {
    let mut s = String::new();
    for c in chunks {
        s.push_str(&format!("data: {c}\n\n"));
    }
    s.push_str("data: [DONE]\n\n");
    s
}

#[test]
fn a_text_stream_has_the_exact_event_order_however_the_bytes_are_cut() {
    let body = sse(&[
        json!({"choices": [{"delta": {"role": "assistant", "content": null}}]}),
        json!({"choices": [{"delta": {"content": "Hel"}}]}),
        json!({"choices": [{"delta": {"content": "lo"}}]}),
        json!({"choices": [{"delta": {}, "finish_reason": "stop"}], "__verbose": {"stop_type": "word", "stopping_word": "\n"}}),
        json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}),
    ]);
    for cut in [1, 7, 64, body.len()] {
        let events = run_stream(&body, cut, true);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ],
            "cut {cut}"
        );
        assert_eq!(events[0].1["message"]["model"], "ai/tiny:latest");
        assert_eq!(events[0].1["message"]["content"], json!([]));
        assert_eq!(
            events[1].1,
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        );
        assert_eq!(
            events[2].1["delta"],
            json!({"type": "text_delta", "text": "Hel"})
        );
        assert_eq!(events[3].1["delta"]["text"], "lo");
        assert_eq!(
            events[5].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "stop_sequence", "stop_sequence": "\n"},
                   "usage": {"input_tokens": 7, "output_tokens": 2, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}})
        );
    }
}

#[test]
fn tool_calls_split_across_chunks_become_tool_use_blocks() {
    let body = sse(&[
        json!({"choices": [{"delta": {"content": "Sure."}}]}),
        json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]}),
        json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}}]}),
        json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]}),
        json!({"choices": [{"delta": {"tool_calls": [{"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{}"}}]}}]}),
        json!({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}),
        json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9}}),
    ]);
    let events = run_stream(&body, 5, true);
    let summary: Vec<String> = events
        .iter()
        .map(|(n, d)| match n.as_str() {
            "content_block_start" => format!("start {} {}", d["index"], d["content_block"]),
            "content_block_delta" => format!("delta {} {}", d["index"], d["delta"]),
            "content_block_stop" => format!("stop {}", d["index"]),
            "message_delta" => format!("message_delta {}", d["delta"]["stop_reason"]),
            other => other.to_string(),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "message_start",
            r#"start 0 {"text":"","type":"text"}"#,
            r#"delta 0 {"text":"Sure.","type":"text_delta"}"#,
            "stop 0",
            r#"start 1 {"id":"c1","input":{},"name":"f","type":"tool_use"}"#,
            r#"delta 1 {"partial_json":"{\"a\":","type":"input_json_delta"}"#,
            r#"delta 1 {"partial_json":"1}","type":"input_json_delta"}"#,
            "stop 1",
            r#"start 2 {"id":"c2","input":{},"name":"g","type":"tool_use"}"#,
            r#"delta 2 {"partial_json":"{}","type":"input_json_delta"}"#,
            "stop 2",
            r#"message_delta "tool_use""#,
            "message_stop",
        ]
    );
}

#[test]
fn a_stream_cut_short_ends_with_an_error_event() {
    // The engine died after two tokens: no finish_reason, no [DONE].
    let body = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n";
    let events = run_stream(body, 10, true);
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["error"]["type"], "api_error");
    // A transport error mid-stream: the body reports it through `fail`.
    let mut t = StreamTranslator::new("m");
    t.begin();
    t.feed(body.as_bytes());
    let frame = String::from_utf8(t.fail("connection reset").concat()).unwrap();
    assert!(frame.starts_with("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"connection reset\"}}"), "{frame}");
}

#[test]
fn errors_use_anthropics_envelope_and_types() {
    let e = |kind| -> Value { serde_json::from_slice(&error_body(kind, "boom")).unwrap() };
    assert_eq!(
        e(ErrorKind::NotFound),
        json!({"type": "error", "error": {"type": "not_found_error", "message": "boom"}})
    );
    assert_eq!(
        e(ErrorKind::BadRequest)["error"]["type"],
        "invalid_request_error"
    );
    assert_eq!(
        e(ErrorKind::PayloadTooLarge)["error"]["type"],
        "request_too_large"
    );
    assert_eq!(
        e(ErrorKind::Unavailable)["error"]["type"],
        "overloaded_error"
    );
    assert_eq!(e(ErrorKind::BadGateway)["error"]["type"], "api_error");
}
