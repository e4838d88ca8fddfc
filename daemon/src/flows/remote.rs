//! The flow API over TCP (`flows.listen`): the unix socket's `Request::Flows`, for
//! `netctl monitor` on other nodes, after a token line (`twill_api::remote`). Nothing else
//! is served here: the other requests change the node or concern its pods, and stay on
//! the owner-only unix socket.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
};
use tracing::{debug, info, warn};
use twill_api::{ErrorKind, Request, Response, decode_request, encode_response};

use super::config::RemoteFlows;
use crate::node::Node;

/// Longest request line read after the token.
const MAX_REQUEST: u64 = 64 << 10;
/// A connection's whole life: the longest poll (5 s) and some.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a wrong token waits for its answer: guessing is slow, and a client that
/// retries at once does not spin.
const REFUSAL_DELAY: Duration = Duration::from_millis(200);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CLIENTS: usize = 64;
/// How long a client has to send its token line, and then its request line: a client
/// that sends nothing gives its slot back after this, not after [`CLIENT_TIMEOUT`].
const LINE_TIMEOUT: Duration = Duration::from_secs(2);
/// Wrong tokens are logged at most this often (the others at debug level), so whoever
/// reaches the port cannot flood the log.
const WARN_EVERY_SECS: u64 = 10;

/// Reads one line within [`LINE_TIMEOUT`].
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut String,
) -> std::io::Result<()> {
    match tokio::time::timeout(LINE_TIMEOUT, reader.read_line(line)).await {
        Ok(read) => read.map(|_| ()),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no line within 2 s",
        )),
    }
}

/// Whether a wrong token now is to be logged as a warning.
fn warn_now() -> bool {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(std::sync::atomic::Ordering::Relaxed);
    now >= last + WARN_EVERY_SECS
        && LAST
            .compare_exchange(
                last,
                now,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
}

/// Reads the token and binds the listener; an error stops the daemon at start, naming the
/// key.
pub fn bind(remote: &RemoteFlows) -> anyhow::Result<(std::net::TcpListener, String)> {
    let token = twill_api::remote::read_token(&remote.token_file)
        .map_err(anyhow::Error::msg)
        .context("flows.token_file")?;
    if let Ok(meta) = std::fs::metadata(&remote.token_file) {
        use std::os::unix::fs::PermissionsExt as _;
        if meta.permissions().mode() & 0o077 != 0 {
            warn!(
                "flows.token_file: {} can be read by others than its owner (mode {:o}); \
                 chmod 600 it",
                remote.token_file.display(),
                meta.permissions().mode() & 0o777
            );
        }
    }
    let listener = std::net::TcpListener::bind(remote.listen)
        .with_context(|| format!("flows.listen: binding {}", remote.listen))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("flows.listen: {}", remote.listen))?;
    Ok((listener, token))
}

pub async fn serve(listener: std::net::TcpListener, token: String, node: Arc<Node>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!("flows.listen: registering the listener: {e}");
            return;
        }
    };
    if let Ok(at) = listener.local_addr() {
        info!(listen = %at, "serving flow records over TCP (token required)");
    }
    let token: Arc<str> = Arc::from(token);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (node, token) = (node.clone(), token.clone());
                tokio::spawn(async move {
                    let served =
                        tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, peer, &token, &node));
                    match served.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => debug!(%peer, "flow API client: {e}"),
                        Err(_) => debug!(%peer, "flow API client too slow"),
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                warn!("flows.listen: accepting: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(
    stream: TcpStream,
    peer: SocketAddr,
    token: &str,
    node: &Node,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(twill_api::remote::MAX_TOKEN_LINE + MAX_REQUEST));
    let mut given = String::new();
    read_line(&mut reader, &mut given).await?;
    let response = if !twill_api::remote::token_matches(given.trim_end_matches(['\n', '\r']), token)
    {
        if warn_now() {
            warn!(%peer, "flow API: a client sent a wrong token; refused (more are logged at debug level for {WARN_EVERY_SECS} s)");
        } else {
            debug!(%peer, "flow API: a client sent a wrong token; refused");
        }
        tokio::time::sleep(REFUSAL_DELAY).await;
        Response::Error {
            kind: ErrorKind::Unauthorized,
            message: "wrong flow API token: it is not the one in this node's flows.token_file"
                .to_owned(),
        }
    } else {
        let mut line = String::new();
        read_line(&mut reader, &mut line).await?;
        match decode_request(&line) {
            Ok(Request::Flows {
                after,
                max,
                wait_ms,
            }) => super::answer(node, after, max, wait_ms).await,
            Ok(_) => Response::Error {
                kind: ErrorKind::BadRequest,
                message: "only flow requests are served over TCP; the others are on the \
                          node's unix socket"
                    .to_owned(),
            },
            Err(message) => Response::Error {
                kind: ErrorKind::BadRequest,
                message,
            },
        }
    };
    write
        .write_all(encode_response(&response).as_bytes())
        .await?;
    write.shutdown().await
}
