//! Reading a pull's manifest and config blob with a size cap (`[registry] max_manifest_bytes`): both are read into
//! memory, so a hostile registry must not be able to make them large. oci-client reads a manifest body whole, so
//! the manifest is fetched here (its token from `Client::auth`, the URL and `Accept` list oci-client would use) and
//! read a chunk at a time, stopping one byte past the cap; its digest is checked against the reference's and the
//! registry's `Docker-Content-Digest`. The config is read through oci-client's blob stream with the same cap.
//! Failures are classified like oci-client's own (401, 404 and the rest keep their messages).

use futures_util::StreamExt;
use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::Digest;

use super::{classify, Op, RegistryError, MANIFEST_TYPES};

/// How much of an error answer's body is read to explain it.
const ERROR_BODY: usize = 64 << 10;

/// `GET`s the manifest of `reference` reading at most `cap` bytes; returns its bytes and digest.
pub(super) async fn manifest(
    client: &Client,
    http: &reqwest::Client,
    reference: &Reference,
    auth: &RegistryAuth,
    plain: bool,
    cap: u64,
    what: &str,
) -> Result<(Vec<u8>, String), RegistryError> {
    // The token flow as oci-client runs it (its token is cached for the blob requests that follow). A failure
    // there is not fatal, as in oci-client: the manifest request then goes without a token and its 401 says why.
    let token = match client.auth(reference, auth, RegistryOperation::Pull).await {
        Ok(token) => token,
        Err(e) => {
            tracing::debug!(model = what, error = %e, "registry token flow failed");
            None
        }
    };
    let registry = reference.resolve_registry();
    let url = format!(
        "{scheme}://{registry}/v2/{repository}/manifests/{at}{ns}",
        scheme = if plain { "http" } else { "https" },
        repository = reference.repository(),
        at = reference
            .digest()
            .or_else(|| reference.tag())
            .unwrap_or("latest"),
        ns = reference
            .namespace()
            .map(|ns| format!("?ns={ns}"))
            .unwrap_or_default(),
    );
    let mut request = http.get(&url).header("Accept", MANIFEST_TYPES.join(", "));
    request = match (token, auth) {
        (Some(token), _) => request.bearer_auth(token),
        (None, RegistryAuth::Basic(user, pass)) => request.basic_auth(user, Some(pass)),
        (None, _) => request,
    };
    let response = request
        .send()
        .await
        .map_err(|e| classify(OciDistributionError::RequestError(e), Op::Pull, what))?;
    let status = response.status();
    let header_digest = response
        .headers()
        .get("Docker-Content-Digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if status != reqwest::StatusCode::OK {
        let body = read_capped(response, ERROR_BODY as u64, what)
            .await
            .unwrap_or_default();
        return Err(classify(answer_error(status, &body, &url), Op::Pull, what));
    }
    if let Some(len) = response.content_length().filter(|n| *n > cap) {
        return Err(too_large("manifest", what, len, cap));
    }
    let body = read_capped(response, cap, what).await?;
    if body.len() as u64 > cap {
        return Err(too_large("manifest", what, body.len() as u64, cap));
    }
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body)));
    if let Some(want) = reference.digest() {
        if want != digest {
            return Err(RegistryError::Registry(format!(
                "the registry sent manifest {digest} for {want}"
            )));
        }
    }
    if let Some(said) = header_digest.filter(|d| d.starts_with("sha256:")) {
        if said != digest {
            return Err(RegistryError::Registry(format!(
                "the registry sent manifest {digest} for {what} but said it was {said}"
            )));
        }
    }
    Ok((body, digest))
}

/// Reads the config blob `descriptor` names, at most `cap` bytes.
pub(super) async fn config(
    client: &Client,
    reference: &Reference,
    descriptor: &OciDescriptor,
    cap: u64,
    what: &str,
) -> Result<Vec<u8>, RegistryError> {
    if descriptor.size < 0 || descriptor.size as u64 > cap {
        return Err(too_large("config blob", what, descriptor.size as u64, cap));
    }
    let mut stream = client
        .pull_blob_stream(reference, descriptor)
        .await
        .map_err(|e| classify(e, Op::Pull, what))?;
    if let Some(len) = stream.content_length.filter(|n| *n > cap) {
        return Err(too_large("config blob", what, len, cap));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| RegistryError::Registry(format!("reading the config of {what}: {e}")))?;
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > cap {
            return Err(too_large("config blob", what, bytes.len() as u64, cap));
        }
    }
    Ok(bytes)
}

/// The body of `response`, stopping once it holds more than `cap` bytes (at most one chunk past it).
async fn read_capped(
    response: reqwest::Response,
    cap: u64,
    what: &str,
) -> Result<Vec<u8>, RegistryError> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| RegistryError::Registry(format!("reading the manifest of {what}: {e}")))?;
        body.extend_from_slice(&chunk);
        if body.len() as u64 > cap {
            body.truncate(cap as usize + 1);
            break;
        }
    }
    Ok(body)
}

/// A refused answer as oci-client reports it (so that `classify` words it the same).
fn answer_error(status: reqwest::StatusCode, body: &[u8], url: &str) -> OciDistributionError {
    let url = url.to_string();
    let message = String::from_utf8_lossy(body).to_string();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return OciDistributionError::UnauthorizedError { url };
    }
    if status.is_client_error() {
        if let Ok(envelope) = serde_json::from_slice::<OciEnvelope>(body) {
            return OciDistributionError::RegistryError { envelope, url };
        }
    }
    OciDistributionError::ServerError {
        code: status.as_u16(),
        url,
        message,
    }
}

fn too_large(thing: &str, what: &str, size: u64, cap: u64) -> RegistryError {
    let size = if size > cap {
        format!("more than {cap} bytes")
    } else {
        format!("{size} bytes")
    };
    RegistryError::Unsupported(format!(
        "the {thing} of {what} is {size}: larger than [registry] max_manifest_bytes ({cap} bytes)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refusals_keep_oci_clients_classification() {
        let url = "http://r/v2/x/manifests/v1";
        let e = answer_error(reqwest::StatusCode::UNAUTHORIZED, b"", url);
        assert!(matches!(
            classify(e, Op::Pull, "x"),
            RegistryError::Unauthorized(m) if m.contains("not authorized to pull x")
        ));
        let unknown = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
        let e = answer_error(reqwest::StatusCode::NOT_FOUND, unknown, url);
        assert!(matches!(
            classify(e, Op::Pull, "x"),
            RegistryError::NotFound(m) if m.contains("not found")
        ));
        let e = answer_error(reqwest::StatusCode::NOT_FOUND, b"gone", url);
        assert!(matches!(
            classify(e, Op::Pull, "x"),
            RegistryError::NotFound(_)
        ));
        let e = answer_error(reqwest::StatusCode::BAD_GATEWAY, b"down", url);
        assert!(matches!(
            classify(e, Op::Pull, "x"),
            RegistryError::Registry(m) if m.contains("answered 502")
        ));
    }

    /// A registry on loopback whose manifest answer is `answer` (status line and headers; a `None` body streams
    /// chunks without end); `/v2/` answers 200. Returns its `host:port`.
    async fn registry(answer: &'static str, body: Option<&'static [u8]>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 1024];
                        let Ok(n) = conn.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end + 4);
                        if head.starts_with("GET /v2/ ") {
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
                            if conn.write_all(ok).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        if conn.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        match body {
                            Some(b) => {
                                let _ = conn.write_all(b).await;
                            }
                            None => {
                                let chunk = format!("1000\r\n{}\r\n", "a".repeat(0x1000));
                                while conn.write_all(chunk.as_bytes()).await.is_ok() {}
                            }
                        }
                        return;
                    }
                });
            }
        });
        host
    }

    async fn fetch(host: &str, cap: u64) -> Result<(Vec<u8>, String), RegistryError> {
        let reference: Reference = format!("{host}/evil/x:v1").parse().unwrap();
        let client = Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        });
        let http = reqwest::Client::new();
        let read = manifest(
            &client,
            &http,
            &reference,
            &RegistryAuth::Anonymous,
            true,
            cap,
            "evil/x",
        );
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("the capped read ends")
    }

    #[tokio::test]
    async fn a_manifest_body_without_end_is_cut_at_the_cap() {
        let host = registry(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\n\r\n",
            None,
        )
        .await;
        let e = fetch(&host, 10_000).await.unwrap_err();
        assert!(matches!(&e, RegistryError::Unsupported(_)), "{e}");
        assert!(e.to_string().contains("more than 10000 bytes"), "{e}");
    }

    #[tokio::test]
    async fn a_manifest_is_checked_against_the_digest_the_registry_gives() {
        const BODY: &[u8] = br#"{"schemaVersion":2}"#;
        let host = registry(
            "HTTP/1.1 200 OK\r\ncontent-length: 19\r\ndocker-content-digest: sha256:0000000000000000000000000000000000000000000000000000000000000000\r\n\r\n",
            Some(BODY),
        )
        .await;
        let e = fetch(&host, 10_000).await.unwrap_err();
        assert!(
            matches!(&e, RegistryError::Registry(m) if m.contains("but said it was sha256:0000")),
            "{e}"
        );
        let host = registry("HTTP/1.1 200 OK\r\ncontent-length: 19\r\n\r\n", Some(BODY)).await;
        let (bytes, digest) = fetch(&host, 19).await.expect("at the cap is allowed");
        assert_eq!(bytes, BODY);
        assert_eq!(
            digest,
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(BODY)))
        );
        let e = fetch(&host, 18).await.unwrap_err();
        assert!(matches!(&e, RegistryError::Unsupported(_)), "{e}");
    }

    #[test]
    fn oversized_documents_are_unsupported_and_say_the_cap() {
        let e = too_large("manifest", "r/x:v1", 70_000, 65_536);
        assert!(matches!(&e, RegistryError::Unsupported(_)));
        assert_eq!(
            e.to_string(),
            "the manifest of r/x:v1 is more than 65536 bytes: larger than [registry] max_manifest_bytes (65536 bytes)"
        );
    }
}
