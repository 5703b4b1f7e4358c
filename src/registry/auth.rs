//! Credentials from the user's docker `config.json` (`{"auths": {"HOST": {"auth": base64("user:pass")}}}`, or
//! `username`/`password` fields), as `docker login` writes them. Credential helpers (`credsStore`) are not run.

use std::path::{Path, PathBuf};

use base64::Engine;

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_docker_config() -> Option<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => Some(PathBuf::from(dir).join("config.json")),
        None => dirs::home_dir().map(|h| h.join(".docker/config.json")),
    }
}

/// The (user, password) stored for `registry` (`host[:port]`; Docker Hub under any of its names).
pub fn from_docker_config(path: &Path, registry: &str) -> Option<(String, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let doc: serde_json::Value = serde_json::from_str(&text).ok()?;
    let auths = doc.get("auths")?.as_object()?;
    let hub = ["index.docker.io", "docker.io", "registry-1.docker.io"].contains(&registry);
    let keys: Vec<String> = if hub {
        vec![
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
            "docker.io".into(),
        ]
    } else {
        vec![
            registry.into(),
            format!("https://{registry}"),
            format!("http://{registry}"),
        ]
    };
    let entry = keys.iter().find_map(|k| auths.get(k.as_str()))?;
    if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
        return Some((u.to_string(), p.to_string()));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(entry.get("auth")?.as_str()?)
        .ok()?;
    let (user, pass) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_found_by_host_and_docker_hubs_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "dXNlcjpwYTpzcw=="},
                          "127.0.0.1:5000": {"username": "bob", "password": "pw"}}}"#,
        )
        .unwrap();
        assert_eq!(
            from_docker_config(&path, "index.docker.io"),
            Some(("user".into(), "pa:ss".into()))
        );
        assert_eq!(
            from_docker_config(&path, "127.0.0.1:5000"),
            Some(("bob".into(), "pw".into()))
        );
        assert_eq!(from_docker_config(&path, "ghcr.io"), None);
        assert_eq!(
            from_docker_config(&dir.path().join("none.json"), "ghcr.io"),
            None
        );
    }
}
