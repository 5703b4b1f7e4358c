//! Memory prediction for a GGUF model before it loads, from its metadata and the runtime flags that change it.
//! Pure. The figure is what llama-server will allocate on the device(s): offloaded weights, the KV cache and a
//! compute-buffer estimate. After a load, the measured figure replaces it (see the scheduler).
//!
//! KV cache = 2 (K and V) × offloaded layers × context × kv-heads × head-dim × bytes per element of the cache
//! type. llama-server's `--ctx-size` is the total over its `--parallel` slots (each slot gets ctx/parallel), so
//! the product uses `--ctx-size` as is; a caller that wants N slots of C tokens passes `--ctx-size N×C`, as Ollama
//! does. Compute buffers: logits and attention scores for one micro-batch, the dominant terms of llama.cpp's
//! graph without flash attention (an upper bound with it). A speculative draft is predicted the same way, with the
//! model's context and slots and its own offload and cache types (`LlamaFlags::for_draft`).

use std::collections::BTreeMap;

/// The flags that change what a llama-server allocates, read from the argv the runner will get (later flags win,
/// as in llama.cpp's parser).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaFlags {
    pub ctx_size: u64,
    /// `None`: all layers (llama.cpp's `auto`/`all`, and what fits when `--fit` is on).
    pub gpu_layers: Option<u64>,
    pub parallel: u64,
    pub cache_k: f64,
    pub cache_v: f64,
    pub ubatch: u64,
    /// `--split-mode none` keeps the model on one GPU.
    pub split_none: bool,
    /// `--tensor-split` proportions, when given.
    pub tensor_split: Vec<f64>,
    /// `--main-gpu`, when given.
    pub main_gpu: Option<u32>,
    /// A speculative draft's own `--gpu-layers-draft` and KV cache types (`--cache-type-k-draft`...): the draft
    /// takes the model's context, slots and batch, not its cache types or offload.
    pub draft_gpu_layers: Option<u64>,
    pub draft_cache_k: f64,
    pub draft_cache_v: f64,
}

/// Bytes per element of a KV cache type (block-quantised types include their scales).
fn cache_type_bytes(t: &str) -> Option<f64> {
    Some(match t {
        "f32" => 4.0,
        "f16" | "bf16" => 2.0,
        "q8_0" => 34.0 / 32.0,
        "q4_0" | "iq4_nl" => 18.0 / 32.0,
        "q4_1" => 20.0 / 32.0,
        "q5_0" => 22.0 / 32.0,
        "q5_1" => 24.0 / 32.0,
        _ => return None,
    })
}

impl LlamaFlags {
    /// Reads `argv` (the engine's whole argument list, ours then the user's). Unknown flags are the engine's
    /// business; a value we cannot read is an error naming the flag.
    pub fn parse(argv: &[String], default_ctx: u64) -> Result<LlamaFlags, String> {
        let mut f = LlamaFlags {
            ctx_size: default_ctx,
            gpu_layers: None,
            parallel: 1,
            cache_k: 2.0,
            cache_v: 2.0,
            ubatch: 512,
            split_none: false,
            tensor_split: Vec::new(),
            main_gpu: None,
            draft_gpu_layers: None,
            draft_cache_k: 2.0,
            draft_cache_v: 2.0,
        };
        let mut it = argv.iter();
        while let Some(flag) = it.next() {
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
                _ => (flag.as_str(), None),
            };
            let known = matches!(
                name,
                "-c" | "--ctx-size"
                    | "-ngl"
                    | "--gpu-layers"
                    | "--n-gpu-layers"
                    | "-np"
                    | "--parallel"
                    | "-ctk"
                    | "--cache-type-k"
                    | "-ctv"
                    | "--cache-type-v"
                    | "-ub"
                    | "--ubatch-size"
                    | "-sm"
                    | "--split-mode"
                    | "-ts"
                    | "--tensor-split"
                    | "-mg"
                    | "--main-gpu"
                    | "-ngld"
                    | "--spec-draft-ngl"
                    | "--gpu-layers-draft"
                    | "--n-gpu-layers-draft"
                    | "-ctkd"
                    | "--spec-draft-type-k"
                    | "--cache-type-k-draft"
                    | "-ctvd"
                    | "--spec-draft-type-v"
                    | "--cache-type-v-draft"
            );
            if !known {
                continue;
            }
            let value = match inline.or_else(|| it.next().cloned()) {
                Some(v) => v,
                None => return Err(format!("{name}: missing value")),
            };
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("{name}: expected a number, got {v:?}"))
            };
            match name {
                "-c" | "--ctx-size" => {
                    let n = num(&value)?;
                    // 0 means "the model's trained context", resolved by the caller.
                    f.ctx_size = if n == 0 { default_ctx } else { n };
                }
                "-ngl" | "--gpu-layers" | "--n-gpu-layers" => {
                    f.gpu_layers = match value.as_str() {
                        "auto" | "all" | "-1" => None,
                        v => Some(num(v)?),
                    }
                }
                "-ngld" | "--spec-draft-ngl" | "--gpu-layers-draft" | "--n-gpu-layers-draft" => {
                    f.draft_gpu_layers = match value.as_str() {
                        "auto" | "all" | "-1" => None,
                        v => Some(num(v)?),
                    }
                }
                "-ctkd" | "--spec-draft-type-k" | "--cache-type-k-draft" => {
                    f.draft_cache_k = cache_type_bytes(&value)
                        .ok_or_else(|| format!("{name}: unknown cache type {value:?}"))?
                }
                "-ctvd" | "--spec-draft-type-v" | "--cache-type-v-draft" => {
                    f.draft_cache_v = cache_type_bytes(&value)
                        .ok_or_else(|| format!("{name}: unknown cache type {value:?}"))?
                }
                "-np" | "--parallel" => {
                    f.parallel = match value.as_str() {
                        "-1" => 1,
                        v => num(v)?.max(1),
                    }
                }
                "-ctk" | "--cache-type-k" => {
                    f.cache_k = cache_type_bytes(&value)
                        .ok_or_else(|| format!("{name}: unknown cache type {value:?}"))?
                }
                "-ctv" | "--cache-type-v" => {
                    f.cache_v = cache_type_bytes(&value)
                        .ok_or_else(|| format!("{name}: unknown cache type {value:?}"))?
                }
                "-ub" | "--ubatch-size" => f.ubatch = num(&value)?.max(1),
                "-sm" | "--split-mode" => f.split_none = value == "none",
                "-ts" | "--tensor-split" => {
                    f.tensor_split = value
                        .split([',', '/'])
                        .map(|p| {
                            p.trim()
                                .parse::<f64>()
                                .ok()
                                .filter(|x| x.is_finite() && *x >= 0.0)
                                .ok_or_else(|| format!("{name}: bad proportion {p:?}"))
                        })
                        .collect::<Result<_, _>>()?
                }
                "-mg" | "--main-gpu" => {
                    f.main_gpu = Some(
                        value
                            .parse()
                            .map_err(|_| format!("{name}: expected a GPU index, got {value:?}"))?,
                    )
                }
                _ => {}
            }
        }
        Ok(f)
    }

    /// The flags as they apply to a speculative draft: the same context, slots and batch, with the draft's own
    /// offload and cache types.
    pub fn for_draft(&self) -> LlamaFlags {
        LlamaFlags {
            gpu_layers: self.draft_gpu_layers,
            cache_k: self.draft_cache_k,
            cache_v: self.draft_cache_v,
            ..self.clone()
        }
    }
}

/// The shape of a model, from its GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    pub layers: u64,
    pub n_embd: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub head_dim_k: u64,
    pub head_dim_v: u64,
    pub n_vocab: u64,
    pub trained_ctx: u64,
    pub weights_bytes: u64,
}

impl ModelShape {
    /// Reads `<arch>.block_count` and friends; `weights_bytes` is the GGUF file's size.
    pub fn from_gguf(meta: &BTreeMap<String, String>, weights_bytes: u64) -> Result<Self, String> {
        let arch = meta
            .get("general.architecture")
            .ok_or("no general.architecture in the GGUF metadata")?;
        let get = |key: &str| -> Option<u64> {
            meta.get(&format!("{arch}.{key}"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let need = |key: &str| get(key).ok_or(format!("no {arch}.{key} in the GGUF metadata"));
        let n_embd = need("embedding_length")?;
        let n_head = need("attention.head_count")?.max(1);
        let head_dim = n_embd / n_head;
        Ok(ModelShape {
            layers: need("block_count")?,
            n_embd,
            n_head,
            n_head_kv: get("attention.head_count_kv").unwrap_or(n_head),
            head_dim_k: get("attention.key_length").unwrap_or(head_dim),
            head_dim_v: get("attention.value_length").unwrap_or(head_dim),
            n_vocab: get("vocab_size")
                .or_else(|| {
                    meta.get("tokenizer.ggml.tokens.length")
                        .and_then(|v| v.parse().ok())
                })
                .unwrap_or(32000),
            trained_ctx: get("context_length").unwrap_or(4096),
            weights_bytes,
        })
    }
}

/// What an engine process holds besides the model in CPU mode: llama-server's code, libraries and buffers (its
/// resident memory with the 0.5 MB test model is 16.5 MiB).
pub const ENGINE_OVERHEAD_CPU: u64 = 16 << 20;
/// What an engine process holds on a GPU besides the model: the CUDA context and cuBLAS workspace (300–600 MiB on
/// recent NVIDIA GPUs, by NVIDIA's figures; replaced by the measurement after the first load).
pub const ENGINE_OVERHEAD_GPU: u64 = 512 << 20;

/// Predicted bytes, split by what they are for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prediction {
    pub weights: u64,
    pub kv_cache: u64,
    pub compute: u64,
}

impl Prediction {
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.compute
    }
}

/// What a model with `flags` allocates on the device side (all of it in CPU mode, where `gpu_layers` is moot).
pub fn predict(shape: &ModelShape, flags: &LlamaFlags, cpu_mode: bool) -> Prediction {
    // The output layer counts as one more layer to offload, as in llama.cpp's `-ngl`.
    let offloaded = if cpu_mode {
        shape.layers + 1
    } else {
        flags
            .gpu_layers
            .unwrap_or(shape.layers + 1)
            .min(shape.layers + 1)
    };
    let share = offloaded as f64 / (shape.layers + 1) as f64;
    let weights = (shape.weights_bytes as f64 * share) as u64;
    let kv_layers = offloaded.min(shape.layers) as f64;
    let per_token_per_layer = shape.n_head_kv as f64
        * (shape.head_dim_k as f64 * flags.cache_k + shape.head_dim_v as f64 * flags.cache_v);
    let kv_cache = (kv_layers * flags.ctx_size as f64 * per_token_per_layer) as u64;
    let compute = if offloaded == 0 {
        0
    } else {
        let ub = flags.ubatch.min(flags.ctx_size) as f64;
        let logits = ub * shape.n_vocab as f64 * 4.0;
        let scores = ub * flags.ctx_size as f64 * shape.n_head as f64 * 4.0 / flags.parallel as f64;
        let activations = ub * shape.n_embd as f64 * 4.0 * 8.0;
        (logits + scores + activations) as u64
    };
    Prediction {
        weights,
        kv_cache,
        compute,
    }
}

/// How a prediction spreads over `devices` GPUs: by `--tensor-split` when given, else all on one (the main GPU:
/// index 0 of the visible ones), which is how the supervisor places models by default.
pub fn spread(total: u64, flags: &LlamaFlags, devices: usize) -> Vec<u64> {
    let mut out = vec![0; devices.max(1)];
    let weights: Vec<f64> = flags.tensor_split.iter().take(out.len()).copied().collect();
    let sum: f64 = weights.iter().sum();
    if flags.split_none || weights.is_empty() || sum <= 0.0 {
        let main = flags.main_gpu.unwrap_or(0) as usize;
        let main = main.min(out.len() - 1);
        out[main] = total;
        return out;
    }
    for (slot, w) in out.iter_mut().zip(&weights) {
        *slot = (total as f64 * w / sum).ceil() as u64;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    /// Llama-3-8B's shape (Q4_K_M file, 4.9 GB).
    fn llama3_8b() -> ModelShape {
        let meta: BTreeMap<String, String> = [
            ("general.architecture", "llama"),
            ("llama.block_count", "32"),
            ("llama.embedding_length", "4096"),
            ("llama.attention.head_count", "32"),
            ("llama.attention.head_count_kv", "8"),
            ("llama.context_length", "8192"),
            ("llama.vocab_size", "128256"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        ModelShape::from_gguf(&meta, 4_920_000_000).unwrap()
    }

    #[test]
    fn kv_cache_follows_the_formula_and_the_flags() {
        let m = llama3_8b();
        assert_eq!((m.head_dim_k, m.n_head_kv), (128, 8));
        let f = LlamaFlags::parse(&argv("--ctx-size 8192"), 4096).unwrap();
        let p = predict(&m, &f, false);
        // 2 × 32 layers × 8192 × 8 heads × 128 × 2 bytes = 1 GiB, as llama.cpp prints for this model.
        assert_eq!(p.kv_cache, 1 << 30);
        assert_eq!(p.weights, 4_920_000_000);
        // q8_0 cache: 34/32 bytes per element; later flags win.
        let q8 = LlamaFlags::parse(
            &argv("--ctx-size 4096 -ctk q8_0 --cache-type-v q8_0 -c 8192"),
            4096,
        )
        .unwrap();
        assert_eq!(predict(&m, &q8, false).kv_cache, (1u64 << 30) * 34 / 32 / 2);
        // Half the layers on the GPU: half the KV, about half the weights.
        let half = LlamaFlags::parse(&argv("-c 8192 --n-gpu-layers 16"), 4096).unwrap();
        let p = predict(&m, &half, false);
        assert_eq!(p.kv_cache, 1 << 29);
        assert_eq!(p.weights, 4_920_000_000 * 16 / 33);
        // No layers: nothing on the GPU.
        let none = LlamaFlags::parse(&argv("-ngl 0"), 4096).unwrap();
        assert_eq!(predict(&m, &none, false).total(), 0);
        // ...but in CPU mode everything is in host memory whatever -ngl says.
        assert!(predict(&m, &none, true).total() > 4_920_000_000);
        // --parallel shares the context between slots: the same KV cache, smaller attention scores per slot.
        let one = predict(
            &m,
            &LlamaFlags::parse(&argv("-c 8192"), 4096).unwrap(),
            false,
        );
        let four = predict(
            &m,
            &LlamaFlags::parse(&argv("-c 8192 --parallel 4"), 4096).unwrap(),
            false,
        );
        assert_eq!(one.kv_cache, four.kv_cache);
        assert!(four.compute < one.compute, "{four:?} {one:?}");
    }

    #[test]
    fn a_draft_takes_the_models_context_with_its_own_cache_types_and_offload() {
        let m = llama3_8b();
        let f = LlamaFlags::parse(&argv("-c 8192 -ctk q8_0 -ngl 10"), 4096).unwrap();
        let draft = f.for_draft();
        assert_eq!((draft.ctx_size, draft.parallel), (8192, 1));
        assert_eq!(
            (draft.gpu_layers, draft.cache_k, draft.cache_v),
            (None, 2.0, 2.0)
        );
        // The same shape as a draft: all layers, an f16 cache of the same context.
        let p = predict(&m, &draft, false);
        assert_eq!((p.weights, p.kv_cache), (4_920_000_000, 1 << 30));
        let own = LlamaFlags::parse(
            &argv("-c 8192 --spec-draft-ngl 16 -ctkd q8_0 --cache-type-v-draft q8_0"),
            4096,
        )
        .unwrap()
        .for_draft();
        assert_eq!(own.gpu_layers, Some(16));
        // Half the layers, q8_0 (34/32 bytes, not 2): a quarter of the f16 cache and a bit.
        assert_eq!(
            predict(&m, &own, false).kv_cache,
            (1u64 << 29) * 34 / 32 / 2
        );
        assert!(LlamaFlags::parse(&argv("-ctvd q3_x"), 1)
            .unwrap_err()
            .starts_with("-ctvd"));
    }

    #[test]
    fn bad_flag_values_are_named() {
        assert_eq!(
            LlamaFlags::parse(&argv("-ctk q3_x"), 1).unwrap_err(),
            "-ctk: unknown cache type \"q3_x\""
        );
        assert_eq!(
            LlamaFlags::parse(&argv("--parallel"), 1).unwrap_err(),
            "--parallel: missing value"
        );
        assert!(LlamaFlags::parse(&argv("--ctx-size=lots"), 1)
            .unwrap_err()
            .starts_with("--ctx-size: expected a number"));
        assert!(LlamaFlags::parse(&argv("--temp 0 --jinja"), 1).is_ok());
    }

    #[test]
    fn spread_follows_tensor_split_or_the_main_gpu() {
        let f = |s: &str| LlamaFlags::parse(&argv(s), 1).unwrap();
        assert_eq!(spread(100, &f(""), 2), [100, 0]);
        assert_eq!(spread(100, &f("-mg 1"), 2), [0, 100]);
        assert_eq!(spread(100, &f("--tensor-split 3,1"), 2), [75, 25]);
        assert_eq!(spread(100, &f("-ts 1,1 -sm none -mg 1"), 2), [0, 100]);
    }
}
