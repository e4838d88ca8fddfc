//! NetworkPolicy connectivity matrix, after the upstream Kubernetes e2e suite
//! (`test/e2e/network/netpol`): namespaces x, y and z with pods a, b and c each, spread
//! over three nodes, every pod serving a TCP and a UDP echo on ports 80 and 81. Each
//! scenario applies policies with `netctl apply` (or relabels pods and namespaces), then
//! probes every ordered pair of pods on all four services and compares what got an echo
//! with what a small model, written per scenario from the API's wording, expects.
//!
//! The model is independent of `twill-policy`: each scenario states its expectation as a
//! plain predicate over (source pod, destination pod, protocol, port). A pod always
//! reaches itself (the Kubernetes documentation: a pod cannot block access to itself).

use std::{
    collections::BTreeSet,
    fmt::{self, Write as _},
    io::{BufRead as _, BufReader, Write as _},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use twill_lab::{Host, Lab, LabSpec};
use twill_netns::NetNs;
use twill_tests::{cni, daemon::Twilld, require_root};

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");
/// No periodic pass during the test: every change is applied by the passes that compile
/// only the pods it can affect, not repaired by a later full one.
const CONFIG: &str = "[network]\nresync_seconds = 3600\n[lease]\nttl_seconds = 5\n";
/// How long one probe waits for its connection and again for its echo.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long after a change the matrix may take to match. Enforcement within a second of
/// a change is asserted by `policy.rs`; here the margin only keeps a slow probe round
/// from failing a scenario.
const SETTLE: Duration = Duration::from_secs(2);

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const NAMES: [&str; 3] = ["a", "b", "c"];
const PODS: usize = NAMESPACES.len() * NAMES.len();

fn sibling(name: &str) -> PathBuf {
    Path::new(TWILLD).with_file_name(name)
}

/// Echo servers on TCP and UDP 80 and 81; prints `ready` once all four are bound.
const SERVER: &str = "import socket,threading\n\
def echo(c):\n\
\x20   c.settimeout(10)\n\
\x20   try:\n\
\x20       while True:\n\
\x20           d = c.recv(64)\n\
\x20           if not d: break\n\
\x20           c.sendall(d)\n\
\x20   except OSError: pass\n\
\x20   c.close()\n\
def tcp(s):\n\
\x20   while True:\n\
\x20       c, _ = s.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()\n\
def udp(s):\n\
\x20   while True:\n\
\x20       d, a = s.recvfrom(64); s.sendto(d, a)\n\
threads = []\n\
for port in (80, 81):\n\
\x20   t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
\x20   t.bind(('0.0.0.0', port)); t.listen(256)\n\
\x20   u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0', port))\n\
\x20   threads += [threading.Thread(target=tcp, args=(t,)), threading.Thread(target=udp, args=(u,))]\n\
for t in threads: t.start()\n\
print('ready', flush=True)\n";

/// One prober per source pod, alive for the whole test. For each line on stdin (a timeout
/// in seconds) it probes every target (argv) on TCP 80, TCP 81, UDP 80 and UDP 81 at
/// once, a fresh socket each, and prints one line: a `1` (echo received) or `0` per probe,
/// target by target.
const PROBER: &str = "import socket,sys,threading\n\
targets = sys.argv[1:]\n\
services = [('tcp', 80), ('tcp', 81), ('udp', 80), ('udp', 81)]\n\
def probe(out, i, ip, proto, port, timeout):\n\
\x20   ok = False\n\
\x20   try:\n\
\x20       if proto == 'tcp':\n\
\x20           with socket.create_connection((ip, port), timeout=timeout) as c:\n\
\x20               c.sendall(b'matrix'); ok = c.recv(16) == b'matrix'\n\
\x20       else:\n\
\x20           with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:\n\
\x20               u.settimeout(timeout); u.connect((ip, port)); u.send(b'matrix')\n\
\x20               ok = u.recv(16) == b'matrix'\n\
\x20   except OSError:\n\
\x20       pass\n\
\x20   out[i] = '1' if ok else '0'\n\
while True:\n\
\x20   line = sys.stdin.readline()\n\
\x20   if not line: break\n\
\x20   timeout = float(line)\n\
\x20   out = ['?'] * (len(targets) * len(services))\n\
\x20   threads = [threading.Thread(target=probe, args=(out, t * len(services) + s, ip, proto, port, timeout))\n\
\x20              for t, ip in enumerate(targets) for s, (proto, port) in enumerate(services)]\n\
\x20   for t in threads: t.start()\n\
\x20   for t in threads: t.join()\n\
\x20   print(''.join(out), flush=True)\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// One of the four things every pod serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Service {
    proto: Proto,
    port: u16,
}

/// In the order the prober probes them.
const SERVICES: [Service; 4] = [
    Service {
        proto: Proto::Tcp,
        port: 80,
    },
    Service {
        proto: Proto::Tcp,
        port: 81,
    },
    Service {
        proto: Proto::Udp,
        port: 80,
    },
    Service {
        proto: Proto::Udp,
        port: 81,
    },
];

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        };
        write!(f, "{proto}/{}", self.port)
    }
}

/// A pod of the matrix: `x/a`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PodId {
    ns: &'static str,
    name: &'static str,
}

impl PodId {
    /// All nine, namespace by namespace: the matrix's order.
    fn all() -> impl Iterator<Item = PodId> {
        NAMESPACES
            .iter()
            .flat_map(|ns| NAMES.iter().map(move |name| PodId { ns, name }))
    }

    /// Whether this is the pod `key` (`"x/a"`).
    fn is(self, key: &str) -> bool {
        key.split_once('/') == Some((self.ns, self.name))
    }

    fn is_any(self, keys: &[&str]) -> bool {
        keys.iter().any(|k| self.is(k))
    }
}

impl fmt::Display for PodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ns, self.name)
    }
}

/// One cell of the matrix, as the model sees it.
struct Probe {
    from: PodId,
    to: PodId,
    service: Service,
}

impl Probe {
    fn tcp(&self, port: u16) -> bool {
        self.service
            == Service {
                proto: Proto::Tcp,
                port,
            }
    }

    fn udp(&self, port: u16) -> bool {
        self.service
            == Service {
                proto: Proto::Udp,
                port,
            }
    }

    fn is_udp(&self) -> bool {
        self.service.proto == Proto::Udp
    }
}

/// Reached or not, for every (source, destination, service); source-major.
#[derive(Clone, PartialEq, Eq)]
struct Matrix(Vec<bool>);

impl Matrix {
    fn at(&self, from: usize, to: usize, service: usize) -> bool {
        self.0[(from * PODS + to) * SERVICES.len() + service]
    }

    /// What `model` expects; a pod always reaches itself.
    fn expected(model: impl Fn(&Probe) -> bool) -> Matrix {
        let mut cells = Vec::with_capacity(PODS * PODS * SERVICES.len());
        for from in PodId::all() {
            for to in PodId::all() {
                for service in SERVICES {
                    cells.push(from == to || model(&Probe { from, to, service }));
                }
            }
        }
        Matrix(cells)
    }
}

/// Upstream-style truth tables, for each service where `observed` differs: rows are
/// sources, columns destinations; `.` reached, `X` not, `*` marks a difference.
fn table(expected: &Matrix, observed: &Matrix) -> String {
    let pods: Vec<PodId> = PodId::all().collect();
    let header: String = pods.iter().map(|p| format!(" {p}")).collect();
    let mut out = String::new();
    for (s, service) in SERVICES.iter().enumerate() {
        let differs =
            (0..PODS).any(|f| (0..PODS).any(|t| expected.at(f, t, s) != observed.at(f, t, s)));
        if !differs {
            continue;
        }
        let width = header.len();
        let _ = writeln!(
            out,
            "{service}: rows from, columns to\n     {:<width$}   observed\n     {header}   {header}",
            "expected"
        );
        for (f, from) in pods.iter().enumerate() {
            let cell = |m: &Matrix, t: usize, mark: bool| {
                let sym = if m.at(f, t, s) { '.' } else { 'X' };
                let diff = mark && expected.at(f, t, s) != observed.at(f, t, s);
                format!("  {sym}{}", if diff { '*' } else { ' ' })
            };
            let e: String = (0..PODS).map(|t| cell(expected, t, false)).collect();
            let o: String = (0..PODS).map(|t| cell(observed, t, true)).collect();
            let _ = writeln!(out, "{from}  {e}   {o}");
        }
    }
    out
}

/// A NetworkPolicy document and its name.
struct Policy {
    ns: &'static str,
    name: &'static str,
    yaml: String,
}

/// A policy in `ns`; `spec` is its spec in YAML (block or flow), unindented.
fn netpol(ns: &'static str, name: &'static str, spec: &str) -> Policy {
    policy_doc(ns, name, "", spec)
}

/// A policy in dry-run (`twill.io/enforcement: audit`).
fn audited(ns: &'static str, name: &'static str, spec: &str) -> Policy {
    policy_doc(
        ns,
        name,
        ", annotations: {twill.io/enforcement: audit}",
        spec,
    )
}

fn policy_doc(ns: &'static str, name: &'static str, meta: &str, spec: &str) -> Policy {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    Policy {
        ns,
        name,
        yaml: format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{name: {name}, namespace: {ns}{meta}}}\nspec:\n{spec}---\n"
        ),
    }
}

fn namespace_yaml(name: &str, labels: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {labels}}}\n---\n")
}

/// The pod's object with `labels`. Every pod declares its ports under the upstream suite's
/// names (`serve-80-tcp`, ...), and `http`, which is 80 on pods a, 81 on pods b and
/// missing on pods c: one name, a different number per destination pod.
fn pod_yaml(pod: PodId, labels: &str) -> String {
    let http = match pod.name {
        "a" => "\n    - {name: http, containerPort: 80}",
        "b" => "\n    - {name: http, containerPort: 81}",
        _ => "",
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {}, labels: {labels}}}\n\
         spec:\n  containers:\n  - name: server\n    ports:\n\
         \x20   - {{name: serve-80-tcp, containerPort: 80}}\n\
         \x20   - {{name: serve-81-tcp, containerPort: 81}}\n\
         \x20   - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}\n\
         \x20   - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}\n\
         \x20   - {{name: serve-80-sctp, containerPort: 80, protocol: SCTP}}{http}\n---\n",
        pod.name, pod.ns
    )
}

/// Pods carry `pod: <name>`; pods b also `tier: back`, for `Exists`/`DoesNotExist`.
fn base_labels(pod: PodId) -> &'static str {
    match pod.name {
        "a" => "{pod: a}",
        "b" => "{pod: b, tier: back}",
        _ => "{pod: c}",
    }
}

/// The namespaces (labelled `ns: <name>`) and pods as at the start of every scenario.
fn base_objects() -> String {
    let mut objects: String = NAMESPACES
        .iter()
        .map(|ns| namespace_yaml(ns, &format!("{{ns: {ns}}}")))
        .collect();
    for pod in PodId::all() {
        objects.push_str(&pod_yaml(pod, base_labels(pod)));
    }
    objects
}

fn pod_by_key(key: &str) -> PodId {
    PodId::all()
        .find(|p| p.is(key))
        .unwrap_or_else(|| panic!("no pod {key}"))
}

/// Kills and reaps the process when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Prober {
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    _process: Process,
}

struct MatrixPod {
    ip: Ipv4Addr,
}

/// The lab, its daemons, the nine pods with their servers and probers, and what the
/// current scenario changed. Fields drop in order: processes, daemons, then the lab.
struct Suite {
    probers: Vec<Prober>,
    _servers: Vec<Process>,
    pods: Vec<MatrixPod>,
    /// Policies the current scenario applied (namespace, name), deleted at its end.
    applied: BTreeSet<(&'static str, &'static str)>,
    /// Whether the current scenario changed Pod or Namespace objects.
    relabelled: bool,
    scenario: String,
    failures: Vec<String>,
    rounds: usize,
    _daemons: Vec<Twilld>,
    lab: Lab,
}

/// Starts `script` in the pod's namespace and its node's cgroup, as a pod's process runs.
fn spawn_in_pod(node: &Host, netns: &str, script: &str, args: &[String]) -> Child {
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let ns = NetNs::from_path(netns).expect("open the pod's namespace");
    node.spawn_in(&ns, cmd).expect("start python3 in the pod")
}

impl Suite {
    fn up() -> Suite {
        let mut lab = Lab::up(&LabSpec::for_test(3, 0)).expect("lab up");
        let nodes = lab.nodes();
        let daemons = Twilld::start_on_every_node(Path::new(TWILLD), &lab, CONFIG);
        twill_tests::netctl(
            &sibling("netctl"),
            &lab,
            &["apply", "-f", "-"],
            &base_objects(),
        );
        let mut pods = Vec::new();
        let mut placed = Vec::new();
        for (i, id) in PodId::all().enumerate() {
            // x/a x/b x/c on nodes 0 1 2, y on 1 2 0, z on 2 0 1: the pods of a namespace,
            // and the pods of a name, are on three different nodes.
            let node = (i / NAMES.len() + i % NAMES.len()) % nodes.len();
            let args = format!("K8S_POD_NAMESPACE={};K8S_POD_NAME={}", id.ns, id.name);
            let container = format!("{}-{}", id.ns, id.name);
            let (netns, ip) = cni::add_pod(
                &sibling("twill"),
                &mut lab,
                &nodes[node],
                &daemons[node],
                &container,
                &args,
            );
            eprintln!("pod {id}: {ip} on {}", nodes[node].name());
            pods.push(MatrixPod { ip });
            placed.push((node, netns));
        }
        let mut servers = Vec::new();
        for (node, netns) in &placed {
            // The runtime's job (the `loopback` CNI plugin), not the pod network's: without
            // it a pod cannot reach its own address.
            let up = NetNs::from_path(netns.as_str())
                .expect("open the pod's namespace")
                .run(|| {
                    Command::new("ip")
                        .args(["link", "set", "lo", "up"])
                        .status()
                })
                .expect("enter the pod's namespace")
                .expect("run ip");
            assert!(up.success(), "loopback up in {netns}");
            let mut child = spawn_in_pod(&nodes[*node], netns, SERVER, &[]);
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("server's stdout"))
                .read_line(&mut line)
                .expect("read the server's first line");
            assert_eq!(line.trim(), "ready", "server in {netns}");
            servers.push(Process(child));
        }
        let targets: Vec<String> = pods.iter().map(|p| p.ip.to_string()).collect();
        let probers = placed
            .iter()
            .map(|(node, netns)| {
                let mut child = spawn_in_pod(&nodes[*node], netns, PROBER, &targets);
                Prober {
                    input: child.stdin.take().expect("prober's stdin"),
                    output: BufReader::new(child.stdout.take().expect("prober's stdout")),
                    _process: Process(child),
                }
            })
            .collect();
        let mut suite = Suite {
            probers,
            _servers: servers,
            pods,
            applied: BTreeSet::new(),
            relabelled: false,
            scenario: "start".to_owned(),
            failures: Vec::new(),
            rounds: 0,
            _daemons: daemons,
            lab,
        };
        let open = Matrix::expected(|_| true);
        if let Err(observed) = suite.wait_for(&open, Duration::from_secs(15)) {
            panic!(
                "before any policy, not every pod reaches every other:\n{}",
                table(&open, &observed)
            );
        }
        suite
    }

    fn netctl(&self, args: &[&str], stdin: &str) -> String {
        twill_tests::netctl(&sibling("netctl"), &self.lab, args, stdin)
    }

    fn ip(&self, key: &str) -> Ipv4Addr {
        let pod = pod_by_key(key);
        let i = PodId::all()
            .position(|p| p == pod)
            .expect("a pod of the matrix");
        self.pods[i].ip
    }

    /// The smallest prefix holding every pod's address (pods of three nodes' subnets).
    fn pods_cidr(&self) -> String {
        let first = u32::from(self.pods[0].ip);
        let differ = self
            .pods
            .iter()
            .fold(0, |d, p| d | (u32::from(p.ip) ^ first));
        let len = differ.leading_zeros();
        let network = first & !(u32::MAX.checked_shr(len).unwrap_or(0));
        format!("{}/{len}", Ipv4Addr::from(network))
    }

    /// One probe round: every prober probes everything, all at once.
    fn observe(&mut self) -> Matrix {
        let line = format!("{}\n", PROBE_TIMEOUT.as_secs_f64());
        for p in &mut self.probers {
            p.input
                .write_all(line.as_bytes())
                .expect("write to a prober");
        }
        let mut cells = Vec::with_capacity(PODS * PODS * SERVICES.len());
        for p in &mut self.probers {
            let mut out = String::new();
            p.output
                .read_line(&mut out)
                .expect("read a prober's answer");
            let out = out.trim_end();
            assert_eq!(
                out.len(),
                PODS * SERVICES.len(),
                "a prober answered {out:?}"
            );
            cells.extend(out.bytes().map(|b| b == b'1'));
        }
        self.rounds += 1;
        Matrix(cells)
    }

    /// Probes until the matrix equals `expected`: how long that took, or the last matrix
    /// seen when `limit` passed.
    fn wait_for(&mut self, expected: &Matrix, limit: Duration) -> Result<Duration, Matrix> {
        let start = Instant::now();
        loop {
            let observed = self.observe();
            if observed == *expected {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= limit {
                return Err(observed);
            }
        }
    }

    fn apply(&mut self, policies: &[&Policy]) {
        let yaml: String = policies.iter().map(|p| p.yaml.as_str()).collect();
        self.netctl(&["apply", "-f", "-"], &yaml);
        self.applied.extend(policies.iter().map(|p| (p.ns, p.name)));
    }

    fn delete(&mut self, policies: &[&Policy]) {
        let yaml: String = policies.iter().map(|p| p.yaml.as_str()).collect();
        self.netctl(&["delete", "-f", "-"], &yaml);
        for p in policies {
            self.applied.remove(&(p.ns, p.name));
        }
    }

    /// Applies changed Pod or Namespace objects; the scenario's end restores them.
    fn relabel(&mut self, objects: &str) {
        self.relabelled = true;
        self.netctl(&["apply", "-f", "-"], objects);
    }

    /// Waits for the matrix `model` expects; records a failure, with the truth tables, if
    /// it does not come within [`SETTLE`].
    fn expect(&mut self, step: &str, model: impl Fn(&Probe) -> bool) {
        let expected = Matrix::expected(model);
        match self.wait_for(&expected, SETTLE) {
            Ok(took) => eprintln!("  ok   {step} (after {took:.2?})"),
            Err(observed) => {
                let report = format!(
                    "{} / {step}: not the expected matrix within {SETTLE:?}\n{}",
                    self.scenario,
                    table(&expected, &observed)
                );
                eprintln!("  FAIL {report}");
                self.failures.push(report);
            }
        }
    }

    /// Runs one scenario, then deletes what it applied, restores the labels and waits
    /// until every pod reaches every other again.
    fn scenario(&mut self, name: &str, body: impl FnOnce(&mut Suite)) {
        eprintln!("{name}");
        self.scenario = name.to_owned();
        let start = Instant::now();
        body(self);
        if !self.applied.is_empty() {
            let docs: String = self
                .applied
                .iter()
                .map(|(ns, name)| netpol(ns, name, "podSelector: {}").yaml)
                .collect();
            self.netctl(&["delete", "-f", "-"], &docs);
            self.applied.clear();
        }
        if self.relabelled {
            self.netctl(&["apply", "-f", "-"], &base_objects());
            self.relabelled = false;
        }
        let open = Matrix::expected(|_| true);
        if let Err(observed) = self.wait_for(&open, SETTLE) {
            panic!(
                "after {name}: not open again within {SETTLE:?} of deleting its policies\n{}\n\
                 failures before:\n{}",
                table(&open, &observed),
                self.failures.join("\n")
            );
        }
        eprintln!("  ({:.1?} with the reset)", start.elapsed());
    }
}

#[test]
fn the_connectivity_matrix_follows_the_network_policy_api() {
    require_root();
    let started = Instant::now();
    let mut suite = Suite::up();
    eprintln!("lab, daemons and 9 pods up in {:.1?}", started.elapsed());
    let scenarios = Instant::now();
    run_scenarios(&mut suite);
    let failures = std::mem::take(&mut suite.failures);
    eprintln!(
        "scenarios took {:.1?} ({} probe rounds); whole test {:.1?}",
        scenarios.elapsed(),
        suite.rounds,
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} step(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn run_scenarios(s: &mut Suite) {
    let pod_a = "podSelector: {matchLabels: {pod: a}}";

    s.scenario(
        "default deny ingress (podSelector {} and nothing else)",
        |s| {
            s.apply(&[&netpol("x", "deny-ingress", "podSelector: {}")]);
            s.expect("nothing reaches x", |p| p.to.ns != "x");
        },
    );

    s.scenario("default deny egress", |s| {
        s.apply(&[&netpol(
            "x",
            "deny-egress",
            "podSelector: {}\npolicyTypes: [Egress]",
        )]);
        s.expect("x reaches nothing", |p| p.from.ns != "x");
    });

    s.scenario("default deny, both directions", |s| {
        s.apply(&[&netpol(
            "x",
            "deny-all",
            "podSelector: {}\npolicyTypes: [Ingress, Egress]",
        )]);
        s.expect("x is cut off", |p| p.from.ns != "x" && p.to.ns != "x");
    });

    s.scenario("allow all with an empty rule, over default deny", |s| {
        s.apply(&[&netpol(
            "x",
            "deny-all",
            "podSelector: {}\npolicyTypes: [Ingress, Egress]",
        )]);
        s.expect("x is cut off", |p| p.from.ns != "x" && p.to.ns != "x");
        s.apply(&[&netpol(
            "x",
            "allow-ingress",
            "podSelector: {}\ningress: [{}]",
        )]);
        s.expect("ingress open, egress still denied", |p| p.from.ns != "x");
        s.apply(&[&netpol(
            "x",
            "allow-egress",
            "podSelector: {}\npolicyTypes: [Egress]\negress: [{}]",
        )]);
        s.expect("everything open", |_| true);
    });

    s.scenario("podSelector: pods of the policy's namespace only", |s| {
        s.apply(&[
            &netpol(
                "x",
                "a-from-b",
                &format!(
                    "{pod_a}\ningress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]"
                ),
            ),
            &netpol(
                "x",
                "b-from-x",
                "podSelector: {matchLabels: {pod: b}}\ningress: [{from: [{podSelector: {}}]}]",
            ),
        ]);
        s.expect("x/a only from x/b, x/b only from x", |p| {
            (!p.to.is("x/a") || p.from.is("x/b")) && (!p.to.is("x/b") || p.from.ns == "x")
        });
    });

    s.scenario(
        "namespaceSelector: a label, and kubernetes.io/metadata.name",
        |s| {
            s.apply(&[
                &netpol(
                    "x",
                    "a-from-y",
                    &format!(
                        "{pod_a}\ningress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]}}]"
                    ),
                ),
                &netpol(
                    "x",
                    "b-from-z",
                    "podSelector: {matchLabels: {pod: b}}\n\
                     ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]}]",
                ),
            ]);
            s.expect("x/a only from y, x/b only from z", |p| {
                (!p.to.is("x/a") || p.from.ns == "y") && (!p.to.is("x/b") || p.from.ns == "z")
            });
        },
    );

    s.scenario(
        "podSelector AND namespaceSelector in one peer; namespaceSelector {} is every namespace",
        |s| {
            s.apply(&[
                &netpol(
                    "x",
                    "a-from-y-b",
                    &format!(
                        "{pod_a}\ningress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}, \
                         podSelector: {{matchLabels: {{pod: b}}}}}}]}}]"
                    ),
                ),
                &netpol(
                    "x",
                    "b-from-any-c",
                    "podSelector: {matchLabels: {pod: b}}\n\
                     ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: c}}}]}]",
                ),
            ]);
            s.expect("x/a only from y/b, x/b only from */c", |p| {
                (!p.to.is("x/a") || p.from.is("y/b")) && (!p.to.is("x/b") || p.from.name == "c")
            });
        },
    );

    s.scenario("separate peers are ORed", |s| {
        s.apply(&[&netpol(
            "x",
            "a-from-y-or-b",
            &format!(
                "{pod_a}\ningress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}, \
                 {{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]"
            ),
        )]);
        s.expect("x/a from y/* and x/b", |p| {
            !p.to.is("x/a") || p.from.ns == "y" || p.from.is("x/b")
        });
    });

    s.scenario("matchExpressions In and NotIn", |s| {
        s.apply(&[
            &netpol(
                "x",
                "a-from-b-c",
                "podSelector: {matchExpressions: [{key: pod, operator: In, values: [a]}]}\n\
                 ingress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}}]}]",
            ),
            &netpol(
                "x",
                "b-from-not-x-y",
                "podSelector: {matchLabels: {pod: b}}\n\
                 ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x, y]}]}}]}]",
            ),
            &netpol(
                "y",
                "not-a-c-deny",
                "podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [a, c]}]}\n\
                 policyTypes: [Ingress]",
            ),
        ]);
        s.expect("x/a from x/b x/c, x/b from z, y/b from none", |p| {
            (!p.to.is("x/a") || p.from.is_any(&["x/b", "x/c"]))
                && (!p.to.is("x/b") || p.from.ns == "z")
                && !p.to.is("y/b")
        });
    });

    s.scenario("matchExpressions Exists and DoesNotExist", |s| {
        s.apply(&[
            &netpol(
                "x",
                "c-from-tiered",
                "podSelector: {matchLabels: {pod: c}}\n\
                 ingress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: tier, operator: Exists}]}}]}]",
            ),
            &netpol(
                "y",
                "a-from-x-untiered",
                "podSelector: {matchLabels: {pod: a}}\n\
                 ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}, \
                 podSelector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}}]}]",
            ),
            &netpol(
                "z",
                "tiered-no-egress",
                "podSelector: {matchExpressions: [{key: tier, operator: Exists}]}\n\
                 policyTypes: [Egress]",
            ),
        ]);
        s.expect("x/c from */b, y/a from x/a x/c, z/b sends nothing", |p| {
            (!p.to.is("x/c") || p.from.name == "b")
                && (!p.to.is("y/a") || p.from.is_any(&["x/a", "x/c"]))
                && !p.from.is("z/b")
        });
    });

    s.scenario(
        "ingress on one port number; the protocol defaults to TCP",
        |s| {
            s.apply(&[&netpol(
                "x",
                "a-on-81",
                &format!("{pod_a}\ningress: [{{ports: [{{port: 81}}]}}]"),
            )]);
            s.expect("x/a only on TCP 81", |p| !p.to.is("x/a") || p.tcp(81));
        },
    );

    s.scenario("named ports on ingress", |s| {
        s.apply(&[&netpol(
            "x",
            "named",
            "podSelector: {}\n\
             ingress: [{ports: [{port: serve-80-tcp}, {port: serve-81-udp, protocol: UDP}]}]",
        )]);
        s.expect("x only on TCP 80 and UDP 81", |p| {
            p.to.ns != "x" || p.tcp(80) || p.udp(81)
        });
    });

    s.scenario(
        "a named port resolved on each destination pod (ingress)",
        |s| {
            s.apply(&[&netpol(
                "x",
                "http",
                "podSelector: {}\ningress: [{ports: [{port: http}]}]",
            )]);
            s.expect("x/a on TCP 80, x/b on TCP 81, x/c on nothing", |p| {
                match (p.to.ns, p.to.name) {
                    ("x", "a") => p.tcp(80),
                    ("x", "b") => p.tcp(81),
                    ("x", _) => false,
                    _ => true,
                }
            });
        },
    );

    s.scenario(
        "a named port on egress, resolved on each destination pod",
        |s| {
            s.apply(&[&netpol(
                "x",
                "a-out-http",
                &format!("{pod_a}\npolicyTypes: [Egress]\negress: [{{ports: [{{port: http}}]}}]"),
            )]);
            s.expect("x/a to */a on TCP 80, */b on TCP 81, */c not", |p| {
                !p.from.is("x/a")
                    || match p.to.name {
                        "a" => p.tcp(80),
                        "b" => p.tcp(81),
                        _ => false,
                    }
            });
        },
    );

    s.scenario("endPort ranges", |s| {
        s.apply(&[
            &netpol(
                "x",
                "a-udp-80-81",
                &format!("{pod_a}\ningress: [{{ports: [{{protocol: UDP, port: 80, endPort: 81}}]}}]"),
            ),
            &netpol(
                "x",
                "b-tcp-81-90",
                "podSelector: {matchLabels: {pod: b}}\ningress: [{ports: [{port: 81, endPort: 90}]}]",
            ),
        ]);
        s.expect("x/a on UDP 80-81, x/b on TCP 81", |p| {
            (!p.to.is("x/a") || p.is_udp()) && (!p.to.is("x/b") || p.tcp(81))
        });
    });

    s.scenario("a protocol without a port: every port of it", |s| {
        s.apply(&[
            &netpol(
                "x",
                "a-udp",
                &format!("{pod_a}\ningress: [{{ports: [{{protocol: UDP}}]}}]"),
            ),
            &netpol(
                "x",
                "b-out-udp-81",
                "podSelector: {matchLabels: {pod: b}}\npolicyTypes: [Egress]\n\
                 egress: [{ports: [{protocol: UDP, port: 81}]}]",
            ),
        ]);
        s.expect("x/a on UDP only, x/b out on UDP 81 only", |p| {
            (!p.to.is("x/a") || p.is_udp()) && (!p.from.is("x/b") || p.udp(81))
        });
    });

    s.scenario("ipBlock with except, over pod addresses", |s| {
        let all = s.pods_cidr();
        let (xa, yb) = (s.ip("x/a"), s.ip("y/b"));
        let (za, zb, zc) = (s.ip("z/a"), s.ip("z/b"), s.ip("z/c"));
        eprintln!("  pods in {all}");
        s.apply(&[
            &netpol(
                "x",
                "a-from-block",
                &format!(
                    "{pod_a}\ningress: [{{from: [{{ipBlock: {{cidr: '{all}', except: ['{yb}/32']}}}}]}}]"
                ),
            ),
            &netpol(
                "x",
                "b-to-zc",
                &format!(
                    "podSelector: {{matchLabels: {{pod: b}}}}\npolicyTypes: [Egress]\n\
                     egress: [{{to: [{{ipBlock: {{cidr: '{zc}/32'}}}}]}}]"
                ),
            ),
            &netpol(
                "y",
                "c-to-block",
                &format!(
                    "podSelector: {{matchLabels: {{pod: c}}}}\npolicyTypes: [Egress]\n\
                     egress: [{{to: [{{ipBlock: {{cidr: '{all}', except: ['{xa}/32']}}}}]}}]"
                ),
            ),
            // An address in one block's except and in another block is allowed.
            &netpol(
                "x",
                "c-overlap",
                &format!(
                    "podSelector: {{matchLabels: {{pod: c}}}}\n\
                     ingress: [{{from: [{{ipBlock: {{cidr: '{all}', except: ['{za}/32', '{zb}/32']}}}}, \
                     {{ipBlock: {{cidr: '{za}/32'}}}}]}}]"
                ),
            ),
        ]);
        s.expect(
            "x/a not from y/b, x/b only to z/c, y/c not to x/a, x/c not from z/b",
            |p| {
                (!p.to.is("x/a") || !p.from.is("y/b"))
                    && (!p.from.is("x/b") || p.to.is("z/c"))
                    && (!p.from.is("y/c") || !p.to.is("x/a"))
                    && (!p.to.is("x/c") || !p.from.is("z/b"))
            },
        );
    });

    s.scenario("egress to a podSelector with ports", |s| {
        s.apply(&[&netpol(
            "x",
            "a-to-b",
            &format!(
                "{pod_a}\npolicyTypes: [Egress]\n\
                 egress: [{{to: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{pod: b}}}}}}], \
                 ports: [{{port: 80}}, {{port: 81, protocol: UDP}}]}}]"
            ),
        )]);
        s.expect("x/a to */b on TCP 80 and UDP 81 only", |p| {
            !p.from.is("x/a") || (p.to.name == "b" && (p.tcp(80) || p.udp(81)))
        });
    });

    s.scenario("two policies on one pod, and two rules of one policy, are unioned", |s| {
        s.apply(&[
            &netpol(
                "x",
                "a-from-b-80",
                &format!(
                    "{pod_a}\ningress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}], ports: [{{port: 80}}]}}]"
                ),
            ),
            &netpol(
                "x",
                "a-from-y-udp-81",
                &format!(
                    "{pod_a}\ningress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}], \
                     ports: [{{protocol: UDP, port: 81}}]}}]"
                ),
            ),
            &netpol(
                "x",
                "b-two-rules",
                "podSelector: {matchLabels: {pod: b}}\n\
                 ingress:\n\
                 - {from: [{podSelector: {matchLabels: {pod: a}}}], ports: [{port: 80}]}\n\
                 - {from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{protocol: UDP, port: 81}]}",
            ),
        ]);
        s.expect("x/a and x/b: from x/<a|b> on TCP 80, from y or z on UDP 81", |p| {
            (!p.to.is("x/a") || (p.from.is("x/b") && p.tcp(80)) || (p.from.ns == "y" && p.udp(81)))
                && (!p.to.is("x/b")
                    || (p.from.is("x/a") && p.tcp(80))
                    || (p.from.ns == "z" && p.udp(81)))
        });
    });

    s.scenario(
        "one policy, both directions; replies pass; rules of an unlisted direction do nothing",
        |s| {
            s.apply(&[
                &netpol(
                    "x",
                    "a-both",
                    &format!(
                        "{pod_a}\npolicyTypes: [Ingress, Egress]\n\
                         ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]}}]\n\
                         egress: [{{to: [{{namespaceSelector: {{matchLabels: {{ns: z}}}}}}]}}]"
                    ),
                ),
                &netpol(
                    "x",
                    "b-ingress-only",
                    "podSelector: {matchLabels: {pod: b}}\npolicyTypes: [Ingress]\n\
                     ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]\n\
                     egress: [{to: [{podSelector: {matchLabels: {pod: c}}}]}]",
                ),
            ]);
            s.expect(
                "x/a from y, x/a to z, x/b from x/a only, x/b sends freely",
                |p| {
                    (!p.to.is("x/a") || p.from.ns == "y")
                        && (!p.from.is("x/a") || p.to.ns == "z")
                        && (!p.to.is("x/b") || p.from.is("x/a"))
                },
            );
        },
    );

    s.scenario(
        "a connection needs the source's egress and the destination's ingress",
        |s| {
            let egress = netpol(
                "x",
                "a-to-b",
                &format!(
                    "{pod_a}\npolicyTypes: [Egress]\n\
                     egress: [{{to: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: b}}}}}}, \
                     {{namespaceSelector: {{matchLabels: {{ns: z}}}}, podSelector: {{matchLabels: {{pod: b}}}}}}]}}]"
                ),
            );
            let ingress = |from: &str| {
                netpol(
                    "y",
                    "b-from-x",
                    &format!(
                        "podSelector: {{matchLabels: {{pod: b}}}}\n\
                         ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: x}}}}, \
                         podSelector: {{matchExpressions: [{{key: pod, operator: In, values: [{from}]}}]}}}}]}}]"
                    ),
                )
            };
            let out_of_xa = |p: &Probe| !p.from.is("x/a") || p.to.is_any(&["y/b", "z/b"]);
            s.apply(&[&egress, &ingress("c")]);
            s.expect("x/a to y/b: egress allows, ingress does not", |p| {
                out_of_xa(p) && (!p.to.is("y/b") || p.from.is("x/c"))
            });
            s.apply(&[&ingress("a, c")]);
            s.expect("y/b's ingress now allows x/a too", |p| {
                out_of_xa(p) && (!p.to.is("y/b") || p.from.is_any(&["x/a", "x/c"]))
            });
        },
    );

    s.scenario("a policy changed in place", |s| {
        s.apply(&[&netpol(
            "x",
            "moving",
            &format!("{pod_a}\ningress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]"),
        )]);
        s.expect("x/a from x/b", |p| !p.to.is("x/a") || p.from.is("x/b"));
        s.apply(&[&netpol(
            "x",
            "moving",
            &format!(
                "{pod_a}\ningress: [{{from: [{{podSelector: {{matchLabels: {{pod: c}}}}}}], ports: [{{port: 80}}]}}]"
            ),
        )]);
        s.expect("peer and port changed: x/a from x/c on TCP 80", |p| {
            !p.to.is("x/a") || (p.from.is("x/c") && p.tcp(80))
        });
        s.apply(&[&netpol(
            "x",
            "moving",
            "podSelector: {matchLabels: {pod: b}}\n\
             ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}], ports: [{port: 80}]}]",
        )]);
        s.expect("podSelector changed: x/b from x/c on TCP 80, x/a open", |p| {
            !p.to.is("x/b") || (p.from.is("x/c") && p.tcp(80))
        });
        s.apply(&[&netpol(
            "x",
            "moving",
            "podSelector: {matchLabels: {pod: b}}\npolicyTypes: [Egress]\n\
             egress: [{to: [{podSelector: {matchLabels: {pod: c}}}], ports: [{port: 80}]}]",
        )]);
        s.expect("direction changed: x/b to x/c on TCP 80 only", |p| {
            !p.from.is("x/b") || (p.to.is("x/c") && p.tcp(80))
        });
    });

    s.scenario("deleting one of two policies", |s| {
        let from_b = netpol(
            "x",
            "a-from-b",
            &format!(
                "{pod_a}\ningress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]"
            ),
        );
        let from_y = netpol(
            "x",
            "a-from-y",
            &format!(
                "{pod_a}\ningress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]}}]"
            ),
        );
        s.apply(&[&from_b, &from_y]);
        s.expect("x/a from x/b and y", |p| {
            !p.to.is("x/a") || p.from.is("x/b") || p.from.ns == "y"
        });
        s.delete(&[&from_y]);
        s.expect("x/a from x/b only", |p| !p.to.is("x/a") || p.from.is("x/b"));
        s.delete(&[&from_b]);
        s.expect("x/a open", |_| true);
    });

    s.scenario("relabelling pods", |s| {
        s.apply(&[&netpol(
            "x",
            "a-from-b",
            &format!(
                "{pod_a}\ningress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]"
            ),
        )]);
        s.expect("x/a from x/b", |p| !p.to.is("x/a") || p.from.is("x/b"));
        s.relabel(&pod_yaml(pod_by_key("x/c"), "{pod: b}"));
        s.expect("x/c labelled pod=b: x/a from x/b and x/c", |p| {
            !p.to.is("x/a") || p.from.is_any(&["x/b", "x/c"])
        });
        s.relabel(&pod_yaml(pod_by_key("x/b"), "{pod: q}"));
        s.expect("x/b labelled pod=q: x/a from x/c only", |p| {
            !p.to.is("x/a") || p.from.is("x/c")
        });
        let mut both = pod_yaml(pod_by_key("x/a"), "{pod: q}");
        both.push_str(&pod_yaml(pod_by_key("x/b"), "{pod: a}"));
        s.relabel(&both);
        s.expect("the policy now selects x/b: x/b from x/c, x/a open", |p| {
            !p.to.is("x/b") || p.from.is("x/c")
        });
    });

    s.scenario("relabelling namespaces", |s| {
        s.apply(&[&netpol(
            "x",
            "a-from-y",
            &format!(
                "{pod_a}\ningress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]}}]"
            ),
        )]);
        s.expect("x/a from y", |p| !p.to.is("x/a") || p.from.ns == "y");
        s.relabel(&namespace_yaml("z", "{ns: y}"));
        s.expect("z labelled ns=y: x/a from y and z", |p| {
            !p.to.is("x/a") || p.from.ns != "x"
        });
        s.relabel(&namespace_yaml("y", "{ns: q}"));
        s.expect("y labelled ns=q: x/a from z only", |p| {
            !p.to.is("x/a") || p.from.ns == "z"
        });
    });

    s.scenario("SCTP rules never open TCP or UDP", |s| {
        s.apply(&[
            &netpol(
                "x",
                "a-sctp-80",
                &format!("{pod_a}\ningress: [{{ports: [{{protocol: SCTP, port: 80}}]}}]"),
            ),
            &netpol(
                "x",
                "b-out-sctp",
                "podSelector: {matchLabels: {pod: b}}\npolicyTypes: [Egress]\n\
                 egress: [{ports: [{protocol: SCTP}]}]",
            ),
            // A TCP port's name with protocol SCTP: still SCTP only.
            &netpol(
                "x",
                "c-sctp-named",
                "podSelector: {matchLabels: {pod: c}}\n\
                 ingress: [{ports: [{protocol: SCTP, port: serve-80-tcp}, {protocol: SCTP, port: serve-80-sctp}]}]",
            ),
            &netpol(
                "y",
                "a-sctp-range",
                &format!("{pod_a}\ningress: [{{ports: [{{protocol: SCTP, port: 80, endPort: 81}}]}}]"),
            ),
        ]);
        s.expect("x/a, x/c, y/a receive nothing; x/b sends nothing", |p| {
            !p.to.is_any(&["x/a", "x/c", "y/a"]) && !p.from.is("x/b")
        });
    });

    s.scenario("audit mode never denies", |s| {
        // An enforced policy elsewhere, applied with it, shows the daemons have the change.
        let marker = netpol(
            "z",
            "c-deny",
            "podSelector: {matchLabels: {pod: c}}\npolicyTypes: [Ingress]",
        );
        s.apply(&[
            &audited(
                "x",
                "audit-deny-all",
                "podSelector: {}\npolicyTypes: [Ingress, Egress]",
            ),
            &marker,
        ]);
        s.expect("x open (audited), z/c denied (enforced)", |p| {
            !p.to.is("z/c")
        });
        thread::sleep(Duration::from_secs(1));
        s.expect("a second later, still so", |p| !p.to.is("z/c"));
        // What it would have denied is counted: x's pods were probed by y and z (ingress)
        // and probed them (egress), and nothing allows any of it.
        let shown = s.netctl(&["get", "netpol", "-n", "x"], "");
        let row: Vec<&str> = shown
            .lines()
            .find(|l| l.contains("audit-deny-all"))
            .unwrap_or_else(|| panic!("no audit-deny-all row in:\n{shown}"))
            .split_whitespace()
            .collect();
        // NAMESPACE NAME POD-SELECTOR TYPES MODE ALLOWED DENIED "(would)" PODS
        let would: u64 = row[6].parse().unwrap_or_else(|_| panic!("{shown}"));
        assert!(
            would > 0 && row[4] == "audit" && row[7] == "(would)",
            "would-be denials are counted:\n{shown}"
        );
        let why = s.netctl(&["why", "--from", "y/a", "--to", "x/a:80"], "");
        assert!(
            why.contains("ALLOWED")
                && why.contains("audit policies x/audit-deny-all would deny it"),
            "{why}"
        );
        s.apply(&[&netpol(
            "x",
            "a-from-b",
            &format!(
                "{pod_a}\ningress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]"
            ),
        )]);
        s.expect(
            "x/a decided by its enforced policy alone: from x/b; x/b, x/c open",
            |p| !p.to.is("z/c") && (!p.to.is("x/a") || p.from.is("x/b")),
        );
    });
}
