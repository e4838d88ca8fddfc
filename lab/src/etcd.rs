//! The lab's etcd: Debian's `etcd` binary, run inside the underlay namespace on the
//! gateway address, data in the lab's state directory.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use twill_netns::NetNs;

use crate::{
    LabError,
    plan::{ETCD_CLIENT_PORT, GATEWAY},
};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Certificates of a TLS etcd: the CA clients trust, and a client certificate it accepts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EtcdTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Makes a CA, a server certificate for the gateway address and a client certificate with
/// `openssl`, under `dir`.
pub(crate) fn make_certificates(dir: &Path) -> Result<EtcdTls, LabError> {
    std::fs::create_dir_all(dir).map_err(|e| LabError::Etcd {
        message: format!("creating {}: {e}", dir.display()),
    })?;
    let openssl = |args: &[&str]| -> Result<(), LabError> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| LabError::Etcd {
                message: format!("running openssl (scripts/setup installs it): {e}"),
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(LabError::Etcd {
                message: format!(
                    "openssl {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ),
            })
        }
    };
    let key = |name: &str| {
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            name,
        ])
    };
    key("ca.key")?;
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=twill-lab-ca",
        "-days",
        "2",
        "-out",
        "ca.pem",
    ])?;
    for (name, ext) in [
        (
            "server",
            format!("subjectAltName=IP:{GATEWAY},IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
        ),
        ("client", "extendedKeyUsage=clientAuth".to_owned()),
    ] {
        key(&format!("{name}.key"))?;
        openssl(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN={name}"),
            "-out",
            &format!("{name}.csr"),
        ])?;
        std::fs::write(dir.join(format!("{name}.ext")), ext).map_err(|e| LabError::Etcd {
            message: format!("writing {name}.ext: {e}"),
        })?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ])?;
    }
    Ok(EtcdTls {
        ca_file: dir.join("ca.pem"),
        cert_file: dir.join("client.pem"),
        key_file: dir.join("client.key"),
    })
}

/// Starts etcd in `ns` and waits until it answers. With `tls`, etcd serves HTTPS only and
/// requires client certificates signed by the lab's CA.
pub(crate) fn start(
    ns: &NetNs,
    state_dir: &Path,
    tls: Option<&EtcdTls>,
) -> Result<Child, LabError> {
    let data_dir = state_dir.join("etcd");
    let log_path = state_dir.join("etcd.log");
    let log = File::create(&log_path).map_err(|e| LabError::Etcd {
        message: format!("creating {}: {e}", log_path.display()),
    })?;
    let log_err = log.try_clone().map_err(|e| LabError::Etcd {
        message: format!("duplicating {}: {e}", log_path.display()),
    })?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let client = format!("{scheme}://{GATEWAY}:{ETCD_CLIENT_PORT}");
    let mut cmd = Command::new("etcd");
    if let Some(tls) = tls {
        let dir = tls.ca_file.parent().unwrap_or(state_dir);
        cmd.arg(format!("--cert-file={}", dir.join("server.pem").display()))
            .arg(format!("--key-file={}", dir.join("server.key").display()))
            .arg(format!("--trusted-ca-file={}", tls.ca_file.display()))
            .arg("--client-cert-auth");
    }
    cmd.arg("--name=lab")
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!(
            "--listen-client-urls={client},{scheme}://127.0.0.1:{ETCD_CLIENT_PORT}"
        ))
        .arg(format!("--advertise-client-urls={client}"))
        .arg("--listen-peer-urls=http://127.0.0.1:2380")
        .arg("--initial-advertise-peer-urls=http://127.0.0.1:2380")
        .arg("--initial-cluster=lab=http://127.0.0.1:2380")
        // Large `netctl apply`s are one transaction (all or nothing).
        .arg("--max-txn-ops=20000")
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
        let up = match tls {
            None => ns.run(healthy)?,
            Some(tls) => ns.run(|| healthy_tls(tls))?,
        };
        if up {
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

/// `etcdctl endpoint health` with the client certificate.
fn healthy_tls(tls: &EtcdTls) -> bool {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://{GATEWAY}:{ETCD_CLIENT_PORT}"))
        .arg(format!("--cacert={}", tls.ca_file.display()))
        .arg(format!("--cert={}", tls.cert_file.display()))
        .arg(format!("--key={}", tls.key_file.display()))
        .arg("--dial-timeout=1s")
        .args(["endpoint", "health"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}
