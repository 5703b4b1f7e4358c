//! vLLM: the argv DMR builds for it (`vllm serve MODEL_DIR --host 127.0.0.1 --port P --served-model-name NAME
//! [--max-model-len CTX] [--gpu-memory-utilization X] [--hf-overrides JSON]`, then the model's runtime flags
//! verbatim; embedding runners add `--runner pooling`), where its executable is found, and the check DMR applies
//! to `hf-overrides` (keys are identifiers, at every depth). Pure functions.

use std::path::{Path, PathBuf};

use super::{DemandInput, Engine, EngineCommand, EngineKind, EngineRoute, LaunchSpec, Mode, Need};
use crate::store::{ModelConfig, ModelFormat};

/// vLLM, registered in [`EngineKind::ALL`].
pub const ENGINE: EngineKind = EngineKind::new(&Vllm);

pub struct Vllm;

impl Engine for Vllm {
    fn name(&self) -> &'static str {
        NAME
    }

    /// `--max-num-seqs N`: sequences in one batch.
    fn parallel_flags(&self, n: u32) -> Option<Vec<String>> {
        Some(vec!["--max-num-seqs".into(), n.to_string()])
    }

    /// vLLM's `/metrics` has `vllm:num_requests_running`, `vllm:kv_cache_usage_perc` and the rest itself.
    fn exports_vllm_metrics(&self) -> bool {
        true
    }

    /// `--speculative-config` (`argv`).
    fn takes_draft(&self) -> bool {
        true
    }

    fn formats(&self) -> &'static [ModelFormat] {
        &[ModelFormat::Safetensors]
    }

    fn serves(&self, mode: Mode) -> bool {
        mode != Mode::ImageGeneration
    }

    fn resolve(
        &self,
        config: &crate::config::EnginesConfig,
        path_var: Option<&str>,
        data_dir: &Path,
    ) -> Result<EngineCommand, String> {
        resolve(
            config.vllm.binary.as_deref(),
            &config.vllm.args,
            path_var,
            data_dir,
        )
    }

    fn argv(&self, spec: &LaunchSpec, port: u16) -> Vec<String> {
        argv(spec, port)
    }

    /// What was asked, else the model's own maximum (`max_position_embeddings`); 0 leaves the flag out.
    fn context_size(&self, asked: Option<u32>, model: &ModelConfig) -> u32 {
        asked
            .or(model.context_size.and_then(|c| u32::try_from(c).ok()))
            .unwrap_or(0)
    }

    /// vLLM takes `gpu_memory_utilization` (0.9 by default) of the GPU whatever the model, so on a GPU that share
    /// of the largest device is its demand; otherwise the weights plus a quarter, plus its footprint.
    fn demand(&self, input: &DemandInput<'_>) -> Result<Need, String> {
        if input.gpu {
            let share = input.launch.vllm.gpu_memory_utilization.unwrap_or(0.9);
            let largest = input
                .probe
                .snapshot(&[])
                .ok()
                .and_then(|s| s.devices.iter().map(|d| d.total).max())
                .unwrap_or(0);
            if largest > 0 {
                return Ok(Need::Any((largest as f64 * share) as u64));
            }
        }
        Ok(Need::Any(super::files_estimate(input)))
    }

    fn token_counting(&self) -> Option<super::TokenCounting> {
        Some(super::TokenCounting {
            path: TOKENIZE_PATH,
            body: |chat| tokenize_body(&chat),
            count: |answer| {
                serde_json::from_value::<TokenCount>(answer)
                    .map(|a| a.count)
                    .map_err(|e| e.to_string())
            },
        })
    }

    fn check_options(&self, options: &VllmOptions) -> Result<(), String> {
        if let Some(u) = options.gpu_memory_utilization {
            check_utilization(u)?;
        }
        if let Some(h) = &options.hf_overrides {
            check_hf_overrides(h)?;
        }
        Ok(())
    }

    fn install_dir(&self, data_dir: &Path) -> PathBuf {
        install_dir(data_dir)
    }

    fn install_recipe(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("install.sh", include_str!("../../engines/vllm/install.sh")),
            (
                "requirements.txt",
                include_str!("../../engines/vllm/requirements.txt"),
            ),
        ]
    }

    fn flag_allowlist(&self) -> Option<&'static [&'static str]> {
        Some(super::flags::VLLM)
    }

    /// vLLM's OpenAI server has all four (rerank and score on pooling runners).
    fn route_path(&self, route: EngineRoute) -> Option<&'static str> {
        Some(match route {
            EngineRoute::Rerank => "/v1/rerank",
            EngineRoute::Score => "/v1/score",
            EngineRoute::Tokenize => "/tokenize",
            EngineRoute::Detokenize => "/detokenize",
        })
    }
}

/// The engine's name in URLs (`/engines/vllm/v1/...`) and in `/engines/ps`.
pub const NAME: &str = "vllm";

/// Counts a chat's tokens with the chat template applied (vLLM's `TokenizeChatRequest`); it has no
/// `/v1/chat/completions/input_tokens` as llama-server does.
pub const TOKENIZE_PATH: &str = "/tokenize";

/// `/tokenize`'s answer, as far as it is read.
#[derive(Debug, serde::Deserialize)]
pub struct TokenCount {
    pub count: u64,
}

/// The `/tokenize` body for an OpenAI chat request: its model, messages and tools, with the generation prompt
/// added as a chat completion would (vLLM ignores sampling fields there, with a warning; they are left out).
pub fn tokenize_body(chat: &serde_json::Value) -> serde_json::Value {
    let mut body = serde_json::json!({"add_generation_prompt": true});
    for key in ["model", "messages", "tools"] {
        if let Some(v) = chat.get(key).filter(|v| !v.is_null()) {
            body[key] = v.clone();
        }
    }
    body
}

/// vLLM settings beyond context size and flags, from `[[models]]` or `_configure`'s `"vllm"` object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VllmOptions {
    /// The share of each GPU's memory vLLM may take (0 < x ≤ 1); vLLM's default is 0.9.
    pub gpu_memory_utilization: Option<f64>,
    /// Merged into the model's Hugging Face config by vLLM (a JSON object).
    pub hf_overrides: Option<serde_json::Value>,
}

/// Arguments after the executable (and its prefix).
pub fn argv(spec: &LaunchSpec, port: u16) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "serve".into(),
        spec.model_path.display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--served-model-name".into(),
        spec.model_name.clone(),
    ];
    if spec.mode == Mode::Embedding {
        args.extend(["--runner".into(), "pooling".into()]);
    }
    if spec.context_size > 0 {
        args.extend(["--max-model-len".into(), spec.context_size.to_string()]);
    }
    if let Some(u) = spec.vllm.gpu_memory_utilization {
        args.extend(["--gpu-memory-utilization".into(), u.to_string()]);
    }
    if let Some(h) = &spec.vllm.hf_overrides {
        args.extend(["--hf-overrides".into(), h.to_string()]);
    }
    if let (Mode::Completion, Some(draft)) = (spec.mode, &spec.draft) {
        args.extend(["--speculative-config".into(), speculative_config(draft)]);
    }
    args.extend(spec.runtime_flags.iter().cloned());
    args
}

/// Draft tokens per step when none is configured: vLLM needs a number (llama-server's own default is 3).
pub const DEFAULT_DRAFT_TOKENS: u32 = 3;

/// `--speculative-config` for a draft model directory from the store, as DMR writes it (without DMR's
/// `--use-v2-block-manager`, which vLLM 0.11 no longer has). vLLM has no minimum acceptance rate.
pub fn speculative_config(draft: &super::speculative::Draft) -> String {
    serde_json::json!({
        "model": draft.path.display().to_string(),
        "num_speculative_tokens": draft.num_tokens.unwrap_or(DEFAULT_DRAFT_TOKENS),
    })
    .to_string()
}

/// Checks a `gpu-memory-utilization` value: 0 < x ≤ 1.
pub fn check_utilization(x: f64) -> Result<(), String> {
    if x > 0.0 && x <= 1.0 {
        Ok(())
    } else {
        Err(format!("gpu-memory-utilization {x}: must be > 0 and <= 1"))
    }
}

/// Checks `hf-overrides` as DMR does: a JSON object whose keys, at every depth, match `[A-Za-z_][A-Za-z0-9_]*`.
pub fn check_hf_overrides(value: &serde_json::Value) -> Result<(), String> {
    fn walk(v: &serde_json::Value, at: &str) -> Result<(), String> {
        match v {
            serde_json::Value::Object(map) => map.iter().try_for_each(|(k, v)| {
                let ident = k
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ident {
                    return Err(format!("hf-overrides key {at}{k:?} is not an identifier"));
                }
                walk(v, &format!("{at}{k}."))
            }),
            serde_json::Value::Array(items) => items.iter().try_for_each(|v| walk(v, at)),
            _ => Ok(()),
        }
    }
    if !value.is_object() {
        return Err("hf-overrides must be a JSON object".into());
    }
    walk(value, "")
}

/// Where vLLM is looked for, in order: the configured executable, `vllm` on PATH, then the venv that
/// `engines/vllm/install.sh` makes (`<data dir>/engines/vllm/bin/vllm`).
pub fn resolve(
    configured: Option<&Path>,
    prefix: &[String],
    path_var: Option<&str>,
    data_dir: &Path,
) -> Result<EngineCommand, String> {
    let command = |program: PathBuf| EngineCommand {
        program,
        prefix: prefix.to_vec(),
    };
    if let Some(p) = configured {
        return if super::is_executable(p) {
            Ok(command(p.to_path_buf()))
        } else {
            Err(format!(
                "engines.vllm.binary {} is not an executable file",
                p.display()
            ))
        };
    }
    if let Some(found) = super::on_path("vllm", path_var) {
        return Ok(command(found));
    }
    let installed = install_dir(data_dir).join("bin/vllm");
    if super::is_executable(&installed) {
        return Ok(command(installed));
    }
    Err(format!(
        "vLLM not found (not configured, not on PATH, not in {}); install it with engines/vllm/install.sh on a \
         machine with an NVIDIA GPU",
        install_dir(data_dir).display()
    ))
}

pub fn install_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("engines/vllm")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenize_bodies_keep_the_chat_and_drop_sampling() {
        let chat = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                       "tools": [{"type": "function"}], "max_tokens": 1, "stream": false,
                                       "temperature": null});
        assert_eq!(
            tokenize_body(&chat),
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                               "tools": [{"type": "function"}], "add_generation_prompt": true})
        );
        let no_tools = serde_json::json!({"model": "m", "messages": [], "tools": null});
        assert_eq!(
            tokenize_body(&no_tools),
            serde_json::json!({"model": "m", "messages": [], "add_generation_prompt": true})
        );
    }
    use crate::config::KeepAlive;

    fn spec(mode: Mode, ctx: u32, flags: &[&str], vllm: VllmOptions) -> LaunchSpec {
        LaunchSpec {
            model_name: "ai/qwen:latest".into(),
            engine: ENGINE,
            model_path: "/store/bundles/sha256/ab/model".into(),
            chat_template: None,
            mmproj: None,
            mode,
            context_size: ctx,
            runtime_flags: flags.iter().map(|s| s.to_string()).collect(),
            keep_alive: KeepAlive::DEFAULT,
            pinned: false,
            vllm,
            draft: None,
        }
    }

    #[test]
    fn a_draft_directory_goes_in_the_speculative_config_of_completion_runners() {
        let mut s = spec(
            Mode::Completion,
            0,
            &["--enforce-eager"],
            Default::default(),
        );
        let draft = |n| crate::engines::speculative::Draft {
            name: "ai/qwen-draft:latest".into(),
            model_id: "sha256:d".into(),
            path: "/store/bundles/sha256/d/model".into(),
            num_tokens: n,
            min_acceptance_rate: Some(0.5),
        };
        s.draft = Some(draft(Some(8)));
        let args = argv(&s, 1);
        assert_eq!(
            args[args.len() - 3..],
            [
                "--speculative-config",
                r#"{"model":"/store/bundles/sha256/d/model","num_speculative_tokens":8}"#,
                "--enforce-eager"
            ]
        );
        s.draft = Some(draft(None));
        assert!(argv(&s, 1).contains(
            &r#"{"model":"/store/bundles/sha256/d/model","num_speculative_tokens":3}"#.to_string()
        ));
        s.mode = Mode::Embedding;
        assert!(!argv(&s, 1).contains(&"--speculative-config".to_string()));
    }

    #[test]
    fn the_command_line_is_dmrs() {
        let options = VllmOptions {
            gpu_memory_utilization: Some(0.5),
            hf_overrides: Some(serde_json::json!({"rope_scaling": {"factor": 2}})),
        };
        assert_eq!(
            argv(
                &spec(
                    Mode::Completion,
                    4096,
                    &["--enforce-eager", "-tp", "2"],
                    options
                ),
                8001
            ),
            [
                "serve",
                "/store/bundles/sha256/ab/model",
                "--host",
                "127.0.0.1",
                "--port",
                "8001",
                "--served-model-name",
                "ai/qwen:latest",
                "--max-model-len",
                "4096",
                "--gpu-memory-utilization",
                "0.5",
                "--hf-overrides",
                r#"{"rope_scaling":{"factor":2}}"#,
                "--enforce-eager",
                "-tp",
                "2"
            ]
        );
        let embed = argv(&spec(Mode::Embedding, 0, &[], VllmOptions::default()), 1);
        assert_eq!(&embed[8..], ["--runner", "pooling"]);
    }

    #[test]
    fn hf_overrides_keys_must_be_identifiers_at_every_depth() {
        use serde_json::json;
        assert!(check_hf_overrides(&json!({"a_1": {"_b": [1, {"c": null}]}})).is_ok());
        for bad in [
            json!({"a-b": 1}),
            json!({"x": {"1a": 2}}),
            json!({"x": [{"$y": 1}]}),
            json!([1]),
            json!("s"),
        ] {
            assert!(check_hf_overrides(&bad).is_err(), "{bad}");
        }
        assert!(
            check_utilization(0.9).is_ok()
                && check_utilization(0.0).is_err()
                && check_utilization(1.5).is_err()
        );
    }
}
