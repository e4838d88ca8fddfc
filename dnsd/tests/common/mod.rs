//! What the end-to-end DNS tests share: the workspace's binaries, twill-dnsd run on a lab
//! node, and polling.

#![allow(dead_code)] // each test file uses its own part

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use twill_lab::Host;

const DNSD: &str = env!("CARGO_BIN_EXE_twill-dnsd");

/// A binary of the workspace next to twill-dnsd (twilld, the CNI plugin, netctl).
pub fn sibling(name: &str) -> PathBuf {
    let path = Path::new(DNSD).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build` at the workspace root first \
         (`cargo test -p twill-dnsd` builds only twill-dnsd)",
        path.display()
    );
    path
}

/// Fails naming the Debian package of a missing tool.
pub fn require_tools(tools: &[(&str, &str)]) {
    for (tool, arg) in tools {
        assert!(
            Command::new(tool).arg(arg).output().is_ok(),
            "{tool} is missing: apt-get install bind9-dnsutils dnsmasq python3 \
             (scripts/setup installs them)"
        );
    }
}

/// twill-dnsd in the node's namespace; killed when dropped, its log shown on failure.
pub struct Dnsd {
    child: Child,
    log: PathBuf,
}

impl Dnsd {
    pub fn start(node: &Host, config: &Path) -> Dnsd {
        let log = node.state_dir.join("dnsd.log");
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the dnsd log");
        let mut cmd = Command::new(DNSD);
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup the log"))
            .stderr(out);
        let child = node.spawn(cmd).expect("start twill-dnsd");
        Dnsd { child, log }
    }

    /// Until it answers `name` with `answer` on the node's own address.
    pub fn wait_serving(&mut self, node: &Host, name: &str, answer: &str) {
        let ip = node.plan.underlay_ip.to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = node
                .output(
                    "dig",
                    &[&format!("@{ip}"), "+time=1", "+tries=1", "+short", name],
                )
                .expect("dig");
            if String::from_utf8_lossy(&out.stdout).trim() == answer {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("twill-dnsd exited ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "twill-dnsd not serving after 20 s:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&mut self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
        let _ = self.child.wait();
    }
}

impl Drop for Dnsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("twill-dnsd log:\n{}", self.log_text());
        }
    }
}

/// dnsmasq in the foreground, with no configuration but `options` (records, listen
/// addresses), its pid file in `state_dir`.
pub fn dnsmasq(state_dir: &Path, options: &[String]) -> Command {
    let mut cmd = Command::new("dnsmasq");
    cmd.args([
        "-k",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--port=53",
        "--user=root",
        "--bind-interfaces",
    ])
    .args(options)
    .arg(format!(
        "--pid-file={}",
        state_dir.join("dnsmasq.pid").display()
    ))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd
}

/// A process killed (and reaped) when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls every 100 ms until `done` holds; the time it took. Panics after `bound`.
pub fn within(what: &str, bound: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if done() {
            return start.elapsed();
        }
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        thread::sleep(Duration::from_millis(100));
    }
}
