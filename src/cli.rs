//! The command line for humans, like `docker model`: each subcommand is one call to a running daemon's API
//! (`--host`, `$DMR_HOST`, default `http://127.0.0.1:12434`). `pull` and `push` draw a progress bar per layer
//! with sizes and rates from DMR's NDJSON progress lines; `run MODEL PROMPT` streams the answer; `run MODEL`
//! alone is an interactive chat (stdin lines; `/bye` or end of input quits). Errors are one line on stderr and a
//! non-zero exit. `package --gguf` reads its files here and uploads them (`package.rs`): no command gives the
//! daemon a path on this machine.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::api::native;
use crate::api::openai::{ChatMessage, ChatRequest, SseDecoder, SseItem};

mod bench;
mod package;

/// A client subcommand, as clap parses it (main.rs flattens these into the binary's subcommands).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Action {
    /// Pull a model from a registry (ai/smollm2, host:port/ns/name:tag), with a progress bar per layer.
    Pull { model: String },
    /// Push a model to the registry its name gives.
    Push { model: String },
    /// Give a model another name (the name a push goes to).
    Tag { source: String, target: String },
    /// Package a local GGUF file under a name (the files are read here and uploaded: the daemon needs no access
    /// to them; a temporary copy is made under $TMPDIR), or repackage a model (--from) with another context size;
    /// push it with --push.
    Package {
        #[arg(long, required_unless_present = "from", conflicts_with = "from")]
        gguf: Option<String>,
        /// A model in the store, repackaged with its layers shared.
        #[arg(long)]
        from: Option<String>,
        target: String,
        /// A license file, packaged as DMR's license layer.
        #[arg(long, conflicts_with = "from")]
        license: Option<String>,
        /// A Jinja chat template, packaged as DMR's chat-template layer.
        #[arg(long, conflicts_with = "from")]
        chat_template: Option<String>,
        /// A multimodal projector (a GGUF file: the image encoder of a vision model), packaged as DMR's mmproj
        /// layer; llama.cpp is started with it (`--mmproj`) and the model accepts images in chat.
        #[arg(long, conflicts_with = "from")]
        mmproj: Option<String>,
        /// The context size recorded in the model's config (what engines get unless configured otherwise).
        #[arg(long)]
        context_size: Option<u64>,
        #[arg(long)]
        push: bool,
    },
    /// Write a model to a tar archive (DMR's export format: its blobs and manifest), to load on another machine.
    Export {
        model: String,
        /// The archive to write (written whole or not at all); without it, standard output unless that is a
        /// terminal.
        #[arg(long, short)]
        output: Option<String>,
    },
    /// Load a model archive that export wrote (kept untagged, known by its id, unless given --tag).
    Load {
        /// The archive ("-" for standard input).
        input: String,
        #[arg(long)]
        tag: Option<String>,
    },
    /// Delete every model in the store (asks first, unless --force).
    Purge {
        #[arg(long, short)]
        force: bool,
    },
    /// List the models in the store.
    #[command(alias = "list")]
    Ls {
        /// Only the model ids.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Remove models (a tag, or a model by id; --force for a model with several tags or one with
    /// requests in flight; an idle loaded one is unloaded first).
    Rm {
        #[arg(required = true)]
        models: Vec<String>,
        #[arg(long, short)]
        force: bool,
    },
    /// Show a model's details.
    Inspect { model: String },
    /// List running engines.
    Ps,
    /// Remove an engine that `engines install` put in the data directory (refused while it runs a model). Run as
    /// `dmr-supervisor engines uninstall NAME`.
    #[command(hide = true)]
    UninstallBackend { name: String },
    /// Measure a model: streamed chats at each concurrency, time to first token and tokens per second, beside
    /// the engine's own rate; a table, or --json.
    Bench {
        model: String,
        /// Tokens each chat generates.
        #[arg(long, default_value_t = 64)]
        tokens: u32,
        /// Concurrency levels, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4, 8])]
        concurrency: Vec<usize>,
        /// Chats per level (at least the level's concurrency).
        #[arg(long, default_value_t = 8)]
        requests: usize,
        /// One JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Stop idle engines of these models (or --all).
    Unload {
        models: Vec<String>,
        #[arg(long)]
        all: bool,
    },
    /// Set a model's context size and runtime flags (kept across restarts).
    Configure {
        #[arg(long)]
        context_size: Option<i64>,
        /// One flag or value per use: --runtime-flag=--temp --runtime-flag=0.5
        #[arg(long = "runtime-flag", allow_hyphen_values = true)]
        runtime_flags: Vec<String>,
        model: String,
        /// Flags after `--` are runtime flags too.
        #[arg(last = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// Show the daemon's and engines' logs.
    Logs {
        #[arg(long)]
        model: Option<String>,
        #[arg(long, short)]
        follow: bool,
    },
    /// Is the daemon running, and which engines are installed.
    Status,
    /// Chat with a model: one prompt, or an interactive chat without one.
    Run {
        model: String,
        prompt: Option<String>,
        /// Stop each answer after this many tokens.
        #[arg(long)]
        max_tokens: Option<u32>,
    },
}

/// Why a command failed: printed as one line.
#[derive(Debug)]
pub struct Failure(pub String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

pub struct Cli {
    host: String,
    http: reqwest::Client,
}

impl Cli {
    /// A client of the daemon at `host`; `ca_cert`: a PEM file of CA certificates to trust for an `https://` host
    /// (the daemon's `[server] tls_cert` signed by a private CA), besides the system's.
    pub fn new(host: &str, ca_cert: Option<&std::path::Path>) -> Result<Cli, Failure> {
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(path) = ca_cert {
            let certs = crate::tls::load_roots(path)
                .map_err(|e| Failure(format!("--ca-cert {}: {e}", path.display())))?
                .iter()
                .map(|der| reqwest::Certificate::from_der(der))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Failure(format!("--ca-cert {}: {e}", path.display())))?;
            builder = builder.tls_certs_merge(certs);
        }
        Ok(Cli {
            host: host.trim_end_matches('/').to_string(),
            http: builder.build().map_err(|e| Failure(with_causes(&e)))?,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.host)
    }

    /// Sends a request; a non-2xx answer is a failure carrying the daemon's message.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, Failure> {
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                // The causes say whether nothing listens or, over https, the certificate was refused.
                Failure(format!(
                    "cannot reach dmr-supervisor at {}: is it running? ({})",
                    self.host,
                    with_causes(&e)
                ))
            } else {
                Failure(with_causes(&e))
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        Err(Failure(
            error_message(&text).unwrap_or_else(|| format!("{status}")),
        ))
    }

    /// `export`: streams the archive into a temp file beside `output` and renames it into place once the daemon
    /// has sent all of it, so a failed export leaves no partial archive behind.
    async fn export(&self, model: &str, output: Option<&str>) -> Result<(), Failure> {
        if output.is_none() && std::io::stdout().is_terminal() {
            return Err(Failure(
                "refusing to write an archive to a terminal: give --output FILE or redirect".into(),
            ));
        }
        let resp = self
            .send(self.http.get(self.url(&format!("/models/{model}/export"))))
            .await?;
        let Some(output) = output else {
            let mut out = std::io::stdout().lock();
            copy_body(resp, &mut out).await?;
            return Ok(out.flush()?);
        };
        let target = std::path::Path::new(output);
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        let mut temp = tempfile::Builder::new()
            .prefix(".export-")
            .tempfile_in(dir)
            .map_err(|e| Failure(format!("{}: {e}", dir.display())))?;
        let written = copy_body(resp, &mut temp).await?;
        temp.as_file().sync_all()?;
        temp.persist(target)
            .map_err(|e| Failure(format!("{output}: {}", e.error)))?;
        println!("Exported {model} to {output} ({})", human(written));
        Ok(())
    }

    /// `package --gguf`: the files are read here, packaged into a temporary store on this machine and uploaded
    /// as a model archive to `POST /models/load?tag=TARGET` (see `package.rs`), so the daemon is never given a
    /// path and needs no access to them.
    async fn package_and_upload(
        &self,
        model: String,
        license: Option<String>,
        chat_template: Option<String>,
        mmproj: Option<String>,
        target: &str,
    ) -> Result<(), Failure> {
        // Before copying a model of many GB: is the daemon there at all?
        self.send(self.http.get(self.url("/version"))).await?;
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            if let Ok(style) = ProgressStyle::with_template(
                "Packaging [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        } else {
            ProgressBar::hidden()
        };
        let tag = target.to_string();
        let reporter = bar.clone();
        let packaged = tokio::task::spawn_blocking(move || {
            let sources = package::Sources {
                model: std::path::Path::new(&model),
                license: license.as_deref().map(std::path::Path::new),
                chat_template: chat_template.as_deref().map(std::path::Path::new),
                mmproj: mmproj.as_deref().map(std::path::Path::new),
            };
            package::Packaged::build(&sources, &tag, &mut |p| {
                reporter.set_length(p.total);
                reporter.set_position(p.current);
            })
        })
        .await
        .map_err(|e| Failure(format!("packaging stopped: {e}")))??;
        bar.finish_and_clear();
        let (id, name) = (packaged.id().to_string(), packaged.name().to_string());
        let mut url = reqwest::Url::parse(&self.url("/models/load"))?;
        url.query_pairs_mut().append_pair("tag", &name);
        let request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            // The daemon can answer before it has read this body's last chunk (it stops at the archive's first end
            // block) and then close the connection: pooling it races the repackage or push that follows (seen
            // once as "error sending request").
            .header(reqwest::header::CONNECTION, "close")
            .body(packaged.into_body());
        let done = follow_progress(self.send(request).await?, "Uploaded").await?;
        if done.id.as_deref().is_some_and(|loaded| loaded != id) {
            return Err(Failure(format!(
                "the daemon stored the upload as {}, not {id}",
                done.id.unwrap_or_default()
            )));
        }
        println!("Model packaged successfully as \"{name}\": {id}");
        Ok(())
    }

    pub async fn run(&self, action: Action) -> Result<(), Failure> {
        match action {
            Action::Pull { model } => {
                if names_a_path(&model) {
                    // The daemon would take it as a path on *its* machine; the files are on this one.
                    return Err(Failure(format!(
                        "{model} is a file path, not a registry reference: upload a local model with \
                         `package --gguf {model} NAME`"
                    )));
                }
                let body = native::CreateRequest {
                    bearer_token: std::env::var("HF_TOKEN")
                        .ok()
                        .filter(|_| name_is_hf(&model)),
                    from: model,
                    name: None,
                    license: None,
                    chat_template: None,
                    mmproj: None,
                };
                let resp = self
                    .send(self.http.post(self.url("/models/create")).json(&body))
                    .await?;
                progress(resp, "Downloaded").await
            }
            Action::Push { model } => {
                let resp = self
                    .send(
                        self.http
                            .post(self.url(&format!("/models/{model}/push")))
                            .json(&native::PushRequest { bearer_token: None }),
                    )
                    .await?;
                progress(resp, "Uploaded").await
            }
            Action::Tag { source, target } => {
                let (repo, tag) = split_tag(&target);
                let mut url = reqwest::Url::parse(&self.url(&format!("/models/{source}/tag")))?;
                url.query_pairs_mut().append_pair("repo", repo);
                if let Some(t) = tag {
                    url.query_pairs_mut().append_pair("tag", t);
                }
                let resp = self.send(self.http.post(url)).await?;
                let v: Value = resp.json().await?;
                println!(
                    "Model \"{source}\" tagged successfully with \"{}\"",
                    v["target"].as_str().unwrap_or(&target)
                );
                Ok(())
            }
            Action::Package {
                gguf,
                from,
                target,
                license,
                chat_template,
                mmproj,
                context_size,
                push,
            } => {
                let source = match (gguf, from) {
                    (Some(gguf), _) => {
                        self.package_and_upload(gguf, license, chat_template, mmproj, &target)
                            .await?;
                        // A context size is set by repackaging the upload onto its own name.
                        target.clone()
                    }
                    (None, Some(from)) => from,
                    (None, None) => return Err(Failure("--gguf or --from is required".into())),
                };
                if context_size.is_some() || source != target {
                    let body = native::RepackageRequest {
                        target: Some(target.clone()),
                        context_size,
                    };
                    let answer: Value = self
                        .send(
                            self.http
                                .post(self.url(&format!("/models/{source}/repackage")))
                                .json(&body),
                        )
                        .await?
                        .json()
                        .await?;
                    println!("{}", answer["message"].as_str().unwrap_or_default());
                }
                if push {
                    let resp = self
                        .send(
                            self.http
                                .post(self.url(&format!("/models/{target}/push")))
                                .json(&native::PushRequest { bearer_token: None }),
                        )
                        .await?;
                    progress(resp, "Uploaded").await?;
                }
                Ok(())
            }
            Action::Export { model, output } => self.export(&model, output.as_deref()).await,
            Action::Load { input, tag } => {
                let body = if input == "-" {
                    let stdin = tokio::io::stdin();
                    reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(stdin))
                } else {
                    let file = tokio::fs::File::open(&input)
                        .await
                        .map_err(|e| Failure(format!("{input}: {e}")))?;
                    reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file))
                };
                let mut url = reqwest::Url::parse(&self.url("/models/load"))?;
                if let Some(t) = &tag {
                    url.query_pairs_mut().append_pair("tag", t);
                }
                let resp = self.send(self.http.post(url).body(body)).await?;
                progress(resp, "Loaded").await
            }
            Action::Ls { quiet } => {
                let models: Vec<Value> = self
                    .send(self.http.get(self.url("/models")))
                    .await?
                    .json()
                    .await?;
                if quiet {
                    for m in &models {
                        println!("{}", short_id(m["id"].as_str().unwrap_or_default()));
                    }
                    return Ok(());
                }
                let mut rows = vec![vec![
                    "MODEL NAME".to_string(),
                    "PARAMETERS".into(),
                    "QUANTIZATION".into(),
                    "ARCHITECTURE".into(),
                    "MODEL ID".into(),
                    "CREATED".into(),
                    "SIZE".into(),
                ]];
                for m in &models {
                    let c = &m["config"];
                    let tags: Vec<&str> = m["tags"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    for name in if tags.is_empty() {
                        vec!["<none>"]
                    } else {
                        tags
                    } {
                        rows.push(vec![
                            name.to_string(),
                            c["parameters"].as_str().unwrap_or("").into(),
                            c["quantization"].as_str().unwrap_or("").into(),
                            c["architecture"].as_str().unwrap_or("").into(),
                            short_id(m["id"].as_str().unwrap_or_default()),
                            ago(m["created"].as_i64().unwrap_or(0)),
                            c["size"].as_str().unwrap_or("").into(),
                        ]);
                    }
                }
                print_table(&rows);
                Ok(())
            }
            Action::Purge { force } => {
                if !force {
                    eprint!("This deletes every model in the store. Continue? [y/N] ");
                    let mut answer = String::new();
                    std::io::stdin().read_line(&mut answer)?;
                    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                        eprintln!(); // what a terminal's echo would have ended the line with
                    }
                    if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
                        return Err(Failure("purge cancelled".into()));
                    }
                }
                let removed: Vec<Value> = self
                    .send(self.http.delete(self.url("/models/purge")))
                    .await?
                    .json()
                    .await?;
                let deleted = removed.iter().filter(|r| r["Deleted"].is_string()).count();
                println!("Purged: {deleted} model(s) deleted");
                Ok(())
            }
            Action::Rm { models, force } => {
                for m in models {
                    let path = format!("/models/{m}{}", if force { "?force=true" } else { "" });
                    let removed: Vec<Value> = self
                        .send(self.http.delete(self.url(&path)))
                        .await?
                        .json()
                        .await?;
                    for r in removed {
                        if let Some(t) = r["Untagged"].as_str() {
                            println!("Untagged: {t}");
                        }
                        if let Some(d) = r["Deleted"].as_str() {
                            println!("Deleted: {d}");
                        }
                    }
                }
                Ok(())
            }
            Action::Inspect { model } => {
                let v: Value = self
                    .send(self.http.get(self.url(&format!("/models/{model}"))))
                    .await?
                    .json()
                    .await?;
                println!("{}", serde_json::to_string_pretty(&v)?);
                Ok(())
            }
            Action::Ps => {
                let runners: Vec<Value> = self
                    .send(self.http.get(self.url("/engines/ps")))
                    .await?
                    .json()
                    .await?;
                let mut rows = vec![vec![
                    "MODEL NAME".to_string(),
                    "BACKEND".into(),
                    "MODE".into(),
                    "STATE".into(),
                    "IN FLIGHT".into(),
                    "MEMORY".into(),
                    "UNTIL".into(),
                ]];
                for r in &runners {
                    let state = if r["queued"].as_bool() == Some(true) {
                        "queued"
                    } else if r["loading"].as_bool() == Some(true) {
                        "loading"
                    } else {
                        "ready"
                    };
                    let memory = r["measured_memory"]
                        .as_u64()
                        .or(r["predicted_memory"].as_u64())
                        .unwrap_or(0);
                    rows.push(vec![
                        r["model_name"].as_str().unwrap_or("").into(),
                        r["backend_name"].as_str().unwrap_or("").into(),
                        r["mode"].as_str().unwrap_or("").into(),
                        state.into(),
                        r["in_flight"].to_string(),
                        human(memory),
                        r["keep_alive"].as_str().unwrap_or("").into(),
                    ]);
                }
                print_table(&rows);
                Ok(())
            }
            Action::Bench {
                model,
                tokens,
                concurrency,
                requests,
                json,
            } => {
                if concurrency.is_empty() || concurrency.contains(&0) || tokens == 0 {
                    return Err(Failure(
                        "--concurrency levels and --tokens must be at least 1".into(),
                    ));
                }
                let url = self.url("/engines/v1/chat/completions");
                let levels = bench::run(&self.http, &url, &model, tokens, &concurrency, requests)
                    .await
                    .map_err(Failure)?;
                if json {
                    let doc =
                        serde_json::json!({"model": model, "tokens": tokens, "levels": levels});
                    println!("{doc}");
                } else {
                    print!("{}", bench::table(&model, tokens, &levels));
                }
                Ok(())
            }
            Action::UninstallBackend { name } => {
                let body = native::UninstallBody { backend: name };
                let v: serde_json::Value = self
                    .send(
                        self.http
                            .post(self.url("/engines/uninstall-backend"))
                            .json(&body),
                    )
                    .await?
                    .json()
                    .await?;
                println!("{}", v["message"].as_str().unwrap_or_default());
                Ok(())
            }
            Action::Unload { models, all } => {
                if models.is_empty() && !all {
                    return Err(Failure("name models to unload, or --all".into()));
                }
                let body = native::UnloadRequest {
                    all,
                    backend: None,
                    models,
                };
                let v: native::UnloadResponse = self
                    .send(self.http.post(self.url("/engines/unload")).json(&body))
                    .await?
                    .json()
                    .await?;
                println!("Unloaded {} model runner(s)", v.unloaded_runners);
                Ok(())
            }
            Action::Configure {
                model,
                context_size,
                mut runtime_flags,
                rest,
            } => {
                runtime_flags.extend(rest);
                let body = native::ConfigureRequest {
                    model: Some(model.clone()),
                    context_size,
                    runtime_flags: Some(runtime_flags).filter(|f| !f.is_empty()),
                    ..Default::default()
                };
                self.send(self.http.post(self.url("/engines/_configure")).json(&body))
                    .await?;
                println!("Configured {model}");
                Ok(())
            }
            Action::Logs { model, follow } => {
                let mut url = reqwest::Url::parse(&self.url("/logs"))?;
                if let Some(m) = &model {
                    url.query_pairs_mut().append_pair("model", m);
                }
                if follow {
                    url.query_pairs_mut().append_pair("follow", "1");
                }
                let resp = self.send(self.http.get(url)).await?;
                let mut body = resp.bytes_stream();
                let mut out = std::io::stdout();
                while let Some(chunk) = body.next().await {
                    out.write_all(&chunk?)?;
                    out.flush()?;
                }
                Ok(())
            }
            Action::Status => {
                let version: Value = self
                    .send(self.http.get(self.url("/version")))
                    .await?
                    .json()
                    .await?;
                println!(
                    "dmr-supervisor {} is running at {}",
                    version["version"].as_str().unwrap_or("?"),
                    self.host
                );
                let engines: Value = self
                    .send(self.http.get(self.url("/engines/status")))
                    .await?
                    .json()
                    .await?;
                for (name, status) in engines.as_object().into_iter().flatten() {
                    println!("{name}: {}", status.as_str().unwrap_or(""));
                }
                Ok(())
            }
            Action::Run {
                model,
                prompt,
                max_tokens,
            } => match prompt {
                Some(p) => {
                    let mut messages = vec![ChatMessage::text("user", p)];
                    self.chat(&model, &mut messages, max_tokens).await?;
                    Ok(())
                }
                None => self.interactive(&model, max_tokens).await,
            },
        }
    }

    /// Streams one answer to stdout and returns it.
    async fn chat(
        &self,
        model: &str,
        messages: &mut Vec<ChatMessage>,
        max_tokens: Option<u32>,
    ) -> Result<String, Failure> {
        let body = ChatRequest {
            model: model.to_string(),
            messages: messages.clone(),
            stream: true,
            max_tokens: max_tokens.map(i64::from),
            ..Default::default()
        };
        let resp = self
            .send(
                self.http
                    .post(self.url("/engines/v1/chat/completions"))
                    .json(&body),
            )
            .await?;
        let mut stream = resp.bytes_stream();
        let (mut sse, mut answer) = (SseDecoder::default(), String::new());
        let mut out = std::io::stdout();
        while let Some(chunk) = stream.next().await {
            for item in sse.push(&chunk?) {
                let delta = match item {
                    SseItem::Chunk(c) => {
                        c.choices.into_iter().next().and_then(|c| c.delta?.content)
                    }
                    SseItem::Error(message) => return Err(Failure(message)),
                    SseItem::Done => None,
                };
                if let Some(delta) = delta {
                    answer.push_str(&delta);
                    out.write_all(delta.as_bytes())?;
                    out.flush()?;
                }
            }
        }
        println!();
        messages.push(ChatMessage::text("assistant", answer.clone()));
        Ok(answer)
    }

    async fn interactive(&self, model: &str, max_tokens: Option<u32>) -> Result<(), Failure> {
        let tty = std::io::stdin().is_terminal();
        if tty {
            eprintln!("Interactive chat with {model}. Type /bye to quit.");
        }
        let mut messages = Vec::new();
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        loop {
            if tty {
                print!("> ");
                std::io::stdout().flush()?;
            }
            let Some(line) = lines.next() else { break };
            let line = line?;
            let line = line.trim();
            if line == "/bye" {
                break;
            }
            if line.is_empty() {
                continue;
            }
            messages.push(ChatMessage::text("user", line));
            self.chat(model, &mut messages, max_tokens).await?;
        }
        Ok(())
    }
}

/// Renders DMR's NDJSON progress (see [`follow_progress`]) and prints the final line's message.
async fn progress(resp: reqwest::Response, verb: &str) -> Result<(), Failure> {
    let done = follow_progress(resp, verb).await?;
    match done.id {
        Some(id) => println!("{}: {id}", done.message),
        None => println!("{}", done.message),
    }
    Ok(())
}

/// How a progress stream ended well: its `success` line's message, and the model's id when it gives one.
struct Finished {
    message: String,
    id: Option<String>,
}

/// Renders DMR's NDJSON progress: one bar per layer with bytes, rate and time left (plain lines at each tenth
/// without a terminal); the `success` line, or the `error` line's message as the failure.
async fn follow_progress(resp: reqwest::Response, verb: &str) -> Result<Finished, Failure> {
    let bars = MultiProgress::with_draw_target(if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let mut layers: HashMap<String, ProgressBar> = HashMap::new();
    let mut last_percent = None;
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut outcome: Option<Result<Finished, String>> = None;
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            match v["type"].as_str() {
                Some("progress") => {
                    let (id, size, current) = (
                        v["layer"]["id"].as_str().unwrap_or("").to_string(),
                        v["layer"]["size"].as_u64().unwrap_or(0),
                        v["layer"]["current"].as_u64().unwrap_or(0),
                    );
                    let bar = layers.entry(id.clone()).or_insert_with(|| {
                        let b = bars.add(ProgressBar::new(size));
                        b.set_style(style.clone());
                        b.set_prefix(short_id(&id));
                        b
                    });
                    bar.set_position(current);
                    let (total, done) = (
                        v["total"].as_u64().unwrap_or(0),
                        v["message"].as_str().unwrap_or(""),
                    );
                    if !std::io::stderr().is_terminal() && total > 0 {
                        // Without a terminal: a plain line at each new 10 %, and always at 100 %.
                        let all: u64 = layers.values().map(|b| b.position()).sum();
                        let percent = (all * 100 / total.max(1)).min(100);
                        if last_percent.line_due(percent) {
                            eprintln!(
                                "{verb}: {percent:>3}% {} of {} ({done})",
                                human(all),
                                human(total)
                            );
                            last_percent = Some(percent);
                        }
                    }
                }
                Some("success") => {
                    outcome = Some(Ok(Finished {
                        message: v["message"].as_str().unwrap_or("done").to_string(),
                        id: v["id"].as_str().map(str::to_string),
                    }))
                }
                Some("error") => {
                    outcome = Some(Err(v["message"].as_str().unwrap_or("failed").to_string()))
                }
                _ => {}
            }
        }
    }
    for b in layers.values() {
        b.finish();
    }
    match outcome {
        Some(Ok(done)) => Ok(done),
        Some(Err(m)) => Err(Failure(m.trim_start_matches("Error: ").to_string())),
        None => Err(Failure(
            "the daemon closed the stream before it finished".into(),
        )),
    }
}

/// Writes a response body to `out` as it arrives; how many bytes. A body the daemon cuts short is a failure.
async fn copy_body(resp: reqwest::Response, out: &mut dyn Write) -> Result<u64, Failure> {
    let mut stream = resp.bytes_stream();
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Failure(format!("export cut short: {e}")))?;
        out.write_all(&chunk)?;
        written += chunk.len() as u64;
    }
    Ok(written)
}

trait PercentStep {
    fn line_due(&self, percent: u64) -> bool;
}

impl PercentStep for Option<u64> {
    /// A new line is due: none yet, a tenth further on, or the end.
    fn line_due(&self, percent: u64) -> bool {
        match self {
            None => true,
            Some(p) => percent / 10 > p / 10 || (percent == 100 && *p < 100),
        }
    }
}

/// An error with its causes, `a: b: c` (reqwest's own message hides why a request failed).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text
}

/// The message of an error body in any of the daemon's dialects (plain text, OpenAI, Ollama).
fn error_message(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v) => v["error"]["message"]
            .as_str()
            .or(v["error"].as_str())
            .map(str::to_string)
            .or(Some(text.to_string())),
        Err(_) => Some(text.to_string()),
    }
}

/// Whether `POST /models/create` would take `from` as a path on the daemon's machine rather than a reference to
/// pull (the daemon's rule).
fn names_a_path(from: &str) -> bool {
    let from = from.trim();
    from.starts_with('/') || from.starts_with('.') || from.ends_with(".gguf")
}

fn name_is_hf(model: &str) -> bool {
    model.starts_with("hf.co/") || model.starts_with("huggingface.co/")
}

/// `repo[:tag]`, the colon after the last slash being the tag's.
fn split_tag(target: &str) -> (&str, Option<&str>) {
    let last_slash = target.rfind('/').map_or(0, |i| i + 1);
    match target[last_slash..].rfind(':') {
        Some(i) => (
            &target[..last_slash + i],
            Some(&target[last_slash + i + 1..]),
        ),
        None => (target, None),
    }
}

fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

fn human(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

fn ago(unix: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if unix <= 0 {
        return String::new();
    }
    let d = Duration::from_secs((now - unix).max(0) as u64);
    format!("{} ago", indicatif::HumanDuration(d))
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_at_the_tag_colon_not_the_port() {
        assert_eq!(
            split_tag("127.0.0.1:5000/ns/m:v1"),
            ("127.0.0.1:5000/ns/m", Some("v1"))
        );
        assert_eq!(
            split_tag("127.0.0.1:5000/ns/m"),
            ("127.0.0.1:5000/ns/m", None)
        );
        assert_eq!(split_tag("ai/x"), ("ai/x", None));
    }

    #[test]
    fn error_bodies_of_every_dialect_give_their_message() {
        assert_eq!(
            error_message(r#"{"error":{"message":"nope","type":"x"}}"#).as_deref(),
            Some("nope")
        );
        assert_eq!(
            error_message(r#"{"error":"gone"}"#).as_deref(),
            Some("gone")
        );
        assert_eq!(
            error_message("model not found\n").as_deref(),
            Some("model not found")
        );
        assert_eq!(error_message(""), None);
    }

    #[test]
    fn pull_refuses_what_the_daemon_would_read_as_its_own_path() {
        for path in ["/home/me/m.gguf", "./m.gguf", "../models", "m.gguf", " /x "] {
            assert!(names_a_path(path), "{path}");
        }
        for reference in [
            "ai/smollm2",
            "localhost:5000/ns/m:v1",
            "hf.co/org/repo:Q4_K_M",
        ] {
            assert!(!names_a_path(reference), "{reference}");
        }
    }

    #[test]
    fn failures_name_their_causes_once() {
        let inner = std::io::Error::other("connection reset");
        let outer = std::io::Error::other(Wrapped(inner));
        assert_eq!(with_causes(&outer), "sending: connection reset");
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("sending")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn plain_progress_lines_every_tenth() {
        assert!(None.line_due(0));
        assert!(!Some(10).line_due(19));
        assert!(Some(10).line_due(20));
        assert!(Some(95).line_due(100));
        assert!(!Some(100).line_due(100));
    }
}
