//! Property tests for every translator: arbitrary bytes and arbitrary JSON in, never a panic out; and for
//! well-formed engine streams, the output keeps each dialect's grammar however the bytes are cut.

use dmr_supervisor::api::anthropic::{self, MessagesIn, Purpose};
use dmr_supervisor::api::ollama::{self, Call, ChatIn, EmbedIn, GenerateIn};
use dmr_supervisor::api::openai::{ChatResponse, SseDecoder};
use dmr_supervisor::api::responses::{self, ResponsesIn};
use dmr_supervisor::api::StreamTranslate;
use proptest::prelude::*;
use serde_json::{json, Value};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        prop_oneof![
            ".*",
            Just("user".to_string()),
            Just("assistant".to_string()),
            Just("text".to_string()),
            Just("tool_use".to_string()),
            Just("json".to_string()),
            Just("5m".to_string())
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop_oneof![
            Just("model".to_string()),
            Just("messages".to_string()),
            Just("role".to_string()),
            Just("content".to_string()),
            Just("type".to_string()),
            Just("text".to_string()),
            Just("max_tokens".to_string()),
            Just("tools".to_string()),
            Just("tool_choice".to_string()),
            Just("system".to_string()),
            Just("input".to_string()),
            Just("options".to_string()),
            Just("keep_alive".to_string()),
            Just("format".to_string()),
            Just("images".to_string()),
            "[a-z_]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every request translator on one body: parse, then translate; errors are fine, panics are not.
fn translate_everything(body: &[u8]) {
    if let Ok(m) = serde_json::from_slice::<MessagesIn>(body) {
        let _ = m.to_openai(Purpose::Generate);
        let _ = m.to_openai(Purpose::CountTokens);
    }
    if let Ok(c) = serde_json::from_slice::<ChatIn>(body) {
        let _ = c.to_openai();
        let _ = c.wishes();
    }
    if let Ok(g) = serde_json::from_slice::<GenerateIn>(body) {
        let _ = g.to_openai();
        let _ = g.wishes();
    }
    if let Ok(e) = serde_json::from_slice::<EmbedIn>(body) {
        let _ = e.to_openai();
        let _ = e.wishes();
    }
    if let Ok(r) = serde_json::from_slice::<ChatResponse>(body) {
        let _ = anthropic::from_openai(&r, "m");
        let _ = responses::from_chat(&r, responses_skeleton());
    }
    if let Ok(r) = serde_json::from_slice::<ResponsesIn>(body) {
        let _ = r.check();
        if let Ok(items) = r.items("resp_x") {
            let _ = r.to_chat(&items);
        }
        let _ = r.skeleton("resp_x", 0, "m");
    }
}

fn responses_skeleton() -> responses::ResponseObject {
    let req: ResponsesIn = serde_json::from_str(r#"{"model":"m","input":"x"}"#).expect("a request");
    req.skeleton("resp_x", 1, "m")
}

fn translators() -> Vec<Box<dyn StreamTranslate>> {
    vec![
        Box::new(anthropic::StreamTranslator::new("m")),
        Box::new(ollama::StreamTranslator::new(Call::Chat, "m", "t", 0)),
        Box::new(ollama::StreamTranslator::new(Call::Generate, "m", "t", 0)),
        Box::new(responses::StreamTranslator::new(responses_skeleton())),
    ]
}

/// Feeds `bytes` cut at `cuts` to every stream translator, then ends the stream; returns each one's output.
fn stream_everything(bytes: &[u8], cuts: &[usize], fail: bool) -> Vec<Vec<u8>> {
    let mut outs = Vec::new();
    for mut t in translators() {
        let mut out: Vec<u8> = t.begin().concat();
        let mut rest = bytes;
        for &c in cuts {
            let (head, tail) = rest.split_at(c.min(rest.len()));
            out.extend(t.feed(head).concat());
            rest = tail;
        }
        out.extend(t.feed(rest).concat());
        out.extend(if fail { t.fail("boom") } else { t.finish(1) }.concat());
        outs.push(out);
    }
    outs
}

/// How many items the SSE decoder finds, fed whole and fed in pieces: the cut must not matter.
fn decode_counts(bytes: &[u8], piece: usize) -> (usize, usize) {
    let whole = SseDecoder::default().push(bytes).len();
    let mut d = SseDecoder::default();
    let cut: usize = bytes.chunks(piece.max(1)).map(|p| d.push(p).len()).sum();
    (whole, cut)
}

fn arb_chunk() -> impl Strategy<Value = Value> {
    let text = prop_oneof!["[a-z \\n]{0,6}", "\\PC{0,4}"];
    prop_oneof![
        text.clone()
            .prop_map(|t| json!({"choices": [{"delta": {"content": t}}]})),
        text.clone()
            .prop_map(|t| json!({"choices": [{"delta": {"reasoning_content": t}}]})),
        (0usize..3, proptest::option::of("[a-z]{1,4}"), text.clone()).prop_map(|(i, id, args)| {
            json!({"choices": [{"delta": {"tool_calls": [{"index": i, "id": id, "function": {"name": "f", "arguments": args}}]}}]})
        }),
        prop_oneof![Just("stop"), Just("length"), Just("tool_calls")]
            .prop_map(|r| json!({"choices": [{"delta": {}, "finish_reason": r}]})),
        (0u64..100, 0u64..100).prop_map(|(p, c)| {
            json!({"choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c}})
        }),
    ]
}

fn sse(chunks: &[Value], done: bool) -> Vec<u8> {
    let mut s = String::new();
    for c in chunks {
        s.push_str(&format!("data: {c}\n\n"));
    }
    if done {
        s.push_str("data: [DONE]\n\n");
    }
    s.into_bytes()
}

/// Checks the Anthropic grammar: message_start, then blocks opened and closed in order (deltas only inside an
/// open block), then message_delta + message_stop when the stream is `complete` (and no error event anywhere), or
/// one final error event when it is not.
fn check_anthropic_grammar(out: &[u8], complete: bool) -> Result<(), String> {
    let text = std::str::from_utf8(out).map_err(|e| e.to_string())?;
    let mut open: Option<u64> = None;
    let mut next = 0u64;
    let mut names = Vec::new();
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let (name, data) = event.split_once('\n').ok_or("event without data")?;
        let name = name.strip_prefix("event: ").ok_or("no event line")?;
        let data: Value = serde_json::from_str(data.strip_prefix("data: ").ok_or("no data line")?)
            .map_err(|e| e.to_string())?;
        if data["type"] != name {
            return Err(format!("event {name} carries {}", data["type"]));
        }
        match name {
            "content_block_start" => {
                if open.is_some() || data["index"] != next {
                    return Err(format!("bad start {data} (open {open:?}, next {next})"));
                }
                open = Some(next);
                next += 1;
            }
            "content_block_delta" if open != data["index"].as_u64() => {
                return Err(format!("delta outside its block: {data}"));
            }
            "content_block_stop" => {
                if open != data["index"].as_u64() {
                    return Err(format!("stop of a block not open: {data}"));
                }
                open = None;
            }
            _ => {}
        }
        names.push(name.to_string());
    }
    let names: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| *n != "ping")
        .collect();
    if names.first() != Some(&"message_start") {
        return Err(format!("first event {:?}", names.first()));
    }
    let errors = names.iter().filter(|n| **n == "error").count();
    match names.as_slice() {
        [.., "message_delta", "message_stop"] if complete && open.is_none() && errors == 0 => {
            Ok(())
        }
        [.., "error"] if !complete && errors == 1 => Ok(()),
        other => Err(format!(
            "bad ending for a {} stream: {:?}",
            if complete { "complete" } else { "truncated" },
            &other[other.len().saturating_sub(3)..]
        )),
    }
}

/// Checks the Responses grammar: every event's `event:` line is its `type`; sequence numbers count from 0;
/// `response.created`, `response.in_progress`, then items opened (`output_item.added`, at the next output index)
/// and closed (`output_item.done`) one at a time, text deltas only inside an open message's open part, argument
/// deltas only inside an open function call; the text deltas make each `output_text.done` and the final
/// response's text, which is `sent`; a `complete` stream ends with `response.completed` or `response.incomplete`
/// and nothing open, a truncated one with `response.failed`; nothing follows the end.
fn check_responses_grammar(out: &[u8], complete: bool, sent: &str) -> Result<(), String> {
    let text = std::str::from_utf8(out).map_err(|e| e.to_string())?;
    let mut events = Vec::new();
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let (name, data) = event.split_once('\n').ok_or("event without data")?;
        let name = name.strip_prefix("event: ").ok_or("no event line")?;
        let data: Value = serde_json::from_str(data.strip_prefix("data: ").ok_or("no data line")?)
            .map_err(|e| e.to_string())?;
        if data["type"] != name {
            return Err(format!("event {name} carries {}", data["type"]));
        }
        if data["sequence_number"] != events.len() as u64 {
            return Err(format!(
                "event {} numbered {}",
                events.len(),
                data["sequence_number"]
            ));
        }
        events.push((name.to_string(), data));
    }
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    if names.get(..2) != Some(&["response.created", "response.in_progress"][..]) {
        return Err(format!("begins with {:?}", &names[..names.len().min(2)]));
    }
    // (output index, kind, part open)
    let mut open: Option<(u64, String, bool)> = None;
    let mut next = 0u64;
    let mut message_text = String::new();
    let mut all_text = String::new();
    let last = events.len() - 1;
    for (i, (name, data)) in events.iter().enumerate().skip(2) {
        let index = data["output_index"].as_u64();
        let ends = matches!(
            name.as_str(),
            "response.completed" | "response.incomplete" | "response.failed"
        );
        if ends != (i == last) {
            return Err(format!("{name} at {i} of {last}"));
        }
        match name.as_str() {
            "response.output_item.added" => {
                if open.is_some() || index != Some(next) {
                    return Err(format!(
                        "item added at {index:?} while {open:?} open, next {next}"
                    ));
                }
                open = Some((
                    next,
                    data["item"]["type"].as_str().unwrap_or("").to_string(),
                    false,
                ));
                next += 1;
                message_text.clear();
            }
            "response.content_part.added" => match &mut open {
                Some((at, kind, part)) if Some(*at) == index && kind == "message" && !*part => {
                    *part = true
                }
                _ => return Err(format!("part added outside an open message: {data}")),
            },
            "response.output_text.delta" => match &open {
                Some((at, kind, true)) if Some(*at) == index && kind == "message" => {
                    let delta = data["delta"].as_str().unwrap_or_default();
                    message_text.push_str(delta);
                    all_text.push_str(delta);
                }
                _ => return Err(format!("text delta outside an open part: {data}")),
            },
            "response.output_text.done" => {
                if data["text"] != message_text.as_str() {
                    return Err(format!(
                        "text done {} after deltas {message_text:?}",
                        data["text"]
                    ));
                }
            }
            "response.content_part.done" => match &mut open {
                Some((at, _, part)) if Some(*at) == index && *part => *part = false,
                _ => return Err(format!("part done while none open: {data}")),
            },
            "response.function_call_arguments.delta" | "response.function_call_arguments.done" => {
                match &open {
                    Some((at, kind, _)) if Some(*at) == index && kind == "function_call" => {}
                    _ => return Err(format!("{name} outside an open call: {data}")),
                }
            }
            "response.output_item.done" => match &open {
                Some((at, _, false)) if Some(*at) == index => open = None,
                _ => return Err(format!("item done while {open:?} open: {data}")),
            },
            "response.completed" | "response.incomplete" => {
                if !complete || open.is_some() {
                    return Err(format!(
                        "{name} for a truncated stream or with {open:?} open"
                    ));
                }
                let output = data["response"]["output"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if output.len() as u64 != next {
                    return Err(format!(
                        "{} items in the response, {next} streamed",
                        output.len()
                    ));
                }
                let final_text: String = output
                    .iter()
                    .filter(|o| o["type"] == "message")
                    .filter_map(|o| o["content"][0]["text"].as_str())
                    .collect();
                if final_text != all_text || all_text != sent {
                    return Err(format!(
                        "final {final_text:?}, streamed {all_text:?}, sent {sent:?}"
                    ));
                }
            }
            "response.failed" => {
                if complete {
                    return Err("a complete stream failed".into());
                }
            }
            other => return Err(format!("unknown event {other}")),
        }
    }
    Ok(())
}

/// The text of every `text_delta` in an Anthropic stream.
fn anthropic_text(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    text.split("\n\n")
        .filter_map(|e| e.split_once("\ndata: "))
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter(|d| d["delta"]["type"] == "text_delta")
        .map(|d| d["delta"]["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `PROPTEST_CASES` scales the runs (`scripts/fuzz`).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    #[test]
    fn arbitrary_json_never_panics_a_request_translator(v in arb_json()) {
        translate_everything(&serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn arbitrary_bytes_never_panic_anything(bytes in prop::collection::vec(any::<u8>(), 0..512),
                                            cuts in prop::collection::vec(0usize..64, 0..8),
                                            fail in any::<bool>()) {
        translate_everything(&bytes);
        stream_everything(&bytes, &cuts, fail);
        // SSE-shaped garbage reaches the chunk parser too.
        let mut framed = b"data: ".to_vec();
        framed.extend(&bytes);
        framed.extend(b"\n\n");
        stream_everything(&framed, &cuts, fail);
        let (whole, cut) = decode_counts(&framed, cuts.first().copied().unwrap_or(1));
        prop_assert_eq!(whole, cut);
    }

    #[test]
    fn well_formed_streams_keep_each_dialects_grammar(chunks in prop::collection::vec(arb_chunk(), 0..12),
                                                     done in any::<bool>(),
                                                     cuts in prop::collection::vec(0usize..40, 0..10)) {
        let bytes = sse(&chunks, done);
        let outs = stream_everything(&bytes, &cuts, false);
        // An engine's stream is complete with `[DONE]` or a finish_reason; a complete one never ends in an error.
        let complete = done || chunks.iter().any(|c| c["choices"][0].get("finish_reason").is_some());
        check_anthropic_grammar(&outs[0], complete).map_err(TestCaseError::fail)?;
        // Every piece of content reaches the client, in order.
        let sent: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
        prop_assert_eq!(anthropic_text(&outs[0]), sent.clone());
        check_responses_grammar(&outs[3], complete, &sent).map_err(TestCaseError::fail)?;
        // However the engine's bytes were cut, the Responses events are the same bytes.
        let whole = stream_everything(&bytes, &[], false);
        prop_assert_eq!(&whole[3], &outs[3]);
        for (ndjson, field) in outs[1..3].iter().zip([["message", "content"], ["response", ""]]) {
            let text = std::str::from_utf8(ndjson).unwrap();
            let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            // Ollama's dialect has no truncation marker: the stream ends with its `done` line, never an error.
            let last = lines.last().unwrap();
            prop_assert!(last["done"] == true && last.get("error").is_none(), "{}", last);
            prop_assert!(lines[..lines.len() - 1].iter().all(|l| l["done"] == false && l.get("error").is_none()));
            let got: String = lines.iter().filter_map(|l| {
                let v = &l[field[0]];
                if field[1].is_empty() { v.as_str() } else { v[field[1]].as_str() }
            }).collect();
            prop_assert_eq!(got, sent.clone());
        }
    }
}
