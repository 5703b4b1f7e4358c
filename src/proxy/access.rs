//! Who may call: CORS and API keys, decided once the route is known (the table's `Guard` says whether it needs a
//! key; `routes::Guard::Local` routes are further held to local callers by the router). Pure: headers in, a
//! verdict out.
//!
//! - **CORS**, as Ollama does it: a request whose `Origin` is not allowed gets 403; an allowed one gets
//!   `Access-Control-Allow-Origin` (and `Vary: Origin`). Local origins (`localhost`, `127.0.0.1`, `[::1]`,
//!   `0.0.0.0`, any port, http or https) are always allowed; `[server] allowed_origins` adds exact origins, or `"*"`
//!   for any. Preflights (`OPTIONS` with `Access-Control-Request-Method`) are answered here, before any key check,
//!   since browsers send them without credentials. Requests without `Origin` (curl, SDKs) are not CORS requests.
//! - **API keys**, off by default like DMR: when `[server] api_keys` is set, every route except `GET /health`,
//!   the static `GET /dashboard` page (the table's `Guard::Open` routes) and preflights needs one of them as `Authorization: Bearer KEY` (OpenAI, Ollama clients) or `x-api-key: KEY`
//!   (Anthropic clients); else 401 in the caller's dialect. The Unix socket is trusted (its file mode guards it).

use http::{header, HeaderMap, HeaderValue, Method};

/// Methods a preflight may ask for.
const METHODS: &str = "GET, HEAD, POST, DELETE, OPTIONS";
/// How long browsers may cache a preflight.
const MAX_AGE_SECS: &str = "86400";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Access {
    pub api_keys: Vec<String>,
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Serve it; add these headers to the answer.
    Allow(Vec<(header::HeaderName, HeaderValue)>),
    /// A CORS preflight: answer 204 with these headers, nothing else.
    Preflight(Vec<(header::HeaderName, HeaderValue)>),
    /// The origin is not allowed (403).
    Forbidden(String),
    /// No valid API key (401).
    Unauthorized,
}

impl Access {
    /// The verdict for a request; `open` for routes that need no key (their `Guard::Open`), `trusted` for
    /// connections that need no key (the Unix socket).
    pub fn check(
        &self,
        method: &Method,
        open: bool,
        headers: &HeaderMap,
        trusted: bool,
    ) -> Verdict {
        let mut cors = Vec::new();
        if let Some(origin) = headers.get(header::ORIGIN) {
            let text = origin.to_str().unwrap_or("");
            if !self.origin_allowed(text) {
                return Verdict::Forbidden(format!(
                    "origin {text:?} is not allowed (server.allowed_origins)"
                ));
            }
            cors.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
            cors.push((header::VARY, HeaderValue::from_static("Origin")));
            if method == Method::OPTIONS
                && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
            {
                cors.push((
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static(METHODS),
                ));
                let asked = headers
                    .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                    .cloned()
                    .unwrap_or_else(|| HeaderValue::from_static("authorization, content-type"));
                cors.push((header::ACCESS_CONTROL_ALLOW_HEADERS, asked));
                cors.push((
                    header::ACCESS_CONTROL_MAX_AGE,
                    HeaderValue::from_static(MAX_AGE_SECS),
                ));
                return Verdict::Preflight(cors);
            }
        }
        // The dashboard page is static; the data it then fetches needs the key like anything else.
        let open = trusted || self.api_keys.is_empty() || open;
        if open || self.key_in(headers) {
            Verdict::Allow(cors)
        } else {
            Verdict::Unauthorized
        }
    }

    fn key_in(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        let x_api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        [bearer, x_api_key].into_iter().flatten().any(|given| {
            self.api_keys
                .iter()
                .any(|k| constant_time_eq(k.as_bytes(), given.trim().as_bytes()))
        })
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        is_local_origin(origin)
            || self
                .allowed_origins
                .iter()
                .any(|o| o == "*" || o.trim_end_matches('/') == origin)
    }
}

/// `http(s)://localhost|127.0.0.1|[::1]|0.0.0.0[:port]`.
fn is_local_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = match rest.strip_prefix("[::1]") {
        Some(after) => return after.is_empty() || is_port(after),
        None => rest,
    };
    let (name, port) = match host.split_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    matches!(name, "localhost" | "127.0.0.1" | "0.0.0.0")
        && port.is_none_or(|p| is_port(&format!(":{p}")))
}

fn is_port(s: &str) -> bool {
    s.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Compares keys without leaking how many leading bytes matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    fn access(keys: &[&str], origins: &[&str]) -> Access {
        Access {
            api_keys: keys.iter().map(|s| s.to_string()).collect(),
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn local_origins_are_allowed_others_need_configuring() {
        let a = access(&[], &["https://app.example.com"]);
        for o in [
            "http://localhost",
            "http://localhost:3000",
            "https://127.0.0.1:8080",
            "http://[::1]:5173",
            "http://0.0.0.0",
            "https://app.example.com",
        ] {
            assert!(
                matches!(a.check(&Method::POST, false, &headers(&[("origin", o)]), false), Verdict::Allow(h) if h[0].1 == o),
                "{o}"
            );
        }
        for o in [
            "http://evil.example",
            "http://localhost.evil.example",
            "http://localhost:80a",
            "null",
        ] {
            assert!(
                matches!(
                    a.check(&Method::GET, false, &headers(&[("origin", o)]), false),
                    Verdict::Forbidden(_)
                ),
                "{o}"
            );
        }
        assert!(matches!(
            access(&[], &["*"]).check(
                &Method::GET,
                false,
                &headers(&[("origin", "http://x.y")]),
                false
            ),
            Verdict::Allow(_)
        ));
        // No Origin: not a CORS request.
        assert_eq!(
            a.check(&Method::GET, false, &HeaderMap::new(), false),
            Verdict::Allow(vec![])
        );
    }

    #[test]
    fn preflights_are_answered_without_a_key() {
        let a = access(&["k"], &[]);
        let h = headers(&[
            ("origin", "http://localhost:3000"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, content-type, x-stainless-os",
            ),
        ]);
        let Verdict::Preflight(h) = a.check(&Method::OPTIONS, false, &h, false) else {
            panic!()
        };
        let get = |n: header::HeaderName| {
            h.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_str().unwrap())
        };
        assert_eq!(
            get(header::ACCESS_CONTROL_ALLOW_ORIGIN),
            Some("http://localhost:3000")
        );
        assert_eq!(
            get(header::ACCESS_CONTROL_ALLOW_HEADERS),
            Some("authorization, content-type, x-stainless-os")
        );
        assert_eq!(get(header::ACCESS_CONTROL_ALLOW_METHODS), Some(METHODS));
    }

    #[test]
    fn keys_are_required_except_for_health_and_the_socket() {
        let a = access(&["sk-1", "sk-2"], &[]);
        let none = HeaderMap::new();
        assert_eq!(
            a.check(&Method::GET, false, &none, false),
            Verdict::Unauthorized
        );
        assert_eq!(
            a.check(&Method::GET, true, &none, false),
            Verdict::Allow(vec![])
        );
        assert_eq!(
            a.check(&Method::GET, false, &none, true),
            Verdict::Allow(vec![])
        );
        for h in [[("authorization", "Bearer sk-2")], [("x-api-key", "sk-1")]] {
            assert_eq!(
                a.check(&Method::POST, false, &headers(&h), false),
                Verdict::Allow(vec![])
            );
        }
        for h in [
            [("authorization", "Bearer sk-3")],
            [("authorization", "sk-1")],
            [("x-api-key", "sk-")],
        ] {
            assert_eq!(
                a.check(&Method::POST, false, &headers(&h), false),
                Verdict::Unauthorized
            );
        }
        // Without keys, everything is open.
        assert_eq!(
            access(&[], &[]).check(&Method::GET, false, &none, false),
            Verdict::Allow(vec![])
        );
    }
}
