//! Walks the route table: it builds (no two patterns collide), every route has a label, every route
//! `docs/api-contract.md` documents is served, and paths land on the routes (and labels) they should.

use ::http::Method;

use super::*;

fn label(method: Method, path: &str) -> Option<&'static str> {
    find(&method, path).map(|f| f.route.label)
}

#[test]
fn the_table_builds_without_collisions() {
    router().expect("matchit accepts every pattern");
}

#[test]
fn every_route_has_a_label_that_is_its_template() {
    for r in ROUTES {
        assert!(!r.label.is_empty(), "{} has no label", r.pattern);
        assert!(r.label.starts_with('/'), "{}: {}", r.pattern, r.label);
        assert!(!r.label.contains("{*"), "{}: labels use {{name}}", r.label);
    }
}

#[test]
fn documented_routes_are_in_the_table() {
    let doc = include_str!("../../../docs/api-contract.md");
    let mut seen = 0;
    for method in ["GET", "HEAD", "POST", "DELETE"] {
        let mention = format!("{method} /");
        for (at, _) in doc.match_indices(&mention) {
            let path: String = doc[at + method.len() + 1..]
                .chars()
                .take_while(|c| !matches!(c, ' ' | '`' | ')' | '|' | ',' | ';' | '[' | '?' | '\n'))
                .collect();
            // Parameters get sample values; names keep their slash.
            let path = path
                .replace("{ns}", "ai")
                .replace("{name}", "tiny")
                .replace("{engine}", "llama.cpp")
                .replace("{digest}", "sha256:0123");
            let method = Method::from_bytes(method.as_bytes()).expect("a method");
            assert!(
                find(&method, &path).is_some(),
                "docs/api-contract.md documents {method} {path}, which the table does not serve"
            );
            seen += 1;
        }
    }
    assert!(
        seen >= 25,
        "only {seen} documented routes found: has the doc's form changed?"
    );
}

#[test]
fn labels_of_the_routes_that_were_other() {
    assert_eq!(
        label(Method::POST, "/v1/images/generations"),
        Some("/v1/images/generations")
    );
    assert_eq!(
        label(Method::POST, "/engines/diffusers/v1/images/generations"),
        Some("/v1/images/generations")
    );
    assert_eq!(label(Method::POST, "/api/pull"), Some("/api/pull"));
    assert_eq!(
        label(Method::POST, "/engines/install-backend"),
        Some("/engines/install-backend")
    );
    assert_eq!(label(Method::POST, "/models/load"), Some("/models/load"));
    assert_eq!(
        label(Method::DELETE, "/models/purge"),
        Some("/models/purge")
    );
    // Image generations are inference: timed and recorded by the inspector.
    assert!(
        find(&Method::POST, "/v1/images/generations")
            .expect("served")
            .route
            .inference
    );
}

#[test]
fn labels_are_templates() {
    assert_eq!(
        label(Method::POST, "/engines/llama.cpp/v1/chat/completions"),
        Some("/v1/chat/completions")
    );
    assert_eq!(label(Method::POST, "/v1/messages"), Some("/v1/messages"));
    assert_eq!(
        label(Method::POST, "/anthropic/v1/messages/count_tokens"),
        Some("/v1/messages/count_tokens")
    );
    assert_eq!(
        label(Method::GET, "/engines/v1/models/ai/tiny"),
        Some("/v1/models/{name}")
    );
    assert_eq!(
        label(Method::GET, "/models/ai/tiny:latest"),
        Some("/models/{name}")
    );
    assert_eq!(label(Method::POST, "/api/chat"), Some("/api/chat"));
    assert_eq!(label(Method::GET, "/etc/passwd"), None);
    assert_eq!(label(Method::GET, "/v1/../../x"), None);
}

fn name_of(method: Method, path: &str) -> (&'static str, Option<String>) {
    let found = find(&method, path).unwrap_or_else(|| panic!("{method} {path} is served"));
    let ctx = Ctx::new(
        Caller {
            trusted: false,
            local: true,
        },
        found,
    );
    (ctx.route.pattern, ctx.name().ok())
}

#[test]
fn the_responses_api_is_served_at_every_mount_with_one_label_per_template() {
    for prefix in ["", "/v1", "/engines/v1", "/engines/llama.cpp/v1"] {
        let post = find(&Method::POST, &format!("{prefix}/responses")).expect("served");
        assert_eq!(post.route.label, "/v1/responses", "{prefix}");
        assert!(post.route.inference, "{prefix}: timed and recorded");
        assert_eq!(post.route.dialect, Dialect::OpenAi);
        let path = format!("{prefix}/responses/resp_1");
        assert_eq!(
            label(Method::GET, &path),
            Some("/v1/responses/{id}"),
            "{path}"
        );
        assert_eq!(
            label(Method::DELETE, &path),
            Some("/v1/responses/{id}"),
            "{path}"
        );
        let found = find(&Method::GET, &format!("{path}/input_items")).expect("served");
        assert_eq!(found.route.label, "/v1/responses/{id}/input_items");
        assert!(found
            .params
            .iter()
            .any(|(k, v)| *k == "id" && v == "resp_1"));
    }
    assert!(find(&Method::GET, "/responses").is_none());
    assert!(find(&Method::POST, "/responses/resp_1").is_none());
    // Unmatched paths under the root mount answer in OpenAI's shape, like the routes there.
    assert_eq!(dialect_of_prefix("/responses/a/b/c"), Dialect::OpenAi);
    assert_eq!(dialect_of_prefix("/responses"), Dialect::OpenAi);
    assert_eq!(dialect_of_prefix("/responsesx"), Dialect::Native);
}

#[test]
fn model_names_keep_their_slashes_tags_and_encoding() {
    assert_eq!(
        name_of(Method::GET, "/models/ai/tiny:q4"),
        ("/models/{*name}", Some("ai/tiny:q4".into()))
    );
    assert_eq!(
        name_of(Method::GET, "/models/hf.co/org/repo/export"),
        ("/models/{*name}/export", Some("hf.co/org/repo".into()))
    );
    assert_eq!(
        name_of(Method::POST, "/models/ai/tiny/tag"),
        ("/models/{*name}/tag", Some("ai/tiny".into()))
    );
    assert_eq!(
        name_of(Method::POST, "/models/ai/tiny/repackage"),
        ("/models/{*name}/repackage", Some("ai/tiny".into()))
    );
    assert_eq!(
        name_of(Method::POST, "/models/ai/tiny/push"),
        ("/models/{*name}/push", Some("ai/tiny".into()))
    );
    // A suffix of another method is part of the name, as before the table.
    assert_eq!(
        name_of(Method::GET, "/models/ai/tiny/tag"),
        ("/models/{*name}", Some("ai/tiny/tag".into()))
    );
    assert_eq!(
        name_of(Method::DELETE, "/models/ai%2F..%2Fx"),
        ("/models/{*name}", Some("ai/../x".into()))
    );
    // A bad encoding is the handler's 400, not a 404.
    assert_eq!(
        name_of(Method::GET, "/models/ai/t%zz"),
        ("/models/{*name}", None)
    );
    assert_eq!(
        name_of(Method::GET, "/engines/vllm/v1/models/ai/tiny"),
        ("/v1/models/{*name}", Some("ai/tiny".into()))
    );
    // An empty name reaches the handler (which refuses it), as before the table.
    assert_eq!(
        name_of(Method::GET, "/models/"),
        ("/models/{*name}", Some(String::new()))
    );
    assert_eq!(
        name_of(Method::GET, "/engines/v1/models/"),
        ("/v1/models/{*name}", Some(String::new()))
    );
    // Fixed routes win over the catch-all.
    assert_eq!(name_of(Method::POST, "/models/create").0, "/models/create");
}

#[test]
fn engines_in_openai_paths() {
    let found = find(&Method::POST, "/engines/llama.cpp/v1/embeddings").expect("served");
    assert_eq!(found.route.pattern, "/v1/embeddings");
    let ctx = Ctx::new(
        Caller {
            trusted: false,
            local: true,
        },
        found,
    );
    assert_eq!(
        ctx.engine().ok(),
        Some(Some(crate::engines::llamacpp::ENGINE))
    );
    let found = find(&Method::POST, "/engines/foo/v1/completions").expect("served");
    let ctx = Ctx::new(
        Caller {
            trusted: false,
            local: true,
        },
        found,
    );
    assert!(ctx.engine().is_err(), "an unknown engine is a 404");
    assert!(find(&Method::GET, "/engines/ps")
        .is_some_and(|f| f.params.is_empty() && f.route.label == "/engines/ps"));
}

#[test]
fn access_and_dialects_come_from_the_route() {
    let guard = |m: Method, p: &str| find(&m, p).expect("served").route.guard;
    assert_eq!(guard(Method::GET, "/health"), Guard::Open);
    assert_eq!(guard(Method::GET, "/livez"), Guard::Open);
    assert_eq!(guard(Method::GET, "/readyz"), Guard::Open);
    assert_eq!(guard(Method::GET, "/get_load"), Guard::Open);
    assert_eq!(guard(Method::GET, "/dashboard"), Guard::Open);
    assert_eq!(guard(Method::POST, "/config/reload"), Guard::Local);
    assert_eq!(
        guard(Method::POST, "/engines/install-backend"),
        Guard::Local
    );
    assert_eq!(
        guard(Method::POST, "/engines/uninstall-backend"),
        Guard::Local
    );
    assert_eq!(guard(Method::GET, "/models"), Guard::Key);
    assert_eq!(
        ROUTES.iter().filter(|r| r.guard != Guard::Key).count(),
        8,
        "open and local-only routes are the eight above"
    );
    let dialect = |m: Method, p: &str| find(&m, p).expect("served").route.dialect;
    assert_eq!(
        dialect(Method::POST, "/engines/v1/messages"),
        Dialect::Anthropic
    );
    assert_eq!(
        dialect(Method::POST, "/v1/chat/completions"),
        Dialect::OpenAi
    );
    assert_eq!(dialect(Method::POST, "/api/chat"), Dialect::Ollama);
    assert_eq!(dialect(Method::GET, "/engines/ps"), Dialect::OpenAi);
    assert_eq!(dialect(Method::GET, "/models"), Dialect::Native);
}

#[test]
fn unmatched_paths_take_the_dialect_of_their_prefix() {
    assert_eq!(dialect_of_prefix("/v1/messages/nope"), Dialect::Anthropic);
    assert_eq!(
        dialect_of_prefix("/engines/x/v1/messages"),
        Dialect::Anthropic
    );
    assert_eq!(dialect_of_prefix("/anthropic/v2"), Dialect::Anthropic);
    assert_eq!(dialect_of_prefix("/v1/nope"), Dialect::OpenAi);
    assert_eq!(dialect_of_prefix("/engines/nope"), Dialect::OpenAi);
    assert_eq!(dialect_of_prefix("/api/nope"), Dialect::Ollama);
    assert_eq!(dialect_of_prefix("/nope"), Dialect::Native);
    // The wrong method is no route either.
    assert!(find(&Method::GET, "/v1/chat/completions").is_none());
}

#[test]
fn each_route_speaks_the_dialect_of_its_prefix() {
    // So a path's errors are in one dialect whether it matches a route or is a 404.
    for r in ROUTES {
        assert_eq!(r.dialect, dialect_of_prefix(r.pattern), "{}", r.pattern);
    }
}

#[test]
fn rerank_and_score_are_served_at_dmrs_paths_and_the_openai_mounts_with_one_label_each() {
    for (what, label) in [("rerank", "/v1/rerank"), ("score", "/v1/score")] {
        for prefix in [
            "",
            "/v1",
            "/engines/v1",
            "/engines/llama.cpp/v1",
            "/engines",
            "/engines/vllm",
        ] {
            let path = format!("{prefix}/{what}");
            let found = find(&Method::POST, &path).unwrap_or_else(|| panic!("{path} is served"));
            assert_eq!(found.route.label, label, "{path}");
            assert!(found.route.inference, "{path}: timed and recorded");
            assert_eq!(found.route.dialect, Dialect::OpenAi, "{path}");
            assert!(find(&Method::GET, &path).is_none(), "GET {path}");
        }
        assert_eq!(dialect_of_prefix(&format!("/{what}/x")), Dialect::OpenAi);
    }
    assert_eq!(dialect_of_prefix("/rerankx"), Dialect::Native);
    for (what, label) in [("tokenize", "/tokenize"), ("detokenize", "/detokenize")] {
        for prefix in ["/engines", "/engines/llama.cpp"] {
            let path = format!("{prefix}/{what}");
            let found = find(&Method::POST, &path).unwrap_or_else(|| panic!("{path} is served"));
            assert_eq!(found.route.label, label, "{path}");
            assert!(found.route.inference);
        }
        // Not at the root nor under /v1: DMR has neither.
        assert!(find(&Method::POST, &format!("/{what}")).is_none());
        assert!(find(&Method::POST, &format!("/v1/{what}")).is_none());
    }
}
