//! Model references: parsing and normalising what a user types to name a model
//! (`smollm2`, `ai/smollm2:Q4_K_M`, `hf.co/org/repo`, `sha256:…`, a 12-hex id prefix) into
//! either a canonical tag (`ai/smollm2:latest`, following Docker Model Runner's
//! `normalizeModelName`) or a model id. It is pure string handling: it must not know about the
//! store, the file system or the network, and it must reject anything that could escape a
//! directory if a caller ever joined it onto a path.

use thiserror::Error;

/// Longest reference accepted, in bytes (before normalisation).
const MAX_LEN: usize = 256;
/// Longest tag accepted, in characters (Docker's limit).
const MAX_TAG_LEN: usize = 128;

/// A parsed model reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A normalised tag such as `ai/smollm2:latest` (or `name@sha256:<64hex>`).
    Tag(String),
    /// `sha256:<64hex>`, or a bare 12..=64 hex id prefix (lower-case, without `sha256:`).
    Id(String),
}

/// Why a reference was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("model reference is empty")]
    Empty,
    #[error("model reference is {0} bytes long; at most {MAX_LEN} are allowed")]
    TooLong(usize),
    #[error("model reference {reference:?} contains the forbidden character {ch:?}")]
    ForbiddenChar { reference: String, ch: char },
    #[error("model reference {0:?} must not start or end with '/'")]
    EdgeSlash(String),
    #[error("model reference {0:?} has an empty path component")]
    EmptyComponent(String),
    #[error("model reference {0:?} has a '.' or '..' path component")]
    DotComponent(String),
    #[error("model reference {reference:?} has an invalid path component {component:?} (expected [a-z0-9]+ joined by single '.', '_' or '-')")]
    BadComponent {
        reference: String,
        component: String,
    },
    #[error("model reference {reference:?} has an invalid registry host {host:?}")]
    BadHost { reference: String, host: String },
    #[error("model reference {reference:?} has an invalid tag {tag:?} (expected [A-Za-z0-9_][A-Za-z0-9._-]{{0,127}})")]
    BadTag { reference: String, tag: String },
    #[error("model reference {0:?} has an invalid digest (expected sha256:<64 hex digits>)")]
    BadDigest(String),
    #[error("{0:?} names a model by id or digest, not by tag")]
    NotATag(String),
}

/// Parses a user-supplied reference into a normalised tag or an id.
pub fn parse_reference(s: &str) -> Result<Reference, NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(NameError::TooLong(s.len()));
    }
    if let Some(ch) = s
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '%' || *c == '\\')
    {
        let reference = s.to_string();
        return Err(NameError::ForbiddenChar { reference, ch });
    }
    if let Some(hex) = strip_prefix_ignore_case(s, "sha256:") {
        return if is_hex(hex) && hex.len() == 64 {
            Ok(Reference::Id(format!(
                "sha256:{}",
                hex.to_ascii_lowercase()
            )))
        } else {
            Err(NameError::BadDigest(s.to_string()))
        };
    }
    if (12..=64).contains(&s.len()) && is_hex(s) {
        return Ok(Reference::Id(s.to_ascii_lowercase()));
    }
    normalize_tag(s).map(Reference::Tag)
}

/// Normalises a tag reference (`smollm2` → `ai/smollm2:latest`); an id is an error.
pub fn normalize(s: &str) -> Result<String, NameError> {
    match parse_reference(s)? {
        Reference::Tag(tag) => Ok(tag),
        Reference::Id(id) => Err(NameError::NotATag(id)),
    }
}

fn normalize_tag(s: &str) -> Result<String, NameError> {
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => {
            let hex = digest.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !is_hex(hex) || rest.is_empty() {
                return Err(NameError::BadDigest(s.to_string()));
            }
            (rest, Some(digest.to_ascii_lowercase()))
        }
        None => (s, None),
    };
    if rest.starts_with('/') || rest.ends_with('/') {
        return Err(NameError::EdgeSlash(s.to_string()));
    }
    // The tag colon can only follow the last slash; a colon before it belongs to a port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match rest[last_slash..].find(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    let mut components: Vec<&str> = path.split('/').collect();
    if components.iter().any(|c| c.is_empty()) {
        return Err(NameError::EmptyComponent(s.to_string()));
    }
    if components.iter().any(|c| *c == "." || *c == "..") {
        return Err(NameError::DotComponent(s.to_string()));
    }
    let mut out = String::with_capacity(s.len() + 16);
    let first = components[0];
    let has_host = components.len() > 1
        && (first.contains('.') || first.contains(':') || first.eq_ignore_ascii_case("localhost"));
    if has_host {
        let host = first.to_ascii_lowercase();
        if !valid_host(&host) {
            let reference = s.to_string();
            return Err(NameError::BadHost { reference, host });
        }
        out.push_str(if host == "hf.co" {
            "huggingface.co"
        } else {
            &host
        });
        out.push('/');
        components.remove(0);
    } else if components.len() == 1 {
        out.push_str("ai/");
    }
    for (i, component) in components.iter().enumerate() {
        let lower = component.to_lowercase();
        if !valid_component(&lower) {
            let reference = s.to_string();
            let component = component.to_string();
            return Err(NameError::BadComponent {
                reference,
                component,
            });
        }
        if i > 0 {
            out.push('/');
        }
        out.push_str(&lower);
    }
    match (tag, &digest) {
        (Some(tag), _) => {
            if !valid_tag(tag) {
                let (reference, tag) = (s.to_string(), tag.to_string());
                return Err(NameError::BadTag { reference, tag });
            }
            out.push(':');
            out.push_str(tag);
        }
        (None, None) => out.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(digest) = digest {
        out.push('@');
        out.push_str(&digest);
    }
    Ok(out)
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `[a-z0-9]+([._-][a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let mut prev_sep = true; // the first byte must not be a separator
    for b in c.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' => prev_sep = false,
            b'.' | b'_' | b'-' if !prev_sep => prev_sep = true,
            _ => return false,
        }
    }
    !prev_sep
}

/// DNS-ish labels (`[a-z0-9]+(-+[a-z0-9]+)*`) joined by dots, with an optional numeric port.
fn valid_host(host: &str) -> bool {
    let (name, port) = match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    port_ok && name.split('.').all(label_ok)
}

/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    let first_ok = matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric() || b == b'_');
    first_ok
        && tag.len() <= MAX_TAG_LEN
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalises_tags() {
        let digest_ref = format!("ai/m@sha256:{HEX64}");
        let cases: &[(&str, &str)] = &[
            ("smollm2", "ai/smollm2:latest"),
            ("smollm2:360M", "ai/smollm2:360M"),
            ("ai/smollm2", "ai/smollm2:latest"),
            ("ai/SmolLM2:Q4_K_M", "ai/smollm2:Q4_K_M"),
            ("hf.co/Org/Repo:Q4", "huggingface.co/org/repo:Q4"),
            (
                "HF.co/bartowski/Llama-3.2-1B-GGUF",
                "huggingface.co/bartowski/llama-3.2-1b-gguf:latest",
            ),
            (
                "huggingface.co/a/b:UD-Q4_K_XL",
                "huggingface.co/a/b:UD-Q4_K_XL",
            ),
            ("localhost:5000/me/m", "localhost:5000/me/m:latest"),
            ("localhost/me/m:v1", "localhost/me/m:v1"),
            (
                "registry.example.com:443/ns/sub/name:tag",
                "registry.example.com:443/ns/sub/name:tag",
            ),
            ("docker.io/ai/gemma3", "docker.io/ai/gemma3:latest"),
            ("myorg/model_v2.1-x", "myorg/model_v2.1-x:latest"),
            ("a/b/c", "a/b/c:latest"),
            ("m:_tag", "ai/m:_tag"),
            (&digest_ref, &digest_ref),
            ("deadbeef", "ai/deadbeef:latest"), // too short for an id
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).as_deref(), Ok(*want), "input {input:?}");
            assert_eq!(parse_reference(input), Ok(Reference::Tag(want.to_string())));
        }
        let with_tag = format!("Me/M:v1@sha256:{}", HEX64.to_uppercase());
        assert_eq!(normalize(&with_tag), Ok(format!("me/m:v1@sha256:{HEX64}")));
    }

    #[test]
    fn recognises_ids() {
        let full = format!("sha256:{HEX64}");
        let cases = [
            (full.clone(), full.clone()),
            (format!("SHA256:{}", HEX64.to_uppercase()), full.clone()),
            (HEX64.to_string(), HEX64.to_string()),
            ("0123456789AB".to_string(), "0123456789ab".to_string()),
            (HEX64[..20].to_string(), HEX64[..20].to_string()),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_reference(&input),
                Ok(Reference::Id(want)),
                "input {input:?}"
            );
        }
        assert_eq!(normalize(&full), Err(NameError::NotATag(full.clone())));
    }

    #[test]
    fn rejects_bad_references() {
        let long = "a".repeat(257);
        let long_tag = format!("m:{}", "t".repeat(129));
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            (&long, "bytes long"),
            ("../etc/passwd", "'.' or '..'"),
            ("/abs", "start or end"),
            ("abs/", "start or end"),
            ("a/../b", "'.' or '..'"),
            ("a/./b", "'.' or '..'"),
            ("%2e%2e", "forbidden character '%'"),
            ("a//b", "empty path component"),
            ("a b", "forbidden character ' '"),
            ("a\tb", "forbidden character"),
            ("a\0b", "forbidden character '\\0'"),
            ("a\\b", "forbidden character '\\\\'"),
            ("a/b\n", "forbidden character"),
            ("-abc", "invalid path component"),
            ("a..b/c", "invalid registry host"),
            ("ab__c", "invalid path component"),
            ("a/b-", "invalid path component"),
            ("a/b:c/d", "invalid path component"),
            ("caf\u{e9}", "invalid path component"),
            ("m:", "invalid tag"),
            ("m:-x", "invalid tag"),
            ("m:a:b", "invalid tag"),
            (&long_tag, "invalid tag"),
            ("localhost:port/m", "invalid registry host"),
            ("sha256:abc", "invalid digest"),
            ("m@sha256:abc", "invalid digest"),
            ("m@md5:abc", "invalid digest"),
            ("@sha256:0", "invalid digest"),
        ];
        for (input, want) in cases {
            let err = parse_reference(input).expect_err(input);
            let msg = err.to_string();
            assert!(
                msg.contains(want),
                "input {input:?}: {msg:?} lacks {want:?}"
            );
        }
    }
}
