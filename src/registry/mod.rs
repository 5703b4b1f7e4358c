//! Registries: pulling and pushing models as OCI artifacts with DMR's media types (through `oci-client`, the
//! successor of `oci-distribution`). A pull resolves the reference (Docker Hub and the `ai/` namespace by default,
//! `host:port/ns/name:tag` for others; loopback registries and `[registry] insecure` hosts over plain HTTP), fetches
//! the manifest and config (each under `[registry] max_manifest_bytes`) and checks them, and the sizes of layers
//! the store already has, *before* answering (401, 404, 422 and 502 are HTTP statuses), then streams each missing
//! layer into `<hex>.incomplete` — resumed with a Range request after a cut, verified against its size and digest
//! before it enters the store — and commits the model under its tag. At most
//! `max_pulls` pulls run at once and one blob is never downloaded twice at the same time. Credentials: a bearer
//! token from the request, else the user's docker `config.json` for that host, else anonymous (with the registry's
//! token flow). Progress goes to a callback as DMR's NDJSON lines are built from it. `pull` runs a whole pull
//! (registry or Hugging Face) in the background for the HTTP handlers.

pub mod auth;
mod capped;
pub mod hf;
pub mod pull;
mod spool;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::sync::Semaphore;

use crate::store::{self, name, Model, Store, StoreError};
use spool::Spool;

/// Media types asked for when fetching a manifest.
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// How long connecting to a registry, and waiting for its next bytes, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Times a layer download is resumed within one pull after its connection breaks.
const RESUMES: u32 = 3;

use crate::config::registry_key;
pub use crate::config::{Mirror, RegistryConfig};

/// Every certificate of `[registry] ca_certs` (DER).
fn roots(config: &RegistryConfig) -> impl Iterator<Item = &Vec<u8>> {
    config.ca_certs.iter().flat_map(|f| &f.certs)
}

/// Why a pull or push failed, with the HTTP status it maps to (before streaming starts).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid reference {0:?}: {1}")]
    BadReference(String, String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Registry(String),
    /// A download cut too often, or a pull cancelled: what arrived is kept for the next pull to resume.
    #[error("{0}")]
    Interrupted(String),
    /// A registry this caller may not have the daemon speak to (a loopback one, from the network).
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A progress report: bytes done of one layer, and of the whole pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub layer: String,
    pub layer_size: u64,
    pub layer_done: u64,
    pub total: u64,
    pub done: u64,
}

/// A pull whose manifest and config are fetched and checked: what is left is downloading.
pub struct Prepared {
    tag: String,
    /// The mirror the pull reads from (`None`: the reference's own registry).
    mirror: Option<Mirror>,
    /// When read from a mirror: the origin (and the request's token for it), which takes over if the mirror fails
    /// while the layers download.
    origin: Option<(Source, Option<String>)>,
    reference: Reference,
    client: Client,
    manifest: Vec<u8>,
    config: Vec<u8>,
    info: store::pulled::ManifestInfo,
}

impl Prepared {
    /// Bytes in all layers.
    pub fn total(&self) -> u64 {
        self.info.layers.iter().map(|l| l.size).sum()
    }

    pub fn layer_digests(&self) -> Vec<String> {
        self.info.layers.iter().map(|l| l.digest.clone()).collect()
    }

    /// The store tag it will get.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The mirror it is pulled from, if not the origin.
    pub fn mirror(&self) -> Option<&Mirror> {
        self.mirror.as_ref()
    }
}

/// One place a pull may read from: a mirror of the reference's registry (the reference with its mirror set, so
/// that requests go to the mirror with the same repository and tag or digest), or the registry itself.
#[derive(Debug, Clone)]
struct Source {
    reference: Reference,
    plain: bool,
    mirror: Option<Mirror>,
}

/// Where a pull of `reference` is tried, in order: each mirror `[registry] mirrors` lists for its registry, then
/// the registry itself (the second value). Pushes never use mirrors.
fn sources(config: &RegistryConfig, reference: &Reference) -> (Vec<Source>, Source) {
    let mirrors = config.mirrors.get(&registry_key(reference.registry()));
    let mirrors = mirrors
        .into_iter()
        .flatten()
        .map(|m| {
            let mut r = reference.clone();
            r.set_mirror_registry(m.host.clone());
            Source {
                reference: r,
                plain: m.plain,
                mirror: Some(m.clone()),
            }
        })
        .collect();
    let origin = Source {
        reference: reference.clone(),
        plain: plain(config, reference.resolve_registry()),
        mirror: None,
    };
    (mirrors, origin)
}

/// Whether a registry `host` is spoken to over plain HTTP: loopback ones unless `[registry] secure` names them,
/// and those `[registry] insecure` names.
fn plain(config: &RegistryConfig, host: &str) -> bool {
    (is_loopback(host) && !config.secure.iter().any(|h| h == host))
        || config.insecure.iter().any(|h| h == host)
}

pub struct Registries {
    /// Swapped by a reload (mirrors, CA certificates, hosts); `max_pulls` stays as it started.
    config: arc_swap::ArcSwap<RegistryConfig>,
    slots: Semaphore,
    /// One lock per blob being downloaded.
    blobs: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Registries {
    pub fn new(config: RegistryConfig) -> Registries {
        Registries {
            slots: Semaphore::new(config.max_pulls.max(1)),
            config: arc_swap::ArcSwap::from_pointee(config),
            blobs: Mutex::new(HashMap::new()),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> Arc<RegistryConfig> {
        self.config.load_full()
    }

    /// Applies reloaded settings to the pulls and pushes that start from now on.
    pub fn set_config(&self, config: RegistryConfig) {
        self.config.store(Arc::new(config));
    }

    /// The store tag and the registry reference for what the user typed (`ai/smollm2`, `host:5000/ns/m:tag`,
    /// `name@sha256:…`).
    pub fn resolve(&self, from: &str) -> Result<(String, Reference), RegistryError> {
        let bad = |e: String| RegistryError::BadReference(from.to_string(), e);
        let tag = name::normalize(from).map_err(|e| bad(e.to_string()))?;
        let reference: Reference = tag
            .parse()
            .map_err(|e: oci_client::ParseError| bad(e.to_string()))?;
        Ok((tag, reference))
    }

    /// Refuses a network caller a pull from or push to a loopback registry that `[registry] insecure` or `secure`
    /// does not name: otherwise anyone who can reach the API could have the daemon send HTTP requests to its own
    /// local ports (a probe of what listens there, or requests to local services that trust loopback). Hugging Face
    /// references go to the configured endpoint and pass; a bad reference is left for the pull to report. Only the
    /// reference asked for is checked: the mirrors in front of it are the operator's.
    pub fn check_caller(&self, from: &str, local: bool) -> Result<(), RegistryError> {
        if local || from.starts_with("hf.co/") || from.starts_with("huggingface.co/") {
            return Ok(());
        }
        let Ok((_, reference)) = self.resolve(from) else {
            return Ok(());
        };
        let host = reference.resolve_registry().to_string();
        let config = self.config();
        let listed = config.insecure.contains(&host) || config.secure.contains(&host);
        if is_loopback(&host) && !listed {
            return Err(RegistryError::Forbidden(format!(
                "registry {host} is on the daemon's loopback: only local callers may pull from or push to it \
                 (an operator may allow it for everyone by listing it in [registry] insecure, or secure for HTTPS)"
            )));
        }
        Ok(())
    }

    /// An oci-client for one registry or mirror, trusting `[registry] ca_certs` besides the system's roots. Built
    /// with `try_from`, not `new`, which would quietly fall back to a client without the CA certificates.
    fn client(&self, plain: bool) -> Result<Client, RegistryError> {
        let config = self.config();
        Client::try_from(ClientConfig {
            protocol: if plain {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates: roots(&config)
                .map(|der| oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Der,
                    data: der.clone(),
                })
                .collect(),
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            ..Default::default()
        })
        .map_err(|e| RegistryError::Registry(format!("cannot set up the registry client: {e}")))
    }

    /// A plain HTTP client for our own requests (capped manifest reads, Hugging Face) with the same trust roots.
    fn http(&self) -> Result<reqwest::Client, RegistryError> {
        let config = self.config();
        let certs = roots(&config)
            .map(|der| reqwest::Certificate::from_der(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                RegistryError::Registry(format!("a [registry] ca_certs certificate: {e}"))
            })?;
        reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .tls_certs_merge(certs)
            .build()
            .map_err(|e| RegistryError::Registry(format!("cannot set up the HTTP client: {e}")))
    }

    /// The credentials for `reference` (a mirror's when its mirror is set): the request's bearer token, else docker's config.json, else anonymous.
    pub fn credentials(&self, reference: &Reference, bearer: Option<&str>) -> RegistryAuth {
        if let Some(t) = bearer.filter(|t| !t.is_empty()) {
            return RegistryAuth::Bearer(t.to_string());
        }
        let path = self
            .config()
            .docker_config
            .clone()
            .or_else(auth::default_docker_config);
        match path.and_then(|p| auth::from_docker_config(&p, reference.resolve_registry())) {
            Some((user, pass)) => RegistryAuth::Basic(user, pass),
            None => RegistryAuth::Anonymous,
        }
    }

    /// Fetches and checks the manifest and config of `from`, each read with the `max_manifest_bytes` cap, and
    /// checks what `store` already holds of its layers (a cached blob must have the size the manifest gives), so
    /// that everything a commit would refuse is refused before any layer is downloaded.
    pub async fn prepare(
        &self,
        store: Arc<Store>,
        from: &str,
        bearer: Option<&str>,
    ) -> Result<Prepared, RegistryError> {
        let (tag, reference) = self.resolve(from)?;
        let (mirrors, origin) = sources(&self.config(), &reference);
        for source in mirrors {
            let mirror = source
                .mirror
                .clone()
                .map(|m| m.to_string())
                .unwrap_or_default();
            match self.prepare_from(store.clone(), &tag, source, None).await {
                Ok(p) => {
                    tracing::info!(model = tag, mirror, "pulling from mirror");
                    return Ok(Prepared {
                        origin: Some((origin, bearer.map(str::to_string))),
                        ..p
                    });
                }
                // Any failure of a mirror (down, lacks the model, refuses, sends something else) moves on.
                Err(e) => tracing::warn!(
                    model = tag, mirror, error = %e, "mirror did not serve the model; trying the next source"
                ),
            }
        }
        self.prepare_from(store, &tag, origin, bearer).await
    }

    /// [`Registries::prepare`] from one source. A mirror gets the credentials docker's `config.json` has for it,
    /// never the request's token (which is meant for the origin).
    async fn prepare_from(
        &self,
        store: Arc<Store>,
        tag: &str,
        source: Source,
        bearer: Option<&str>,
    ) -> Result<Prepared, RegistryError> {
        let Source {
            reference,
            plain,
            mirror,
        } = source;
        let client = self.client(plain)?;
        let auth = self.credentials(&reference, bearer);
        let cap = self.config().max_manifest_bytes;
        let http = self.http()?;
        let (manifest, _digest) =
            capped::manifest(&client, &http, &reference, &auth, plain, cap, tag).await?;
        let info = store::pulled::check_manifest(&manifest).map_err(RegistryError::Unsupported)?;
        let descriptor = OciDescriptor {
            digest: info.config_digest.clone(),
            media_type: info.config_media_type.clone(),
            size: i64::try_from(info.config_size).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let config = capped::config(&client, &reference, &descriptor, cap, tag).await?;
        store::pulled::check_config(&info, &config).map_err(RegistryError::Unsupported)?;
        let layers = info.layers.clone();
        on_store(move || {
            for l in &layers {
                store.has_blob_sized(&l.digest, l.size)?;
            }
            Ok(())
        })
        .await
        .map_err(refuse_size_lie)?;
        Ok(Prepared {
            tag: tag.to_string(),
            mirror,
            origin: None,
            reference,
            client,
            manifest: manifest.to_vec(),
            config,
            info,
        })
    }

    /// Downloads what the store lacks of a prepared pull and commits the model. `progress` is called at most every
    /// 100 ms or 1 MiB per layer, and at each layer's end. A failure leaves the store's models as they were;
    /// a layer cut off midway stays as `<hex>.incomplete` for the next pull to resume.
    /// A mirror that fails while the layers download (down, cut off, sending other bytes) hands over to the
    /// origin, which resumes what arrived (the same digests); a failure of our own store does not.
    pub async fn pull(
        &self,
        store: Arc<Store>,
        mut p: Prepared,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Model, RegistryError> {
        let Some((origin, bearer)) = p.origin.take() else {
            return self.pull_from(store, p, progress).await;
        };
        let (tag, mirror) = (p.tag.clone(), p.mirror.clone().map(|m| m.to_string()));
        match self.pull_from(store.clone(), p, progress).await {
            Err(e) if !matches!(e, RegistryError::Store(_)) => {
                tracing::warn!(model = tag, mirror, error = %e, "the mirror failed midway; pulling from the origin");
                let p = self
                    .prepare_from(store.clone(), &tag, origin, bearer.as_deref())
                    .await?;
                self.pull_from(store, p, progress).await
            }
            done => done,
        }
    }

    async fn pull_from(
        &self,
        store: Arc<Store>,
        p: Prepared,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Model, RegistryError> {
        let _slot = self.slot().await?;
        // Kept from the garbage collector until the commit (or the failure): what is downloaded, and what is
        // there already and will be named by the new model.
        let _protected = store.protect(
            p.info
                .layers
                .iter()
                .map(|l| l.digest.as_str())
                .chain([p.info.config_digest.as_str()]),
        );
        let total = p.total();
        let mut done = 0u64;
        for layer in &p.info.layers {
            let lock = self.blob_lock(&layer.digest);
            let _held = lock.lock().await;
            let (s, digest, size) = (store.clone(), layer.digest.clone(), layer.size);
            let cached = on_store(move || s.has_blob_sized(&digest, size))
                .await
                .map_err(refuse_size_lie)?;
            if !cached {
                self.download(&store, &p, layer, total, done, progress)
                    .await?;
            }
            done += layer.size;
            progress(Progress {
                layer: layer.digest.clone(),
                layer_size: layer.size,
                layer_done: layer.size,
                total,
                done,
            });
        }
        let Prepared {
            tag,
            manifest,
            config,
            ..
        } = p;
        on_store(move || store.commit_pulled(&tag, &manifest, &config)).await
    }

    /// Pushes the stored model `reference` to the registry its tag names (`host:port/ns/name:tag`): each layer the
    /// registry lacks is streamed from its blob, then the config and the very manifest bytes (so the model keeps
    /// its id). `progress` reports bytes uploaded.
    pub async fn push(
        &self,
        store: Arc<Store>,
        reference: &str,
        bearer: Option<&str>,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<String, RegistryError> {
        let (tag, target) = self.resolve(reference)?;
        let s = store.clone();
        let artifact = on_store(move || s.artifact(&tag)).await?;
        let _slot = self.slot().await?;
        let client = self.client(plain(&self.config(), target.resolve_registry()))?;
        let auth = self.credentials(&target, bearer);
        client
            .auth(&target, &auth, oci_client::RegistryOperation::Push)
            .await
            .map_err(|e| classify(e, Op::Push, reference))?;
        let total: u64 = artifact.layers.iter().map(|(_, size, _)| *size).sum();
        let mut done = 0u64;
        for (digest, size, path) in &artifact.layers {
            let exists = client
                .blob_exists(&target, digest)
                .await
                .map_err(|e| classify(e, Op::Push, reference))?;
            if !exists {
                let file = tokio::fs::File::open(path).await.map_err(|e| io(e, path))?;
                let before = done;
                let (layer, layer_size) = (digest.clone(), *size);
                let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let counter = sent.clone();
                let stream =
                    tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).map(move |chunk| {
                        if let Ok(c) = &chunk {
                            counter.fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        }
                        chunk.map_err(OciDistributionError::from)
                    });
                let upload = client.push_blob_stream(&target, stream, digest, Some(*size));
                tokio::pin!(upload);
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tokio::select! {
                        r = &mut upload => { r.map_err(|e| classify(e, Op::Push, reference))?; break; }
                        _ = tick.tick() => {
                            let now = sent.load(std::sync::atomic::Ordering::Relaxed);
                            progress(Progress { layer: layer.clone(), layer_size, layer_done: now, total, done: before + now });
                        }
                    }
                }
            }
            done += size;
            progress(Progress {
                layer: digest.clone(),
                layer_size: *size,
                layer_done: *size,
                total,
                done,
            });
        }
        client
            .push_blob(
                &target,
                artifact.config_bytes.clone(),
                &artifact.config_digest,
            )
            .await
            .map_err(|e| classify(e, Op::Push, reference))?;
        let media_type = if artifact.manifest_media_type.is_empty() {
            MANIFEST_TYPES[0].to_string()
        } else {
            artifact.manifest_media_type.clone()
        };
        let content_type = http::HeaderValue::from_str(&media_type).map_err(|e| {
            RegistryError::Registry(format!("manifest media type {media_type:?}: {e}"))
        })?;
        client
            .push_manifest_raw(&target, artifact.manifest_bytes.clone(), content_type)
            .await
            .map_err(|e| classify(e, Op::Push, reference))?;
        Ok(artifact.model.id)
    }

    /// The Hugging Face endpoint: `[registry] hf_endpoint`, else `$HF_ENDPOINT`, else huggingface.co.
    pub fn hf_endpoint(&self) -> String {
        self.config()
            .hf_endpoint
            .clone()
            .or_else(|| std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()))
            .unwrap_or_else(|| "https://huggingface.co".into())
    }

    /// Plans a Hugging Face pull of `from` (`hf.co/org/repo[:tag]`): the token is the request's, else `$HF_TOKEN`.
    pub async fn prepare_hf(
        &self,
        from: &str,
        bearer: Option<&str>,
    ) -> Result<(String, hf::Plan), RegistryError> {
        let bad = |e: String| RegistryError::BadReference(from.to_string(), e);
        let (repo, tag) =
            hf::parse(from).ok_or_else(|| bad("expected hf.co/ORG/REPO[:TAG]".into()))?;
        let store_tag = name::normalize(from).map_err(|e| bad(e.to_string()))?;
        let env_token = std::env::var("HF_TOKEN").ok();
        let token = bearer.filter(|t| !t.is_empty()).or(env_token.as_deref());
        let plan = hf::prepare(
            self.http()?,
            &self.hf_endpoint(),
            &repo,
            &tag,
            token,
            self.config().max_manifest_bytes,
        )
        .await?;
        Ok((store_tag, plan))
    }

    /// Runs a planned Hugging Face pull (one at a time per slot, like registry pulls).
    pub async fn pull_hf(
        &self,
        store: Arc<Store>,
        store_tag: &str,
        plan: hf::Plan,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Model, RegistryError> {
        let _slot = self.slot().await?;
        hf::pull(store, plan, store_tag, progress).await
    }

    /// One of the `max_pulls` transfer slots (pulls and pushes alike), held until dropped.
    async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, RegistryError> {
        self.slots
            .acquire()
            .await
            .map_err(|_| RegistryError::Registry("shutting down".into()))
    }

    fn blob_lock(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut blobs = self.blobs.lock().unwrap_or_else(|p| p.into_inner());
        blobs.retain(|_, l| Arc::strong_count(l) > 1);
        blobs.entry(digest.to_string()).or_default().clone()
    }

    async fn download(
        &self,
        store: &Arc<Store>,
        p: &Prepared,
        layer: &store::pulled::LayerInfo,
        total: u64,
        before: u64,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(), RegistryError> {
        let (s, digest) = (store.clone(), layer.digest.clone());
        let mut d = on_store(move || s.open_download(&digest)).await?;
        let descriptor = OciDescriptor {
            digest: layer.digest.clone(),
            media_type: layer.media_type.clone(),
            size: layer.size as i64,
            ..Default::default()
        };
        let mut attempt = 0;
        loop {
            if d.have > layer.size {
                d = store.restart_download(d)?;
            }
            if d.have == layer.size {
                // All there already (an earlier pull broke after the last byte): verify, do not ask for more.
                break;
            }
            let result = self
                .fetch_into(&mut d, p, &descriptor, layer, total, before, progress)
                .await;
            match result {
                Ok(()) if d.have == layer.size => break,
                Ok(()) => {
                    // The registry closed the body early without an error: resume like a cut.
                    tracing::warn!(
                        digest = layer.digest,
                        have = d.have,
                        size = layer.size,
                        "layer body ended early"
                    );
                }
                Err(Fetch::Fatal(
                    e @ (RegistryError::Store(_) | RegistryError::Unsupported(_)),
                )) => {
                    // The disk refused (full, read-only), or the blob is not the size its manifest declares: a
                    // partial layer there is no use and holds space.
                    store.abandon_download(d);
                    return Err(e);
                }
                Err(Fetch::Fatal(e)) => return Err(e),
                Err(Fetch::Cut(e)) => {
                    tracing::warn!(digest = layer.digest, have = d.have, error = %e, "layer download broke; resuming");
                }
            }
            attempt += 1;
            if attempt > RESUMES {
                return Err(RegistryError::Interrupted(format!(
                    "downloading {} broke {attempt} times; {} of {} bytes are kept for the next pull",
                    layer.digest, d.have, layer.size
                )));
            }
        }
        let (s, digest) = (store.clone(), layer.digest.clone());
        on_store(move || s.finish_download(d, &digest)).await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_into(
        &self,
        d: &mut store::pulled::Download,
        p: &Prepared,
        descriptor: &OciDescriptor,
        layer: &store::pulled::LayerInfo,
        total: u64,
        before: u64,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(), Fetch> {
        let to_fetch = |e| match e {
            OciDistributionError::RequestError(e) => Fetch::Cut(e.to_string()),
            other => Fetch::Fatal(classify(other, Op::Pull, &p.tag)),
        };
        // No Range header for a fresh download (some registries and proxies treat `bytes=0-` differently).
        let response = if d.have == 0 {
            BlobResponse::Full(
                p.client
                    .pull_blob_stream(&p.reference, descriptor)
                    .await
                    .map_err(to_fetch)?,
            )
        } else {
            p.client
                .pull_blob_stream_partial(&p.reference, descriptor, d.have, None)
                .await
                .map_err(to_fetch)?
        };
        let mut stream = match response {
            BlobResponse::Partial(s) => s.stream,
            BlobResponse::Full(s) => {
                if let Some(n) = s.content_length.filter(|n| *n != layer.size) {
                    // Refused before a byte is kept: the blob is not the size its manifest declares.
                    return Err(Fetch::Fatal(RegistryError::Unsupported(format!(
                        "the registry sends {n} bytes for layer {}, but its manifest declares {} bytes",
                        layer.digest, layer.size
                    ))));
                }
                if d.have > 0 {
                    tracing::info!(
                        digest = layer.digest,
                        "the registry ignored the range; starting the layer over"
                    );
                    let file = d
                        .file
                        .try_clone()
                        .map_err(|e| Fetch::Fatal(io(e, &d.path)))?;
                    file.set_len(0).map_err(|e| Fetch::Fatal(io(e, &d.path)))?;
                    d.hasher = sha2::Sha256::default();
                    d.have = 0;
                }
                s.stream
            }
        };
        let mut spool = Spool::new(
            d.file
                .try_clone()
                .map_err(|e| Fetch::Fatal(io(e, &d.path)))?,
        );
        let mut last = Instant::now();
        let mut reported = d.have;
        loop {
            let chunk = match stream.next().await {
                Some(Ok(chunk)) => Some(chunk),
                Some(Err(e)) => {
                    // Keep what arrived, so the resume asks for exactly the rest.
                    spool_out(&mut spool, d).await?;
                    return Err(Fetch::Cut(e.to_string()));
                }
                None => None,
            };
            let due = match &chunk {
                Some(chunk) => {
                    if d.have + (spool.pending() + chunk.len()) as u64 > layer.size {
                        return Err(Fetch::Fatal(RegistryError::Unsupported(format!(
                            "layer {} is larger than the {} bytes its manifest says",
                            layer.digest, layer.size
                        ))));
                    }
                    spool.queue(chunk) || last.elapsed() >= Duration::from_millis(100)
                }
                None => true,
            };
            if due {
                spool_out(&mut spool, d).await?;
            }
            if d.have > reported
                && (d.have - reported >= 1 << 20 || last.elapsed() >= Duration::from_millis(100))
            {
                reported = d.have;
                last = Instant::now();
                progress(Progress {
                    layer: layer.digest.clone(),
                    layer_size: layer.size,
                    layer_done: d.have,
                    total,
                    done: before + d.have,
                });
            }
            if chunk.is_none() {
                break;
            }
        }
        Ok(())
    }
}

/// Writes what `spool` gathered into the download, counting and hashing it once it is on disk.
async fn spool_out(spool: &mut Spool, d: &mut store::pulled::Download) -> Result<(), Fetch> {
    let (have, hasher) = (&mut d.have, &mut d.hasher);
    spool
        .flush(|bytes| {
            sha2::Digest::update(hasher, bytes);
            *have += bytes.len() as u64;
        })
        .await
        .map_err(|e| Fetch::Fatal(io(e, &d.path)))
}

/// Why one fetch of a layer stopped.
enum Fetch {
    /// The connection broke: resume.
    Cut(String),
    Fatal(RegistryError),
}

/// A cached blob whose size is not the manifest's: the manifest is refused (422), naming both sizes.
fn refuse_size_lie(e: RegistryError) -> RegistryError {
    match e {
        RegistryError::Store(StoreError::SizeMismatch {
            digest,
            declared,
            actual,
        }) => RegistryError::Unsupported(format!(
            "the manifest declares layer {digest} as {declared} bytes, but that blob holds {actual} bytes"
        )),
        other => other,
    }
}

/// Runs a store operation on the blocking pool (the store is synchronous `std::fs` code).
pub(crate) async fn on_store<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RegistryError::Registry(format!("store task failed: {e}")))?
        .map_err(RegistryError::from)
}

fn io(e: std::io::Error, path: &std::path::Path) -> RegistryError {
    RegistryError::Store(StoreError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

/// Whether `host[:port]` is a loopback address (spoken to over plain HTTP, like docker does for localhost).
fn is_loopback(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Maps oci-client's errors to ours (and so to HTTP statuses).
/// What a registry error happened during, for its message.
#[derive(Debug, Clone, Copy)]
enum Op {
    Pull,
    Push,
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::Pull => "pull",
            Op::Push => "push",
        }
    }
}

fn classify(e: OciDistributionError, op: Op, what: &str) -> RegistryError {
    let verb = op.verb();
    let by_status = |code: u16, url: &str, message: &str| match code {
        401 | 403 => RegistryError::Unauthorized(format!(
            "not authorized to {verb} {what} ({url}): {message}"
        )),
        404 => RegistryError::NotFound(format!("model {what} not found ({url})")),
        _ => RegistryError::Registry(format!(
            "the registry answered {code} to a {verb} of {what} ({url}): {message}"
        )),
    };
    match e {
        OciDistributionError::UnauthorizedError { url } => RegistryError::Unauthorized(format!(
            "not authorized to {verb} {what} ({url}): log in or pass a token"
        )),
        OciDistributionError::AuthenticationFailure(m) => {
            RegistryError::Unauthorized(format!("authentication failed for {what}: {m}"))
        }
        OciDistributionError::ImageManifestNotFoundError(m) => {
            RegistryError::NotFound(format!("model {what} not found in its registry: {m}"))
        }
        OciDistributionError::RegistryError { envelope, url } => {
            let codes: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}", e.code))
                .collect();
            if codes
                .iter()
                .any(|c| c.contains("Unauthorized") || c.contains("Denied"))
            {
                RegistryError::Unauthorized(format!(
                    "not authorized to {verb} {what} ({url}): {envelope}"
                ))
            } else if codes.iter().any(|c| c.contains("Unknown")) {
                RegistryError::NotFound(format!(
                    "model {what} not found in its registry ({url}): {envelope}"
                ))
            } else {
                RegistryError::Registry(format!("registry error for {what} ({url}): {envelope}"))
            }
        }
        OciDistributionError::ServerError { code, url, message } => by_status(code, &url, &message),
        // A status the client turned into a request error (a HEAD has no body to explain it).
        OciDistributionError::RequestError(e) if e.status().is_some() => {
            let status = e.status().unwrap_or_default();
            let url = e.url().map(|u| u.to_string()).unwrap_or_default();
            by_status(status.as_u16(), &url, &status.to_string())
        }
        OciDistributionError::UnsupportedMediaTypeError(m) => RegistryError::Unsupported(m),
        // Connection failures: reqwest's own message names only the URL; why (refused, a certificate nobody
        // trusts) is in its sources.
        OciDistributionError::RequestError(e) => {
            RegistryError::Registry(format!("{verb}ing {what}: {}", with_causes(&e)))
        }
        other => RegistryError::Registry(format!("{verb}ing {what}: {other}")),
    }
}

/// An error and its sources, `: `-separated, each said once (a wrapper often repeats its source's words).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let said = s.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_like_dmr() {
        let r = Registries::new(RegistryConfig::default());
        let (tag, reference) = r.resolve("smollm2").unwrap();
        assert_eq!(tag, "ai/smollm2:latest");
        assert_eq!(reference.resolve_registry(), "index.docker.io");
        assert_eq!(reference.repository(), "ai/smollm2");
        let (tag, reference) = r.resolve("127.0.0.1:5000/test/tiny:v1").unwrap();
        assert_eq!(tag, "127.0.0.1:5000/test/tiny:v1");
        assert_eq!(
            (
                reference.registry(),
                reference.repository(),
                reference.tag()
            ),
            ("127.0.0.1:5000", "test/tiny", Some("v1"))
        );
        assert!(r.resolve("../x").is_err());
    }

    #[test]
    fn a_cached_blob_of_another_size_refuses_the_manifest() {
        let e = refuse_size_lie(RegistryError::Store(StoreError::SizeMismatch {
            digest: "sha256:ab".into(),
            declared: 10,
            actual: 7,
        }));
        assert!(matches!(&e, RegistryError::Unsupported(_)), "{e}");
        assert_eq!(
            e.to_string(),
            "the manifest declares layer sha256:ab as 10 bytes, but that blob holds 7 bytes"
        );
        let other = refuse_size_lie(RegistryError::Store(StoreError::NotFound("x".into())));
        assert!(matches!(
            other,
            RegistryError::Store(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn a_pull_tries_its_registrys_mirrors_in_order_then_the_registry() {
        let mut config = RegistryConfig::default();
        config.mirrors.insert(
            "docker.io".into(),
            vec![
                Mirror::parse("https://m1.lan").unwrap(),
                Mirror::parse("http://127.0.0.1:5001").unwrap(),
            ],
        );
        let r = Registries::new(config.clone());
        let where_ = |s: &Source| {
            (
                s.reference.resolve_registry().to_string(),
                s.plain,
                s.reference.repository().to_string(),
                s.reference.tag().map(str::to_string),
                s.reference.digest().map(str::to_string),
            )
        };
        let (_, hub) = r.resolve("ai/smollm2:360M").unwrap();
        let (mirrors, origin) = sources(&config, &hub);
        let at = |host: &str, plain: bool| {
            (
                host.to_string(),
                plain,
                "ai/smollm2".to_string(),
                Some("360M".to_string()),
                None,
            )
        };
        assert_eq!(
            mirrors.iter().map(where_).collect::<Vec<_>>(),
            [at("m1.lan", false), at("127.0.0.1:5001", true)]
        );
        assert_eq!(
            mirrors[0].mirror.as_ref().unwrap().to_string(),
            "https://m1.lan"
        );
        assert_eq!(where_(&origin), at("index.docker.io", false));
        assert!(origin.mirror.is_none());
        // A digest stays a digest at the mirror.
        let digest = format!("sha256:{}", "ab".repeat(32));
        let (_, pinned) = r.resolve(&format!("ai/smollm2@{digest}")).unwrap();
        let (mirrors, _) = sources(&config, &pinned);
        assert_eq!(mirrors[1].reference.digest(), Some(digest.as_str()));
        // Another registry has no mirrors: its own, plain because it is on loopback.
        let (_, local) = r.resolve("127.0.0.1:5000/test/tiny:v1").unwrap();
        let (mirrors, origin) = sources(&config, &local);
        assert!(mirrors.is_empty());
        assert_eq!(
            where_(&origin),
            (
                "127.0.0.1:5000".into(),
                true,
                "test/tiny".into(),
                Some("v1".into()),
                None
            )
        );
    }

    #[test]
    fn secure_loopback_registries_are_https_and_insecure_ones_http() {
        let config = RegistryConfig {
            secure: vec!["localhost:5443".into()],
            insecure: vec!["registry.lan:5000".into()],
            ..Default::default()
        };
        assert!(!plain(&config, "localhost:5443"));
        assert!(plain(&config, "localhost:5000"));
        assert!(plain(&config, "registry.lan:5000"));
        assert!(!plain(&config, "registry.lan"));
    }

    #[test]
    fn network_callers_reach_only_the_loopback_registries_an_operator_listed() {
        let r = Registries::new(RegistryConfig {
            insecure: vec!["127.0.0.1:5000".into()],
            secure: vec!["localhost:5443".into()],
            mirrors: [(
                "127.0.0.1:6000".to_string(),
                vec![Mirror::parse("http://127.0.0.1:5000").unwrap()],
            )]
            .into(),
            ..Default::default()
        });
        for ok in [
            "127.0.0.1:5000/a/b:v1",
            "localhost:5443/a/b:v1",
            "registry.lan/a/b:v1",
        ] {
            assert!(r.check_caller(ok, false).is_ok(), "{ok}");
        }
        // A reference whose mirror is listed is still a loopback reference nobody listed.
        for refused in ["127.0.0.1:6000/a/b:v1", "localhost:5000/a/b:v1"] {
            assert!(
                matches!(
                    r.check_caller(refused, false),
                    Err(RegistryError::Forbidden(_))
                ),
                "{refused}"
            );
            assert!(r.check_caller(refused, true).is_ok());
        }
    }

    #[test]
    fn connection_failures_say_why() {
        #[derive(Debug, thiserror::Error)]
        #[error("error sending request")]
        struct Outer(#[source] Middle);
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Middle(#[source] std::io::Error);
        let inner = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        assert_eq!(
            with_causes(&Outer(Middle(inner))),
            "error sending request: client error (Connect): invalid peer certificate: UnknownIssuer"
        );
    }

    #[test]
    fn loopback_registries_are_plain_http() {
        for h in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["index.docker.io", "10.0.0.1:5000", "registry.example.com"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
