//! `POST /engines/_configure` and `GET /engines/_configure[?model=]`, DMR's per-model runtime settings: context
//! size, runtime flags (checked against the allowlist of the engine the URL names, else of the model's own engine:
//! `engines::flags`), keep-alive, vLLM's `gpu-memory-utilization` and `hf-overrides`, speculative decoding (a
//! draft model of the store, by name, of the model's own format: `launch::draft`), for a mode. Unlike
//! DMR, they are persisted in the store (`store::RuntimeConfig`) and survive restarts. A changed setting for a
//! model whose runner is busy is refused with 409 (as DMR does); otherwise it is stored, answered with 202, and
//! the model is preloaded in the background with it (an idle runner with other settings is restarted).

use std::sync::Arc;

use http::{Response, StatusCode};
use hyper::body::Incoming;

use super::http::{json, parse_json, query_value, read_body, ApiError, Body};
use super::{inference, App};
use crate::api::{native, ErrorKind};
use crate::config::KeepAlive;
use crate::engines::{flags, vllm, EngineKind, Mode, RunnerWishes};
use crate::store::{name, RuntimeConfig, Speculative};

pub async fn set(
    app: &Arc<App>,
    req: http::Request<Incoming>,
    in_path: Option<EngineKind>,
) -> Result<Response<Body>, ApiError> {
    let (_, body) = read_body(req, app.body_limits()).await?;
    let input: native::ConfigureRequest = parse_json(&body)?;
    let requested = input
        .model
        .clone()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad_request("\"model\" is required"))?;
    let model = app.model_named(&requested)?;
    let engine = EngineKind::for_format(model.format);
    if let Some(named) = in_path.filter(|e| *e != engine) {
        return Err(ApiError::bad_request(format!(
            "model {requested} runs on {}, not {}; configure it with /engines/{}/_configure or /engines/_configure",
            engine.name(),
            named.name(),
            engine.name()
        )));
    }
    let config = validate(&input, &model.id, engine)?;
    if let Some(s) = &config.speculative {
        crate::launch::draft(&app.store, engine, s)?;
    }
    let mode = Mode::ALL
        .into_iter()
        .find(|m| m.as_str() == config.mode)
        .unwrap_or(Mode::Completion);
    let previous = app
        .store
        .runtime_config(&config.model_id, &config.mode)
        .map_err(ApiError::from)?;
    if previous.as_ref() != Some(&config) {
        let busy =
            app.scheduler.snapshot().await.iter().any(|r| {
                r.model_id == model.id && r.mode == mode && (r.in_flight > 0 || r.loading)
            });
        if busy {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!("runner already active: {requested} is serving requests; configure it once it is idle"),
            ));
        }
    }
    app.store
        .set_runtime_config(config.clone())
        .map_err(ApiError::from)?;
    tracing::info!(model = requested, mode = config.mode, ?config.context_size, ?config.runtime_flags, ?config.keep_alive, "runtime config stored");
    // Preload with the new settings, as DMR does after a configure (Compose relies on it).
    let (app2, name) = (app.clone(), requested.clone());
    tokio::spawn(async move {
        if let Err(e) = inference::acquire(
            &app2,
            &Default::default(),
            &name,
            mode,
            &RunnerWishes::default(),
        )
        .await
        {
            tracing::warn!(
                model = name,
                error = e.message,
                "preload after configure failed"
            );
        }
    });
    Ok(json(
        StatusCode::ACCEPTED,
        &listed(&requested, config, engine.name()),
    ))
}

/// The stored config for `model_id`, or the first reason it is not acceptable (400).
fn validate(
    input: &native::ConfigureRequest,
    model_id: &str,
    engine: EngineKind,
) -> Result<RuntimeConfig, ApiError> {
    let flags = match (&input.runtime_flags, &input.raw_runtime_flags) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give \"runtime-flags\" or \"raw-runtime-flags\", not both",
            ))
        }
        (Some(f), None) => Some(f.clone()),
        (None, Some(raw)) => Some(
            shell_words::split(raw)
                .map_err(|e| ApiError::bad_request(format!("raw-runtime-flags: {e}")))?,
        ),
        (None, None) => None,
    };
    if let Some(f) = &flags {
        flags::check_untrusted(engine.name(), f)
            .map_err(|e| ApiError::bad_request(format!("runtime flags: {e}")))?;
    }
    let has = |names: &[&str]| {
        flags
            .as_ref()
            .is_some_and(|f| f.iter().any(|t| names.contains(&t.as_str())))
    };
    let mode = match input.mode.as_deref() {
        None | Some("") if has(&["--rerank", "--reranking"]) => Mode::Reranking,
        None | Some("") if has(&["--embedding", "--embeddings"]) => Mode::Embedding,
        None | Some("") | Some("completion") => Mode::Completion,
        Some("embedding") => Mode::Embedding,
        Some("reranking") => Mode::Reranking,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "mode {other:?} is not supported (completion, embedding or reranking)"
            )))
        }
    };
    let context_size = match input.context_size {
        None | Some(-1) => None,
        Some(n) if n > 0 && n <= u32::MAX as i64 => Some(n as u32),
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "context-size {n}: must be > 0 or -1"
            )))
        }
    };
    if let Some(k) = &input.keep_alive {
        KeepAlive::parse(k).map_err(|e| ApiError::bad_request(format!("keep_alive: {e}")))?;
    }
    let v = input.vllm.clone().unwrap_or_default();
    let options = vllm::VllmOptions {
        gpu_memory_utilization: v.gpu_memory_utilization,
        hf_overrides: v.hf_overrides.clone(),
    };
    engine
        .check_options(&options)
        .map_err(ApiError::bad_request)?;
    let speculative = input.speculative.as_ref().map(speculative).transpose()?;
    Ok(RuntimeConfig {
        model_id: model_id.to_string(),
        mode: mode.as_str().to_string(),
        context_size,
        runtime_flags: flags,
        keep_alive: input.keep_alive.clone(),
        gpu_memory_utilization: v.gpu_memory_utilization,
        hf_overrides: v.hf_overrides,
        speculative,
    })
}

/// `speculative`, checked as the config's is (`engines::speculative`): a draft named as models are, numbers in range.
/// Whether the draft is in the store and fits the model is `launch::draft`'s to say.
fn speculative(s: &native::SpeculativeSettings) -> Result<Speculative, ApiError> {
    use crate::engines::speculative::{check_min_acceptance_rate, check_num_tokens};
    let bad = |key: &'static str| {
        move |e: String| ApiError::bad_request(format!("speculative.{key}: {e}"))
    };
    if s.draft_model.is_empty() {
        return Err(ApiError::bad_request(
            "speculative.draft_model is required: the name of a model in the store",
        ));
    }
    Ok(Speculative {
        draft_model: name::normalize(&s.draft_model)
            .map_err(|e| bad("draft_model")(e.to_string()))?,
        num_tokens: s
            .num_tokens
            .map(check_num_tokens)
            .transpose()
            .map_err(bad("num_tokens"))?,
        min_acceptance_rate: s
            .min_acceptance_rate
            .map(check_min_acceptance_rate)
            .transpose()
            .map_err(bad("min_acceptance_rate"))?,
    })
}

fn listed(name: &str, c: RuntimeConfig, backend: &'static str) -> native::ConfiguredModel {
    let vllm = (c.gpu_memory_utilization.is_some() || c.hf_overrides.is_some()).then(|| {
        native::VllmSettings {
            hf_overrides: c.hf_overrides.clone(),
            gpu_memory_utilization: c.gpu_memory_utilization,
        }
    });
    native::ConfiguredModel {
        backend,
        model: name.to_string(),
        model_id: c.model_id,
        mode: c.mode,
        config: native::ConfiguredSettings {
            context_size: c.context_size,
            runtime_flags: c.runtime_flags,
            keep_alive: c.keep_alive,
            vllm,
            speculative: c.speculative.map(|s| native::SpeculativeSettings {
                draft_model: s.draft_model,
                num_tokens: s.num_tokens.map(i64::from),
                min_acceptance_rate: s.min_acceptance_rate,
            }),
        },
    }
}

/// `GET /engines/_configure[?model=NAME]`.
pub async fn list(app: &Arc<App>, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let only = match query_value(query, "model")? {
        Some(m) => Some(app.resolve(&m).map_err(ApiError::from)?.id),
        None => None,
    };
    let mut out = Vec::new();
    for c in app.store.runtime_configs().map_err(ApiError::from)? {
        if only.as_ref().is_some_and(|id| *id != c.model_id) {
            continue;
        }
        let model = app.resolve(&c.model_id).ok();
        let name = model
            .as_ref()
            .and_then(|m| m.tags.first().cloned())
            .unwrap_or_else(|| c.model_id.clone());
        // A config whose model is gone names no backend.
        let engine = model.map_or("", |m| EngineKind::for_format(m.format).name());
        out.push(listed(&name, c, engine));
    }
    Ok(json(StatusCode::OK, &out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: serde_json::Value) -> native::ConfigureRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn validation_reads_dmr_fields_and_names_the_problem() {
        let c = validate(
            &req(serde_json::json!({"model": "m", "context-size": 8192, "raw-runtime-flags": "--temp 0.5 --embeddings", "keep_alive": "10m"})),
            "sha256:x",
            crate::engines::llamacpp::ENGINE,
        )
        .unwrap();
        assert_eq!(c.context_size, Some(8192));
        assert_eq!(
            c.runtime_flags.as_deref(),
            Some(&["--temp".to_string(), "0.5".into(), "--embeddings".into()][..])
        );
        assert_eq!(c.mode, "embedding");
        let bad = |v: serde_json::Value| {
            validate(&req(v), "id", crate::engines::llamacpp::ENGINE)
                .unwrap_err()
                .message
        };
        assert!(
            bad(serde_json::json!({"runtime-flags": ["--log-file", "/etc/x"]}))
                .contains("may not carry paths")
        );
        assert!(bad(serde_json::json!({"runtime-flags": ["--model", "x"]}))
            .contains("not an allowed runtime flag"));
        assert!(
            bad(serde_json::json!({"raw-runtime-flags": "--temp 'unclosed"}))
                .starts_with("raw-runtime-flags")
        );
        assert!(bad(serde_json::json!({"context-size": 0})).contains("must be > 0 or -1"));
        assert!(bad(serde_json::json!({"mode": "image-generation"})).contains("not supported"));
        let mode = |v: serde_json::Value| {
            validate(&req(v), "id", crate::engines::llamacpp::ENGINE)
                .unwrap()
                .mode
        };
        assert_eq!(mode(serde_json::json!({"mode": "reranking"})), "reranking");
        assert_eq!(
            mode(serde_json::json!({"runtime-flags": ["--reranking"]})),
            "reranking",
            "as --embeddings implies embedding"
        );
        assert_eq!(mode(serde_json::json!({})), "completion");
        assert!(bad(serde_json::json!({"keep_alive": "soon"})).starts_with("keep_alive"));
        assert!(
            bad(serde_json::json!({"vllm": {"gpu-memory-utilization": 0.5}}))
                .contains("apply to vLLM")
        );
        let vllm_bad = |v: serde_json::Value| {
            validate(&req(v), "id", crate::engines::vllm::ENGINE)
                .unwrap_err()
                .message
        };
        assert!(
            vllm_bad(serde_json::json!({"vllm": {"hf-overrides": {"a-b": 1}}}))
                .contains("not an identifier")
        );
        assert!(
            vllm_bad(serde_json::json!({"vllm": {"gpu-memory-utilization": 2}}))
                .contains("must be > 0")
        );
        assert!(
            vllm_bad(serde_json::json!({"runtime-flags": ["--ctx-size", "8"]}))
                .contains("not an allowed runtime flag for vllm")
        );
        let ok = validate(
            &req(serde_json::json!({"vllm": {"hf-overrides": {"rope_theta": 1}, "gpu-memory-utilization": 0.5}, "runtime-flags": ["--enforce-eager"]})),
            "id",
            crate::engines::vllm::ENGINE,
        )
        .unwrap();
        assert_eq!(ok.gpu_memory_utilization, Some(0.5));
    }

    #[test]
    fn speculative_is_read_as_dmr_sends_it_and_checked() {
        let c = validate(
            &req(serde_json::json!({"model": "m", "speculative": {"draft_model": "ai/tiny", "num_tokens": 8, "min_acceptance_rate": 0.5}})),
            "id",
            crate::engines::llamacpp::ENGINE,
        )
        .unwrap();
        assert_eq!(
            c.speculative,
            Some(Speculative {
                draft_model: "ai/tiny:latest".into(),
                num_tokens: Some(8),
                min_acceptance_rate: Some(0.5)
            })
        );
        let bad = |v: serde_json::Value| {
            validate(&req(v), "id", crate::engines::llamacpp::ENGINE)
                .unwrap_err()
                .message
        };
        assert!(bad(serde_json::json!({"speculative": {}}))
            .starts_with("speculative.draft_model is required"));
        assert_eq!(
            bad(serde_json::json!({"speculative": {"draft_model": "a", "num_tokens": 0}})),
            "speculative.num_tokens: must be 1 to 64, not 0"
        );
        assert_eq!(
            bad(
                serde_json::json!({"speculative": {"draft_model": "a", "min_acceptance_rate": 1.5}})
            ),
            "speculative.min_acceptance_rate: must be 0 to 1, not 1.5"
        );
        assert!(
            bad(serde_json::json!({"speculative": {"draft_model": "../x y"}}))
                .starts_with("speculative.draft_model: ")
        );
        assert!(
            serde_json::from_value::<native::ConfigureRequest>(
                serde_json::json!({"speculative": {"draft_model": "a", "draft_path": "/etc/x"}})
            )
            .is_err(),
            "no other keys: never a path"
        );
    }
}
