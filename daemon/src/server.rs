//! The local socket: one JSON line in, one JSON line out, per connection.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::debug;
use twill_api::{ErrorKind, Response, decode_request, encode_response};

use crate::node::Node;

/// Longest request line accepted.
const MAX_REQUEST: u64 = 1 << 20;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the socket, owner-only, replacing a stale one from an earlier run.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, node: Arc<Node>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let node = node.clone();
                tokio::spawn(async move {
                    if let Err(e) = tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, node)).await
                    {
                        debug!("client gave up or was too slow: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accepting on the socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(stream: UnixStream, node: Arc<Node>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let response = match decode_request(&line) {
        // A long poll: waits on the reactor, not on a blocking thread.
        Ok(twill_api::Request::Flows {
            after,
            max,
            wait_ms,
        }) => crate::flows::answer(&node, after, max, wait_ms).await,
        // twill-dnsd's records: queued for the flow reader at once.
        Ok(twill_api::Request::DnsQueries { queries, lost }) => match node.flows.get() {
            Some(log) => log.take_dns(queries, lost),
            None => Response::Error {
                kind: ErrorKind::Internal,
                message: "this node keeps no flow records".to_owned(),
            },
        },
        // Requests are short and touch a small file; run them off the reactor threads.
        Ok(request) => {
            let started = std::time::Instant::now();
            let kind = crate::metrics::CniRequest::of(&request);
            let instruments = node.instruments.clone();
            let response = tokio::task::spawn_blocking(move || node.handle(request))
                .await
                .unwrap_or_else(|e| Response::Error {
                    kind: ErrorKind::Internal,
                    message: format!("request handler failed: {e}"),
                });
            if let Some(kind) = kind {
                instruments.cni_request(kind, started.elapsed());
            }
            response
        }
        Err(message) => Response::Error {
            kind: ErrorKind::BadRequest,
            message,
        },
    };
    write
        .write_all(encode_response(&response).as_bytes())
        .await?;
    write.shutdown().await
}
