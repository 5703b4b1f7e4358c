//! `dmr-supervisor bench MODEL`: streamed chats at concurrency 1, 2, 4 and 8 (or those asked for), as DMR's bench
//! does: time to first token and tokens per second per request, the level's total tokens per second, and beside
//! them the engine's own rate (llama-server's `timings.predicted_per_second`). It warms the model first, so the
//! load is not counted. Measuring is `run`; the figures and the table are pure.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

use crate::api::openai::{ChatMessage, ChatRequest, SseDecoder, SseItem, StreamOptions};

/// What one streamed chat took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// From sending the request to the first token.
    pub ttft: Duration,
    /// From sending the request to the last byte.
    pub total: Duration,
    pub tokens: u64,
    /// The engine's own generation rate, when it reports one.
    pub engine_tokens_per_s: Option<f64>,
}

impl Sample {
    /// Generation rate seen by the client: tokens after the first, over the time after the first.
    fn tokens_per_s(&self) -> f64 {
        let decode = (self.total - self.ttft).as_secs_f64();
        if self.tokens <= 1 || decode <= 0.0 {
            return 0.0;
        }
        (self.tokens - 1) as f64 / decode
    }
}

/// One concurrency level's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Level {
    pub concurrency: usize,
    pub requests: usize,
    pub ttft_ms_p50: f64,
    pub ttft_ms_p90: f64,
    /// Per request, the median.
    pub tokens_per_s_p50: f64,
    /// All tokens of the level over its wall time.
    pub total_tokens_per_s: f64,
    /// The engine's own per-request rate, the median; `None` when it reports none.
    pub engine_tokens_per_s_p50: Option<f64>,
}

/// The figures of a level from its samples and its wall time.
pub fn level(concurrency: usize, samples: &[Sample], wall: Duration) -> Level {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let ttft: Vec<f64> = samples.iter().map(|s| ms(s.ttft)).collect();
    let rates: Vec<f64> = samples.iter().map(Sample::tokens_per_s).collect();
    let engine: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.engine_tokens_per_s)
        .collect();
    let tokens: u64 = samples.iter().map(|s| s.tokens).sum();
    Level {
        concurrency,
        requests: samples.len(),
        ttft_ms_p50: percentile(&ttft, 0.5),
        ttft_ms_p90: percentile(&ttft, 0.9),
        tokens_per_s_p50: percentile(&rates, 0.5),
        total_tokens_per_s: if wall.is_zero() {
            0.0
        } else {
            tokens as f64 / wall.as_secs_f64()
        },
        engine_tokens_per_s_p50: (!engine.is_empty()).then(|| percentile(&engine, 0.5)),
    }
}

/// The nearest-rank percentile `q` (0..1) of `values`; 0 for none.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The levels as a Markdown table, for people.
pub fn table(model: &str, tokens: u32, levels: &[Level]) -> String {
    let mut out = format!(
        "{model}: streamed chats of {tokens} tokens\n\n\
         | concurrency | requests | TTFT p50 (ms) | TTFT p90 (ms) | tokens/s per request (p50) | total tokens/s | engine's tokens/s per request (p50) |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    );
    for l in levels {
        let engine = l
            .engine_tokens_per_s_p50
            .map_or("–".to_string(), |e| format!("{e:.1}"));
        out += &format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {engine} |\n",
            l.concurrency,
            l.requests,
            l.ttft_ms_p50,
            l.ttft_ms_p90,
            l.tokens_per_s_p50,
            l.total_tokens_per_s
        );
    }
    out
}

/// The chat each request sends: `tokens` generated whatever the model would stop at.
fn request(model: &str, tokens: u32) -> ChatRequest {
    ChatRequest {
        model: model.to_string(),
        messages: vec![ChatMessage::text(
            "user",
            "Write a long story about a lighthouse keeper.",
        )],
        stream: true,
        stream_options: Some(StreamOptions {
            include_usage: true,
        }),
        max_tokens: Some(i64::from(tokens)),
        temperature: Some(0.0),
        ignore_eos: Some(true),
        ..Default::default()
    }
}

/// One streamed chat against `url`.
async fn one(http: &reqwest::Client, url: &str, body: &ChatRequest) -> Result<Sample, String> {
    let start = Instant::now();
    let resp = http
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        return Err(super::error_message(&text).unwrap_or_else(|| status.to_string()));
    }
    let mut stream = resp.bytes_stream();
    let mut sse = SseDecoder::default();
    let (mut ttft, mut tokens, mut counted, mut engine) = (None, 0u64, None, None);
    while let Some(chunk) = stream.next().await {
        for item in sse.push(&chunk.map_err(|e| e.to_string())?) {
            match item {
                SseItem::Chunk(c) => {
                    if ttft.is_none() && !c.text().is_empty() {
                        ttft = Some(start.elapsed());
                    }
                    if c.choices.first().is_some_and(|ch| ch.delta.is_some()) {
                        tokens += 1;
                    }
                    if let Some(u) = c.usage {
                        counted = Some(u.completion_tokens);
                    }
                    if let Some(t) = c.timings.filter(|t| t.predicted_per_second > 0.0) {
                        engine = Some(t.predicted_per_second);
                    }
                }
                SseItem::Error(message) => return Err(message),
                SseItem::Done => {}
            }
        }
    }
    let total = start.elapsed();
    Ok(Sample {
        ttft: ttft.unwrap_or(total),
        total,
        tokens: counted.unwrap_or(tokens),
        engine_tokens_per_s: engine,
    })
}

/// Warms `model` with one short chat, then runs `per_level` chats of `tokens` at each concurrency of `levels`.
pub async fn run(
    http: &reqwest::Client,
    url: &str,
    model: &str,
    tokens: u32,
    levels: &[usize],
    per_level: usize,
) -> Result<Vec<Level>, String> {
    one(http, url, &request(model, 4))
        .await
        .map_err(|e| format!("warming {model}: {e}"))?;
    let body = request(model, tokens);
    let mut out = Vec::new();
    for &c in levels {
        let n = per_level.max(c);
        let started = Instant::now();
        let mut pending =
            futures_util::stream::iter((0..n).map(|_| one(http, url, &body))).buffer_unordered(c);
        let mut samples = Vec::with_capacity(n);
        while let Some(s) = pending.next().await {
            samples.push(s?);
        }
        out.push(level(c, &samples, started.elapsed()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ttft_ms: u64, total_ms: u64, tokens: u64, engine: Option<f64>) -> Sample {
        Sample {
            ttft: Duration::from_millis(ttft_ms),
            total: Duration::from_millis(total_ms),
            tokens,
            engine_tokens_per_s: engine,
        }
    }

    #[test]
    fn a_level_takes_medians_and_the_total_rate() {
        let s = [
            sample(10, 110, 11, Some(120.0)),
            sample(20, 220, 21, Some(100.0)),
            sample(30, 130, 11, None),
        ];
        let l = level(2, &s, Duration::from_millis(250));
        assert_eq!((l.concurrency, l.requests), (2, 3));
        assert_eq!((l.ttft_ms_p50, l.ttft_ms_p90), (20.0, 30.0));
        // 10 tokens after the first in 100 ms, 20 in 200 ms, 10 in 100 ms: 100 tokens/s each.
        assert!((l.tokens_per_s_p50 - 100.0).abs() < 1e-9);
        assert!((l.total_tokens_per_s - 43.0 / 0.25).abs() < 1e-9);
        assert_eq!(l.engine_tokens_per_s_p50, Some(100.0));
        assert_eq!(
            level(1, &[sample(5, 5, 1, None)], Duration::ZERO).engine_tokens_per_s_p50,
            None
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&v, 0.5), 2.0);
        assert_eq!(percentile(&v, 0.9), 4.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn the_table_has_a_row_per_level() {
        let l = level(
            4,
            &[sample(10, 110, 11, Some(99.5))],
            Duration::from_millis(110),
        );
        let t = table("ai/tiny", 64, &[l]);
        assert!(t.starts_with("ai/tiny: streamed chats of 64 tokens"));
        assert!(
            t.contains("| 4 | 1 | 10.0 | 10.0 | 100.0 | 100.0 | 99.5 |"),
            "{t}"
        );
    }
}
