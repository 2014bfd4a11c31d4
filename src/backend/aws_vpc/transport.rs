//! The one HTTP client the EC2 and metadata clients share: hyper's pooled client over rustls
//! (ring provider, Mozilla's roots from `webpki-roots`), plain `http://` allowed for metadata
//! and for test endpoints such as moto on loopback.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

/// Bodies larger than this are refused (a DescribeRouteTables answer is a few KiB).
const MAX_BODY: usize = 8 << 20;

/// A cheap-to-clone pooled client.
pub type Client = HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Why a request got no complete answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection failed")]
    Transport(#[source] hyper_util::client::legacy::Error),
    #[error("reading the answer failed: {0}")]
    Body(String),
}

/// An answer: status and body text.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Builds the client.
///
/// # Errors
/// rustls refusing its own default protocol versions (cannot happen with the ring provider,
/// but it is a `Result` there).
pub fn client() -> Result<Client, rustls::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(HyperClient::builder(TokioExecutor::new()).build(https))
}

/// Sends `req` and reads the whole answer, all within `timeout`.
pub async fn send(
    client: &Client,
    req: http::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let exchange = async {
        let resp = client.request(req).await.map_err(HttpError::Transport)?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| HttpError::Body(e.to_string()))?
            .to_bytes();
        Ok(Response {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}
