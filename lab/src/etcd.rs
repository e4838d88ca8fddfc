//! The lab's etcd: Debian's `etcd` binary, run inside the underlay namespace on the
//! gateway address, data in the lab's state directory.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use twill_netns::NetNs;

use crate::{
    LabError,
    plan::{ETCD_CLIENT_PORT, GATEWAY},
};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts etcd in `ns` and waits until it answers `/health`.
pub(crate) fn start(ns: &NetNs, state_dir: &Path) -> Result<Child, LabError> {
    let data_dir = state_dir.join("etcd");
    let log_path = state_dir.join("etcd.log");
    let log = File::create(&log_path).map_err(|e| LabError::Etcd {
        message: format!("creating {}: {e}", log_path.display()),
    })?;
    let log_err = log.try_clone().map_err(|e| LabError::Etcd {
        message: format!("duplicating {}: {e}", log_path.display()),
    })?;
    let client = format!("http://{GATEWAY}:{ETCD_CLIENT_PORT}");
    let mut cmd = Command::new("etcd");
    cmd.arg("--name=lab")
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!(
            "--listen-client-urls={client},http://127.0.0.1:{ETCD_CLIENT_PORT}"
        ))
        .arg(format!("--advertise-client-urls={client}"))
        .arg("--listen-peer-urls=http://127.0.0.1:2380")
        .arg("--initial-advertise-peer-urls=http://127.0.0.1:2380")
        .arg("--initial-cluster=lab=http://127.0.0.1:2380")
        .arg("--logger=zap")
        .arg("--log-outputs=stderr")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own process group: a Ctrl-C meant for `netctl lab up --hold` reaches netctl,
        // which then tears the lab down in order.
        .process_group(0);
    let mut child = ns.run(move || cmd.spawn())?.map_err(|e| LabError::Etcd {
        message: format!(
            "starting etcd (is etcd-server installed? scripts/setup installs it): {e}"
        ),
    })?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LabError::Etcd {
                message: format!(
                    "etcd exited with {status} before it was ready; its log: {}\n{}",
                    log_path.display(),
                    tail(&log_path)
                ),
            });
        }
        if ns.run(healthy)? {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LabError::Etcd {
                message: format!(
                    "etcd did not report healthy within {READY_TIMEOUT:?}; its log: {}\n{}",
                    log_path.display(),
                    tail(&log_path)
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET /health` on the client port answers `{"health":"true"}` once etcd serves requests.
fn healthy() -> bool {
    let addr = SocketAddr::from((GATEWAY, ETCD_CLIENT_PORT));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}
