//! Models the configuration declares beyond their settings: by reference (`[[models]] from`, pulled in the
//! background when the store lacks it), with `aliases` (more tags on the same model), `preload`ed (loaded once in
//! the store) or `pinned`. One task per such model brings it up: obtain it (a pull, retried with backoff while it
//! fails, the other models serving meanwhile), tag its aliases, load it. [`Declared`] keeps where each one stands,
//! for readiness (`/readyz` and `/health` answer 503 until every preloaded model has loaded, so a router sends
//! nothing before), for `STATUS=` (systemd) and for the log. A reload retires the tasks of models removed or
//! changed and starts the new ones ([`apply`]).
//!
//! A model by reference already in the store is not pulled again (like Kubernetes' `IfNotPresent`): a box
//! restarts offline, and `dmr-supervisor pull` updates a model on purpose.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::ModelSettings;
use crate::engines::{EngineKind, Mode, RunnerWishes};
use crate::proxy::App;
use crate::registry::pull::Pull;
use crate::registry::Progress;
use crate::store::{Model, Store, StoreError};

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often a pull's progress is logged (and at each tenth of it).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Where a declared model stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Not in the store yet; its pull is about to start.
    Waiting,
    Pulling {
        done: u64,
        total: u64,
    },
    /// The last attempt failed (to pull, or to load); the next one is `retry_in` after it.
    Failed {
        error: String,
        attempts: u32,
        retry_in: Duration,
    },
    Loading,
    /// In the store with its aliases, and loaded when it is preloaded.
    Ready,
}

impl Phase {
    fn describe(&self) -> String {
        match self {
            Phase::Waiting => "waiting".into(),
            Phase::Pulling { done, total } if *total > 0 => {
                format!("pulling {}%", done * 100 / total)
            }
            Phase::Pulling { .. } => "pulling".into(),
            Phase::Failed {
                error,
                attempts,
                retry_in,
            } => format!(
                "failed {attempts}x ({error}); retrying in {}s",
                retry_in.as_secs()
            ),
            Phase::Loading => "loading".into(),
            Phase::Ready => "ready".into(),
        }
    }
}

/// A declared model not ready yet, as `/readyz` lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NotReady {
    pub model: String,
    pub state: String,
}

struct Entry {
    phase: Phase,
    preload: bool,
    /// Ends this model's task (a reload that removes or changes it, or shutdown).
    cancel: CancellationToken,
}

/// Where every declared model stands.
#[derive(Default)]
pub struct Declared {
    entries: Mutex<BTreeMap<String, Entry>>,
}

impl Declared {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, model: &str, phase: Phase) {
        if let Some(e) = self.lock().get_mut(model) {
            e.phase = phase;
        }
    }

    /// Preloaded models that have not loaded yet: while any is left, the node is not ready.
    pub fn not_ready(&self) -> Vec<NotReady> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.preload && e.phase != Phase::Ready)
            .map(|(name, e)| NotReady {
                model: name.clone(),
                state: e.phase.describe(),
            })
            .collect()
    }

    /// What systemd's `STATUS=` adds about declared models not ready yet, e.g. "ai/smollm2 pulling 45%".
    pub fn status(&self) -> Option<String> {
        let busy: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.phase != Phase::Ready)
            .map(|(name, e)| format!("{name} {}", e.phase.describe()))
            .collect();
        (!busy.is_empty()).then(|| busy.join(", "))
    }

    /// Registers `m` and returns its cancellation, ending the task of an earlier registration of the same name.
    fn register(&self, m: &ModelSettings, parent: &CancellationToken) -> CancellationToken {
        let cancel = parent.child_token();
        let old = self.lock().insert(
            m.name.clone(),
            Entry {
                phase: Phase::Waiting,
                preload: m.preload,
                cancel: cancel.clone(),
            },
        );
        if let Some(old) = old {
            old.cancel.cancel();
        }
        cancel
    }

    fn retire(&self, name: &str) {
        if let Some(old) = self.lock().remove(name) {
            old.cancel.cancel();
        }
    }
}

/// The wait before attempt `attempts + 1`: 1 s, doubling, at most five minutes.
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

/// The mode a preload starts the model in: the first its engine serves (completion, else embedding, reranking or
/// images).
fn preload_mode(model: &Model) -> Option<Mode> {
    let engine = EngineKind::for_format(model.format);
    Mode::ALL
        .into_iter()
        .find(|m| engine.serves(*m) && engine.refuses_mode(*m, &model.config).is_none())
}

/// Starts a task for every declared model of the running configuration (start-up).
pub fn start(app: &Arc<App>) {
    let config = app.config();
    for m in config.models.iter().filter(|m| m.is_declared()) {
        spawn(app, m.clone());
    }
}

/// Applies a reload: models no longer declared (or gone) lose their task and the aliases the old configuration
/// gave them; added and changed ones get a fresh task.
pub fn apply(app: &Arc<App>, old: &[ModelSettings], new: &[ModelSettings], changed: &[String]) {
    for o in old.iter().filter(|o| o.is_declared()) {
        let now = new.iter().find(|m| m.name == o.name);
        if now.is_none_or(|m| !m.is_declared()) {
            app.declared.retire(&o.name);
        }
        let kept = now.map(|m| m.aliases.as_slice()).unwrap_or_default();
        for alias in o.aliases.iter().filter(|a| !kept.contains(a)) {
            untag_alias(app, &o.name, alias);
        }
    }
    for m in new.iter().filter(|m| m.is_declared()) {
        let added = !old.iter().any(|o| o.name == m.name && o.is_declared());
        if added || changed.contains(&m.name) {
            spawn(app, m.clone());
        }
    }
}

/// Removes `alias` when it still names `model` (never another model that took the tag since).
fn untag_alias(app: &App, model: &str, alias: &str) {
    let same = match (app.store.get_shared(model), app.store.get_shared(alias)) {
        (Ok(a), Ok(b)) => a.id == b.id,
        _ => false,
    };
    if !same {
        return;
    }
    match app.store.delete(alias, false) {
        Ok(_) => tracing::info!(model, alias, "alias removed"),
        Err(e) => tracing::warn!(model, alias, error = %e, "cannot remove alias"),
    }
}

fn spawn(app: &Arc<App>, m: ModelSettings) {
    let cancel = app.declared.register(&m, &app.shutdown);
    let app = app.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = bring_up(&app, &m) => {}
            _ = cancel.cancelled() => tracing::debug!(model = m.name, "declared model's task ended"),
        }
    });
}

/// Obtains the model, tags its aliases and loads it when preloaded, retrying each step with backoff.
async fn bring_up(app: &Arc<App>, m: &ModelSettings) {
    let model = retry(app, m, "cannot obtain model", || obtain(app, m)).await;
    if !m.aliases.is_empty() {
        let (store, id, name, aliases) = (
            app.store.clone(),
            model.id.clone(),
            m.name.clone(),
            m.aliases.clone(),
        );
        let tagged = tokio::task::spawn_blocking(move || {
            for alias in &aliases {
                tag(&store, &id, &name, alias);
            }
        });
        let _ = tagged.await;
    }
    if m.preload {
        app.declared.set(&m.name, Phase::Loading);
        retry(app, m, "cannot preload model", || preload(app, m, &model)).await;
        tracing::info!(model = m.name, pinned = m.pinned, "model preloaded");
    }
    app.declared.set(&m.name, Phase::Ready);
}

async fn retry<T, F, Fut>(app: &App, m: &ModelSettings, what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut attempts = 0;
    loop {
        match attempt().await {
            Ok(t) => return t,
            Err(error) => {
                attempts += 1;
                let retry_in = backoff(attempts);
                tracing::error!(model = m.name, error, attempts, retry_in = ?retry_in, "{what}; retrying");
                app.declared.set(
                    &m.name,
                    Phase::Failed {
                        error,
                        attempts,
                        retry_in,
                    },
                );
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

/// The model from the store, pulled first when it is declared by reference and not there yet.
async fn obtain(app: &Arc<App>, m: &ModelSettings) -> Result<Arc<Model>, String> {
    match app.store.get_shared(&m.name) {
        Ok(model) => return Ok(model),
        Err(StoreError::NotFound(_)) if m.from.is_some() => {}
        Err(StoreError::NotFound(_)) => return Err("not in the store".into()),
        Err(e) => return Err(app.store.redact(&e.to_string())),
    }
    let from = m.from.as_deref().expect("checked above");
    let model = match app.store.get_shared(from) {
        Ok(model) => model,
        Err(_) => Arc::new(pull(app, m, from).await?),
    };
    // Under its configured name too, when that is not the reference.
    if !model.tags.contains(&m.name) {
        let (store, id, name) = (app.store.clone(), model.id.clone(), m.name.clone());
        let tagged = tokio::task::spawn_blocking(move || store.tag(&id, &name))
            .await
            .map_err(|e| e.to_string())?;
        tagged.map_err(|e| app.store.redact(&e.to_string()))?;
    }
    app.store
        .get_shared(&m.name)
        .map_err(|e| app.store.redact(&e.to_string()))
}

async fn pull(app: &Arc<App>, m: &ModelSettings, from: &str) -> Result<Model, String> {
    app.declared.set(&m.name, Phase::Waiting);
    let pull = Pull::prepare(&app.registries, &app.store, from, None)
        .await
        .map_err(|e| app.store.redact(&e.to_string()))?;
    let total = pull.total();
    let logged = Mutex::new((std::time::Instant::now(), 0u64));
    let report = |p: Progress| {
        app.declared.set(
            &m.name,
            Phase::Pulling {
                done: p.done,
                total: p.total,
            },
        );
        let tenth = p.done * 10 / p.total.max(1);
        let mut last = logged.lock().unwrap_or_else(|e| e.into_inner());
        if tenth > last.1 || last.0.elapsed() >= LOG_EVERY {
            *last = (std::time::Instant::now(), tenth);
            tracing::info!(model = m.name, done = p.done, total = p.total, "pulling");
        }
    };
    tracing::info!(
        model = m.name,
        from,
        bytes = total,
        "pulling declared model"
    );
    pull.run(&app.registries, &app.store, &report)
        .await
        .map_err(|e| app.store.redact(&e.to_string()))
}

/// Tags `alias` on the model, unless it already names it; a tag of another model is left alone (logged).
fn tag(store: &Store, id: &str, name: &str, alias: &str) {
    match store.get_shared(alias) {
        Ok(other) if other.id == id => {}
        Ok(other) => tracing::error!(
            model = name,
            alias,
            other = other.tags.first().map(String::as_str).unwrap_or(&other.id),
            "alias not set: it names another model"
        ),
        Err(_) => match store.tag(id, alias) {
            Ok(_) => tracing::info!(model = name, alias, "alias set"),
            Err(e) => tracing::error!(model = name, alias, error = %e, "cannot set alias"),
        },
    }
}

/// Loads the model (a lease taken and given back at once: the runner stays for its keep-alive, forever when
/// pinned).
async fn preload(app: &Arc<App>, m: &ModelSettings, model: &Model) -> Result<(), String> {
    let mode = preload_mode(model).ok_or("no mode of its engine serves it")?;
    crate::proxy::inference::acquire(
        app,
        &Default::default(),
        &m.name,
        mode,
        &RunnerWishes::default(),
    )
    .await
    .map(drop)
    .map_err(|e| e.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(name: &str, preload: bool) -> ModelSettings {
        ModelSettings {
            preload,
            from: Some(name.into()),
            ..ModelSettings::defaults_for(name)
        }
    }

    #[test]
    fn backoff_doubles_from_a_second_to_five_minutes() {
        let secs: Vec<u64> = [1, 2, 3, 4, 9, 10, 40].map(|a| backoff(a).as_secs()).into();
        assert_eq!(secs, [1, 2, 4, 8, 256, 300, 300]);
    }

    #[test]
    fn readiness_waits_for_preloaded_models_only() {
        let d = Declared::default();
        let root = CancellationToken::new();
        d.register(&settings("ai/a:latest", true), &root);
        d.register(&settings("ai/b:latest", false), &root);
        assert_eq!(
            d.not_ready(),
            [NotReady {
                model: "ai/a:latest".into(),
                state: "waiting".into()
            }]
        );
        d.set(
            "ai/b:latest",
            Phase::Pulling {
                done: 45,
                total: 100,
            },
        );
        d.set(
            "ai/a:latest",
            Phase::Failed {
                error: "registry unreachable".into(),
                attempts: 3,
                retry_in: backoff(3),
            },
        );
        assert_eq!(
            d.status().as_deref(),
            Some("ai/a:latest failed 3x (registry unreachable); retrying in 4s, ai/b:latest pulling 45%")
        );
        d.set("ai/a:latest", Phase::Ready);
        assert!(d.not_ready().is_empty());
        d.set("ai/b:latest", Phase::Ready);
        assert_eq!(d.status(), None);
    }

    #[test]
    fn registering_again_or_retiring_ends_the_old_task() {
        let d = Declared::default();
        let root = CancellationToken::new();
        let first = d.register(&settings("ai/a:latest", true), &root);
        let second = d.register(&settings("ai/a:latest", true), &root);
        assert!(first.is_cancelled() && !second.is_cancelled());
        d.retire("ai/a:latest");
        assert!(second.is_cancelled());
        assert!(d.not_ready().is_empty());
        // Shutdown ends them all.
        let third = d.register(&settings("ai/a:latest", true), &root);
        root.cancel();
        assert!(third.is_cancelled());
    }
}
