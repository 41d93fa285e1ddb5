//! A small HTTP/1.1 JSON client for the broker's API (hyper, one connection per request).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};

/// How long the broker gets to answer one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot reach the broker at {url}: {message}; check the address and that the broker is running")]
    Unreachable { url: String, message: String },
    /// The request may have reached the broker, but no answer came back.
    #[error("the connection to the broker at {url} broke before it answered: {message}")]
    Interrupted { url: String, message: String },
    #[error(
        "unsupported broker URL {0:?}: this build speaks plain http:// (put TLS in front on the broker side, or use an http:// URL on a trusted network)"
    )]
    UnsupportedUrl(String),
}

/// `METHOD <base><path>` with an optional bearer token and JSON body; returns status and body.
pub async fn request(
    method: hyper::Method,
    base_url: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Result<(u16, Bytes), HttpError> {
    let base = base_url.trim().trim_end_matches('/');
    let authority = base.strip_prefix("http://").ok_or_else(|| HttpError::UnsupportedUrl(base.to_owned()))?;
    let (authority, prefix) = match authority.split_once('/') {
        Some((authority, prefix)) => (authority, format!("/{prefix}")),
        None => (authority, String::new()),
    };
    let address = if authority.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let unreachable = |message: String| HttpError::Unreachable { url: base.to_owned(), message };
    let interrupted = |message: String| HttpError::Interrupted { url: base.to_owned(), message };
    let connect = async {
        let stream = tokio::net::TcpStream::connect(&address).await.map_err(|e| unreachable(e.to_string()))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(connection);
        Ok(sender)
    };
    let mut sender = tokio::time::timeout(REQUEST_TIMEOUT, connect)
        .await
        .unwrap_or_else(|_| Err(unreachable(format!("no connection within {REQUEST_TIMEOUT:?}"))))?;
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(format!("{prefix}{path}"))
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(token) = bearer {
        builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let payload = body.map(|b| serde_json::to_vec(b).expect("json serializes")).unwrap_or_default();
    let request = builder.body(Full::new(Bytes::from(payload))).map_err(|e| unreachable(e.to_string()))?;
    // From here on the broker may have acted on the request even if no answer arrives.
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

    #[tokio::test]
    async fn https_brokers_are_refused_with_an_explanation() {
        let error =
            request(hyper::Method::POST, "https://mesh.example.com", "/join", None, None).await.expect_err("refused");
        assert!(matches!(error, HttpError::UnsupportedUrl(_)));
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
