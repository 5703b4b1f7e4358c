//! Golden tests: Responses request in → OpenAI chat request out; chat answer/stream in → Response object/events
//! out.

use serde_json::{json, Value};

use super::*;

const ID: &str = "resp_abc";

fn parse(body: Value) -> ResponsesIn {
    serde_json::from_value(body).unwrap()
}

/// The chat request for `body` alone (no earlier turns).
fn translate(body: Value) -> Value {
    let req = parse(body);
    req.check().unwrap();
    let items = req.items(ID).unwrap();
    serde_json::to_value(req.to_chat(&items).unwrap()).unwrap()
}

fn refusal(body: Value) -> String {
    match serde_json::from_value::<ResponsesIn>(body) {
        Ok(req) => req
            .check()
            .and_then(|_| req.items(ID))
            .and_then(|items| req.to_chat(&items))
            .map(|_| String::new())
            .unwrap_or_else(|e| e),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_full_request_translates_field_by_field() {
    let schema =
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
    let out = translate(json!({
        "model": "ai/tiny",
        "instructions": "be brief",
        "input": [
            {"role": "developer", "content": "answer in French"},
            {"role": "user", "content": "what is the weather?"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}", "id": "fc_x", "status": "completed"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "reasoning", "summary": []},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "and"}, {"type": "input_text", "text": "tomorrow?"}]}
        ],
        "tools": [{"type": "function", "name": "get_weather", "description": "weather", "parameters": schema, "strict": true}],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "parallel_tool_calls": false,
        "text": {"format": {"type": "json_schema", "name": "w", "schema": schema, "strict": true}},
        "max_output_tokens": 64,
        "temperature": 0.5, "top_p": 0.9,
        "stream": true,
        "store": false,
        "user": "u-1",
        "metadata": {"k": "v"},
        "reasoning": {"effort": "low"},
        "include": ["message.output_text.logprobs"]
    }));
    assert_eq!(
        out,
        json!({
            "model": "ai/tiny",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "system", "content": "answer in French"},
                {"role": "user", "content": "what is the weather?"},
                {"role": "assistant", "content": "Let me look.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
                {"role": "user", "content": "and\ntomorrow?"}
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": 0.5, "top_p": 0.9,
            "max_tokens": 64,
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "weather", "parameters": schema}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": false,
            "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": schema, "strict": true}},
            "user": "u-1"
        })
    );
}

#[test]
fn a_string_input_is_one_user_message_and_formats_map() {
    let out = translate(json!({"model": "m", "input": "hi"}));
    assert_eq!(
        out,
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": false})
    );
    let out = translate(
        json!({"model": "m", "input": "hi", "text": {"format": {"type": "json_object"}}}),
    );
    assert_eq!(out["response_format"], json!({"type": "json_object"}));
    let out = translate(json!({"model": "m", "input": "hi", "text": {"format": {"type": "text"}}}));
    assert!(out.get("response_format").is_none(), "{out}");
    // An empty `instructions` is no system message.
    let out = translate(json!({"model": "m", "input": "hi", "instructions": ""}));
    assert_eq!(out["messages"].as_array().unwrap().len(), 1);
}

#[test]
fn tool_choices_map_and_need_tools() {
    let with = |choice: Value| {
        translate(
            json!({"model": "m", "input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": choice}),
        )
    };
    assert_eq!(with(json!("auto"))["tool_choice"], "auto");
    assert_eq!(with(json!("none"))["tool_choice"], "none");
    assert_eq!(with(json!("required"))["tool_choice"], "required");
    // A tool without parameters gets an empty object schema.
    assert_eq!(
        with(json!("auto"))["tools"][0]["function"]["parameters"],
        json!({"type": "object", "properties": {}})
    );
    let no_tools = translate(json!({"model": "m", "input": "x", "tool_choice": "required"}));
    assert!(no_tools.get("tool_choice").is_none(), "{no_tools}");
    // A function call with no assistant text before it is an assistant turn of calls only.
    let out = translate(json!({"model": "m", "input": [
        {"role": "user", "content": "x"},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": ""},
        {"type": "function_call", "call_id": "d", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": "ok"}]}
    ]}));
    assert_eq!(
        out["messages"][1],
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "d", "type": "function", "function": {"name": "g", "arguments": "{}"}}
        ]})
    );
    assert_eq!(
        out["messages"][2],
        json!({"role": "tool", "content": "ok", "tool_call_id": "c"})
    );
}

#[test]
fn bad_requests_are_refused_with_the_field_named() {
    let cases = [
        (json!({"input": "x"}), "model: field required"),
        (json!({"model": "m"}), "input: field required"),
        (
            json!({"model": "m", "input": []}),
            "input: at least one item",
        ),
        (
            json!({"model": "m", "input": 7}),
            "input: expected a string or a list",
        ),
        (
            json!({"model": "m", "input": [{"role": "robot", "content": "x"}]}),
            "input[0]: unknown variant `robot`",
        ),
        (
            json!({"model": "m", "input": [{"type": "function_call", "name": "f"}]}),
            "input[0]: missing field `call_id`",
        ),
        (
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
            "input[0]: input_file is not supported",
        ),
        (
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
            "input[0]: input_image: only image_url",
        ),
        (
            json!({"model": "m", "input": "x", "max_output_tokens": 0}),
            "max_output_tokens: must be at least 1",
        ),
        (
            json!({"model": "m", "input": "x", "background": true}),
            "background: background responses are not supported",
        ),
        (
            json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
            "tools[0]: tool type \"web_search\" is not available",
        ),
        (
            json!({"model": "m", "input": "x", "tools": [{"type": "function"}]}),
            "tools[0]: name: field required",
        ),
        (
            json!({"model": "m", "input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": "sometimes"}),
            "tool_choice: \"sometimes\" is not one of",
        ),
        (
            json!({"model": "m", "input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "g"}}),
            "tool_choice: no function named \"g\"",
        ),
        (
            json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema"}}}),
            "missing field `name`",
        ),
        (
            json!({"model": "m", "input": "x", "metadata": {"k": 1}}),
            "invalid type",
        ),
        (
            json!({"model": "m", "input": "x", "metadata": (0..17).map(|i| (i.to_string(), json!("v"))).collect::<serde_json::Map<_, _>>()}),
            "metadata: at most 16 pairs, got 17",
        ),
        (
            json!({"model": "m", "input": "x", "metadata": {"k": "v".repeat(513)}}),
            "metadata: keys are at most 64",
        ),
        (
            json!({"model": "m", "input": "x", "metadata": {"k".repeat(65): "v"}}),
            "metadata: keys are at most 64",
        ),
    ];
    for (body, want) in cases {
        let got = refusal(body.clone());
        assert!(
            got.contains(want),
            "{body}: {got:?} does not contain {want:?}"
        );
    }
}

#[test]
fn input_items_get_ids_and_a_chain_prepends_the_earlier_turns() {
    let first = parse(json!({"model": "m", "input": "hi", "instructions": "be brief"}));
    let items = first.items("resp_one").unwrap();
    assert_eq!(
        serde_json::to_value(&items).unwrap(),
        json!([{"type": "message", "id": "msg_one_in0", "status": "completed", "role": "user",
                "content": [{"type": "input_text", "text": "hi"}]}])
    );
    let answer = chat_response(
        json!({"choices": [{"message": {"content": "hello"}, "finish_reason": "stop"}]}),
    );
    let done = from_chat(&answer, first.skeleton("resp_one", 1, "m"));
    let history: Vec<Item> = items.iter().chain(&done.output).cloned().collect();
    // The second turn: the first's input and output first, then its own; instructions are not carried over.
    let second = parse(
        json!({"model": "m", "input": [{"role": "user", "content": "again"}], "previous_response_id": "resp_one"}),
    );
    let conversation: Vec<Item> = history
        .iter()
        .chain(&second.items("resp_two").unwrap())
        .cloned()
        .collect();
    let out = serde_json::to_value(second.to_chat(&conversation).unwrap()).unwrap();
    assert_eq!(
        out["messages"],
        json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
               {"role": "user", "content": "again"}])
    );
    assert_eq!(
        second
            .skeleton("resp_two", 2, "m")
            .previous_response_id
            .as_deref(),
        Some("resp_one")
    );
}

fn chat_response(v: Value) -> ChatResponse {
    serde_json::from_value(v).unwrap()
}

fn whole(answer: Value, request: Value) -> Value {
    let req = parse(request);
    serde_json::to_value(from_chat(
        &chat_response(answer),
        req.skeleton(ID, 1_700_000_000, "ai/tiny:latest"),
    ))
    .unwrap()
}

#[test]
fn a_whole_answer_is_a_response_object() {
    let out = whole(
        json!({"id": "chatcmpl-1", "choices": [{"message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}}}),
        json!({"model": "ai/tiny", "input": "hi", "metadata": {"k": "v"}, "temperature": 0}),
    );
    assert_eq!(
        out,
        json!({
            "id": ID, "object": "response", "created_at": 1_700_000_000, "status": "completed",
            "error": null, "incomplete_details": null, "instructions": null, "max_output_tokens": null,
            "model": "ai/tiny:latest",
            "output": [{"type": "message", "id": "msg_abc", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": []}]}],
            "parallel_tool_calls": true, "previous_response_id": null, "temperature": 0.0, "top_p": null,
            "tool_choice": "auto", "tools": [], "text": {"format": {"type": "text"}},
            "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 3,
                      "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 13},
            "metadata": {"k": "v"}, "store": true, "user": null
        })
    );
}

#[test]
fn length_is_incomplete_and_tool_calls_are_function_call_items() {
    let out = whole(
        json!({"choices": [{"message": {"content": "abc"}, "finish_reason": "length"}], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}),
        json!({"model": "m", "input": "x", "max_output_tokens": 3}),
    );
    assert_eq!(out["status"], "incomplete");
    assert_eq!(
        out["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(out["output"][0]["status"], "incomplete");
    assert_eq!(out["max_output_tokens"], 3);
    let out = whole(
        json!({"choices": [{"message": {"content": null, "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"type": "function", "function": {"name": "other", "arguments": "{}"}}
        ]}, "finish_reason": "tool_calls"}]}),
        json!({"model": "m", "input": "x", "tools": [{"type": "function", "name": "get_weather"}], "tool_choice": "required"}),
    );
    assert_eq!(out["status"], "completed");
    assert_eq!(
        out["output"],
        json!([
            {"type": "function_call", "id": "fc_abc_0", "call_id": "call_9", "name": "get_weather",
             "arguments": "{\"city\":\"Paris\"}", "status": "completed"},
            {"type": "function_call", "id": "fc_abc_1", "call_id": "call_abc_1", "name": "other",
             "arguments": "{}", "status": "completed"}
        ])
    );
    assert_eq!(out["tool_choice"], "required");
    assert_eq!(
        out["tools"],
        json!([{"type": "function", "name": "get_weather"}])
    );
}

// ---- streams ----

fn sse(chunks: &[Value]) -> String {
    let mut s = String::new();
    for c in chunks {
        s.push_str(&format!("data: {c}\n\n"));
    }
    s.push_str("data: [DONE]\n\n");
    s
}

/// Runs a stream cut at `cut`; returns each event's `event:` name and data (checked to agree with each other and
/// to be numbered in order).
fn run_stream(sse: &str, cut: usize, end: bool) -> Vec<(String, Value)> {
    let req = parse(json!({"model": "m", "input": "x"}));
    let mut t = StreamTranslator::new(req.skeleton(ID, 1, "ai/tiny:latest"));
    let mut frames = t.begin();
    let bytes = sse.as_bytes();
    frames.extend(t.feed(&bytes[..cut]));
    frames.extend(t.feed(&bytes[cut..]));
    if end {
        frames.extend(t.finish(1));
    }
    let events: Vec<(String, Value)> = frames
        .iter()
        .map(|f| {
            let text = std::str::from_utf8(f).unwrap();
            let (name, data) = text.strip_suffix("\n\n").unwrap().split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_string();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name.as_str());
            (name, data)
        })
        .collect();
    for (n, (_, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], n as u64, "{data}");
    }
    events
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn a_text_stream_has_the_exact_event_order_however_the_bytes_are_cut() {
    let stream = sse(&[
        json!({"choices": [{"delta": {"role": "assistant", "content": null}}]}),
        json!({"choices": [{"delta": {"content": "Hel"}}]}),
        json!({"choices": [{"delta": {"content": "lo"}}]}),
        json!({"choices": [{"delta": {}, "finish_reason": "stop"}]}),
        json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}),
    ]);
    let reference = run_stream(&stream, 0, true);
    assert_eq!(
        names(&reference),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    let data = |i: usize| reference[i].1.clone();
    assert_eq!(data(0)["response"]["status"], "in_progress");
    assert_eq!(data(0)["response"]["output"], json!([]));
    assert_eq!(
        data(2),
        json!({"type": "response.output_item.added", "output_index": 0, "sequence_number": 2,
               "item": {"type": "message", "id": "msg_abc", "status": "in_progress", "role": "assistant", "content": []}})
    );
    assert_eq!(
        data(3),
        json!({"type": "response.content_part.added", "item_id": "msg_abc", "output_index": 0, "content_index": 0,
               "sequence_number": 3, "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})
    );
    assert_eq!(
        data(4),
        json!({"type": "response.output_text.delta", "item_id": "msg_abc", "output_index": 0, "content_index": 0,
               "delta": "Hel", "logprobs": [], "sequence_number": 4})
    );
    assert_eq!(data(6)["text"], "Hello");
    assert_eq!(data(7)["part"]["text"], "Hello");
    assert_eq!(data(8)["item"]["status"], "completed");
    assert_eq!(data(8)["item"]["content"][0]["text"], "Hello");
    let done = data(9)["response"].clone();
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"], json!([data(8)["item"]]));
    assert_eq!(done["usage"]["input_tokens"], 7);
    assert_eq!(done["usage"]["output_tokens"], 2);
    assert_eq!(done["usage"]["total_tokens"], 9);
    for cut in 1..stream.len() {
        assert_eq!(run_stream(&stream, cut, true), reference, "cut at {cut}");
    }
}

#[test]
fn a_stream_cut_by_length_ends_incomplete() {
    let stream = sse(&[
        json!({"choices": [{"delta": {"content": "ab"}}]}),
        json!({"choices": [{"delta": {}, "finish_reason": "length"}]}),
    ]);
    let events = run_stream(&stream, 0, true);
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "response.incomplete");
    assert_eq!(data["response"]["status"], "incomplete");
    assert_eq!(
        data["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    assert_eq!(data["response"]["output"][0]["status"], "incomplete");
}

#[test]
fn tool_calls_split_across_chunks_become_function_call_items() {
    let stream = sse(&[
        json!({"choices": [{"delta": {"content": "Let me look."}}]}),
        json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}}]}),
        json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}}]}),
        json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}}]}),
        json!({"choices": [{"delta": {"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "f", "arguments": "{}"}}]}}]}),
        json!({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}),
    ]);
    let events = run_stream(&stream, 0, true);
    assert_eq!(
        names(&events)[2..],
        [
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    assert_eq!(
        events[8].1["item"],
        json!({"type": "function_call", "id": "fc_abc_0", "call_id": "call_1", "name": "get_weather",
               "arguments": "", "status": "in_progress"})
    );
    assert_eq!(
        events[11].1,
        json!({"type": "response.function_call_arguments.done", "item_id": "fc_abc_0", "output_index": 1,
               "name": "get_weather", "arguments": "{\"city\":\"Paris\"}", "sequence_number": 11})
    );
    let output = &events.last().unwrap().1["response"]["output"];
    assert_eq!(output.as_array().unwrap().len(), 3, "{output}");
    assert_eq!(output[1]["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(output[1]["status"], "completed");
    assert_eq!(output[2]["call_id"], "call_2");
    assert_eq!(output[2]["id"], "fc_abc_1");
}

#[test]
fn a_stream_cut_short_ends_with_response_failed_and_nothing_after() {
    let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n";
    let events = run_stream(stream, 0, true);
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "response.failed");
    assert_eq!(data["response"]["status"], "failed");
    assert_eq!(data["response"]["error"]["code"], "server_error");
    // An engine error frame fails the response too, and nothing follows it.
    let stream = "data: {\"error\":{\"message\":\"boom\"}}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: [DONE]\n\n";
    let events = run_stream(stream, 0, true);
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.in_progress",
            "response.failed"
        ]
    );
    assert_eq!(events[2].1["response"]["error"]["message"], "boom");
}

#[test]
fn the_finished_response_is_kept_by_the_translator() {
    let req = parse(json!({"model": "m", "input": "x"}));
    let mut t = StreamTranslator::new(req.skeleton(ID, 1, "m"));
    t.begin();
    t.feed(
        b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\n",
    );
    assert!(t.finished().is_none(), "not before the end");
    t.feed(b"data: [DONE]\n\n");
    let done = t.finished().expect("finished");
    assert_eq!(done.status, Status::Completed);
    assert_eq!(
        done.output[0],
        Item::Message {
            id: "msg_abc".into(),
            status: Status::Completed,
            role: Role::Assistant,
            content: vec![PartOut::output_text("hi")],
        }
    );
}

#[test]
fn input_items_pages() {
    let req = parse(json!({"model": "m", "input": [
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "user", "content": "c"}
    ]}));
    let items = req.items(ID).unwrap();
    let ids = |p: &Page| {
        let list = p.of(&items).unwrap();
        let v = serde_json::to_value(&list).unwrap();
        (
            list.data
                .iter()
                .map(|i| i.id().to_string())
                .collect::<Vec<_>>(),
            v["first_id"].clone(),
            v["last_id"].clone(),
            list.has_more,
        )
    };
    assert_eq!(
        ids(&Page::default()),
        (
            vec![
                "msg_abc_in2".into(),
                "msg_abc_in1".into(),
                "msg_abc_in0".into()
            ],
            json!("msg_abc_in2"),
            json!("msg_abc_in0"),
            false
        )
    );
    let asc2 = Page::parse(Some("asc"), Some("2"), None).unwrap();
    assert_eq!(
        ids(&asc2),
        (
            vec!["msg_abc_in0".into(), "msg_abc_in1".into()],
            json!("msg_abc_in0"),
            json!("msg_abc_in1"),
            true
        )
    );
    let after = Page::parse(Some("asc"), Some("2"), Some("msg_abc_in1".into())).unwrap();
    assert_eq!(
        ids(&after),
        (
            vec!["msg_abc_in2".into()],
            json!("msg_abc_in2"),
            json!("msg_abc_in2"),
            false
        )
    );
    let list = serde_json::to_value(Page::default().of(&[]).unwrap()).unwrap();
    assert_eq!(
        list,
        json!({"object": "list", "data": [], "first_id": null, "last_id": null, "has_more": false})
    );
    assert!(Page::parse(Some("up"), None, None).is_err());
    assert!(Page::parse(None, Some("0"), None).is_err());
    assert!(Page::parse(None, Some("101"), None).is_err());
    assert!(Page::default().of(&items).is_ok());
    assert!(Page::parse(None, None, Some("nope".into()))
        .unwrap()
        .of(&items)
        .is_err());
}
