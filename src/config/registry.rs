//! `[registry]`: its settings, and their validation. Registry hosts are `host[:port]` (the form a model reference
//! names them in); Docker Hub's names (`docker.io`, `index.docker.io`, `registry-1.docker.io`) are one registry,
//! keyed `docker.io` ([`registry_key`]). Mirrors are URLs with their scheme (`https://mirror.lan`,
//! `http://127.0.0.1:5000`): the scheme, not the host, says whether a mirror is spoken to over TLS. CA files are
//! read and checked here, so an unreadable or invalid one refuses the configuration with its key path.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::raw::RawRegistry;
use super::{bytes, resolve_path, Errors};

/// `[registry]`: pulling and pushing models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Pulls (and pushes) that run at once; more wait.
    pub max_pulls: usize,
    /// Registry hosts (`host[:port]`) spoken to over plain HTTP, besides loopback ones.
    pub insecure: Vec<String>,
    /// Loopback registry hosts spoken to over HTTPS (a local registry that serves TLS); other loopback ones are
    /// plain HTTP.
    pub secure: Vec<String>,
    /// Mirrors tried in order before the origin, for pulls from the registry of each key ([`registry_key`]).
    pub mirrors: BTreeMap<String, Vec<Mirror>>,
    /// CA certificates trusted besides the system's for registries' and mirrors' HTTPS (and Hugging Face's).
    pub ca_certs: Vec<CaFile>,
    /// The docker `config.json` whose `auths` give credentials (default `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json`).
    pub docker_config: Option<PathBuf>,
    /// Hugging Face's endpoint for `hf.co/...` pulls (default `$HF_ENDPOINT`, else https://huggingface.co).
    pub hf_endpoint: Option<String>,
    /// The largest manifest or config blob read from a registry or archive (the CNCF registry's own cap: 4 MiB),
    /// and the largest Hugging Face listing (file tree, model info).
    pub max_manifest_bytes: u64,
}

/// The default cap on manifests and config blobs.
pub const DEFAULT_MAX_MANIFEST_BYTES: u64 = 4 << 20;

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            max_pulls: 2,
            insecure: Vec::new(),
            secure: Vec::new(),
            mirrors: BTreeMap::new(),
            ca_certs: Vec::new(),
            docker_config: None,
            hf_endpoint: None,
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
        }
    }
}

/// A pull mirror: where it is, and whether it speaks plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// `host[:port]`.
    pub host: String,
    /// `http://` (else `https://`).
    pub plain: bool,
}

impl fmt::Display for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.plain { "http" } else { "https" };
        write!(f, "{scheme}://{}", self.host)
    }
}

impl Mirror {
    /// `https://host[:port]` or `http://host[:port]` (a trailing `/` is allowed; no path, user or query: the
    /// mirror is asked for `/v2/<repository>/...` like the origin).
    pub fn parse(url: &str) -> Result<Mirror, String> {
        let (plain, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (true, rest)
        } else {
            return Err(format!(
                "{url:?} is not a mirror URL: give it with its scheme, like \"https://mirror.lan\" or \
                 \"http://127.0.0.1:5000\""
            ));
        };
        let host = rest.strip_suffix('/').unwrap_or(rest);
        check_host(host).map_err(|e| format!("{url:?}: {e}"))?;
        Ok(Mirror {
            host: host.to_string(),
            plain,
        })
    }
}

/// A CA file of `[registry] ca_certs` and the certificates in it (DER).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFile {
    pub path: PathBuf,
    pub certs: Vec<Vec<u8>>,
}

/// The key a registry host is known by in `[registry] mirrors`: Docker Hub's several names are `docker.io`.
pub fn registry_key(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        _ => host,
    }
}

/// `host[:port]`: a name or IP (IPv6 in brackets), an optional numeric port, nothing else.
fn check_host(host: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "{why}; expected host[:port], like mirror.lan or 10.0.0.5:5000"
        ))
    };
    if host.is_empty() {
        return bad("no host");
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '@' | '\\'))
    {
        return bad("only a host and port may be given (no path, user or query)");
    }
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((ip, tail)) = rest.split_once(']') else {
            return bad("not an IPv6 address in brackets");
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("not an IPv6 address in brackets");
        }
        match (tail, tail.strip_prefix(':')) {
            ("", _) => (ip, None),
            (_, Some(port)) => (ip, Some(port)),
            _ => return bad("text after the IPv6 address"),
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if name.is_empty() || (name.contains(':') && !host.starts_with('[')) {
        return bad("not a host name");
    }
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return bad("the port is not a number from 1 to 65535");
        }
    }
    Ok(())
}

/// Validates `[registry]` into `config`, adding every problem to `errors` with its key path.
pub(super) fn validate(
    registry: RawRegistry,
    base: &Path,
    errors: &mut Errors,
    config: &mut RegistryConfig,
) {
    errors.unknown("registry", &registry.unknown);
    match registry.max_pulls {
        None => {}
        Some(n) if n > 0 => config.max_pulls = n as usize,
        Some(_) => errors.push("registry.max_pulls", "must be > 0"),
    }
    config.insecure = registry.insecure.unwrap_or_default();
    let secure = registry.secure.unwrap_or_default();
    for (i, host) in secure.iter().enumerate() {
        let key = format!("registry.secure[{i}]");
        if let Err(e) = check_host(host) {
            errors.push(&key, format!("{host:?}: {e}"));
        } else if config.insecure.contains(host) {
            errors.push(&key, format!("{host} is also in registry.insecure"));
        }
    }
    config.secure = secure;
    for (registry_host, urls) in registry.mirrors.unwrap_or_default() {
        let key = format!("registry.mirrors.{}", quoted_key(&registry_host));
        if let Err(e) = check_host(&registry_host) {
            errors.push(
                &key,
                format!("{registry_host:?} is not a registry host: {e} (docker.io for Docker Hub)"),
            );
            continue;
        }
        if urls.is_empty() {
            errors.push(&key, "no mirrors listed");
        }
        let mut mirrors = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            match Mirror::parse(url) {
                Ok(m) if mirrors.contains(&m) => {
                    errors.push(format!("{key}[{i}]"), format!("{m} is listed twice"))
                }
                Ok(m) => mirrors.push(m),
                Err(e) => errors.push(format!("{key}[{i}]"), e),
            }
        }
        let normal = registry_key(&registry_host);
        if config.mirrors.contains_key(&normal) {
            errors.push(
                &key,
                format!("mirrors of {normal} are listed under two names"),
            );
        }
        config.mirrors.insert(normal, mirrors);
    }
    for (i, raw) in registry.ca_certs.unwrap_or_default().iter().enumerate() {
        let key = format!("registry.ca_certs[{i}]");
        match resolve_path(raw, base) {
            Ok(path) => match crate::tls::load_roots(&path) {
                Ok(certs) => config.ca_certs.push(CaFile { path, certs }),
                Err(e) => errors.push(&key, e),
            },
            Err(e) => errors.push(&key, e),
        }
    }
    config.hf_endpoint = registry.hf_endpoint;
    if let Some(raw) = &registry.max_manifest_bytes {
        match bytes(raw) {
            Ok(n) if n > 0 => config.max_manifest_bytes = n,
            Ok(_) => errors.push("registry.max_manifest_bytes", "must be > 0"),
            Err(e) => errors.push("registry.max_manifest_bytes", e),
        }
    }
    if let Some(p) = registry.docker_config {
        match resolve_path(&p, base) {
            Ok(p) => config.docker_config = Some(p),
            Err(e) => errors.push("registry.docker_config", e),
        }
    }
}

/// A TOML key as it is written in a dotted path: bare when it can be, else quoted (`"docker.io"`).
fn quoted_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError};
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/dmr"))
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text).unwrap_err().lines()
    }

    #[test]
    fn mirrors_keep_their_order_and_docker_hubs_names_are_one_key() {
        let c = parse(
            r#"
            [registry]
            mirrors = { "index.docker.io" = ["https://mirror.lan/", "http://10.0.0.5:5000"], "registry.lan:5000" = ["https://[::1]:8443"] }
            "#,
        )
        .unwrap();
        let hub = &c.registry.mirrors["docker.io"];
        assert_eq!(
            hub.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            ["https://mirror.lan", "http://10.0.0.5:5000"]
        );
        assert!(!hub[0].plain && hub[1].plain);
        assert_eq!(
            c.registry.mirrors["registry.lan:5000"][0].host,
            "[::1]:8443"
        );
    }

    #[test]
    fn bad_mirrors_are_refused_with_their_key_paths() {
        let lines = errors(
            r#"
            [registry]
            mirrors = { "docker.io" = ["mirror.lan", "https://m.lan/v2/", "https://m.lan:0", "https://ok.lan", "https://ok.lan/"], "https://r.lan" = ["https://m.lan"], "r2.lan" = [] }
            "#,
        );
        let has = |prefix: &str, text: &str| {
            lines
                .iter()
                .any(|l| l.starts_with(prefix) && l.contains(text))
        };
        assert!(
            has("registry.mirrors.\"docker.io\"[0]: ", "with its scheme"),
            "{lines:?}"
        );
        assert!(
            has("registry.mirrors.\"docker.io\"[1]: ", "no path"),
            "{lines:?}"
        );
        assert!(
            has("registry.mirrors.\"docker.io\"[2]: ", "port"),
            "{lines:?}"
        );
        assert!(
            has("registry.mirrors.\"docker.io\"[4]: ", "listed twice"),
            "{lines:?}"
        );
        assert!(
            has(
                "registry.mirrors.\"https://r.lan\": ",
                "not a registry host"
            ),
            "{lines:?}"
        );
        assert!(
            has("registry.mirrors.\"r2.lan\": ", "no mirrors listed"),
            "{lines:?}"
        );
        assert_eq!(lines.len(), 6, "{lines:?}");
        let lines = errors(
            "[registry]\nmirrors = { \"docker.io\" = [\"https://a\"], \"index.docker.io\" = [\"https://b\"] }",
        );
        assert!(lines[0].contains("listed under two names"), "{lines:?}");
    }

    #[test]
    fn ca_files_must_be_readable_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, include_str!("../../tests/fixtures/tls/test-cert.pem")).unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        let c = Config::parse("[registry]\nca_certs = [\"ca.pem\"]", dir.path()).unwrap();
        assert_eq!(c.registry.ca_certs.len(), 1);
        assert_eq!(c.registry.ca_certs[0].path, ca);
        assert_eq!(c.registry.ca_certs[0].certs.len(), 1);
        let lines = Config::parse(
            "[registry]\nca_certs = [\"ca.pem\", \"junk.pem\", \"missing.pem\"]",
            dir.path(),
        )
        .unwrap_err()
        .lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("registry.ca_certs[1]: ")
                && lines[0].contains("no PEM certificate")
        );
        assert!(
            lines[1].starts_with("registry.ca_certs[2]: cannot read "),
            "{lines:?}"
        );
    }

    #[test]
    fn secure_hosts_are_hosts_and_not_also_insecure() {
        let c = parse("[registry]\nsecure = [\"localhost:5443\"]").unwrap();
        assert_eq!(c.registry.secure, ["localhost:5443"]);
        let lines = errors(
            "[registry]\ninsecure = [\"localhost:5443\"]\nsecure = [\"localhost:5443\", \"https://x\"]",
        );
        assert_eq!(
            lines,
            [
                "registry.secure[0]: localhost:5443 is also in registry.insecure",
                "registry.secure[1]: \"https://x\": only a host and port may be given (no path, user or query); \
                 expected host[:port], like mirror.lan or 10.0.0.5:5000"
            ]
        );
    }

    #[test]
    fn hosts_take_names_ips_and_ports() {
        for ok in [
            "mirror.lan",
            "10.0.0.5:5000",
            "[::1]:8443",
            "[fe80::1]",
            "localhost",
        ] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", ":5000", "a:b", "a:70000", "[::1", "[zz]:1", "a b", "::1", "[::1]x",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
        assert_eq!(registry_key("Registry-1.Docker.io"), "docker.io");
        assert_eq!(registry_key("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
