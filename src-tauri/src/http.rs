//! A small HTTP/1.1 JSON client for the broker's API (hyper, one connection per request),
//! over TLS for `https://` brokers.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use tokio::io::{AsyncRead, AsyncWrite};

/// How long the broker gets to answer one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Set to `1` to send sign-in tokens over plain `http://` to a broker that is not on this
/// machine (a trusted private network).
pub const ALLOW_INSECURE_ENV: &str = "CLAUDEMESH_ALLOW_INSECURE_HTTP";

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot reach the broker at {url}: {message}; check the address and that the broker is running")]
    Unreachable { url: String, message: String },
    /// The request may have reached the broker, but no answer came back.
    #[error("the connection to the broker at {url} broke before it answered: {message}")]
    Interrupted { url: String, message: String },
    #[error("unsupported broker URL {0:?}: use http://host:port or https://host")]
    UnsupportedUrl(String),
    #[error(
        "refusing to sign in to {0} or send this device's sign-in token to it over plain http://: anyone on the \
         way could copy the token. Use the broker's https:// address, or set {ALLOW_INSECURE_ENV}=1 on a network \
         you trust"
    )]
    InsecureBearer(String),
    #[error(transparent)]
    Tls(#[from] broker_core::client::tls::TlsError),
}

/// Two spellings of one broker base URL (`http://h:1/` and `http://h:1`) are the same broker.
pub fn same_broker(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/')
}

/// Where a base URL points.
struct Target<'a> {
    tls: bool,
    /// `host[:port]` as written, for the Host header.
    authority: &'a str,
    host: &'a str,
    port: u16,
    /// A path the broker is mounted under (`https://example.com/mesh`), without a trailing `/`.
    prefix: String,
}

fn parse(base: &str) -> Result<Target<'_>, HttpError> {
    let unsupported = || HttpError::UnsupportedUrl(base.to_owned());
    let (tls, rest) = if let Some(rest) = base.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = base.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(unsupported());
    };
    let (authority, prefix) = match rest.split_once('/') {
        Some((authority, prefix)) => (authority, format!("/{prefix}")),
        None => (rest, String::new()),
    };
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        // `[::1]:7900` keeps its brackets off the host name; a bare `[::1]` has no port.
        Some((host, port)) if !port.ends_with(']') => (host, port.parse::<u16>().map_err(|_| unsupported())?),
        _ => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(unsupported());
    }
    Ok(Target { tls, authority, host, port, prefix })
}

/// The sign-in routes (device login, emailed codes): their answers carry, or lead to, a bearer
/// token.
const SIGN_IN_PATHS: [&str; 4] = ["/v1/device/code", "/v1/device/token", "/v1/connect/email", "/v1/connect/verify"];

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `METHOD <base><path>` with an optional bearer token and JSON body; returns status and body.
pub async fn request(
    method: hyper::Method,
    base_url: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Result<(u16, Bytes), HttpError> {
    request_with_headers(method, base_url, path, bearer, &[], body).await
}

/// [`request`] with more headers (a fresh confirmation).
pub async fn request_with_headers(
    method: hyper::Method,
    base_url: &str,
    path: &str,
    bearer: Option<&str>,
    headers: &[(&str, String)],
    body: Option<&serde_json::Value>,
) -> Result<(u16, Bytes), HttpError> {
    let base = base_url.trim().trim_end_matches('/');
    let target = parse(base)?;
    let insecure_allowed = std::env::var(ALLOW_INSECURE_ENV).is_ok_and(|v| v == "1");
    // A sign-in answers with a bearer token: refused before the flow starts, not when the token
    // has already crossed the network.
    let carries_sign_in = bearer.is_some() || SIGN_IN_PATHS.contains(&path);
    if carries_sign_in && !target.tls && !is_loopback(target.host) && !insecure_allowed {
        return Err(HttpError::InsecureBearer(base.to_owned()));
    }
    let unreachable = |message: String| HttpError::Unreachable { url: base.to_owned(), message };
    let connect = async {
        let stream =
            tokio::net::TcpStream::connect((target.host, target.port)).await.map_err(|e| unreachable(e.to_string()))?;
        if !target.tls {
            return handshake(stream).await.map_err(unreachable);
        }
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(target.host.to_owned())
            .map_err(|_| HttpError::UnsupportedUrl(base.to_owned()))?;
        let tls = tokio_rustls::TlsConnector::from(broker_core::client::tls::client_config()?)
            .connect(name, stream)
            .await
            .map_err(|e| unreachable(format!("TLS: {e}")))?;
        handshake(tls).await.map_err(unreachable)
    };
    let mut sender = tokio::time::timeout(REQUEST_TIMEOUT, connect)
        .await
        .unwrap_or_else(|_| Err(unreachable(format!("no connection within {REQUEST_TIMEOUT:?}"))))?;
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(format!("{}{path}", target.prefix))
        .header(hyper::header::HOST, target.authority)
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(token) = bearer {
        builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    let payload = body.map(|b| serde_json::to_vec(b).expect("json serializes")).unwrap_or_default();
    let request = builder.body(Full::new(Bytes::from(payload))).map_err(|e| unreachable(e.to_string()))?;
    // From here on the broker may have acted on the request even if no answer arrives.
    let interrupted = |message: String| HttpError::Interrupted { url: base.to_owned(), message };
    let exchange = async {
        let response = sender.send_request(request).await.map_err(|e| interrupted(e.to_string()))?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.map_err(|e| interrupted(e.to_string()))?.to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(interrupted(format!("no answer within {REQUEST_TIMEOUT:?}"))))
}

async fn handshake<S>(stream: S) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}

/// `{error, message}` of a broker error body, with fallbacks for anything else.
pub fn error_of(status: u16, body: &[u8]) -> (String, String) {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        #[serde(default)]
        error: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        error_description: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(error) if !error.error.is_empty() => {
            let message = if error.message.is_empty() { error.error_description } else { error.message };
            (error.error, message)
        }
        _ => (format!("http_{status}"), String::from_utf8_lossy(body).chars().take(200).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_are_read_with_their_defaults() {
        let plain = parse("http://127.0.0.1:7900").expect("http");
        assert_eq!((plain.tls, plain.host, plain.port, plain.prefix.as_str()), (false, "127.0.0.1", 7900, ""));
        let tls = parse("https://mesh.example.com/broker").expect("https");
        assert_eq!((tls.tls, tls.host, tls.port, tls.prefix.as_str()), (true, "mesh.example.com", 443, "/broker"));
        let v6 = parse("http://[::1]:7900").expect("v6");
        assert_eq!((v6.host, v6.port, v6.authority), ("::1", 7900, "[::1]:7900"));
        for bad in ["ftp://x", "mesh.example.com", "http://:80", "http://host:port"] {
            assert!(matches!(parse(bad), Err(HttpError::UnsupportedUrl(_))), "{bad}");
        }
    }

    #[tokio::test]
    async fn sign_in_tokens_never_travel_in_clear_text_to_another_machine() {
        // 192.0.2.0/24 is reserved for documentation: refused before any connection is tried.
        let error = request(hyper::Method::GET, "http://192.0.2.1:7900", "/v1/account", Some("cmd_secret"), None)
            .await
            .expect_err("refused");
        assert!(matches!(error, HttpError::InsecureBearer(_)), "{error}");
        assert!(error.to_string().contains("https://"), "{error}");
        // Nor does a device login start there: its answer would be a token in clear text.
        for path in SIGN_IN_PATHS {
            let error = request(hyper::Method::POST, "http://192.0.2.1:7900", path, None, Some(&serde_json::json!({})))
                .await
                .expect_err("refused");
            assert!(matches!(error, HttpError::InsecureBearer(_)), "{path}: {error}");
        }
        assert!(is_loopback("localhost") && is_loopback("127.0.0.1") && is_loopback("::1"));
        assert!(!is_loopback("192.0.2.1") && !is_loopback("example.com"));
    }

    #[test]
    fn error_bodies_of_both_shapes_are_read() {
        assert_eq!(
            error_of(404, br#"{"ok":false,"error":"not_found","message":"no such mesh"}"#),
            ("not_found".into(), "no such mesh".into())
        );
        assert_eq!(
            error_of(400, br#"{"error":"slow_down","error_description":"wait"}"#),
            ("slow_down".into(), "wait".into())
        );
        assert_eq!(error_of(502, b"bad gateway").0, "http_502");
    }
}
