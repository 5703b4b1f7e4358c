//! The node's load in the names cluster routers read (vLLM's): requests running and waiting and KV-cache usage
//! per model and for the node, written into `/metrics` as `vllm:` series and, when a request asks with
//! `endpoint-load-metrics-format: text|json`, as vLLM's ORCA `endpoint-load-metrics` response header.
//!
//! Gathering (`measure`) reads the scheduler's snapshot and asks each ready engine for its KV-cache use
//! (`Engine::kv_usage_path`); everything after that is pure. Engines whose own `/metrics` has these series (vLLM)
//! are not written again: theirs pass through (`proxy::metrics`), and only the node totals count them.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::metrics::{family, sample};

/// How long one engine may take to say how its KV cache is used before it is left out.
const KV_TIMEOUT: Duration = Duration::from_millis(500);

/// One runner's load.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelLoad {
    /// The model's name, as `model_name`.
    pub name: String,
    /// Requests being served.
    pub running: u32,
    /// Requests waiting: for its load, for memory, or for a slot past `max_in_flight`.
    pub waiting: usize,
    /// Share of its KV cache in use (0..1), when its engine says.
    pub kv: Option<f64>,
    /// The context it was started with (KV-cache cells; 0: the engine's default).
    pub context_size: u32,
    /// Its engine writes the `vllm:` series itself.
    pub engine_reports: bool,
}

/// The node's load: every runner's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeLoad {
    pub models: Vec<ModelLoad>,
}

/// The block size reported in `vllm:cache_config_info`. llama.cpp keeps its cache per token and reuses any prefix,
/// so it has no block of its own; the endpoint picker sizes its prefix index by this figure (up to 256 blocks of a
/// prompt), and vLLM's default of 16 lets it see 16 times more of a prompt than one token per block would.
pub const BLOCK_TOKENS: u32 = 16;

/// The request header that asks for a load report, and the response header that carries it (vLLM's ORCA).
pub const FORMAT_HEADER: &str = "endpoint-load-metrics-format";
pub const REPORT_HEADER: &str = "endpoint-load-metrics";

/// The `vllm:` series written here (checked against the routers' sources in docs/scale-out.md).
pub const RUNNING: &str = "vllm:num_requests_running";
pub const WAITING: &str = "vllm:num_requests_waiting";
pub const KV_USAGE: &str = "vllm:kv_cache_usage_perc";
/// vLLM's name for the same figure before v0.10; AIBrix and older endpoint pickers read it.
pub const GPU_CACHE_USAGE: &str = "vllm:gpu_cache_usage_perc";
pub const CACHE_CONFIG: &str = "vllm:cache_config_info";
pub const LORA: &str = "vllm:lora_requests_info";

impl NodeLoad {
    /// Requests running on the node.
    pub fn running(&self) -> u32 {
        self.models.iter().map(|m| m.running).sum()
    }

    /// Requests waiting on the node.
    pub fn waiting(&self) -> usize {
        self.models.iter().map(|m| m.waiting).sum()
    }

    /// The fullest KV cache on the node (0 when none is known): a router placing one more request on this node
    /// should see the cache most likely to refuse it.
    pub fn kv(&self) -> f64 {
        self.models.iter().filter_map(|m| m.kv).fold(0.0, f64::max)
    }

    /// The `vllm:` families: for each family the node's total first (no `model_name` label: what a router that
    /// reads one sample per node takes), then one sample per model whose engine does not write its own. The
    /// families are added to `seen` so that engines' own `# HELP`/`# TYPE` lines for them are not repeated.
    pub fn render(&self, now_unix: f64, out: &mut String, seen: &mut BTreeSet<String>) {
        let ours = || self.models.iter().filter(|m| !m.engine_reports);
        let mut head = |out: &mut String, name: &str, kind: &str, help: &str| {
            family(out, name, kind, help);
            seen.insert(format!("HELP {name}"));
            seen.insert(format!("TYPE {name}"));
        };
        head(
            out,
            RUNNING,
            "gauge",
            "Requests being served (node total without model_name).",
        );
        sample(out, RUNNING, &[], f64::from(self.running()));
        for m in ours() {
            sample(
                out,
                RUNNING,
                &[("model_name", &m.name)],
                f64::from(m.running),
            );
        }
        head(
            out,
            WAITING,
            "gauge",
            "Requests waiting for a load, memory or a slot (node total without model_name).",
        );
        sample(out, WAITING, &[], self.waiting() as f64);
        for m in ours() {
            sample(out, WAITING, &[("model_name", &m.name)], m.waiting as f64);
        }
        for (name, help) in [
            (KV_USAGE, "KV-cache usage, 0..1 (node: the fullest cache)."),
            (
                GPU_CACHE_USAGE,
                "KV-cache usage, 0..1 (vLLM's name before v0.10).",
            ),
        ] {
            head(out, name, "gauge", help);
            sample(out, name, &[], self.kv());
            for m in ours() {
                if let Some(kv) = m.kv {
                    sample(out, name, &[("model_name", &m.name)], kv);
                }
            }
        }
        head(
            out,
            CACHE_CONFIG,
            "gauge",
            "KV-cache layout per model, in blocks of 16 tokens.",
        );
        for m in ours() {
            let blocks = (m.context_size / BLOCK_TOKENS).to_string();
            let block = BLOCK_TOKENS.to_string();
            sample(
                out,
                CACHE_CONFIG,
                &[
                    ("model_name", &m.name),
                    ("block_size", &block),
                    ("num_gpu_blocks", &blocks),
                ],
                1.0,
            );
        }
        head(
            out,
            LORA,
            "gauge",
            "LoRA adapters (none: max_lora 0); the value is when it was read, as vLLM's.",
        );
        sample(
            out,
            LORA,
            &[
                ("max_lora", "0"),
                ("running_lora_adapters", ""),
                ("waiting_lora_adapters", ""),
            ],
            now_unix,
        );
    }

    /// vLLM's ORCA load report for the `endpoint-load-metrics` response header, in the format a request asked for
    /// with `endpoint-load-metrics-format` (`text` or `json`, any case); `None` for another format.
    pub fn orca(&self, format: &str) -> Option<String> {
        let named = [
            ("kv_cache_usage_perc", self.kv()),
            ("num_requests_waiting", self.waiting() as f64),
            ("num_requests_running", f64::from(self.running())),
        ];
        if format.eq_ignore_ascii_case("text") {
            let fields: Vec<String> = named
                .iter()
                .map(|(k, v)| format!("named_metrics.{k}={v:?}"))
                .collect();
            Some(format!("TEXT {}", fields.join(", ")))
        } else if format.eq_ignore_ascii_case("json") {
            let map: serde_json::Map<String, serde_json::Value> = named
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                .collect();
            Some(format!(
                "JSON {}",
                serde_json::json!({ "named_metrics": map })
            ))
        } else {
            None
        }
    }
}

/// Requests running and waiting on the node now (what vLLM Router's `power_of_two` policy compares, from
/// `GET /get_load`): the scheduler's counts only, no engine asked.
pub async fn measure_counts(app: &super::App) -> usize {
    app.scheduler
        .snapshot()
        .await
        .iter()
        .map(|r| r.in_flight as usize + r.waiting)
        .sum()
}

/// The node's load now: the scheduler's runners, and the KV-cache use of each ready engine that reports it.
pub async fn measure(app: &super::App) -> NodeLoad {
    measure_runners(app, &app.scheduler.snapshot().await).await
}

/// The load of these runners (a snapshot already taken), asking each ready engine for its KV-cache use.
pub async fn measure_runners(
    app: &super::App,
    runners: &[crate::scheduler::RunnerInfo],
) -> NodeLoad {
    let mut models = Vec::with_capacity(runners.len());
    for r in runners {
        let engine = r.engine;
        let kv = match (r.endpoint, engine.kv_usage_path()) {
            (Some(ep), Some(path)) if !engine.exports_vllm_metrics() => {
                match tokio::time::timeout(KV_TIMEOUT, app.engines.get_text(ep, path)).await {
                    Ok(Ok(answer)) => engine.kv_cache_usage(answer.as_bytes(), r.context_size),
                    _ => None,
                }
            }
            _ => None,
        };
        models.push(ModelLoad {
            name: r.model_name.clone(),
            running: r.in_flight,
            waiting: r.waiting,
            kv,
            context_size: r.context_size,
            engine_reports: engine.exports_vllm_metrics(),
        });
    }
    NodeLoad { models }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeLoad {
        let m = |name: &str, running, waiting, kv, engine_reports| ModelLoad {
            name: name.into(),
            running,
            waiting,
            kv,
            context_size: 4096,
            engine_reports,
        };
        NodeLoad {
            models: vec![
                m("ai/a:latest", 2, 1, Some(0.25), false),
                m("ai/b:latest", 1, 3, None, false),
                m("org/v", 4, 0, None, true),
            ],
        }
    }

    #[test]
    fn totals_count_every_runner_and_kv_is_the_fullest_cache() {
        let n = node();
        assert_eq!((n.running(), n.waiting(), n.kv()), (7, 4, 0.25));
        assert_eq!(NodeLoad::default().kv(), 0.0);
    }

    #[test]
    fn series_have_the_node_total_first_then_models_whose_engine_does_not_report() {
        let mut out = String::new();
        let mut seen = BTreeSet::new();
        node().render(1700000000.0, &mut out, &mut seen);
        let running: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("vllm:num_requests_running"))
            .collect();
        assert_eq!(
            running,
            [
                "vllm:num_requests_running 7",
                "vllm:num_requests_running{model_name=\"ai/a:latest\"} 2",
                "vllm:num_requests_running{model_name=\"ai/b:latest\"} 1",
            ]
        );
        assert!(out.contains("vllm:num_requests_waiting{model_name=\"ai/b:latest\"} 3\n"));
        assert!(out.contains("vllm:kv_cache_usage_perc{model_name=\"ai/a:latest\"} 0.25\n"));
        assert!(out.contains("vllm:gpu_cache_usage_perc 0.25\n"));
        assert!(
            !out.contains("kv_cache_usage_perc{model_name=\"ai/b"),
            "no figure is made up"
        );
        assert!(!out.contains("org/v"), "vLLM writes its own series");
        assert!(out.contains(
            "vllm:cache_config_info{model_name=\"ai/a:latest\",block_size=\"16\",num_gpu_blocks=\"256\"} 1\n"
        ));
        assert!(out.contains(
            "vllm:lora_requests_info{max_lora=\"0\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"} 1700000000\n"
        ));
        assert!(out.contains("# TYPE vllm:num_requests_waiting gauge\n"));
        assert!(
            seen.contains("TYPE vllm:kv_cache_usage_perc")
                && seen.contains("HELP vllm:num_requests_running")
        );
    }

    #[test]
    fn orca_reports_in_vllms_text_and_json_shapes() {
        let n = node();
        assert_eq!(
            n.orca("TEXT").as_deref(),
            Some("TEXT named_metrics.kv_cache_usage_perc=0.25, named_metrics.num_requests_waiting=4.0, named_metrics.num_requests_running=7.0")
        );
        let json = n.orca("json").expect("json is a format");
        let body: serde_json::Value =
            serde_json::from_str(json.strip_prefix("JSON ").expect("prefixed")).expect("JSON");
        assert_eq!(body["named_metrics"]["num_requests_waiting"], 4.0);
        assert_eq!(body["named_metrics"]["kv_cache_usage_perc"], 0.25);
        assert_eq!(n.orca("bin"), None);
    }
}
