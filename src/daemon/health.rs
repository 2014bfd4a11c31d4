//! The health server: `GET /healthz` (the process is running) and
//! `GET /readyz` (subnet.env written and the backend started), with
//! upstream's status codes and bodies; `GET /metrics` (Prometheus text) and
//! `GET /status` (JSON for `flannelctl status`), ours (see [`super::metrics`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::cancel::CancelToken;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::metrics::{self, Counters};
use crate::compat;
use crate::status::STATUS_PATH;

/// The response to one of upstream's requests (pure, for tests).
pub fn respond(method: &Method, path: &str, ready: bool) -> (StatusCode, &'static str) {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    match path {
        "/healthz" => (StatusCode::OK, compat::HEALTHZ_BODY),
        "/readyz" if ready => (StatusCode::OK, compat::READYZ_OK_BODY),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, compat::READYZ_WAIT_BODY),
        _ => (StatusCode::NOT_FOUND, "not found"),
    }
}

/// One response: `/metrics` and `/status` from `counters`, the rest as [`respond`] says.
fn response(req: &Request<Incoming>, counters: &Arc<Counters>) -> Response<Full<Bytes>> {
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let (code, content_type, body) = match req.uri().path() {
        "/metrics" if get => (
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            counters.metrics_text(),
        ),
        STATUS_PATH if get => match serde_json::to_string_pretty(&counters.status()) {
            Ok(json) => (StatusCode::OK, "application/json", json),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string(),
            ),
        },
        path => {
            let (code, body) = respond(req.method(), path, counters.ready.is_ready());
            (code, "text/plain; charset=utf-8", body.to_owned())
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

/// Binds the listener (so a busy port fails start-up) and serves until `stop`.
pub async fn serve(
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: CancelToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "health server listening (/healthz, /readyz, /metrics, /status)");
    Ok(tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.cancelled() => return,
            };
            let Ok((stream, _)) = accepted else { continue };
            let counters = counters.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let resp = response(&req, &counters);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_match_upstream() {
        assert_eq!(
            respond(&Method::GET, "/healthz", false),
            (StatusCode::OK, "flanneld is running")
        );
        assert_eq!(
            respond(&Method::GET, "/readyz", false),
            (StatusCode::SERVICE_UNAVAILABLE, "flanneld is not ready yet")
        );
        assert_eq!(
            respond(&Method::GET, "/readyz", true),
            (StatusCode::OK, "flanneld is ready")
        );
        assert_eq!(
            respond(&Method::GET, "/nope", true).0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&Method::POST, "/healthz", true).0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
