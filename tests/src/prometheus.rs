//! Debian's Prometheus for tests: started in a lab host's namespace, scraping targets
//! every second, asked through its HTTP query API; and the plain HTTP GET the tests read
//! `/metrics` with.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddrV4, TcpStream},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use twill_lab::Host;

/// Where Prometheus serves its API in the host's namespace.
pub const PROMETHEUS_PORT: u16 = 9090;

/// An HTTP/1.0 GET from inside `host`'s namespace (so no chunked answers): the status
/// code, the `Content-Type` and the body.
pub fn get(
    host: &Host,
    to: SocketAddrV4,
    target: &str,
    accept: Option<&str>,
) -> (u16, String, String) {
    let request = format!(
        "GET {target} HTTP/1.0\r\nHost: {to}\r\n{}\r\n",
        accept.map_or_else(String::new, |a| format!("Accept: {a}\r\n"))
    );
    let raw = host
        .run(move || -> std::io::Result<Vec<u8>> {
            let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(request.as_bytes())?;
            let mut raw = Vec::new();
            s.read_to_end(&mut raw)?;
            Ok(raw)
        })
        .expect("enter the namespace")
        .unwrap_or_else(|e| panic!("GET http://{to}{target}: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer from {to}: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line from {to}: {head}"));
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// Percent-encodes a query parameter.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Debian's Prometheus, in an external host's namespace, scraping its targets every
/// second. Killed, and its directory removed, when dropped.
pub struct Prometheus {
    child: Child,
    host: Host,
    api: SocketAddrV4,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `targets` (node name, address) as the job `twilld`.
    pub fn start(host: &Host, targets: &[(String, SocketAddrV4)]) -> Self {
        Self::start_jobs(host, &[("twilld", targets.to_vec())])
    }

    /// Scrapes each job's targets (node name, address), each labelled with its node.
    pub fn start_jobs(host: &Host, jobs: &[(&str, Vec<(String, SocketAddrV4)>)]) -> Self {
        let dir = tempfile::tempdir().expect("a directory for Prometheus");
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, targets) in jobs {
            config.push_str(&format!("  - job_name: {job}\n    static_configs:\n"));
            for (node, addr) in targets {
                config.push_str(&format!(
                    "      - targets: ['{addr}']\n        labels: {{node: {node}}}\n"
                ));
            }
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let api = SocketAddrV4::new(host.plan.underlay_ip, PROMETHEUS_PORT);
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={api}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = host
            .spawn(cmd)
            .expect("start prometheus (scripts/setup installs it)");
        let mut prometheus = Self {
            child,
            host: host.clone(),
            api,
            dir,
        };
        prometheus.wait_ready();
        prometheus
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", self.log());
            }
            let api = self.api;
            let ready = self
                .host
                .run(move || TcpStream::connect_timeout(&api.into(), Duration::from_millis(200)))
                .unwrap()
                .is_ok()
                && get(&self.host, self.api, "/-/ready", None).0 == 200;
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// An instant query: each series' labels and value.
    pub fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let (status, _, body) = get(
            &self.host,
            self.api,
            &format!("/api/v1/query?query={}", encode(promql)),
            None,
        );
        let answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{promql}: not JSON ({e}): {body}"));
        assert_eq!(status, 200, "{promql}: {answer}");
        answer["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{promql}: {answer}"))
            .iter()
            .map(|s| {
                let value = s["value"][1].as_str().and_then(|v| v.parse().ok());
                (s["metric"].clone(), value.unwrap_or(f64::NAN))
            })
            .collect()
    }

    /// The value of a query that yields one series or none (none: 0).
    pub fn value(&self, promql: &str) -> f64 {
        let result = self.query(promql);
        assert!(result.len() <= 1, "{promql}: {result:?}");
        result.first().map_or(0.0, |(_, v)| *v)
    }

    /// Polls `promql` until `done` holds for its value.
    pub fn wait_for(&self, what: &str, promql: &str, done: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.value(promql);
            if done(v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {promql} = {v}\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The TempDir removes the configuration and the time series after this.
    }
}
