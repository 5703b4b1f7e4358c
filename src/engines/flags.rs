//! Runtime flags that arrive over the network (`POST /engines/_configure`) are checked here before they can reach
//! an engine's argv, as DMR does since its PR #601: every flag must be on the engine's allowlist; no token may carry
//! a path (`/` or `\`), a NUL byte or a newline; and in `--key=value` form the value may not start with `-`
//! (unless it is a number), which would smuggle a second flag. Flags from the configuration file are trusted and
//! never come through here. Pure and table-tested. Flags that take paths (`--model`, `--log-file`, `--lora`,
//! `--mmproj`, `--grammar-file`, `--chat-template-file`, `--slot-save-path`, `--host`, `--port`, ...) are absent
//! from the allowlist on purpose.

/// llama-server flags a caller may set: threads, context and batching, offload and placement, KV cache, sampling,
/// chat templates and reasoning, speculative decoding without a draft path, embeddings and pooling, logging verbosity.
pub(super) const LLAMACPP: &[&str] = &[
    "-t",
    "--threads",
    "-tb",
    "--threads-batch",
    "--threads-http",
    "--prio",
    "--poll",
    "--cpu-strict",
    "-c",
    "--ctx-size",
    "-n",
    "--n-predict",
    "--predict",
    "-b",
    "--batch-size",
    "-ub",
    "--ubatch-size",
    "--keep",
    "--n-keep",
    "-fa",
    "--flash-attn",
    "--no-perf",
    "--no-warmup",
    "--rope-scaling",
    "--rope-scale",
    "--rope-freq-base",
    "--rope-freq-scale",
    "--yarn-orig-ctx",
    "--yarn-ext-factor",
    "--yarn-attn-factor",
    "--yarn-beta-slow",
    "--yarn-beta-fast",
    "-nkvo",
    "--no-kv-offload",
    "-ctk",
    "--cache-type-k",
    "-ctv",
    "--cache-type-v",
    "-dt",
    "--defrag-thold",
    "-np",
    "--parallel",
    "-kvu",
    "--kv-unified",
    "--no-kv-unified",
    "--swa-full",
    "-cb",
    "--cont-batching",
    "-nocb",
    "--no-cont-batching",
    "--cache-reuse",
    "--context-shift",
    "--no-context-shift",
    "--sleep-idle-seconds",
    "--mlock",
    "--no-mmap",
    "--numa",
    "-ngl",
    "--gpu-layers",
    "--n-gpu-layers",
    "-sm",
    "--split-mode",
    "-ts",
    "--tensor-split",
    "-mg",
    "--main-gpu",
    "-dev",
    "--device",
    "-fit",
    "--fit",
    "--fit-target",
    "-cmoe",
    "--cpu-moe",
    "-ncmoe",
    "--n-cpu-moe",
    "--no-op-offload",
    "--check-tensors",
    "--jinja",
    "--no-jinja",
    "--chat-template",
    "--chat-template-kwargs",
    "--reasoning-format",
    "--reasoning-budget",
    "--no-prefill-assistant",
    "-sp",
    "--special",
    "--temp",
    "--top-k",
    "--top-p",
    "--min-p",
    "--top-nsigma",
    "--typical",
    "--xtc-probability",
    "--xtc-threshold",
    "--repeat-last-n",
    "--repeat-penalty",
    "--presence-penalty",
    "--frequency-penalty",
    "--dry-multiplier",
    "--dry-base",
    "--dry-allowed-length",
    "--dry-penalty-last-n",
    "--mirostat",
    "--mirostat-lr",
    "--mirostat-ent",
    "--samplers",
    "--sampling-seq",
    "-s",
    "--seed",
    "--ignore-eos",
    "-l",
    "--logit-bias",
    "--min-keep",
    "--grammar",
    "-j",
    "--json-schema",
    "--draft-p-min",
    "--spec-draft-n-max",
    "--spec-draft-n-min",
    "--spec-draft-p-min",
    "-ngld",
    "--gpu-layers-draft",
    "--embedding",
    "--embeddings",
    "--pooling",
    "--rerank",
    "--reranking",
    "--metrics",
    "--slots",
    "--no-slots",
    "--props",
    "--webui",
    "--no-webui",
    "--api-key",
    "-to",
    "--timeout",
    "-v",
    "--verbose",
    "-lv",
    "--log-verbosity",
    "--log-colors",
    "--log-prefix",
    "--log-timestamps",
];

/// vLLM flags a caller may set (DMR's list): parallelism, lengths and batching, dtype and quantization, KV cache,
/// and switches. `--served-model-name` is left out: the supervisor names the model.
pub(super) const VLLM: &[&str] = &[
    "--tensor-parallel-size",
    "-tp",
    "--pipeline-parallel-size",
    "-pp",
    "--max-model-len",
    "--max-num-batched-tokens",
    "--max-num-seqs",
    "--block-size",
    "--swap-space",
    "--seed",
    "--dtype",
    "--quantization",
    "-q",
    "--kv-cache-dtype",
    "--enforce-eager",
    "--enable-prefix-caching",
    "--enable-chunked-prefill",
    "--disable-custom-all-reduce",
    "--tokenizer-mode",
    "--max-logprobs",
    "--revision",
    "--load-format",
    "--disable-log-stats",
    "--gpu-memory-utilization",
];

/// The allowlist of an engine, by its name in URLs. The diffusers runner takes no flags.
pub fn allowlist(engine: &str) -> Option<&'static [&'static str]> {
    super::EngineKind::from_name(engine).and_then(|e| e.flag_allowlist())
}

/// Checks flags sent over the network for `engine`; the error names the first bad token and why.
pub fn check_untrusted(engine: &str, flags: &[String]) -> Result<(), String> {
    let allowed =
        allowlist(engine).ok_or_else(|| format!("engine {engine:?} accepts no runtime flags"))?;
    // Paths first: whatever flag carries one, that is the reason to give.
    for token in flags {
        if token.contains(['/', '\\']) {
            return Err(format!("{token:?}: runtime flags may not carry paths"));
        }
        if token.contains(['\0', '\n', '\r']) {
            return Err(format!("{token:?}: control characters are not allowed"));
        }
    }
    for token in flags {
        if !token.starts_with('-') || is_number(token) {
            continue; // a value
        }
        let (key, value) = match token.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (token.as_str(), None),
        };
        if !allowed.contains(&key) {
            return Err(format!(
                "{key:?} is not an allowed runtime flag for {engine}"
            ));
        }
        if let Some(v) = value {
            if v.starts_with('-') && !is_number(v) {
                return Err(format!("{token:?}: a value may not start with '-'"));
            }
        }
    }
    Ok(())
}

fn is_number(s: &str) -> bool {
    s.parse::<f64>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(flags: &[&str]) -> Result<(), String> {
        let v: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        check_untrusted("llama.cpp", &v)
    }

    #[test]
    fn allowed_flags_and_values_pass() {
        for ok in [
            &["--temp", "0.5", "--top-k", "40"][..],
            &["-ngl", "99", "--ctx-size=8192", "--seed=-1"],
            &["--n-predict", "-1", "-ctk", "q8_0", "--jinja"],
            &["--chat-template", "chatml", "--reasoning-budget", "0"],
            &[
                "--spec-draft-n-max",
                "8",
                "--spec-draft-p-min",
                "0.6",
                "-ngld",
                "99",
            ],
            &[],
        ] {
            assert_eq!(check(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn paths_unknown_flags_and_smuggled_flags_are_refused() {
        let cases: &[(&[&str], &str)] = &[
            (&["--log-file", "/etc/x"], "may not carry paths"),
            (
                &["--model", "x.gguf"],
                "\"--model\" is not an allowed runtime flag",
            ),
            (&["--log-file", "x"], "\"--log-file\" is not an allowed"),
            (&["--chat-template-file", "t"], "is not an allowed"),
            (&["--grammar", "..\\x"], "may not carry paths"),
            (&["--seed=--log-file=x"], "a value may not start with '-'"),
            (&["--temp", "0\n--model"], "control characters"),
            (&["--host=0.0.0.0"], "\"--host\" is not an allowed"),
            // Spellings the pinned llama-server refuses at start ("the argument has been removed"): a 400, not a
            // failed load.
            (&["--draft-max", "8"], "\"--draft-max\" is not an allowed"),
            (&["-cd", "512"], "\"-cd\" is not an allowed"),
        ];
        for (flags, why) in cases {
            let err = check(flags).unwrap_err();
            assert!(err.contains(why), "{flags:?}: {err}");
        }
        assert!(check_untrusted(
            "vllm",
            &["--enforce-eager".into(), "-tp".into(), "2".into()]
        )
        .is_ok());
        assert!(check_untrusted("vllm", &["--ctx-size".into(), "8".into()]).is_err());
        assert!(check_untrusted("diffusers", &["--seed".into()]).is_err());
    }
}
