//! The flow API over TCP, for `netctl monitor` on another node: the same request and
//! answer lines as the unix socket, after a line with a shared token.
//!
//! A connection is: the client sends the token and `\n`, then one request line; the
//! daemon answers one line and closes. A wrong token is answered with
//! [`crate::ErrorKind::Unauthorized`] and nothing else is read. Only
//! [`crate::Request::Flows`] is served this way.
//!
//! The token authenticates the client; nothing is encrypted. Whoever can read the traffic
//! on the node network can read the token and the records: keep the listener on a network
//! only the nodes and operators reach, or put a TLS proxy in front of it.

use std::{
    io::{self, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use sha2::{Digest as _, Sha256};

use crate::{ClientError, Request, Response};

/// The port `flows.listen` usually names (the one after `/metrics`' 9962).
pub const DEFAULT_FLOWS_PORT: u16 = 9963;
/// Where `netctl` looks for the token unless told otherwise.
pub const DEFAULT_TOKEN_FILE: &str = "/etc/twill/flows.token";
/// The shortest token accepted: 16 characters (a 128-bit token in hex is 32).
pub const MIN_TOKEN_LEN: usize = 16;
/// The longest token line the daemon reads.
pub const MAX_TOKEN_LINE: u64 = 4096;

/// The token in `path`: its first line, without surrounding whitespace. The error names
/// the file.
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the flow API token {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_owned();
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "the flow API token in {} is shorter than {MIN_TOKEN_LEN} characters",
            path.display()
        ));
    }
    if token.len() as u64 >= MAX_TOKEN_LINE {
        return Err(format!(
            "the flow API token in {} is longer than {} characters",
            path.display(),
            MAX_TOKEN_LINE - 1
        ));
    }
    Ok(token)
}

/// Whether `given` is `expected`, in time that depends on neither: both are hashed, and
/// the digests (of one length) are compared without stopping at the first difference.
pub fn token_matches(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    let difference = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// [`crate::call`] over TCP to a node's flow API at `addr`, with `token`. Errors name the
/// address where the unix client names the socket path.
pub fn call_tcp(
    addr: SocketAddr,
    token: &str,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let name = PathBuf::from(addr.to_string());
    let stream = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(5))).map_err(
        |source| ClientError::Unreachable {
            socket: name.clone(),
            source,
        },
    )?;
    let io_err = |source: io::Error| ClientError::Io {
        socket: name.clone(),
        source,
    };
    stream.set_nodelay(true).map_err(io_err)?;
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    (&stream)
        .write_all(format!("{token}\n").as_bytes())
        .map_err(io_err)?;
    crate::exchange(&stream, &name, request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(token_matches("0123456789abcdef", "0123456789abcdef"));
        assert!(!token_matches("0123456789abcdeF", "0123456789abcdef"));
        assert!(!token_matches("0123456789abcdef0", "0123456789abcdef"));
        assert!(!token_matches("", "0123456789abcdef"));
    }

    #[test]
    fn a_token_file_gives_its_first_line_and_short_ones_are_refused() {
        let dir = std::env::temp_dir().join(format!("twill-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "  0123456789abcdef0123  \nsecond line\n").unwrap();
        assert_eq!(read_token(&good).unwrap(), "0123456789abcdef0123");
        let short = dir.join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let err = read_token(&short).unwrap_err();
        assert!(
            err.contains("shorter than 16") && err.contains("short"),
            "{err}"
        );
        let err = read_token(&dir.join("missing")).unwrap_err();
        assert!(err.starts_with("reading the flow API token"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
