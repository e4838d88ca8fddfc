//! What the BGP-mode tests share: the workspace's binaries, pods wired by the CNI binary
//! with what a test does in them, and the node's twill routes.

#![allow(dead_code)] // each test file uses its own part

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use twill_lab::{Host, Lab};
use twill_netns::NetNs;
use twill_tests::{cni, daemon::Twilld, scripts::PROBE};

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");

pub fn twilld() -> &'static Path {
    Path::new(TWILLD)
}

/// A binary built next to twilld (the CNI plugin, netctl).
pub fn sibling(name: &str) -> PathBuf {
    Path::new(TWILLD).with_file_name(name)
}

/// A pod wired by the CNI binary: its namespace and address.
pub struct Pod {
    pub netns: String,
    pub ip: Ipv4Addr,
}

impl Pod {
    /// `cmd` in the pod's namespace, its output piped.
    pub fn spawn(&self, mut cmd: Command) -> Child {
        let ns = NetNs::from_path(&self.netns).unwrap();
        ns.run(move || cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn())
            .unwrap()
            .unwrap()
    }

    /// What `cmd` printed (stdout, then stderr).
    pub fn output(&self, cmd: Command) -> String {
        let out = self.spawn(cmd).wait_with_output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    pub fn python(script: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(script).args(args);
        cmd
    }

    /// Whether a TCP connection from here to `to`'s echo port gets an answer within 2 s.
    pub fn reaches(&self, to: &Pod) -> bool {
        self.output(Self::python(PROBE, &[&to.ip.to_string(), "2"]))
            .starts_with("ok")
    }

    pub fn mtu(&self) -> u32 {
        // Not /sys/class/net: sysfs shows the namespace it was mounted in.
        link_mtu(&self.output(cmd("ip", &["-o", "link", "show", "eth0"])))
    }

    /// A ping of `size` bytes of payload with DF set: whether it was answered.
    pub fn df_ping(&self, to: &Pod, size: u32) -> bool {
        let size = size.to_string();
        let to = to.ip.to_string();
        let args = ["-M", "do", "-s", &size, "-c", "2", "-W", "1", &to];
        self.output(cmd("ping", &args)).contains(" 0% packet loss")
    }
}

pub fn cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// The MTU in `ip -o link show` output.
pub fn link_mtu(text: &str) -> u32 {
    text.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no mtu in {text}"))
}

/// A pod `name` in namespace `default` on `host`, through the CNI binary.
pub fn add_pod(lab: &mut Lab, host: &Host, daemon: &Twilld, name: &str) -> Pod {
    let args = format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
    let (netns, ip) = cni::add_pod(&sibling("twill"), lab, host, daemon, name, &args);
    Pod { netns, ip }
}

/// `ip ARGS` in the host's namespace: its stdout.
pub fn ip(host: &Host, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", &host.plan.netns])
        .args(args)
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip -4 route show proto 66` with a gateway: destination -> "via X dev Y [onlink]".
pub fn twill_routes(host: &Host) -> BTreeMap<String, String> {
    ip(host, &["-4", "route", "show", "proto", "66"])
        .lines()
        .filter_map(|l| {
            let (dst, rest) = l.split_once(' ')?;
            rest.starts_with("via ")
                .then(|| (dst.to_owned(), rest.trim().to_owned()))
        })
        .collect()
}

/// Polls `check` every 20 ms until it holds; fails after `limit`. How long it took.
pub fn until(what: &str, limit: Duration, check: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(20));
    }
}
