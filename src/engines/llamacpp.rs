//! llama.cpp's `llama-server`: the exact argv we give it and where its binary is found. Pure functions, tested
//! against the command line the issue specifies (`--model PATH --host 127.0.0.1 --port P --ctx-size N`, plus
//! `--alias NAME` so answers carry the model's name, then the model's runtime flags verbatim; embedding runners add
//! `--embeddings` and `--pooling mean` unless the user picked a pooling, reranking runners `--embeddings --reranking`; a model packaged with a chat template gets
//! `--chat-template-file BLOB` unless its flags pick a template; a completion runner with a speculative draft gets
//! `--model-draft BLOB --spec-type draft-simple` and the draft's numbers, ahead of the runtime flags).

use std::path::{Path, PathBuf};

use super::{DemandInput, Engine, EngineCommand, EngineKind, EngineRoute, LaunchSpec, Mode, Need};
use crate::gpu::estimate::{self, LlamaFlags, ModelShape};
use crate::store::{ModelConfig, ModelFormat};

/// llama.cpp, registered in [`EngineKind::ALL`].
pub const ENGINE: EngineKind = EngineKind::new(&LlamaCpp);

pub struct LlamaCpp;

impl Engine for LlamaCpp {
    fn name(&self) -> &'static str {
        NAME
    }

    fn formats(&self) -> &'static [ModelFormat] {
        &[ModelFormat::Gguf]
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
        resolve_binary(config.llamacpp.binary.as_deref(), path_var, data_dir).map(|program| {
            EngineCommand {
                program,
                prefix: vec![],
            }
        })
    }

    fn argv(&self, spec: &LaunchSpec, port: u16) -> Vec<String> {
        argv(spec, port)
    }

    /// What was asked, else the packaged context, else the daemon's default (a GGUF's trained length is often
    /// far more than memory allows).
    fn context_size(&self, asked: Option<u32>, model: &ModelConfig) -> u32 {
        asked
            .or(packaged_context(model))
            .unwrap_or(crate::config::DEFAULT_CONTEXT_SIZE)
    }

    /// The GGUF prediction (weights, KV cache, compute buffers, per the runtime flags) plus the engine's own
    /// overhead; in CPU mode that is host memory. Flags that pin GPUs (`--main-gpu`, `--tensor-split`) pin the
    /// demand. An unknown architecture counts its file size. Flags with bad values are the caller's error.
    fn demand(&self, input: &DemandInput<'_>) -> Result<Need, String> {
        let launch = input.launch;
        let flags = LlamaFlags::parse(&launch.runtime_flags, launch.context_size as u64)
            .map_err(|e| format!("runtime flags of {}: {e}", launch.model_name))?;
        let cpu = !input.gpu;
        // A draft loads beside the model: its weights, and its own KV cache for the same context.
        let draft = input
            .draft
            .as_ref()
            .map_or(0, |d| predicted(d.model, &flags.for_draft(), cpu));
        let total = predicted(input.model, &flags, cpu) + draft + super::overhead(input.gpu);
        let pinned = flags.main_gpu.is_some() || !flags.tensor_split.is_empty();
        Ok(if pinned && !cpu {
            Need::Pinned(
                estimate::spread(total, &flags, input.devices)
                    .into_iter()
                    .enumerate()
                    .filter(|(_, b)| *b > 0)
                    .map(|(i, b)| (i as u32, b))
                    .collect(),
            )
        } else {
            Need::Any(total)
        })
    }

    fn answers_any_model_name(&self) -> bool {
        true
    }

    /// `--model-draft` (`argv`).
    fn takes_draft(&self) -> bool {
        true
    }

    fn token_counting(&self) -> Option<super::TokenCounting> {
        Some(super::TokenCounting {
            path: COUNT_TOKENS_PATH,
            body: |chat| chat,
            count: |answer| {
                serde_json::from_value::<crate::api::openai::InputTokens>(answer)
                    .map(|a| a.input_tokens)
                    .map_err(|e| e.to_string())
            },
        })
    }

    fn install_dir(&self, data_dir: &Path) -> PathBuf {
        install_dir(data_dir)
    }

    fn install_recipe(&self) -> &'static [(&'static str, &'static str)] {
        &[(
            "install.sh",
            include_str!("../../engines/llama.cpp/install.sh"),
        )]
    }

    fn flag_allowlist(&self) -> Option<&'static [&'static str]> {
        Some(super::flags::LLAMACPP)
    }

    /// `--parallel N` slots; the context is shared between them, and the memory estimate reads the flag.
    fn parallel_flags(&self, n: u32) -> Option<Vec<String>> {
        Some(vec!["--parallel".into(), n.to_string()])
    }

    fn kv_usage_path(&self) -> Option<&'static str> {
        Some("/slots")
    }

    /// llama-server serves rerank (`--reranking` servers only), tokenize and detokenize; it has no `/score`,
    /// which the front translates to rerank.
    fn route_path(&self, route: EngineRoute) -> Option<&'static str> {
        match route {
            EngineRoute::Rerank => Some("/v1/rerank"),
            EngineRoute::Score => None,
            EngineRoute::Tokenize => Some("/tokenize"),
            EngineRoute::Detokenize => Some("/detokenize"),
        }
    }

    /// A GGUF that declares a pooling type other than rank (`<arch>.pooling_type`: 1 mean, 2 cls, 3 last) is an
    /// embedding model: it has no classification head to score with. Models that declare none (causal rerankers
    /// such as Qwen3-Reranker carry a rerank template instead, or older conversions) are let through.
    fn refuses_mode(&self, mode: Mode, model: &ModelConfig) -> Option<String> {
        if mode != Mode::Reranking {
            return None;
        }
        let pooling = model
            .gguf
            .iter()
            .find(|(k, _)| k.ends_with(".pooling_type") && !k.contains(".classifier."))
            .map(|(_, v)| v.as_str())?;
        let name = match pooling {
            "1" => "mean",
            "2" => "cls",
            "3" => "last",
            _ => return None,
        };
        Some(format!(
            "is an embedding model (pooling {name}), not a reranker: it has no classification head to score pairs with"
        ))
    }

    fn kv_cache_usage(&self, answer: &[u8], context_size: u32) -> Option<f64> {
        kv_cache_usage(answer, context_size)
    }
}

/// What `model` takes with `flags`: the GGUF prediction, or its file size for an architecture we cannot read.
fn predicted(model: &crate::store::Model, flags: &LlamaFlags, cpu: bool) -> u64 {
    let bytes = std::fs::metadata(&model.weights)
        .map(|m| m.len())
        .unwrap_or(0);
    match ModelShape::from_gguf(&model.config.gguf, bytes) {
        Ok(shape) => estimate::predict(&shape, flags, cpu).total(),
        Err(_) => bytes,
    }
}

/// One slot of llama-server's `GET /slots`, the fields the KV-cache usage needs.
#[derive(serde::Deserialize)]
struct Slot {
    n_ctx: u64,
    #[serde(default)]
    is_processing: bool,
    #[serde(default)]
    n_prompt_tokens: u64,
    #[serde(default)]
    next_token: Vec<NextToken>,
}

#[derive(serde::Deserialize)]
struct NextToken {
    #[serde(default)]
    n_decoded: u64,
}

/// The tokens that busy slots hold (prompt plus decoded) over the KV cache's cells: the context the engine was
/// started with (one cache shared by all slots), or the slots' own contexts when it chose its default. Idle
/// slots' prompt caches are not counted: like vLLM's free prefix-cached blocks, they are given up on demand.
/// `None` when the answer is not `/slots`' (llama-server started with `--no-slots`).
pub fn kv_cache_usage(answer: &[u8], context_size: u32) -> Option<f64> {
    let slots: Vec<Slot> = serde_json::from_slice(answer).ok()?;
    let cells = match context_size {
        0 => slots.iter().map(|s| s.n_ctx).max()?,
        n => u64::from(n),
    };
    let used: u64 = slots
        .iter()
        .filter(|s| s.is_processing)
        .map(|s| s.n_prompt_tokens + s.next_token.first().map_or(0, |t| t.n_decoded))
        .sum();
    (cells > 0).then(|| (used as f64 / cells as f64).min(1.0))
}

/// The engine's name in URLs (`/engines/llama.cpp/v1/...`) and in `/engines/ps`.
pub const NAME: &str = "llama.cpp";

/// Counts the tokens of an OpenAI chat request with the chat template applied: `{"input_tokens": N}`.
pub const COUNT_TOKENS_PATH: &str = "/v1/chat/completions/input_tokens";

/// The context size a GGUF model was packaged with (`package --context-size`, a repackage): its config's
/// `context_size` unless that is just the GGUF's trained length, which is often far more than memory allows, so
/// that a plain import still starts with the default context.
pub fn packaged_context(config: &crate::store::ModelConfig) -> Option<u32> {
    let size = config.context_size?;
    let trained = config
        .gguf
        .iter()
        .find(|(k, _)| k.ends_with(".context_length"))
        .and_then(|(_, v)| v.parse::<u64>().ok());
    if trained == Some(size) {
        return None;
    }
    u32::try_from(size).ok()
}

/// Arguments after the binary name.
pub fn argv(spec: &LaunchSpec, port: u16) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--model".into(),
        spec.model_path.display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--ctx-size".into(),
        spec.context_size.to_string(),
        // Engines answer with this name in `model` (llama-server would say the blob path otherwise).
        "--alias".into(),
        spec.model_name.clone(),
        // Its own Prometheus metrics (tokens, slots), which our /metrics relabels with the model.
        "--metrics".into(),
    ];
    let picks_template = spec
        .runtime_flags
        .iter()
        .any(|f| f.starts_with("--chat-template") && !f.starts_with("--chat-template-kwargs"));
    if let (Mode::Completion, Some(template), false) =
        (spec.mode, &spec.chat_template, picks_template)
    {
        // As DMR does for a model with a template layer; llama-server renders it with Jinja (its default).
        args.extend([
            "--chat-template-file".into(),
            template.display().to_string(),
        ]);
    }
    if let (Mode::Completion, Some(mmproj)) = (spec.mode, &spec.mmproj) {
        // As DMR does for a model with a projector layer: images in chat reach the vision encoder.
        args.extend(["--mmproj".into(), mmproj.display().to_string()]);
    }
    if let (Mode::Completion, Some(draft)) = (spec.mode, &spec.draft) {
        args.extend(draft_flags(draft));
    }
    if spec.mode == Mode::Reranking {
        // As DMR does; `--reranking` pools by rank (the classification head's score).
        args.extend(["--embeddings".into(), "--reranking".into()]);
    }
    if spec.mode == Mode::Embedding {
        args.push("--embeddings".into());
        let user_pools = spec
            .runtime_flags
            .iter()
            .any(|f| f == "--pooling" || f.starts_with("--pooling="));
        if !user_pools {
            args.extend(["--pooling".into(), "mean".into()]);
        }
    }
    args.extend(spec.runtime_flags.iter().cloned());
    args
}

/// Speculative decoding with a draft GGUF from the store, in the spellings the pinned llama-server takes (as
/// DMR's): `--spec-type draft-simple` (without it the draft is loaded and never used), `--spec-draft-n-max` and
/// `--spec-draft-p-min` when set (the older `--draft-max` is refused by it).
pub fn draft_flags(draft: &super::speculative::Draft) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--model-draft".into(),
        draft.path.display().to_string(),
        "--spec-type".into(),
        "draft-simple".into(),
    ];
    if let Some(n) = draft.num_tokens {
        args.extend(["--spec-draft-n-max".into(), n.to_string()]);
    }
    if let Some(p) = draft.min_acceptance_rate {
        args.extend(["--spec-draft-p-min".into(), p.to_string()]);
    }
    args
}

/// Where llama-server is looked for, in order: the configured path, `llama-server` on PATH, then the install dir
/// that `engines/llama.cpp/install.sh` fills (`<data dir>/engines/llama.cpp/current/bin/llama-server`).
pub fn resolve_binary(
    configured: Option<&Path>,
    path_var: Option<&str>,
    data_dir: &Path,
) -> Result<PathBuf, String> {
    if let Some(p) = configured {
        return if is_executable(p) {
            Ok(p.to_path_buf())
        } else {
            Err(format!(
                "engines.llamacpp.binary {} is not an executable file",
                p.display()
            ))
        };
    }
    if let Some(found) = super::on_path("llama-server", path_var) {
        return Ok(found);
    }
    let installed = install_dir(data_dir).join("current/bin/llama-server");
    if is_executable(&installed) {
        return Ok(installed);
    }
    Err(format!(
        "llama-server not found (not configured, not on PATH, not in {}); install it with engines/llama.cpp/install.sh",
        install_dir(data_dir).display()
    ))
}

pub fn install_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("engines/llama.cpp")
}

use super::is_executable;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeepAlive;

    fn spec(mode: Mode, flags: &[&str]) -> LaunchSpec {
        LaunchSpec {
            model_name: "ai/tiny:latest".into(),
            engine: ENGINE,
            model_path: "/store/blobs/sha256/abc".into(),
            chat_template: None,
            mmproj: None,
            mode,
            context_size: 512,
            runtime_flags: flags.iter().map(|s| s.to_string()).collect(),
            keep_alive: KeepAlive::DEFAULT,
            pinned: false,
            vllm: Default::default(),
            draft: None,
        }
    }

    fn draft(num_tokens: Option<u32>, p_min: Option<f64>) -> crate::engines::speculative::Draft {
        crate::engines::speculative::Draft {
            name: "ai/tiny-draft:latest".into(),
            model_id: "sha256:d".into(),
            path: "/store/blobs/sha256/d".into(),
            num_tokens,
            min_acceptance_rate: p_min,
        }
    }

    #[test]
    fn a_draft_is_given_by_its_blob_before_the_runtime_flags_in_completion_only() {
        let mut s = spec(Mode::Completion, &["--temp", "0"]);
        s.draft = Some(draft(Some(8), Some(0.5)));
        let args = argv(&s, 1);
        let at = args.iter().position(|a| a == "--model-draft").unwrap();
        assert_eq!(
            args[at..],
            [
                "--model-draft",
                "/store/blobs/sha256/d",
                "--spec-type",
                "draft-simple",
                "--spec-draft-n-max",
                "8",
                "--spec-draft-p-min",
                "0.5",
                "--temp",
                "0"
            ]
        );
        s.draft = Some(draft(None, None));
        let args = argv(&s, 1);
        assert!(
            !args.iter().any(|a| a.starts_with("--spec-draft")),
            "the engine's defaults: {args:?}"
        );
        assert!(args.contains(&"--model-draft".to_string()));
        for mode in [Mode::Embedding, Mode::Reranking] {
            let mut s = spec(mode, &[]);
            s.draft = Some(draft(Some(8), None));
            assert!(
                !argv(&s, 1).contains(&"--model-draft".to_string()),
                "{mode:?}"
            );
        }
    }

    #[test]
    fn kv_cache_usage_counts_busy_slots_over_the_context() {
        let slots = br#"[{"id":0,"n_ctx":512,"is_processing":true,"n_prompt_tokens":100,"next_token":[{"n_decoded":28}]},
            {"id":1,"n_ctx":512,"is_processing":false,"n_prompt_tokens":300,"next_token":[{"n_decoded":9}]},
            {"id":2,"n_ctx":512,"is_processing":false}]"#;
        assert_eq!(kv_cache_usage(slots, 512), Some(0.25));
        assert_eq!(
            kv_cache_usage(slots, 0),
            Some(0.25),
            "the slots' context when the engine chose it"
        );
        assert_eq!(kv_cache_usage(slots, 64), Some(1.0), "never past 1");
        assert_eq!(kv_cache_usage(br#"{"error":"slots disabled"}"#, 512), None);
    }

    #[test]
    fn completion_argv_is_exact_and_flags_come_last_in_order() {
        let args = argv(
            &spec(Mode::Completion, &["--temp", "0", "--threads", "1"]),
            4711,
        );
        assert_eq!(
            args,
            [
                "--model",
                "/store/blobs/sha256/abc",
                "--host",
                "127.0.0.1",
                "--port",
                "4711",
                "--ctx-size",
                "512",
                "--alias",
                "ai/tiny:latest",
                "--metrics",
                "--temp",
                "0",
                "--threads",
                "1"
            ]
        );
    }

    #[test]
    fn only_a_packaged_context_size_counts() {
        let mut config = crate::store::ModelConfig {
            context_size: Some(131_072),
            ..Default::default()
        };
        config
            .gguf
            .insert("llama.context_length".into(), "131072".into());
        assert_eq!(packaged_context(&config), None, "the trained length");
        config.context_size = Some(8192);
        assert_eq!(packaged_context(&config), Some(8192));
        config.context_size = Some(1 << 40);
        assert_eq!(packaged_context(&config), None, "beyond u32");
        config.context_size = None;
        assert_eq!(packaged_context(&config), None);
        config.gguf.clear();
        config.context_size = Some(2048);
        assert_eq!(
            packaged_context(&config),
            Some(2048),
            "no trained length recorded"
        );
    }

    #[test]
    fn a_packaged_chat_template_is_used_for_chat_unless_the_flags_pick_one() {
        let with = |mode, flags: &[&str]| {
            let mut s = spec(mode, flags);
            s.chat_template = Some("/store/blobs/sha256/t".into());
            argv(&s, 1)
        };
        let args = with(Mode::Completion, &["--temp", "0"]);
        assert_eq!(
            args[args.len() - 4..],
            [
                "--chat-template-file",
                "/store/blobs/sha256/t",
                "--temp",
                "0"
            ]
        );
        for (mode, flags) in [
            (Mode::Embedding, &[][..]),
            (Mode::Completion, &["--chat-template", "chatml"][..]),
            (Mode::Completion, &["--chat-template-file=/x"][..]),
        ] {
            let args = with(mode, flags);
            assert!(
                !args.contains(&"/store/blobs/sha256/t".to_string()),
                "{args:?}"
            );
        }
        let kwargs = with(Mode::Completion, &["--chat-template-kwargs", "{}"]);
        assert!(kwargs.contains(&"--chat-template-file".to_string()));
    }

    #[test]
    fn a_packaged_projector_is_given_to_chat_runners_before_the_user_flags() {
        let with = |mode, flags: &[&str]| {
            let mut s = spec(mode, flags);
            s.chat_template = Some("/store/blobs/sha256/t".into());
            s.mmproj = Some("/store/blobs/sha256/p".into());
            argv(&s, 1)
        };
        let args = with(Mode::Completion, &["--temp", "0"]);
        assert_eq!(
            args[11..],
            [
                "--chat-template-file",
                "/store/blobs/sha256/t",
                "--mmproj",
                "/store/blobs/sha256/p",
                "--temp",
                "0"
            ]
        );
        let args = with(Mode::Embedding, &[]);
        assert!(!args.contains(&"--mmproj".to_string()), "{args:?}");
        let plain = argv(&spec(Mode::Completion, &[]), 1);
        assert!(!plain.contains(&"--mmproj".to_string()), "{plain:?}");
    }

    #[test]
    fn embedding_runners_pool_by_mean_unless_the_user_chose() {
        let args = argv(&spec(Mode::Embedding, &[]), 1);
        assert_eq!(args[11..], ["--embeddings", "--pooling", "mean"]);
        let args = argv(&spec(Mode::Embedding, &["--pooling", "cls"]), 1);
        assert_eq!(args[11..], ["--embeddings", "--pooling", "cls"]);
        let args = argv(&spec(Mode::Embedding, &["--pooling=last"]), 1);
        assert_eq!(args[11..], ["--embeddings", "--pooling=last"]);
    }

    #[test]
    fn reranking_runners_rerank_and_serve_rerank_but_not_score() {
        let args = argv(&spec(Mode::Reranking, &["--threads", "1"]), 1);
        assert_eq!(
            args[11..],
            ["--embeddings", "--reranking", "--threads", "1"]
        );
        assert!(!args.contains(&"--pooling".to_string()), "{args:?}");
        assert_eq!(ENGINE.route_path(EngineRoute::Rerank), Some("/v1/rerank"));
        assert_eq!(ENGINE.route_path(EngineRoute::Score), None);
        assert_eq!(ENGINE.route_path(EngineRoute::Tokenize), Some("/tokenize"));
    }

    #[test]
    fn an_embedding_gguf_is_not_a_reranker() {
        let mut config = ModelConfig::default();
        assert_eq!(
            ENGINE.refuses_mode(Mode::Reranking, &config),
            None,
            "nothing declared"
        );
        config.gguf.insert("bert.pooling_type".into(), "4".into());
        assert_eq!(ENGINE.refuses_mode(Mode::Reranking, &config), None, "rank");
        config.gguf.insert("bert.pooling_type".into(), "1".into());
        let why = ENGINE.refuses_mode(Mode::Reranking, &config).unwrap();
        assert!(why.contains("embedding model (pooling mean)"), "{why}");
        assert_eq!(ENGINE.refuses_mode(Mode::Embedding, &config), None);
    }

    #[test]
    fn binary_lookup_order() {
        let dir = tempfile::tempdir().unwrap();
        let exe = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        let data = dir.path().join("data");
        assert!(resolve_binary(None, Some(""), &data)
            .unwrap_err()
            .contains("install.sh"));
        let installed = data.join("engines/llama.cpp/current/bin/llama-server");
        exe(&installed);
        assert_eq!(resolve_binary(None, None, &data).unwrap(), installed);
        let on_path = dir.path().join("bin/llama-server");
        exe(&on_path);
        let path_var = dir.path().join("bin").display().to_string();
        assert_eq!(
            resolve_binary(None, Some(&path_var), &data).unwrap(),
            on_path
        );
        let configured = dir.path().join("cfg/llama");
        exe(&configured);
        assert_eq!(
            resolve_binary(Some(&configured), Some(&path_var), &data).unwrap(),
            configured
        );
        assert!(resolve_binary(Some(&dir.path().join("nope")), Some(&path_var), &data).is_err());
    }
}
