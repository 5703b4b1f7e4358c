//! Property tests for every parser of hostile input besides the translators (`translators_prop.rs`): the GGUF
//! reader, the safetensors header reader, vLLM's hf-overrides check, pulled manifests, Hugging Face references,
//! model names, the config file, runtime flags from the network, API-key and CORS checks, sizes and
//! durations, and the inspector's summaries. Arbitrary input never panics, and what is accepted keeps its
//! invariants (a normalised name has no path parts; an accepted flag list carries no path). `PROPTEST_CASES`
//! scales the runs (`scripts/fuzz`).

use std::io::Cursor;
use std::path::Path;

use dmr_supervisor::api::summary;
use dmr_supervisor::config::{parse_bytes, parse_duration, Config, KeepAlive};
use dmr_supervisor::engines::flags;
use dmr_supervisor::engines::vllm;
use dmr_supervisor::proxy::access::Access;
use dmr_supervisor::proxy::routes;
use dmr_supervisor::registry::hf;
use dmr_supervisor::store::{format, gguf, name, pulled};
use http::{HeaderMap, HeaderValue, Method};
use proptest::prelude::*;

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A GGUF header (magic, version 3) followed by `counts` and arbitrary bytes: the reader's count and length
/// checks are hit, not just the magic check.
fn gguf_like(tensors: u64, kvs: u64, rest: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&tensors.to_le_bytes());
    b.extend_from_slice(&kvs.to_le_bytes());
    b.extend_from_slice(rest);
    b
}

fn name_chars() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just('a'),
            Just('Z'),
            Just('0'),
            Just('/'),
            Just('.'),
            Just(':'),
            Just('@'),
            Just('-'),
            Just('_'),
            Just('%'),
            Just('\\'),
            Just('\0'),
            any::<char>()
        ],
        0..80,
    )
    .prop_map(|v| v.into_iter().collect())
}

/// One layer of a generated manifest: its media type, digest, size and file path, each valid or not by choice.
#[derive(Debug, Clone)]
struct LayerSpec {
    media_type: Result<&'static str, String>,
    digest: Result<String, String>,
    size: u64,
    path: Option<(String, bool)>,
}

/// A DMR/OCI model manifest built from parts whose validity is known, so the property can say what
/// `check_manifest` must do with it: `(manifest JSON, whether it must be accepted)`. Most parts are valid, so about
/// half the manifests are, and the checks on accepted manifests run on every one of those.
fn manifests() -> impl Strategy<Value = (String, bool)> {
    let hex = "[0-9a-f]{64}";
    let digest = prop_oneof![
        8 => hex.prop_map(|h| Ok(format!("sha256:{h}"))),
        1 => "[0-9a-fA-Z]{63,65}".prop_map(|h| Err(format!("sha256:{h}"))),
        1 => hex.prop_map(|h| Err(format!("sha512:{h}"))),
    ]
    .prop_filter("a bad digest must be bad", |d| match d {
        Ok(_) => true,
        Err(d) => {
            d.len() != 71
                || !d.starts_with("sha256:")
                || d[7..]
                    .bytes()
                    .any(|b| !b.is_ascii_hexdigit() || b.is_ascii_uppercase())
        }
    });
    let media_type = prop_oneof![
        9 => prop::sample::select(pulled::LAYER_MEDIA_TYPES.to_vec()).prop_map(Ok),
        1 => "application/vnd\\.[a-z.]{1,20}".prop_map(Err),
    ];
    // (path, safe): safe paths, unsafe ones, and ones that collide with each other ("a" holds "a/b").
    let path = prop_oneof![
        Just(("model.gguf".to_string(), true)),
        Just(("a".to_string(), true)),
        Just(("a/b".to_string(), true)),
        Just(("a/b/".to_string(), true)),
        Just(("../etc/passwd".to_string(), false)),
        Just(("/abs".to_string(), false)),
        Just(("a/../../x".to_string(), false)),
        Just(("./x".to_string(), false)),
        Just((String::new(), false)),
        "[a-z]{1,8}(/[a-z]{1,8}){0,2}\\.[a-z]{2,4}".prop_map(|p| (p, true)),
    ];
    let layer = (
        media_type,
        digest.clone(),
        any::<u64>(),
        prop::option::of(path),
    )
        .prop_map(|(media_type, digest, size, path)| LayerSpec {
            media_type,
            digest,
            size,
            path,
        });
    // How layers get paths: none (a GGUF model), one distinct safe path each, or any mix from the pool.
    let paths_mode = prop_oneof![3 => Just(0u8), 3 => Just(1u8), 2 => Just(2u8)];
    let config_type = prop_oneof![
        9 => prop::sample::select(pulled::CONFIG_MEDIA_TYPES.to_vec()).prop_map(Ok),
        1 => Just(Err("application/vnd.oci.image.config.v1+json".to_string())),
    ];
    (config_type, digest, prop::collection::vec(layer, 0..5), paths_mode).prop_map(|(config_type, config_digest, mut layers, mode)| {
        for (i, l) in layers.iter_mut().enumerate() {
            match mode {
                0 => l.path = None,
                1 => l.path = Some((format!("dir{i}/file{i}.bin"), true)),
                _ => {}
            }
        }
        let any_path = layers.iter().any(|l| l.path.is_some());
        let paths_ok = !any_path || {
            let all_safe = layers.iter().all(|l| l.path.as_ref().is_some_and(|(_, safe)| *safe));
            let trimmed: Vec<&str> = layers.iter().filter_map(|l| l.path.as_ref()).map(|(p, _)| p.trim_end_matches('/')).collect();
            let inside = |a: &str, b: &str| a == b || a.strip_prefix(b).is_some_and(|r| r.starts_with('/'));
            let collide = trimmed.iter().enumerate().any(|(i, a)| trimmed[..i].iter().any(|b| inside(a, b) || inside(b, a)));
            all_safe && !collide
        };
        let weights = ["application/vnd.docker.ai.gguf.v3", "application/vnd.docker.ai.safetensors", "application/vnd.docker.ai.dduf"];
        let valid = config_type.is_ok()
            && config_digest.is_ok()
            && layers.iter().all(|l| l.media_type.is_ok() && l.digest.is_ok())
            && paths_ok
            && layers.iter().any(|l| l.media_type.as_ref().is_ok_and(|m| weights.contains(m)));
        let text = |r: &Result<String, String>| r.clone().unwrap_or_else(|e| e);
        let json = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": config_type.clone().map(str::to_string).unwrap_or_else(|e| e), "size": 300, "digest": text(&config_digest)},
            "layers": layers.iter().map(|l| {
                let mut d = serde_json::json!({
                    "mediaType": l.media_type.clone().map(str::to_string).unwrap_or_else(|e| e),
                    "size": l.size,
                    "digest": text(&l.digest),
                });
                if let Some((p, _)) = &l.path {
                    d["annotations"] = serde_json::json!({"org.cncf.model.filepath": p});
                }
                d
            }).collect::<Vec<_>>(),
        });
        (json.to_string(), valid)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(256)))]

    #[test]
    fn the_gguf_reader_never_panics_or_over_allocates(tensors in prop_oneof![Just(1u64 << 60), Just(u64::MAX), 0u64..64],
                                                       kvs in prop_oneof![Just(1u64 << 60), 0u64..64],
                                                       rest in prop::collection::vec(any::<u8>(), 0..2048),
                                                       claimed_len in prop_oneof![Just(u64::MAX), 0u64..1 << 20]) {
        let bytes = gguf_like(tensors, kvs, &rest);
        // A header that claims 2^60 tensors is an error, not an allocation.
        let _ = gguf::read(Cursor::new(&bytes), claimed_len);
        let _ = gguf::read(Cursor::new(&rest), rest.len() as u64);
    }

    #[test]
    fn the_safetensors_header_reader_never_panics_or_over_allocates(claimed in prop_oneof![Just(1u64 << 60), Just(u64::MAX), 0u64..4096],
                                                                    rest in prop::collection::vec(any::<u8>(), 0..2048),
                                                                    json in "[\\{\\}\\[\\]\":,a-z0-9_ ]{0,200}") {
        let mut bytes = claimed.to_le_bytes().to_vec();
        bytes.extend_from_slice(&rest);
        let _ = format::safetensors_header_parameters(Cursor::new(&bytes), bytes.len() as u64);
        // A header that parses as JSON: shapes of any size saturate, never overflow.
        let mut framed = (json.len() as u64).to_le_bytes().to_vec();
        framed.extend_from_slice(json.as_bytes());
        let _ = format::safetensors_header_parameters(Cursor::new(&framed), framed.len() as u64);
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&json) {
            if vllm::check_hf_overrides(&v).is_ok() {
                prop_assert!(v.is_object());
            }
        }
    }

    #[test]
    fn pulled_manifests_and_hf_references_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512),
                                                      json in "[\\{\\}\\[\\]\":,a-zA-Z0-9_./+ -]{0,300}",
                                                      reference in "[a-zA-Z0-9_./:@-]{0,80}") {
        let _ = pulled::check_manifest(&bytes);
        if let Ok(info) = pulled::check_manifest(json.as_bytes()) {
            // Whatever is accepted names only sha256 digests and known media types.
            prop_assert!(info.layers.iter().all(|l| l.digest.starts_with("sha256:") && l.digest.len() == 71));
            prop_assert!(pulled::LAYER_MEDIA_TYPES.iter().any(|m| info.layers.iter().any(|l| l.media_type == *m)));
        }
        if let Some((repo, _)) = hf::parse(&format!("hf.co/{reference}")) {
            prop_assert!(!repo.split('/').any(|p| p.is_empty() || p == "." || p == ".."), "{repo}");
        }
    }

    #[test]
    fn generated_manifests_are_accepted_exactly_when_valid_and_keep_their_invariants((json, valid) in manifests()) {
        let checked = pulled::check_manifest(json.as_bytes());
        prop_assert_eq!(checked.is_ok(), valid, "{} -> {:?}", json, checked.as_ref().err());
        if let Ok(info) = checked {
            let m: serde_json::Value = serde_json::from_str(&json).unwrap();
            prop_assert!(pulled::CONFIG_MEDIA_TYPES.contains(&info.config_media_type.as_str()));
            prop_assert_eq!(info.layers.len(), m["layers"].as_array().unwrap().len());
            for (l, raw) in info.layers.iter().zip(m["layers"].as_array().unwrap()) {
                prop_assert!(l.digest.starts_with("sha256:") && l.digest.len() == 71, "{}", l.digest);
                prop_assert!(pulled::LAYER_MEDIA_TYPES.contains(&l.media_type.as_str()));
                prop_assert_eq!(l.size, raw["size"].as_u64().unwrap());
                prop_assert_eq!(l.path.as_deref(), raw["annotations"]["org.cncf.model.filepath"].as_str());
                if let Some(p) = &l.path {
                    prop_assert!(format::safe_relative(p), "{}", p);
                }
            }
        }
    }

    #[test]
    fn normalised_names_never_carry_path_parts(s in name_chars()) {
        let _ = name::parse_reference(&s);
        if let Ok(n) = name::normalize(&s) {
            // `repo[:tag]` or `repo@digest`: the repository's path segments are never empty, `.` or `..` (a tag
            // such as `a..` is valid Docker grammar and never a path), and nothing carries `\` or NUL.
            let repo = n.split('@').next().unwrap_or(&n);
            let repo = repo.rsplit_once(':').map_or(repo, |(r, _)| r);
            prop_assert!(!n.starts_with('/') && !n.contains('\\') && !n.contains('\0'), "{n:?}");
            prop_assert!(!repo.split('/').any(|part| part.is_empty() || part == "." || part == ".."), "{n:?}");
            // Normalising is idempotent.
            let again = name::normalize(&n);
            prop_assert_eq!(again.as_deref(), Ok(n.as_str()));
        }
    }

    #[test]
    fn the_config_parser_never_panics(text in "[\\[\\]a-z_.=\"0-9 \\n-]{0,200}") {
        let _ = Config::parse(&text, Path::new("/tmp"));
    }

    #[test]
    fn accepted_network_flags_carry_no_paths(tokens in prop::collection::vec(
        prop_oneof![
            Just("--temp".to_string()), Just("--model".to_string()), Just("--log-file".to_string()),
            Just("-ngl".to_string()), Just("--seed=-1".to_string()), Just("--seed=--model".to_string()),
            Just("/etc/passwd".to_string()), Just("..\\x".to_string()), "[ -~]{0,12}".prop_map(String::from)
        ], 0..8)) {
        if flags::check_untrusted("llama.cpp", &tokens).is_ok() {
            prop_assert!(tokens.iter().all(|t| !t.contains('/') && !t.contains('\\')), "{tokens:?}");
            prop_assert!(!tokens.iter().any(|t| t == "--model" || t == "--log-file"), "{tokens:?}");
        }
    }

    #[test]
    fn access_checks_never_panic_and_refuse_without_a_key(origin in "[ -~]{0,40}", auth in "[ -~]{0,40}",
                                                          path in "/[ -~]{0,30}") {
        let a = Access { api_keys: vec!["sk-secret".into()], allowed_origins: vec![] };
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&origin) { h.insert(http::header::ORIGIN, v); }
        if let Ok(v) = HeaderValue::from_str(&auth) { h.insert(http::header::AUTHORIZATION, v); }
        // No POST route is open: whatever the path, the table says a key is needed.
        let open = routes::find(&Method::POST, &path).is_some_and(|f| f.route.guard == routes::Guard::Open);
        prop_assert!(!open, "{path:?}");
        let verdict = a.check(&Method::POST, open, &h, false);
        let has_key = auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("bearer ")).map(str::trim) == Some("sk-secret");
        if !has_key {
            prop_assert!(!matches!(verdict, dmr_supervisor::proxy::access::Verdict::Allow(_)), "{origin:?} {auth:?}");
        }
    }

    #[test]
    fn sizes_durations_and_summaries_never_panic(s in "[ -~]{0,24}", bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_bytes(&s);
        let _ = parse_duration(&s);
        let _ = KeepAlive::parse(&s);
        let _ = summary::prompt(&bytes);
        let _ = summary::answer(&bytes);
    }
}
