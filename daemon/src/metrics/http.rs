//! The `/metrics` listener: HTTP/1.1 over plain TCP (hyper), one route. Anything else
//! answers 404; a client that sends no request head within [`HEAD_TIMEOUT`] is dropped;
//! at most [`CONNECTIONS`] connections are served at once, the rest wait to be accepted.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, warn};

use super::scrape::{Format, Scraper};

const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTIONS: usize = 16;

/// Binds `addr` (`metrics.listen`).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics scrapes on {addr} (metrics.listen)"))
}

/// Serves scrapes until the daemon stops.
pub async fn serve(listener: TcpListener, scraper: Arc<Scraper>) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS));
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!("metrics: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let scraper = scraper.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, scraper.clone()));
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!("metrics: connection ended: {e}");
            }
            drop(permit);
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    scraper: Arc<Scraper>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != "/metrics" {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "not found: twilld serves /metrics\n".into(),
        ));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "/metrics answers GET\n".into(),
        ));
    }
    let format = Format::accepted(
        request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    // A scrape takes the dataplane lock and reads maps: off the runtime's threads.
    let rendered = tokio::task::spawn_blocking(move || scraper.render(format)).await;
    Ok(match rendered {
        Ok(Ok(text)) => Response::builder()
            .header(header::CONTENT_TYPE, format.content_type())
            .body(Full::new(Bytes::from(text)))
            .expect("a static header is valid"),
        Ok(Err(e)) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the metrics: {e}\n"),
        ),
        Err(e) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("gathering the metrics failed: {e}\n"),
        ),
    })
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(text)))
        .expect("a static header is valid")
}
