//! A pull from start to end, whatever its source: [`Pull::prepare`] asks the source what it would send (a
//! registry's manifest and config, or a Hugging Face repository's file list), so that its refusals are known before
//! anything streams; [`Pull::start`] runs it in the background, reporting [`PullEvent`]s through the caller's
//! encoder (DMR's and Ollama's NDJSON are built in the HTTP handlers), cancelling when the caller stops listening,
//! and sweeping what a refused pull left. Error messages are redacted by the store (no store paths leave).

use std::sync::Arc;

use super::{hf, Prepared, Progress, Registries, RegistryError};
use crate::store::Store;

/// What a running pull reports.
pub enum PullEvent {
    Progress(Progress),
    /// Finished: whether every blob was already there (nothing downloaded), or why it failed.
    Done(Result<bool, String>),
}

/// A pull whose source has answered: a registry's manifest and config, or a Hugging Face repository's file list.
pub enum Pull {
    Registry(Box<Prepared>),
    HuggingFace(String, hf::Plan),
}

impl Pull {
    /// Resolves `from` (`hf.co/...` goes to Hugging Face, anything else to a registry) and fetches what must be
    /// known before streaming, so that its failures are the caller's statuses: a bad reference, 401, 404, a
    /// source that is not a model, an unreachable registry.
    pub async fn prepare(
        registries: &Registries,
        store: &Arc<Store>,
        from: &str,
        bearer: Option<&str>,
    ) -> Result<Pull, RegistryError> {
        if from.starts_with("hf.co/") || from.starts_with("huggingface.co/") {
            let (tag, plan) = registries.prepare_hf(from, bearer).await?;
            return Ok(Pull::HuggingFace(tag, plan));
        }
        let prepared = registries.prepare(store.clone(), from, bearer).await?;
        Ok(Pull::Registry(Box::new(prepared)))
    }

    /// Bytes to download at most.
    pub fn total(&self) -> u64 {
        match self {
            Pull::Registry(p) => p.total(),
            Pull::HuggingFace(_, plan) => plan.total(),
        }
    }

    /// Runs the pull to its end, reporting progress: logs the outcome, and sweeps what a refused pull left.
    pub async fn run(
        self,
        registries: &Registries,
        store: &Arc<Store>,
        report: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<crate::store::Model, RegistryError> {
        let tag = self.tag().to_string();
        let result = match self {
            Pull::Registry(p) => registries.pull(store.clone(), *p, report).await,
            Pull::HuggingFace(tag, plan) => {
                registries.pull_hf(store.clone(), &tag, plan, report).await
            }
        };
        match &result {
            Ok(model) => tracing::info!(model = tag, id = model.id, "model pulled"),
            Err(e @ (RegistryError::Unsupported(_) | RegistryError::Store(_))) => {
                tracing::warn!(model = tag, error = %e, "pull refused");
                // A refusal of what the registry sent, and the pull's protection of its blobs is over: what
                // it left that no model names goes.
                let store = store.clone();
                let _ =
                    tokio::task::spawn_blocking(move || store.collect_orphans("a refused pull"))
                        .await;
            }
            Err(e) => {
                // A cut or a registry that failed midway: the layers that arrived stay for the next pull (the
                // start-up collection removes them if none comes).
                tracing::warn!(model = tag, error = %e, "pull failed");
            }
        }
        result
    }

    /// The tag the pulled model gets.
    pub fn tag(&self) -> &str {
        match self {
            Pull::Registry(p) => p.tag(),
            Pull::HuggingFace(tag, _) => tag,
        }
    }

    /// Runs the pull in the background; `encode` turns each event into a line of the returned channel. A caller
    /// that goes away (the receiver dropped) cancels the pull: nothing is committed, and what arrived of the
    /// current layer stays as `.incomplete` for the next pull to resume.
    pub fn start(
        self,
        registries: Arc<Registries>,
        store: Arc<Store>,
        encode: impl Fn(PullEvent) -> Vec<u8> + Send + Sync + 'static,
    ) -> tokio::sync::mpsc::UnboundedReceiver<Vec<u8>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let cached = match &self {
                Pull::Registry(p) => {
                    let (s, digests) = (store.clone(), p.layer_digests());
                    tokio::task::spawn_blocking(move || digests.iter().all(|d| s.has_blob(d)))
                        .await
                        .unwrap_or(false)
                }
                Pull::HuggingFace(..) => false,
            };
            let tag = self.tag().to_string();
            let report = |p: Progress| {
                let _ = tx.send(encode(PullEvent::Progress(p)));
            };
            let result = tokio::select! {
                r = self.run(&registries, &store, &report) => r,
                _ = tx.closed() => {
                    tracing::warn!(model = tag, "pull cancelled: the client went away");
                    Err(RegistryError::Interrupted("cancelled: the client went away".into()))
                }
            };
            let _ = tx.send(encode(PullEvent::Done(
                result
                    .map(|_| cached)
                    .map_err(|e| store.redact(&e.to_string())),
            )));
        });
        rx
    }
}
