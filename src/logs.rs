//! The log hub: keeps the last [`KEEP`] lines of the supervisor's own log (info and up, through a `tracing`
//! layer) and of every engine's output (pushed directly by the engine's output reader, which is cheaper than a
//! tracing event per line), and broadcasts new ones to followers. `GET /logs` reads it
//! (filtered by model, `follow=1` to stream). stderr logging is separate and unchanged (journald reads that).

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Lines kept for `GET /logs` (about 1 MB at most: engine lines are cut at 4 KiB).
pub const KEEP: usize = 2000;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogLine {
    /// When it was kept; written as RFC 3339, UTC, milliseconds, only when the line is read (formatting it for
    /// every engine line was a fifth of the proxy's work per request).
    #[serde(serialize_with = "rfc3339_millis")]
    pub time: SystemTime,
    pub level: &'static str,
    /// `supervisor` or `engine`.
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<Arc<str>>,
    pub message: String,
}

impl LogLine {
    /// `TIME LEVEL [model] message` (engine lines say `engine` before the model).
    pub fn text(&self) -> String {
        let mut s = format!(
            "{} {:5} ",
            crate::store::rfc3339_at(self.time, true),
            self.level
        );
        if self.source == "engine" {
            s += "engine ";
        }
        if let Some(m) = &self.model {
            let _ = write!(s, "[{m}] ");
        }
        s += &self.message;
        s
    }
}

/// Lines are shared between the ring and followers, not copied.
pub type Line = Arc<LogLine>;

pub struct LogHub {
    ring: Mutex<VecDeque<Line>>,
    tx: broadcast::Sender<Line>,
}

impl LogHub {
    fn new() -> Self {
        LogHub {
            ring: Mutex::new(VecDeque::with_capacity(KEEP)),
            tx: broadcast::channel(1024).0,
        }
    }

    pub fn push(&self, line: LogLine) {
        let line = Arc::new(line);
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(line.clone());
        drop(ring);
        let _ = self.tx.send(line);
    }

    /// One line of an engine's output.
    pub fn push_engine(&self, model: &Arc<str>, line: String) {
        self.push(LogLine {
            time: SystemTime::now(),
            level: "INFO",
            source: "engine",
            model: Some(model.clone()),
            message: line,
        });
    }

    /// The last `n` lines kept, oldest first, and a receiver for lines after them.
    pub fn tail(&self, n: usize) -> (Vec<Line>, broadcast::Receiver<Line>) {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        // Subscribed under the lock: no line falls between the tail and the stream.
        let rx = self.tx.subscribe();
        let skip = ring.len().saturating_sub(n);
        (ring.iter().skip(skip).cloned().collect(), rx)
    }
}

/// The process-wide hub.
pub fn hub() -> &'static LogHub {
    static HUB: OnceLock<LogHub> = OnceLock::new();
    HUB.get_or_init(LogHub::new)
}

/// The layer that feeds [`hub`] with the supervisor's own events at info and up.
pub struct HubLayer;

impl<S: Subscriber> Layer<S> for HubLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > Level::INFO || !meta.target().starts_with("dmr_supervisor") {
            return;
        }
        let mut v = Fields::default();
        event.record(&mut v);
        hub().push(LogLine {
            time: SystemTime::now(),
            level: level_name(*meta.level()),
            source: "supervisor",
            model: v.model.map(Arc::from),
            message: v.message + &v.rest,
        });
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    model: Option<String>,
    /// Other fields, as ` key=value`.
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "model" => self.model = Some(value.to_string()),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "model" => self.model = Some(format!("{value:?}").trim_matches('"').to_string()),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

fn rfc3339_millis<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::store::rfc3339_at(*t, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn the_layer_keeps_supervisor_info_and_engine_lines_with_their_model() {
        let subscriber = tracing_subscriber::registry().with(HubLayer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "dmr_supervisor::test", model = "ai/x", port = 5, "engine ready");
            tracing::debug!(target: "dmr_supervisor::test", "not kept: debug");
            tracing::info!(target: "hyper", "not kept: another crate");
            tracing::debug!(target: "engine", model = %"ai/y", "not kept: engine lines come directly");
        });
        hub().push_engine(&Arc::from("ai/x"), "llama_model_load: loaded".into());
        let (lines, _) = hub().tail(KEEP);
        let mine: Vec<_> = lines
            .iter()
            .filter(|l| l.model.as_deref() == Some("ai/x"))
            .collect();
        assert_eq!(mine.len(), 2, "{lines:?}");
        assert_eq!(
            (mine[0].source, mine[0].message.as_str()),
            ("supervisor", "engine ready port=5")
        );
        assert_eq!((mine[1].source, mine[1].level), ("engine", "INFO"));
        assert!(mine[1]
            .text()
            .contains(" engine [ai/x] llama_model_load: loaded"));
        assert!(!lines.iter().any(|l| l.message.starts_with("not kept")));
        assert!(!lines.iter().any(|l| l.model.as_deref() == Some("ai/y")));
    }
}
