//! Prometheus metrics, in the classic text exposition format (0.0.4) so that each engine's own `/metrics` can be
//! appended with a `model` label added. Counters and histograms live here behind one mutex (a few map updates per
//! request); gauges (runners, queue, memory) are read at scrape time by `proxy::metrics`. Label values are
//! bounded: routes are route templates, models are resolved store names.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Histogram buckets in seconds: 1 ms to 5 minutes (requests, first bytes, loads).
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Non-cumulative counts per bucket, plus one for +Inf.
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let i = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// (route, dialect, model, status) → requests.
    requests: BTreeMap<(String, &'static str, String, u16), u64>,
    /// (route, dialect) → seconds to the response head.
    latency: BTreeMap<(String, &'static str), Histogram>,
    /// (route, dialect) → seconds to the first body byte of a streamed answer (time to first token).
    first_byte: BTreeMap<(String, &'static str), Histogram>,
    /// (model, result) → loads.
    loads: BTreeMap<(String, &'static str), u64>,
    /// model → seconds from spawn to ready.
    load_seconds: BTreeMap<String, Histogram>,
    /// model → runners stopped to make room for another load.
    evictions: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A poisoned lock only means a panic mid-update of a counter; the numbers are still usable.
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn request(
        &self,
        route: &str,
        dialect: &'static str,
        model: &str,
        status: u16,
        head: Duration,
    ) {
        self.with(|m| {
            *m.requests
                .entry((route.to_string(), dialect, model.to_string(), status))
                .or_default() += 1;
            m.latency
                .entry((route.to_string(), dialect))
                .or_default()
                .observe(head.as_secs_f64());
        });
    }

    pub fn first_byte(&self, route: &str, dialect: &'static str, after: Duration) {
        self.with(|m| {
            m.first_byte
                .entry((route.to_string(), dialect))
                .or_default()
                .observe(after.as_secs_f64())
        });
    }

    /// A load ended: `result` is `ok`, `failed` or `oom`; `took` is set for loads that finished.
    pub fn load(&self, model: &str, result: &'static str, took: Option<Duration>) {
        self.with(|m| {
            *m.loads.entry((model.to_string(), result)).or_default() += 1;
            if let Some(t) = took {
                m.load_seconds
                    .entry(model.to_string())
                    .or_default()
                    .observe(t.as_secs_f64());
            }
        });
    }

    pub fn eviction(&self, model: &str) {
        self.with(|m| *m.evictions.entry(model.to_string()).or_default() += 1);
    }

    /// The counters and histograms, in the text format.
    pub fn render(&self, out: &mut String) {
        self.with(|m| {
            family(out, "dmr_requests_total", "counter", "HTTP requests by route template, dialect, model and status.");
            for ((route, dialect, model, status), n) in &m.requests {
                let labels = [("route", route.as_str()), ("dialect", dialect), ("model", model.as_str()), ("status", &status.to_string())];
                sample(out, "dmr_requests_total", &labels, *n as f64);
            }
            histograms(out, "dmr_request_duration_seconds", "Seconds from request to response head.", &m.latency, |(r, d)| vec![("route", r.clone()), ("dialect", d.to_string())]);
            histograms(out, "dmr_stream_first_byte_seconds", "Seconds from request to the first body byte of a streamed answer (time to first token).", &m.first_byte, |(r, d)| vec![("route", r.clone()), ("dialect", d.to_string())]);
            family(out, "dmr_model_loads_total", "counter", "Engine loads by model and result (ok, failed, oom).");
            for ((model, result), n) in &m.loads {
                sample(out, "dmr_model_loads_total", &[("model", model), ("result", result)], *n as f64);
            }
            histograms(out, "dmr_model_load_seconds", "Seconds from engine spawn to ready.", &m.load_seconds, |model| vec![("model", model.clone())]);
            family(out, "dmr_evictions_total", "counter", "Idle runners stopped to make room for another load, by model.");
            for (model, n) in &m.evictions {
                sample(out, "dmr_evictions_total", &[("model", model)], *n as f64);
            }
        });
    }
}

/// `# HELP` and `# TYPE` lines.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One sample line.
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

fn histograms<K>(
    out: &mut String,
    name: &str,
    help: &str,
    map: &BTreeMap<K, Histogram>,
    labels: impl Fn(&K) -> Vec<(&'static str, String)>,
) {
    family(out, name, "histogram", help);
    for (key, h) in map {
        let base = labels(key);
        let mut cumulative = 0;
        for (i, count) in h.counts.iter().enumerate() {
            cumulative += count;
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let mut l: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
            l.push(("le", &le));
            sample(out, &format!("{name}_bucket"), &l, cumulative as f64);
        }
        let l: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
        sample(out, &format!("{name}_sum"), &l, h.sum);
        sample(out, &format!("{name}_count"), &l, h.count as f64);
    }
}

/// Label values escape `\`, `"` and newlines.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// An engine's own exposition, relabelled: every sample gets `extra` labels; `# HELP`/`# TYPE` lines are kept once
/// per metric across engines (`seen`), so that several engines' metrics form one valid exposition.
pub fn relabel(
    text: &str,
    extra: &[(&str, &str)],
    seen: &mut std::collections::BTreeSet<String>,
    out: &mut String,
) {
    let added: String = extra
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",");
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            // "# HELP name ..." / "# TYPE name kind": once per name and kind of line.
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if seen.insert(format!("{kind} {name}")) {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        match line.find(['{', ' ']) {
            Some(i) if line.as_bytes()[i] == b'{' => {
                let inner_empty = line[i + 1..].starts_with('}');
                let sep = if inner_empty { "" } else { "," };
                let _ = writeln!(out, "{}{{{added}{sep}{}", &line[..i], &line[i + 1..]);
            }
            Some(i) => {
                let _ = writeln!(out, "{}{{{added}}}{}", &line[..i], &line[i..]);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_in_the_text_format() {
        let m = Metrics::default();
        m.request(
            "/v1/chat/completions",
            "openai",
            "ai/tiny:latest",
            200,
            Duration::from_millis(3),
        );
        m.request(
            "/v1/chat/completions",
            "openai",
            "ai/tiny:latest",
            200,
            Duration::from_millis(30),
        );
        m.load("ai/tiny:latest", "ok", Some(Duration::from_millis(20)));
        m.eviction("ai/a\"b");
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("# TYPE dmr_requests_total counter\n"));
        assert!(out.contains(
            "dmr_requests_total{route=\"/v1/chat/completions\",dialect=\"openai\",model=\"ai/tiny:latest\",status=\"200\"} 2\n"
        ));
        assert!(out.contains("dmr_request_duration_seconds_bucket{route=\"/v1/chat/completions\",dialect=\"openai\",le=\"0.005\"} 1\n"));
        assert!(out.contains("dmr_request_duration_seconds_bucket{route=\"/v1/chat/completions\",dialect=\"openai\",le=\"+Inf\"} 2\n"));
        assert!(out.contains("dmr_request_duration_seconds_count{route=\"/v1/chat/completions\",dialect=\"openai\"} 2\n"));
        assert!(out.contains("dmr_model_loads_total{model=\"ai/tiny:latest\",result=\"ok\"} 1\n"));
        assert!(out.contains("dmr_evictions_total{model=\"ai/a\\\"b\"} 1\n"));
    }

    #[test]
    fn engine_metrics_get_the_model_label_and_one_header_per_metric() {
        let engine = "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n\
                      # TYPE llamacpp:prompt_tokens_total counter\n\
                      llamacpp:prompt_tokens_total 12\n\
                      llamacpp:requests_processing{slot=\"0\"} 1\n\
                      x{} 3\n";
        let mut seen = Default::default();
        let mut out = String::new();
        relabel(engine, &[("model", "a")], &mut seen, &mut out);
        relabel(engine, &[("model", "b")], &mut seen, &mut out);
        assert_eq!(
            out.matches("# TYPE llamacpp:prompt_tokens_total counter")
                .count(),
            1
        );
        assert!(out.contains("llamacpp:prompt_tokens_total{model=\"a\"} 12\n"));
        assert!(out.contains("llamacpp:prompt_tokens_total{model=\"b\"} 12\n"));
        assert!(out.contains("llamacpp:requests_processing{model=\"b\",slot=\"0\"} 1\n"));
        assert!(out.contains("x{model=\"a\"} 3\n"));
    }
}
