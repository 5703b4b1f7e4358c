//! Launch planning: from a model name, a mode and what the request wishes, everything the scheduler needs to
//! start a runner — the model's engine (by format; an engine named in the URL must agree), its settings
//! (`[[models]]`, then what `_configure` stored), the context size (the engine's default when nothing is asked),
//! keep-alive (forever for a pinned model), the speculative draft (a model of the store, resolved by name:
//! [`draft`]), and the memory the load is expected to take (the engine's estimate, draft included, cached per
//! model, context, flags and draft). It reads the store, the configuration and the memory probe, and nothing of
//! HTTP: the front maps a [`PlanError`] to its dialect, then asks the scheduler for a lease with the [`Plan`].
//!
//! It sits between the front and the scheduler on purpose: the scheduler decides *when* and *where* a runner
//! runs and knows no store; the front only translates.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::config::{Config, KeepAlive, ModelSettings};
use crate::engines::speculative::Draft;
use crate::engines::{DemandInput, DraftInput, EngineKind, LaunchSpec, Mode, RunnerWishes};
use crate::gpu::GpuProbe;
use crate::scheduler::{Demand, RunnerKey};
use crate::store::{name, Model, Speculative, Store, StoreError};

/// (model id, context size, runtime flags, vLLM's memory share as bits, draft id): what a prediction depends on.
pub type DemandKey = (String, u32, Vec<String>, Option<u64>, Option<String>);

/// Predictions by [`DemandKey`], so that requests for a loaded model do not redo them.
pub type DemandCache = Mutex<HashMap<DemandKey, Demand>>;

/// Predictions kept before the cache starts over.
const CACHED_DEMANDS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// No model by that name (the caller's 404).
    #[error("model {0:?} not found")]
    NotFound(String),
    /// The request cannot be served as asked (the caller's 400): wrong engine or mode, bad flags.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where to start a runner, how, and what it is expected to take.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub key: RunnerKey,
    pub launch: LaunchSpec,
    pub demand: Demand,
}

/// What planning reads.
pub struct Planner<'a> {
    pub store: &'a Store,
    pub config: &'a Config,
    pub probe: &'a dyn GpuProbe,
    /// Budgeting GPU memory (NVML), not host memory.
    pub gpu: bool,
    /// Devices the probe saw at start.
    pub devices: usize,
    pub demands: &'a DemandCache,
}

impl Planner<'_> {
    /// The model a request names.
    pub fn model(&self, requested: &str) -> Result<std::sync::Arc<Model>, PlanError> {
        self.store.get_shared(requested).map_err(|e| match e {
            StoreError::NotFound(_) => PlanError::NotFound(requested.to_string()),
            other => other.into(),
        })
    }

    /// The plan for serving `requested` in `mode`. `in_path` is an engine the URL names; `wishes` override the
    /// settings for this request.
    pub fn plan(
        &self,
        requested: &str,
        mode: Mode,
        in_path: Option<EngineKind>,
        wishes: &RunnerWishes,
    ) -> Result<Plan, PlanError> {
        let model = self.model(requested)?;
        let engine = EngineKind::for_format(model.format);
        if let Some(named) = in_path.filter(|e| *e != engine) {
            return Err(PlanError::Refused(format!(
                "model {requested} is a {} model, served by {}, not {}; use /engines/{}/v1/... or /engines/v1/...",
                model.format.as_str(),
                engine.name(),
                named.name(),
                engine.name()
            )));
        }
        if !engine.serves(mode) {
            let what = if mode == Mode::ImageGeneration {
                "cannot generate images (only diffusers models can)".to_string()
            } else {
                format!(
                    "is an image model: use /v1/images/generations, not {} requests",
                    mode.as_str()
                )
            };
            return Err(PlanError::Refused(format!("model {requested} {what}")));
        }
        if let Some(why) = engine.refuses_mode(mode, &model.config) {
            return Err(PlanError::Refused(format!("model {requested} {why}")));
        }
        let settings = settings(self.config, self.store, requested, &model, mode);
        // Drafting is for generation; the model's embedding and reranking runners load no draft.
        let draft = match (&settings.speculative, mode) {
            (Some(s), Mode::Completion) => Some(draft(self.store, engine, s)?),
            _ => None,
        };
        let asked = wishes.context_size.or(settings.context_size);
        let launch = LaunchSpec {
            model_name: model
                .tags
                .first()
                .cloned()
                .unwrap_or_else(|| model.id.clone()),
            engine,
            model_path: model.weights.clone(),
            chat_template: model.chat_template.clone(),
            mmproj: model.mmproj.clone(),
            mode,
            context_size: engine.context_size(asked, &model.config),
            // `parallel` goes first, so the model's own runtime flags may still say otherwise.
            runtime_flags: settings
                .parallel
                .and_then(|n| engine.parallel_flags(n))
                .unwrap_or_default()
                .into_iter()
                .chain(settings.runtime_flags)
                .collect(),
            keep_alive: match settings.pinned {
                true => KeepAlive::Forever,
                false => wishes
                    .keep_alive
                    .map(|k| k.capped(self.config.scheduler.max_keep_alive))
                    .or(settings.keep_alive)
                    .unwrap_or(self.config.scheduler.keep_alive),
            },
            pinned: settings.pinned,
            vllm: settings.vllm,
            draft: draft.as_ref().map(|(d, _)| d.clone()),
        };
        let demand = self.demand(&model, draft.as_ref().map(|(_, m)| &**m), &launch)?;
        Ok(Plan {
            key: RunnerKey {
                model_id: model.id.clone(),
                mode,
                draft: launch.draft.as_ref().map(|d| d.model_id.clone()),
            },
            launch,
            demand,
        })
    }

    /// The engine's estimate, computed once per [`DemandKey`]: it reads file sizes and parses
    /// metadata, which requests for a loaded model should not pay for.
    fn demand(
        &self,
        model: &Model,
        draft: Option<&Model>,
        launch: &LaunchSpec,
    ) -> Result<Demand, PlanError> {
        let key = (
            model.id.clone(),
            launch.context_size,
            launch.runtime_flags.clone(),
            launch.vllm.gpu_memory_utilization.map(f64::to_bits),
            draft.map(|d| d.id.clone()),
        );
        if let Some(d) = self.cache().get(&key) {
            return Ok(d.clone());
        }
        let input = DemandInput {
            model,
            launch,
            files_bytes: self.store.files_size(model),
            gpu: self.gpu,
            devices: self.devices,
            probe: self.probe,
            draft: draft.map(|d| DraftInput {
                model: d,
                files_bytes: self.store.files_size(d),
            }),
        };
        let demand = Demand::from(launch.engine.demand(&input).map_err(PlanError::Refused)?);
        let mut cache = self.cache();
        if cache.len() >= CACHED_DEMANDS {
            cache.clear();
        }
        cache.insert(key, demand.clone());
        Ok(demand)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<DemandKey, Demand>> {
        self.demands.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The draft that `speculative` names, for a model that runs on `engine`: a model of the store (by name, never a
/// path), of the same format, for an engine that drafts. What is refused says why, under the `speculative` key
/// (the caller's 400, both at `_configure` and when a configured draft is planned).
pub fn draft(
    store: &Store,
    engine: EngineKind,
    speculative: &Speculative,
) -> Result<(Draft, std::sync::Arc<Model>), PlanError> {
    if !engine.takes_draft() {
        return Err(PlanError::Refused(format!(
            "speculative: {} models cannot decode speculatively",
            engine.name()
        )));
    }
    let asked = &speculative.draft_model;
    let model = store.get_shared(asked).map_err(|e| match e {
        StoreError::NotFound(_) => PlanError::Refused(format!(
            "speculative.draft_model: model {asked} is not in the store (pull or import it first)"
        )),
        other => other.into(),
    })?;
    let own = EngineKind::for_format(model.format);
    if own != engine {
        return Err(PlanError::Refused(format!(
            "speculative.draft_model: {asked} is a {} model, run by {}; a draft for a {} model must run on {} too",
            model.format.as_str(),
            own.name(),
            engine.name(),
            engine.name()
        )));
    }
    let draft = Draft {
        name: model
            .tags
            .first()
            .cloned()
            .unwrap_or_else(|| model.id.clone()),
        model_id: model.id.clone(),
        path: model.weights.clone(),
        num_tokens: speculative.num_tokens,
        min_acceptance_rate: speculative.min_acceptance_rate,
    };
    Ok((draft, model))
}

/// A model's settings in `mode`: the `[[models]]` entry of the name asked for, else of any of the model's tags,
/// else defaults; then what `POST /engines/_configure` stored for the model and mode (for reranking without
/// its own, the completion mode's, as DMR does), which wins.
pub fn settings(
    config: &Config,
    store: &Store,
    requested: &str,
    model: &Model,
    mode: Mode,
) -> ModelSettings {
    let requested = name::normalize(requested).ok();
    let mut settings = requested
        .as_deref()
        .and_then(|n| config.model_named(n))
        .or_else(|| model.tags.iter().find_map(|t| config.model_named(t)))
        .cloned()
        .unwrap_or_else(|| ModelSettings::defaults_for(requested.as_deref().unwrap_or_default()));
    let stored_for = |mode: Mode| {
        store
            .runtime_config(&model.id, mode.as_str())
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read runtime configs");
                None
            })
    };
    // A reranking runner without settings of its own takes the completion mode's, as DMR does.
    let stored = stored_for(mode).or_else(|| {
        (mode == Mode::Reranking)
            .then(|| stored_for(Mode::Completion))
            .flatten()
    });
    if let Some(c) = stored {
        if c.context_size.is_some() {
            settings.context_size = c.context_size;
        }
        if let Some(flags) = c.runtime_flags {
            settings.runtime_flags = flags;
        }
        if let Some(k) = c
            .keep_alive
            .as_deref()
            .and_then(|k| KeepAlive::parse(k).ok())
        {
            // Set over the network: no longer than the admin allows.
            settings.keep_alive = Some(k.capped(config.scheduler.max_keep_alive));
        }
        if c.gpu_memory_utilization.is_some() {
            settings.vllm.gpu_memory_utilization = c.gpu_memory_utilization;
        }
        if c.hf_overrides.is_some() {
            settings.vllm.hf_overrides = c.hf_overrides;
        }
        if c.speculative.is_some() {
            settings.speculative = c.speculative;
        }
    }
    settings
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::engines::{diffusers, llamacpp, vllm};
    use crate::gpu::{DeviceMemory, FakeProbe, Snapshot};
    use crate::store::RuntimeConfig;

    const GIB: u64 = 1 << 30;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        config: Config,
        probe: FakeProbe,
        demands: DemandCache,
        src: std::path::PathBuf,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("store")).unwrap();
            let src = dir.path().join("src");
            std::fs::create_dir_all(&src).unwrap();
            let probe = FakeProbe::new(Snapshot {
                devices: vec![device(0, 80 * GIB), device(1, 40 * GIB)],
                processes: vec![],
            });
            Fixture {
                _dir: dir,
                store,
                config: Config::default(),
                probe,
                demands: DemandCache::default(),
                src,
            }
        }

        fn planner(&self, gpu: bool) -> Planner<'_> {
            Planner {
                store: &self.store,
                config: &self.config,
                probe: &self.probe,
                gpu,
                devices: 2,
                demands: &self.demands,
            }
        }

        fn gguf(&self, tag: &str) -> Model {
            let path = self.src.join("tiny.gguf");
            std::fs::write(&path, crate::store::gguf::writer::tiny_model()).unwrap();
            self.store.import(&path, tag, &mut |_| {}).unwrap()
        }

        fn files(&self, tag: &str, names: &[(&str, &[u8])]) -> Model {
            let dir = self.src.join(tag.replace(['/', ':'], "_"));
            std::fs::create_dir_all(&dir).unwrap();
            for (name, content) in names {
                std::fs::write(dir.join(name), content).unwrap();
            }
            self.store.import(&dir, tag, &mut |_| {}).unwrap()
        }

        fn safetensors(&self, tag: &str) -> Model {
            let header = br#"{"w":{"dtype":"U8","shape":[4000],"data_offsets":[0,4000]}}"#;
            let mut weights = (header.len() as u64).to_le_bytes().to_vec();
            weights.extend_from_slice(header);
            weights.resize(weights.len() + 4000, 7);
            self.files(
                tag,
                &[
                    ("config.json", br#"{"max_position_embeddings": 32768}"#),
                    ("model.safetensors", &weights),
                    ("tokenizer.json", b"{}"),
                ],
            )
        }
    }

    fn device(index: u32, total: u64) -> DeviceMemory {
        DeviceMemory {
            index,
            name: format!("gpu{index}"),
            total,
            free: total,
            used: 0,
        }
    }

    fn plan(f: &Fixture, requested: &str, mode: Mode) -> Result<Plan, PlanError> {
        f.planner(false)
            .plan(requested, mode, None, &RunnerWishes::default())
    }

    #[test]
    fn a_gguf_model_runs_on_llamacpp_with_the_default_context() {
        let f = Fixture::new();
        let model = f.gguf("ai/tiny");
        let p = plan(&f, "ai/tiny", Mode::Completion).unwrap();
        assert_eq!(p.launch.engine, llamacpp::ENGINE);
        assert_eq!(p.launch.model_name, "ai/tiny:latest");
        assert_eq!(p.launch.model_path, model.weights);
        assert_eq!(p.launch.context_size, crate::config::DEFAULT_CONTEXT_SIZE);
        assert_eq!(p.launch.keep_alive, f.config.scheduler.keep_alive);
        assert_eq!(
            p.key,
            RunnerKey {
                model_id: model.id,
                mode: Mode::Completion,
                draft: None,
            }
        );
        let Demand::Any(bytes) = p.demand else {
            panic!("{:?}", p.demand)
        };
        assert!(bytes > crate::gpu::estimate::ENGINE_OVERHEAD_CPU, "{bytes}");
    }

    #[test]
    fn wishes_beat_stored_settings_which_beat_the_configuration() {
        let mut f = Fixture::new();
        let model = f.gguf("ai/tiny");
        let mut entry = ModelSettings::defaults_for("ai/tiny:latest");
        entry.context_size = Some(1024);
        entry.runtime_flags = vec!["--temp".into(), "0".into()];
        f.config.models.push(entry);
        let p = plan(&f, "ai/tiny", Mode::Completion).unwrap();
        assert_eq!(p.launch.context_size, 1024);
        assert_eq!(p.launch.runtime_flags, ["--temp", "0"]);
        f.store
            .set_runtime_config(RuntimeConfig {
                model_id: model.id.clone(),
                mode: "completion".into(),
                context_size: Some(2048),
                runtime_flags: None,
                keep_alive: Some("10m".into()),
                gpu_memory_utilization: None,
                hf_overrides: None,
                speculative: None,
            })
            .unwrap();
        let p = plan(&f, "ai/tiny", Mode::Completion).unwrap();
        assert_eq!(p.launch.context_size, 2048);
        assert_eq!(
            p.launch.runtime_flags,
            ["--temp", "0"],
            "kept from [[models]]"
        );
        assert_eq!(p.launch.keep_alive, KeepAlive::parse("10m").unwrap());
        let wishes = RunnerWishes {
            context_size: Some(512),
            keep_alive: Some(KeepAlive::parse("1m").unwrap()),
        };
        let p = f
            .planner(false)
            .plan("ai/tiny", Mode::Completion, None, &wishes)
            .unwrap();
        assert_eq!(p.launch.context_size, 512);
        assert_eq!(p.launch.keep_alive, KeepAlive::parse("1m").unwrap());
        let embedding = plan(&f, "ai/tiny", Mode::Embedding).unwrap();
        assert_eq!(
            embedding.launch.context_size, 1024,
            "the stored config is per mode"
        );
        let rerank = plan(&f, "ai/tiny", Mode::Reranking).unwrap();
        assert_eq!(
            (rerank.launch.context_size, rerank.key.mode),
            (2048, Mode::Reranking),
            "reranking falls back to the completion mode's stored config, in a runner of its own"
        );
        f.store
            .set_runtime_config(RuntimeConfig {
                model_id: model.id.clone(),
                mode: "reranking".into(),
                context_size: Some(768),
                runtime_flags: None,
                keep_alive: None,
                gpu_memory_utilization: None,
                hf_overrides: None,
                speculative: None,
            })
            .unwrap();
        let rerank = plan(&f, "ai/tiny", Mode::Reranking).unwrap();
        assert_eq!(rerank.launch.context_size, 768, "its own config wins");
    }

    fn speculative(draft: &str) -> Speculative {
        Speculative {
            draft_model: name::normalize(draft).unwrap(),
            num_tokens: Some(8),
            min_acceptance_rate: Some(0.5),
        }
    }

    #[test]
    fn a_draft_from_the_store_joins_the_launch_the_key_and_the_demand() {
        let mut f = Fixture::new();
        let model = f.gguf("ai/tiny");
        let without = plan(&f, "ai/tiny", Mode::Completion).unwrap();
        // The draft: the same GGUF under another name is the same blob; another model is another file.
        let path = f.src.join("draft.gguf");
        let mut bytes = crate::store::gguf::writer::tiny_model();
        bytes.extend_from_slice(&[0; 4096]);
        std::fs::write(&path, &bytes).unwrap();
        let draft = f.store.import(&path, "ai/draft", &mut |_| {}).unwrap();
        let mut entry = ModelSettings::defaults_for("ai/tiny:latest");
        entry.speculative = Some(speculative("ai/draft"));
        f.config.models.push(entry);
        let with = plan(&f, "ai/tiny", Mode::Completion).unwrap();
        let d = with.launch.draft.clone().unwrap();
        assert_eq!(
            (d.path, d.num_tokens, d.min_acceptance_rate),
            (draft.weights.clone(), Some(8), Some(0.5))
        );
        assert_eq!(
            with.key.draft.as_deref(),
            Some(draft.id.as_str()),
            "another draft, another runner"
        );
        assert_eq!(with.key.model_id, model.id);
        // This GGUF has no shape to predict from: the draft counts its file size, on top of the model's.
        let (Demand::Any(a), Demand::Any(b)) = (&without.demand, &with.demand) else {
            panic!("{without:?} {with:?}")
        };
        assert_eq!(
            b - a,
            bytes.len() as u64,
            "the demand grows by the draft's size"
        );
        // Embedding and reranking runners load no draft.
        let emb = plan(&f, "ai/tiny", Mode::Embedding).unwrap();
        assert!(emb.launch.draft.is_none() && emb.key.draft.is_none());
        // _configure's draft wins over the config's: the model drafting for itself.
        f.store
            .set_runtime_config(RuntimeConfig {
                model_id: model.id.clone(),
                mode: "completion".into(),
                context_size: None,
                runtime_flags: None,
                keep_alive: None,
                gpu_memory_utilization: None,
                hf_overrides: None,
                speculative: Some(speculative("ai/tiny")),
            })
            .unwrap();
        let own = plan(&f, "ai/tiny", Mode::Completion).unwrap();
        assert_eq!(own.key.draft.as_deref(), Some(model.id.as_str()));
        assert_eq!(own.launch.draft.unwrap().path, model.weights);
    }

    #[test]
    fn a_draft_must_be_in_the_store_and_of_the_models_format() {
        let mut f = Fixture::new();
        f.gguf("ai/tiny");
        f.safetensors("ai/qwen");
        let refused = |f: &Fixture, model: &str| match plan(f, model, Mode::Completion) {
            Err(PlanError::Refused(why)) => why,
            other => panic!("{other:?}"),
        };
        let mut entry = ModelSettings::defaults_for("ai/tiny:latest");
        entry.speculative = Some(speculative("ai/nope"));
        f.config.models.push(entry);
        assert_eq!(
            refused(&f, "ai/tiny"),
            "speculative.draft_model: model ai/nope:latest is not in the store (pull or import it first)"
        );
        f.config.models[0].speculative = Some(speculative("ai/qwen"));
        let why = refused(&f, "ai/tiny");
        assert!(
            why.starts_with(
                "speculative.draft_model: ai/qwen:latest is a safetensors model, run by vllm"
            ),
            "{why}"
        );
        let mut entry = ModelSettings::defaults_for("ai/qwen:latest");
        entry.speculative = Some(speculative("ai/tiny"));
        f.config.models.push(entry);
        assert!(refused(&f, "ai/qwen").contains("is a gguf model, run by llama.cpp"));
        // A safetensors draft for a safetensors model is vLLM's --speculative-config.
        f.config.models[1].speculative = Some(speculative("ai/qwen"));
        let p = plan(&f, "ai/qwen", Mode::Completion).unwrap();
        assert!(p.launch.draft.is_some());
        let d = f.files(
            "ai/sd",
            &[("model_index.json", b"{}"), ("unet.bin", &[b'u'; 10])],
        );
        let err = draft(&f.store, diffusers::ENGINE, &speculative("ai/sd")).unwrap_err();
        assert!(
            err.to_string()
                .contains("diffusers models cannot decode speculatively"),
            "{err} {}",
            d.id
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        let mut f = Fixture::new();
        f.gguf("ai/tiny");
        assert!(matches!(
            plan(&f, "ai/nope", Mode::Completion),
            Err(PlanError::NotFound(n)) if n == "ai/nope"
        ));
        let refused = |r: Result<Plan, PlanError>| match r {
            Err(PlanError::Refused(why)) => why,
            other => panic!("{other:?}"),
        };
        assert!(
            refused(plan(&f, "ai/tiny", Mode::ImageGeneration)).contains("cannot generate images")
        );
        let wrong = f.planner(false).plan(
            "ai/tiny",
            Mode::Completion,
            Some(vllm::ENGINE),
            &RunnerWishes::default(),
        );
        assert!(refused(wrong).contains("served by llama.cpp, not vllm"));
        let mut entry = ModelSettings::defaults_for("ai/tiny:latest");
        entry.runtime_flags = vec!["--tensor-split".into(), "x,y".into()];
        f.config.models.push(entry);
        assert!(refused(plan(&f, "ai/tiny", Mode::Completion)).starts_with("runtime flags of"));
    }

    #[test]
    fn vllm_takes_its_share_of_the_largest_gpu_or_its_files_without_one() {
        let f = Fixture::new();
        let model = f.safetensors("ai/qwen");
        let p = plan(&f, "ai/qwen", Mode::Completion).unwrap();
        assert_eq!(p.launch.engine, vllm::ENGINE);
        assert_eq!(p.launch.context_size, 32768, "the model's own maximum");
        let files = f.store.files_size(&model);
        assert!(files >= 4000, "{files}");
        assert_eq!(
            p.demand,
            Demand::Any(files + files / 4 + crate::gpu::estimate::ENGINE_OVERHEAD_CPU)
        );
        f.store
            .set_runtime_config(RuntimeConfig {
                model_id: model.id.clone(),
                mode: "completion".into(),
                context_size: None,
                runtime_flags: None,
                keep_alive: None,
                gpu_memory_utilization: Some(0.5),
                hf_overrides: None,
                speculative: None,
            })
            .unwrap();
        let on_gpu = f
            .planner(true)
            .plan("ai/qwen", Mode::Completion, None, &RunnerWishes::default())
            .unwrap();
        assert_eq!(on_gpu.launch.vllm.gpu_memory_utilization, Some(0.5));
        assert_eq!(on_gpu.demand, Demand::Any(40 * GIB));
    }

    #[test]
    fn parallel_becomes_the_engines_flag_ahead_of_the_runtime_flags() {
        let mut f = Fixture::new();
        f.gguf("ai/tiny");
        let on_gpu = |f: &Fixture| {
            f.planner(true)
                .plan("ai/tiny", Mode::Completion, None, &RunnerWishes::default())
                .unwrap()
        };
        let one = on_gpu(&f);
        let mut entry = ModelSettings::defaults_for("ai/tiny:latest");
        entry.parallel = Some(8);
        entry.runtime_flags = vec!["--temp".into(), "0".into()];
        f.config.models.push(entry);
        let eight = on_gpu(&f);
        assert_eq!(
            eight.launch.runtime_flags,
            ["--parallel", "8", "--temp", "0"]
        );
        // The estimate reads --parallel from these flags (gpu::estimate's tests); this fixture's GGUF is too
        // small to have a shape, so its demand is its file size either way.
        assert_eq!(one.launch.runtime_flags, Vec::<String>::new());
    }

    #[test]
    fn pinning_flags_pin_the_demand_on_a_gpu() {
        let mut f = Fixture::new();
        f.gguf("ai/tiny");
        let mut entry = ModelSettings::defaults_for("ai/tiny:latest");
        entry.runtime_flags = vec!["--main-gpu".into(), "1".into(), "-sm".into(), "none".into()];
        f.config.models.push(entry);
        let p = f
            .planner(true)
            .plan("ai/tiny", Mode::Completion, None, &RunnerWishes::default())
            .unwrap();
        let Demand::Pinned(usage) = &p.demand else {
            panic!("{:?}", p.demand)
        };
        assert_eq!(usage.keys().copied().collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn image_models_run_on_diffusers_without_context() {
        let f = Fixture::new();
        f.files(
            "ai/sd",
            &[("model_index.json", b"{}"), ("unet.bin", &[b'u'; 100])],
        );
        let p = plan(&f, "ai/sd", Mode::ImageGeneration).unwrap();
        assert_eq!(p.launch.engine, diffusers::ENGINE);
        assert_eq!(p.launch.context_size, 0);
        let Err(PlanError::Refused(why)) = plan(&f, "ai/sd", Mode::Completion) else {
            panic!("an image model cannot chat")
        };
        assert!(why.contains("is an image model"), "{why}");
    }

    #[test]
    fn demands_are_cached_per_model_context_flags_and_share() {
        let f = Fixture::new();
        let model = f.gguf("ai/tiny");
        let first = plan(&f, "ai/tiny", Mode::Completion).unwrap().demand;
        std::fs::remove_file(Path::new(&model.weights)).unwrap();
        assert_eq!(
            plan(&f, "ai/tiny", Mode::Completion).unwrap().demand,
            first,
            "not recomputed"
        );
        assert_eq!(f.demands.lock().unwrap().len(), 1);
        f.demands.lock().unwrap().clear();
        assert_ne!(
            plan(&f, "ai/tiny", Mode::Completion).unwrap().demand,
            first,
            "recomputed without the weights"
        );
    }
}
