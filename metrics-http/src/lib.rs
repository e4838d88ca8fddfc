//! The `/metrics` listener of twill's daemons: HTTP/1.1 over plain TCP (hyper), one route.
//! Anything else answers 404; a client that sends no request head within [`HEAD_TIMEOUT`]
//! is dropped; at most [`CONNECTIONS`] connections are served at once, the rest wait to
//! be accepted. What the page says is the daemon's business ([`Render`]).

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

/// How long a connection may take to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once.
pub const CONNECTIONS: usize = 16;

/// The two text formats Prometheus reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text` 1.0.0, what Prometheus asks for first.
    OpenMetrics,
    /// The Prometheus text format 0.0.4, for clients that do not ask for OpenMetrics
    /// (`curl`, `promtool check metrics`).
    Prometheus,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub fn accepted(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub const fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// Encodes `registry` in `format`.
pub fn encode(
    registry: &prometheus_client::registry::Registry,
    format: Format,
) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, registry)?,
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut text, registry)?
        }
    }
    Ok(text)
}

/// Encoding helpers for collectors that read their values at scrape time.
pub mod encode {
    use prometheus_client::{
        encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric as _},
        metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
        registry::Unit,
    };

    /// A counter family: one sample per row. Nothing is written when there are no rows.
    pub fn counters<L: EncodeLabelSet>(
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (L, u64)>,
    ) -> std::fmt::Result {
        let mut rows = rows.into_iter().peekable();
        if rows.peek().is_none() {
            return Ok(());
        }
        let mut metric = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in rows {
            ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A gauge family: one sample per row. Nothing is written when there are no rows.
    pub fn gauges<L: EncodeLabelSet, N: EncodeGaugeValue>(
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (L, N)>,
    ) -> std::fmt::Result {
        let mut rows = rows.into_iter().peekable();
        if rows.peek().is_none() {
            return Ok(());
        }
        let mut metric = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in rows {
            ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A counter without labels.
    pub fn counter(
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: u64,
    ) -> std::fmt::Result {
        let metric = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(value).encode(metric)
    }

    /// A gauge without labels.
    pub fn gauge(
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        value: impl EncodeGaugeValue,
    ) -> std::fmt::Result {
        let metric = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
        ConstGauge::new(value).encode(metric)
    }
}

/// What a scrape returns. Called off the runtime's threads: it may block (take locks,
/// read BPF maps).
pub trait Render: Send + Sync + 'static {
    fn render(&self, format: Format) -> Result<String, std::fmt::Error>;
}

/// Binds `addr`; `setting` names the configuration key in the error.
pub async fn bind(addr: SocketAddr, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics scrapes on {addr} ({setting})"))
}

/// Serves scrapes until the task is dropped; `daemon` names the program in the 404 text.
pub async fn serve<R: Render>(listener: TcpListener, render: Arc<R>, daemon: &'static str) {
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
        let render = render.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, render.clone(), daemon));
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

async fn answer<R: Render>(
    request: Request<Incoming>,
    render: Arc<R>,
    daemon: &'static str,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != "/metrics" {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            format!("not found: {daemon} serves /metrics\n"),
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
    let rendered = tokio::task::spawn_blocking(move || render.render(format)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_header_picks_the_format() {
        assert_eq!(
            Format::accepted(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::accepted(Some("text/plain")), Format::Prometheus);
        assert_eq!(Format::accepted(None), Format::Prometheus);
    }
}
