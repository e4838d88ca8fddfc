//! Helpers shared by twill's integration tests: root checks, crafted packets, and checks that a lab left nothing behind.
//!
//! These tests need root and a real kernel. CI runs as root; run without root they fail
//! with a message saying so, never skip.

use std::net::Ipv4Addr;

use twill_lab::{Manifest, process::ProcessRef};
use twill_netns::NetNs;

/// Fails the test, loudly, when not running as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, eBPF, cgroups); run it as root, \
         as CI does: sudo scripts/test"
    );
}

/// Prometheus's `promtool check metrics` finds nothing to say about `text` (a `/metrics`
/// page in the Prometheus text format).
pub fn promtool_check(text: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (scripts/setup installs it with prometheus)");
    promtool
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let checked = promtool.wait_with_output().expect("wait for promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}: {said}\n{text}",
        checked.status
    );
}

/// What a lab would leave behind if teardown failed: every part of it that still exists.
pub fn leftovers(manifest: &Manifest) -> Vec<String> {
    let mut found = Vec::new();
    let namespaces = NetNs::list().expect("listing /run/netns");
    for ns in manifest.namespaces() {
        if namespaces.iter().any(|n| n == ns) {
            found.push(format!("netns {ns}"));
        }
        if let Some(etc) = twill_lab::netns_etc_dir(ns)
            && etc.exists()
        {
            found.push(format!("directory {}", etc.display()));
        }
    }
    if let Some(etcd) = manifest.etcd
        && etcd.is_alive()
    {
        found.push(format!("etcd process {}", etcd.pid));
    }
    for dir in [
        &manifest.cgroup_dir,
        &manifest.bpffs_dir,
        &manifest.state_dir,
    ] {
        if dir.exists() {
            found.push(format!("directory {}", dir.display()));
        }
    }
    found
}

/// Whether a process still runs (zombies count as gone).
pub fn alive(pid: u32) -> bool {
    ProcessRef::of(pid).is_some()
}

/// Crafted frames for `BPF_PROG_TEST_RUN`.
/// Gives each address an open policy entry, as `twilld` does for a pod no policy selects:
/// the pod programs drop what a local pod sends or receives without one (fail closed), so
/// tests that run the programs on crafted packets register their pods first.
pub fn open_policy(datapath: &mut twill_bpf::Datapath, ips: impl IntoIterator<Item = Ipv4Addr>) {
    for ip in ips {
        datapath
            .set_policy_endpoint(
                twill_abi::lb::wire_ip(ip.octets()),
                twill_abi::policy::PolicyEndpoint::default(),
            )
            .expect("write an open policy entry");
    }
}

/// Runs `netctl` (the binary `bin`) with `args` against `lab`'s store, `stdin` as its
/// input; its output and errors. Panics, with both, if it fails.
pub fn netctl(bin: &std::path::Path, lab: &twill_lab::Lab, args: &[&str], stdin: &str) -> String {
    use std::{
        io::Write as _,
        process::{Command, Stdio},
    };
    let mut child = Command::new(bin)
        .args(args)
        .args(["--lab", lab.name()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run netctl");
    child
        .stdin
        .take()
        .expect("netctl's stdin")
        .write_all(stdin.as_bytes())
        .expect("write netctl's input");
    let out = child.wait_with_output().expect("netctl ends");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "netctl {args:?}: {text}");
    text
}

pub mod bird;
pub mod prometheus;

pub mod packet {
    use super::Ipv4Addr;

    const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

    pub fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(14 + payload.len());
        frame.extend_from_slice(&DST_MAC);
        frame.extend_from_slice(&SRC_MAC);
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// An IPv4 header (no options) with a correct checksum, followed by `payload`.
    pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let mut h = vec![0x45, 0]; // version 4, IHL 5; DSCP/ECN
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&[0, 1, 0x40, 0]); // id 1, DF
        h.extend_from_slice(&[64, protocol, 0, 0]); // TTL, protocol, checksum (below)
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        let sum = checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    /// A TCP SYN header (checksum left zero: the programs under test do not verify it).
    pub fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
        let mut t = Vec::with_capacity(20);
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]); // seq 1, ack 0
        t.extend_from_slice(&[0x50, 0x02, 0xff, 0xff]); // data offset 5, SYN, window
        t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        t
    }

    /// An ARP request for `target` from `sender`.
    pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let mut a = vec![0, 1, 0x08, 0, 6, 4, 0, 1]; // Ethernet, IPv4, lengths, request
        a.extend_from_slice(&SRC_MAC);
        a.extend_from_slice(&sender.octets());
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&target.octets());
        ethernet(0x0806, &a)
    }

    /// An Ethernet + IPv4 + TCP (SYN) or UDP frame with correct checksums.
    /// `udp_checksum: false` leaves a UDP checksum of zero ("none"), as UDP allows.
    pub fn l4_frame(
        protocol: u8,
        src: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
        payload: &[u8],
        udp_checksum: bool,
    ) -> Vec<u8> {
        let mut l4 = if protocol == 6 {
            let mut t = tcp_syn(src.1, dst.1);
            t.extend_from_slice(payload);
            t
        } else {
            let mut u = Vec::new();
            u.extend_from_slice(&src.1.to_be_bytes());
            u.extend_from_slice(&dst.1.to_be_bytes());
            u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            u.extend_from_slice(&[0, 0]);
            u.extend_from_slice(payload);
            u
        };
        let csum_at = if protocol == 6 { 16 } else { 6 };
        if protocol == 6 || udp_checksum {
            let sum = l4_checksum(src.0, dst.0, protocol, &l4);
            l4[csum_at..csum_at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        ethernet(0x0800, &ipv4(src.0, dst.0, protocol, &l4))
    }

    /// TCP/UDP checksum over the pseudo-header and the segment (checksum field as is).
    pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
        let mut data = Vec::with_capacity(12 + segment.len());
        data.extend_from_slice(&src.octets());
        data.extend_from_slice(&dst.octets());
        data.extend_from_slice(&[0, protocol]);
        data.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        data.extend_from_slice(segment);
        checksum(&data)
    }

    /// Addresses and ports of a frame made by [`l4_frame`].
    pub fn endpoints(frame: &[u8]) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
        let ip = |o: usize| Ipv4Addr::new(frame[o], frame[o + 1], frame[o + 2], frame[o + 3]);
        let port = |o: usize| u16::from_be_bytes([frame[o], frame[o + 1]]);
        ((ip(26), port(34)), (ip(30), port(36)))
    }

    /// Whether the IPv4 header checksum and the TCP/UDP checksum both verify (a UDP
    /// checksum of zero means "none" and passes).
    pub fn checksums_ok(frame: &[u8]) -> bool {
        let ip = &frame[14..34];
        if checksum(ip) != 0 {
            return false;
        }
        let protocol = ip[9];
        let segment = &frame[34..];
        if protocol == 17 && segment[6..8] == [0, 0] {
            return true;
        }
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        l4_checksum(src, dst, protocol, segment) == 0
    }

    /// The Internet checksum (RFC 1071).
    pub fn checksum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn ipv4_header_checksum_verifies_to_zero() {
            let p = ipv4(
                Ipv4Addr::new(10, 0, 0, 1),
                Ipv4Addr::new(10, 0, 0, 2),
                6,
                &[],
            );
            assert_eq!(checksum(&p[..20]), 0);
            assert_eq!(p.len(), 20);
            assert_eq!(u16::from_be_bytes([p[2], p[3]]), 20);
        }
    }
}

/// A `twilld` running on a lab node, with its own socket, state and log under the node's
/// state directory. Killed when dropped.
pub mod daemon {
    use std::{
        path::{Path, PathBuf},
        process::Child,
        thread,
        time::{Duration, Instant},
    };

    use twill_api::{NodeStatus, Request, Response};
    use twill_lab::{
        Host, Lab,
        workload::{DaemonPaths, daemon_args, spawn_daemon},
    };

    pub struct Twilld {
        pub child: Child,
        pub socket: PathBuf,
        pub state_dir: PathBuf,
        pub log: PathBuf,
        pub node: String,
        pub paths: DaemonPaths,
        bin: PathBuf,
        args: Vec<String>,
        config: String,
        host: Host,
    }

    impl Twilld {
        /// A daemon on every node of `lab` with `config`, each ready (its subnet leased).
        pub fn start_on_every_node(bin: &Path, lab: &Lab, config: &str) -> Vec<Self> {
            let daemons: Vec<Self> = lab
                .nodes()
                .iter()
                .map(|n| Self::start(bin, lab, n, config, &[]))
                .collect();
            for d in &daemons {
                d.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());
            }
            daemons
        }

        /// Starts `bin run` on `host` with the lab's etcd, per-node paths, `config` as its
        /// configuration file and `extra` flags. Returns once its socket answers.
        pub fn start(bin: &Path, lab: &Lab, host: &Host, config: &str, extra: &[&str]) -> Self {
            let paths = DaemonPaths::of(host);
            let args = daemon_args(&lab.etcd_endpoint(), host, &paths, extra);
            let child = spawn_daemon(bin, host, &paths, config, &args).expect("start twilld");
            let mut daemon = Self {
                child,
                socket: paths.socket.clone(),
                state_dir: paths.state_dir.clone(),
                log: paths.log.clone(),
                node: host.name().to_owned(),
                paths,
                bin: bin.to_owned(),
                args,
                config: config.to_owned(),
                host: host.clone(),
            };
            daemon.wait_for_socket();
            daemon
        }

        /// Kills the daemon with SIGKILL (no cleanup of any kind) and reaps it.
        pub fn kill(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }

        /// Starts the daemon again with the same arguments, state and socket.
        pub fn restart(&mut self) {
            self.kill();
            self.child = spawn_daemon(&self.bin, &self.host, &self.paths, &self.config, &self.args)
                .expect("restart twilld");
            self.wait_for_socket();
        }

        /// Like [`Self::restart`], with `extra` flags added to the daemon's arguments (for
        /// this start and later ones).
        pub fn restart_with(&mut self, extra: &[&str]) {
            self.args.extend(extra.iter().map(|s| s.to_string()));
            self.restart();
        }

        fn wait_for_socket(&mut self) {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Response::Status { .. }) = self.try_request(&Request::Status) {
                    return;
                }
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!(
                        "twilld on {} exited with {status}:\n{}",
                        self.node,
                        self.log_text()
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "twilld on {} never answered on {}:\n{}",
                    self.node,
                    self.socket.display(),
                    self.log_text()
                );
                thread::sleep(Duration::from_millis(20));
            }
        }

        pub fn try_request(&self, request: &Request) -> Result<Response, twill_api::ClientError> {
            twill_api::call(&self.socket, request, Duration::from_secs(10))
        }

        pub fn request(&self, request: &Request) -> Response {
            self.try_request(request)
                .unwrap_or_else(|e| panic!("{e}\n{}", self.log_text()))
        }

        pub fn status(&self) -> NodeStatus {
            match self.request(&Request::Status) {
                Response::Status { status } => status,
                other => panic!("status answered {other:?}"),
            }
        }

        /// Polls the status until `done` holds; panics with the last status and the log
        /// after `timeout`.
        pub fn wait_status(
            &self,
            what: &str,
            timeout: Duration,
            done: impl Fn(&NodeStatus) -> bool,
        ) -> NodeStatus {
            let deadline = Instant::now() + timeout;
            loop {
                let status = self.status();
                if done(&status) {
                    return status;
                }
                assert!(
                    Instant::now() < deadline,
                    "{}: not {what} after {timeout:?}: {status:?}\n{}",
                    self.node,
                    self.log_text()
                );
                thread::sleep(Duration::from_millis(50));
            }
        }

        pub fn log_text(&self) -> String {
            std::fs::read_to_string(&self.log).unwrap_or_default()
        }

        pub fn is_running(&mut self) -> bool {
            self.child.try_wait().map(|s| s.is_none()).unwrap_or(false)
        }
    }

    impl Drop for Twilld {
        fn drop(&mut self) {
            self.kill();
        }
    }
}

/// Calling a CNI plugin binary exactly as a runtime does: environment and stdin in, JSON on
/// stdout, from inside the node's network namespace.
pub mod cni {
    use std::{net::Ipv4Addr, path::Path};

    use serde_json::Value;
    pub use twill_lab::workload::cni_vars as vars;
    use twill_lab::{Host, Lab, workload};

    use crate::daemon::Twilld;

    pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

    pub type Output = workload::CniOutput;

    /// Asserting helpers on a CNI call's output.
    pub trait Outcome {
        /// Stdout as JSON (panics, showing everything, if it is not).
        fn json(&self) -> Value;
        /// Asserts success and returns the JSON result (or Null for no output).
        fn ok(&self) -> Value;
        /// Asserts failure and returns the error JSON.
        fn err(&self) -> Value;
    }

    impl Outcome for Output {
        fn json(&self) -> Value {
            serde_json::from_str(&self.stdout)
                .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
        }

        fn ok(&self) -> Value {
            assert!(self.status.success(), "plugin failed: {self:?}");
            if self.stdout.trim().is_empty() {
                Value::Null
            } else {
                self.json()
            }
        }

        fn err(&self) -> Value {
            assert!(
                !self.status.success(),
                "plugin succeeded but should not: {self:?}"
            );
            self.json()
        }
    }

    /// Runs `bin` on `host` with `vars` as its whole CNI environment and `stdin`.
    pub fn invoke(bin: &Path, host: &Host, vars: &[(&str, &str)], stdin: &str) -> Output {
        workload::invoke_cni(bin, host, vars, stdin).expect("run the plugin")
    }

    /// twill's network configuration for a daemon, in `version`.
    pub fn config(version: &str, daemon: &Twilld) -> Value {
        workload::cni_config(version, &daemon.paths)
    }

    /// Wires pod `name` on `host` as a runtime would: a new lab-owned namespace, then ADD
    /// (spec 1.1.0) through the CNI binary `bin`, with `args` as `CNI_ARGS` when not
    /// empty. Returns the namespace's path and the pod's address.
    pub fn add_pod(
        bin: &Path,
        lab: &mut Lab,
        host: &Host,
        daemon: &Twilld,
        name: &str,
        args: &str,
    ) -> (String, Ipv4Addr) {
        let netns = lab.create_netns(name).unwrap().path().display().to_string();
        let ip = add_in(bin, host, daemon, name, &netns, args);
        (netns, ip)
    }

    /// ADD of pod `name` into an existing namespace `netns` (where something may already
    /// run, as a runtime's sandbox process does); waits for its programs. Its address.
    pub fn add_in(
        bin: &Path,
        host: &Host,
        daemon: &Twilld,
        name: &str,
        netns: &str,
        args: &str,
    ) -> Ipv4Addr {
        let mut vars = vars("ADD", name, netns, "eth0");
        if !args.is_empty() {
            vars.push(("CNI_ARGS", args));
        }
        let result = invoke(bin, host, &vars, &config("1.1.0", daemon).to_string()).ok();
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.trim_end_matches("/32").parse().ok())
            .unwrap_or_else(|| panic!("no address in {result}"));
        let key = twill_api::AttachmentKey {
            container_id: name.to_owned(),
            ifname: "eth0".to_owned(),
        };
        twill_api::wait_attached(&daemon.socket, &key, std::time::Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("pod {name}: {e}"));
        ip
    }
}

/// Small python programs run inside pod namespaces by tests and benchmarks.
pub mod scripts {
    /// Echoes every line back on TCP 8080, connection after connection.
    pub const ECHO: &str = "import socket,threading\n\
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('0.0.0.0', 8080)); s.listen(64)\n\
def serve(c):\n\
\x20   f = c.makefile('rwb', buffering=0)\n\
\x20   for line in f: f.write(line)\n\
while True:\n\
\x20   c, a = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()\n";

    /// Sends 1 KiB every 10 ms to each connection on 8080, until it closes.
    pub const STREAMER: &str = "import socket,threading,time\n\
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('0.0.0.0', 8080)); s.listen(64)\n\
def feed(c):\n\
\x20   try:\n\
\x20       while True:\n\
\x20           c.sendall(b'x' * 1024); time.sleep(0.01)\n\
\x20   except OSError:\n\
\x20       c.close()\n\
while True:\n\
\x20   c, _ = s.accept(); threading.Thread(target=feed, args=(c,), daemon=True).start()\n";

    /// One probe of `argv[1]`:8080 with timeout `argv[2]`: connect, send a line, read it
    /// back; prints `ok` or `denied` and the error.
    pub const PROBE: &str = "import socket,sys\n\
try:\n\
\x20   c = socket.create_connection((sys.argv[1], 8080), timeout=float(sys.argv[2]))\n\
\x20   c.sendall(b'x\\n'); assert c.recv(10) == b'x\\n'; print('ok')\n\
except Exception as e:\n\
\x20   print('denied', e)\n";
}

/// Helpers the benchmarks share.
pub mod bench {
    use std::{
        net::{SocketAddrV4, TcpListener, TcpStream},
        process::{Command, Stdio},
        thread,
        time::{Duration, Instant},
    };

    use etcd_client::Client;
    use nix::sys::socket::{setsockopt, sockopt};
    use twill_lab::Lab;
    use twill_netns::NetNs;

    /// A process's resident memory in MiB (0 when it cannot be read).
    pub fn rss_mib(pid: u32) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    /// Runs `f` with a client of the lab's etcd, from the underlay namespace.
    pub fn etcd<T: Send>(lab: &Lab, f: impl AsyncFnOnce(Client) -> T + Send) -> T {
        let endpoint = lab.etcd_endpoint();
        lab.underlay()
            .unwrap()
            .run(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async move {
                        let client = Client::connect([endpoint.as_str()], None).await.unwrap();
                        f(client).await
                    })
            })
            .unwrap()
    }

    /// The median of `v` (the upper one of an even count).
    /// The environment variable `name` parsed, or `default` when it is not set; a value
    /// that does not parse stops the benchmark, naming the variable.
    pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
        match std::env::var(name) {
            Ok(text) => text
                .parse()
                .unwrap_or_else(|_| panic!("{name}={text:?}: not a valid value")),
            Err(_) => default,
        }
    }

    pub fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    /// A listener on `port` in `ns`, with the longest accept queue the namespace allows: a
    /// client completes its handshake in the kernel whether or not anyone accepts.
    pub fn listener(ns: &NetNs, port: u16) -> TcpListener {
        let listener = ns
            .run(move || TcpListener::bind(("0.0.0.0", port)))
            .expect("enter the namespace")
            .unwrap_or_else(|e| panic!("listening on {port}: {e}"));
        nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXALLOWABLE)
            .expect("a long accept queue");
        listener
    }

    /// A server in `ns` that accepts on `port` and closes each connection at once, with
    /// two threads in `accept` and the longest queue allowed, so the client never waits
    /// for it (a full queue drops SYNs, and a retransmission costs a second). Runs until
    /// the process exits.
    pub fn accept_and_close(ns: &NetNs, port: u16) {
        let listener = listener(ns, port);
        for _ in 0..2 {
            let listener = listener.try_clone().expect("clone the listener");
            thread::spawn(move || {
                for conn in listener.incoming() {
                    drop(conn);
                }
            });
        }
    }

    /// TCP connections per second from `ns` to `target` over `seconds`, one at a time;
    /// each is closed with a reset, so no TIME_WAIT piles up and a later run reusing the
    /// ports (after translation, the same addresses at the server) is not refused.
    pub fn connect_rate(ns: &NetNs, target: SocketAddrV4, seconds: f64) -> f64 {
        ns.run(move || {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < seconds {
                let s = TcpStream::connect_timeout(&target.into(), Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("connecting to {target}: {e}"));
                let _ = setsockopt(
                    &s,
                    sockopt::Linger,
                    &nix::libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    },
                );
                drop(s);
                n += 1;
            }
            n as f64 / start.elapsed().as_secs_f64()
        })
        .expect("enter the namespace")
    }

    /// iperf3 from `client` to `server_ip` (a one-off server in `server`, port 5299) for
    /// `seconds`: Gbit/s received (0 when the run failed).
    pub fn iperf(server: &NetNs, client: &NetNs, server_ip: &str, seconds: u32) -> f64 {
        let mut cmd = Command::new("iperf3");
        cmd.args(["-s", "-1", "-p", "5299"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut srv = server
            .run(move || cmd.spawn())
            .expect("enter the namespace")
            .expect("start iperf3 -s");
        thread::sleep(Duration::from_millis(300));
        let mut cmd = Command::new("iperf3");
        cmd.args([
            "-c",
            server_ip,
            "-p",
            "5299",
            "-t",
            &seconds.to_string(),
            "-J",
        ]);
        let out = client
            .run(move || cmd.output())
            .expect("enter the namespace")
            .expect("run iperf3 -c");
        let _ = srv.wait();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        report["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e9
    }

    /// Writes the keys and values to etcd, 500 to a transaction.
    pub fn put_all(lab: &Lab, kvs: &[(String, String)]) {
        etcd(lab, async |mut c| {
            for chunk in kvs.chunks(500) {
                let ops: Vec<_> = chunk
                    .iter()
                    .map(|(k, v)| etcd_client::TxnOp::put(k.as_str(), v.as_str(), None))
                    .collect();
                c.txn(etcd_client::Txn::new().and_then(ops)).await.unwrap();
            }
        });
    }
}
