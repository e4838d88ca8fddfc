//! `netctl lab`: a local cluster on network namespaces. `up` builds the lab, starts a
//! `twilld` on every node, adds demo pods through the CNI binary exactly as a runtime would,
//! and checks that every pod reaches every other.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::process::ExitStatusExt as _,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use nix::sys::signal::{SigSet, Signal};
use twill_api::{NodeStatus, Request, Response};
use twill_lab::{
    Host, Lab, LabPod, LabSpec, Manifest, Role,
    workload::{DaemonPaths, cni_config, cni_vars, daemon_args, invoke_cni, spawn_daemon},
};
use twill_netns::NetNs;

/// Name used when `--name` is not given.
pub const DEFAULT_LAB: &str = "twill";

/// The lab's daemons: a lease short enough that a dead node shows within seconds.
const LAB_DAEMON_CONFIG: &str = "# written by netctl lab up\n\
    [lease]\nttl_seconds = 10\nquarantine_seconds = 30\n\
    [network]\nresync_seconds = 5\n";

/// Appended to [`LAB_DAEMON_CONFIG`] by `--mode bgp`: the iBGP mesh with twilld's defaults.
pub const LAB_BGP_CONFIG: &str = "overlay = \"bgp\"\n";

/// The port every lab node's twilld serves `/metrics` on, at its underlay address.
pub const LAB_METRICS_PORT: u16 = 9962;

/// The port every lab node's twill-dnsd serves `/metrics` on, at its underlay address
/// (9153, as CoreDNS's `prometheus` plugin).
pub const LAB_DNS_METRICS_PORT: u16 = 9153;

/// The lab's flow API token (`flows.token_file` of every node), in the lab's directory.
pub const LAB_FLOW_TOKEN: &str = "flows.token";

/// Writes a fresh random token for the lab's flow API, owner-only; returns its path.
fn write_flow_token(lab: &Lab) -> anyhow::Result<PathBuf> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the flow API token")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let path = lab.manifest().state_dir.join(LAB_FLOW_TOKEN);
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{token}\n").as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[derive(Subcommand)]
pub enum LabCommand {
    /// Build a lab: underlay, nodes running twilld, etcd, demo pods; then check that every
    /// pod reaches every other.
    Up {
        /// Lab name (lower-case letters, digits, '-').
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u8,
        /// Number of external (non-node) hosts on the underlay.
        #[arg(long, default_value_t = 1)]
        externals: u8,
        /// How nodes reach each other's pods: `vxlan` (the overlay) or `bgp` (routes
        /// announced over an iBGP mesh, no encapsulation).
        #[arg(long, default_value = "vxlan", value_parser = ["vxlan", "bgp"])]
        mode: String,
        /// Demo pods per node.
        #[arg(long, default_value_t = 1)]
        pods_per_node: u8,
        /// Stay in the foreground and take the lab down on Ctrl-C or SIGTERM. If this
        /// process is killed instead, `netctl lab cleanup` removes the lab.
        #[arg(long)]
        hold: bool,
        /// Serve etcd over TLS with client certificates (made with openssl, kept in the
        /// lab's state directory).
        #[arg(long)]
        etcd_tls: bool,
        /// Only the lab itself: no daemons, no pods.
        #[arg(long)]
        bare: bool,
    },
    /// Remove a lab and everything it made.
    Down {
        #[arg(default_value = DEFAULT_LAB)]
        name: String,
    },
    /// Show a lab's nodes (with their daemons' status), pods and etcd.
    Status {
        #[arg(default_value = DEFAULT_LAB)]
        name: String,
    },
    /// List the labs on this machine.
    List,
    /// Pods of the lab.
    #[command(subcommand)]
    Pod(PodCommand),
    /// Run a command on a lab host or in a pod, e.g. `netctl lab exec demo-node1 -- ip addr`.
    Exec {
        /// A host (node1, ext1, ...) or a pod name.
        target: String,
        #[arg(long, default_value = DEFAULT_LAB)]
        lab: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Remove what killed runs left: labs whose owner process is gone, and lab
    /// namespaces, cgroups and bpffs pins that no lab claims.
    Cleanup {
        /// Also remove labs that are still in use, including `netctl lab up` ones.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
pub enum PodCommand {
    /// Add a pod on a node, through the CNI binary as a runtime would.
    Add {
        name: String,
        #[arg(long)]
        node: String,
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Labels, `k=v,k2=v2`.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        /// Named container ports, `name=port[/UDP|/SCTP],...` (what a Service's named
        /// targetPort finds).
        #[arg(long, value_delimiter = ',')]
        ports: Vec<String>,
        #[arg(long, default_value = DEFAULT_LAB)]
        lab: String,
    },
}

pub fn run(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Up {
            name,
            nodes,
            externals,
            mode,
            pods_per_node,
            hold,
            etcd_tls,
            bare,
        } => up(UpOptions {
            name,
            bgp: mode == "bgp",
            nodes,
            externals,
            pods_per_node,
            hold,
            etcd_tls,
            bare,
        }),
        LabCommand::Down { name } => {
            Lab::attach(&name)?.down()?;
            println!("lab {name} removed");
            Ok(())
        }
        LabCommand::Status { name } => {
            let manifest = Manifest::load(&name)?;
            print_lab(&manifest);
            Ok(())
        }
        LabCommand::List => {
            let labs = Manifest::list();
            if labs.is_empty() {
                println!("no labs");
            }
            for m in labs {
                match m {
                    Ok(m) => println!(
                        "{:<18} {} nodes, {} pods, {}",
                        m.plan.name,
                        m.plan.nodes().count(),
                        m.pods.len(),
                        lab_state(&m)
                    ),
                    Err(e) => println!("unreadable: {e}"),
                }
            }
            Ok(())
        }
        LabCommand::Pod(PodCommand::Add {
            name,
            node,
            namespace,
            labels,
            ports,
            lab,
        }) => {
            let mut lab = Lab::attach(&lab)?;
            let labels = parse_labels(&labels)?;
            let ports = parse_ports(&ports)?;
            let pod = add_pod(&mut lab, &name, &node, &namespace, labels, ports)?;
            println!(
                "pod {}/{} on {}: {}",
                pod.namespace, pod.name, pod.node, pod.ip
            );
            Ok(())
        }
        LabCommand::Exec {
            target,
            lab,
            command,
        } => exec(&lab, &target, &command),
        LabCommand::Cleanup { all } => {
            let report = twill_lab::cleanup(all);
            for lab in &report.labs {
                println!("removed lab {lab}");
            }
            for orphan in &report.orphans {
                println!("removed orphaned {orphan}");
            }
            if report.labs.is_empty() && report.orphans.is_empty() {
                println!("nothing to clean up");
            }
            if !report.problems.is_empty() {
                bail!("cleanup left problems:\n  {}", report.problems.join("\n  "));
            }
            Ok(())
        }
    }
}

struct UpOptions {
    name: String,
    /// The BGP-routed mode instead of VXLAN.
    bgp: bool,
    nodes: u8,
    externals: u8,
    pods_per_node: u8,
    hold: bool,
    etcd_tls: bool,
    bare: bool,
}

/// A binary installed next to `netctl` (`cargo build` puts them together).
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("finding netctl's own path")?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found next to netctl; `cargo build` builds it",
            path.display()
        );
    }
    Ok(path)
}

fn up(o: UpOptions) -> anyhow::Result<()> {
    // Block the signals before any thread starts, so every thread inherits the mask and
    // `--hold` receives them below instead of dying mid-build.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if o.hold {
        signals
            .thread_block()
            .context("blocking SIGINT and SIGTERM")?;
    }
    let mut lab = Lab::up(&LabSpec {
        name: o.name,
        nodes: o.nodes,
        externals: o.externals,
        persistent: !o.hold,
        etcd_tls: o.etcd_tls,
        second_subnet: 0,
    })?;
    if !o.bare
        && let Err(e) = populate(&mut lab, o.pods_per_node, o.bgp)
    {
        // Nothing half-made stays behind.
        let name = lab.name().to_owned();
        if let Err(down) = lab.down() {
            eprintln!("{down}");
        }
        return Err(e.context(format!("lab {name} was removed again")));
    }
    if !o.bare {
        wait_overlay(&lab, Duration::from_secs(10));
    }
    print_lab(lab.manifest());
    if !o.bare {
        print_dns(&lab);
    }
    if !lab.manifest().pods.is_empty() && !print_connectivity(&lab.manifest().pods) {
        print_daemon_warnings(&lab);
    }
    if !o.hold {
        println!(
            "\nthe lab stays up. Try: netctl lab exec {} -- ping -c1 <pod ip>; \
             netctl lab pod add web --node node2; netctl get nodes; netctl lab down {}",
            lab.manifest()
                .pods
                .first()
                .map_or("node1", |p| p.name.as_str()),
            lab.name()
        );
        lab.persist();
        return Ok(());
    }
    println!("\nholding the lab; Ctrl-C takes it down");
    let _ = std::io::stdout().flush();
    let signal = signals.wait().context("waiting for a signal")?;
    println!("{signal:?}: taking lab {} down", lab.name());
    lab.down()?;
    Ok(())
}

/// Starts a twilld on every node, waits until each holds a subnet, adds the demo pods.
fn populate(lab: &mut Lab, pods_per_node: u8, bgp: bool) -> anyhow::Result<()> {
    let twilld = sibling("twilld")?;
    let endpoint = lab.etcd_endpoint();
    let mut config = LAB_DAEMON_CONFIG.to_owned();
    if bgp {
        // Still in the `[network]` table the lab's configuration ends with.
        config.push_str(LAB_BGP_CONFIG);
    }
    if let Some(tls) = lab.etcd_tls() {
        config.push_str(&format!(
            "[etcd]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            tls.ca_file.display(),
            tls.cert_file.display(),
            tls.key_file.display()
        ));
    }
    let token = write_flow_token(lab)?;
    for node in lab.nodes() {
        let paths = DaemonPaths::of(&node);
        let args = daemon_args(&endpoint, &node, &paths, &[]);
        // Prometheus metrics and the flow API on the node's underlay address, as on a
        // real node; the flow API with the lab's token.
        let config = format!(
            "{config}[metrics]\nlisten = \"{ip}:{LAB_METRICS_PORT}\"\n\
             [flows]\nlisten = \"{ip}:{}\"\ntoken_file = \"{}\"\n",
            twill_api::remote::DEFAULT_FLOWS_PORT,
            token.display(),
            ip = node.plan.underlay_ip,
        );
        spawn_daemon(&twilld, &node, &paths, &config, &args)?;
    }
    for node in lab.nodes() {
        wait_ready(&node, Duration::from_secs(30))?;
    }
    start_dns(lab)?;
    for node in lab.nodes() {
        for i in 1..=pods_per_node {
            let name = if pods_per_node == 1 {
                format!("demo-{}", node.name())
            } else {
                format!("demo-{}-{i}", node.name())
            };
            let labels = BTreeMap::from([("app".to_owned(), "demo".to_owned())]);
            let ports = vec![twill_k8s::NamedPort {
                name: "http".to_owned(),
                port: 8080,
                protocol: twill_k8s::Protocol::Tcp,
            }];
            add_pod(lab, &name, node.name(), "default", labels, ports)?;
        }
    }
    Ok(())
}

/// The cluster DNS Service's address in a lab: what pods' `nameserver` is.
pub const LAB_DNS_IP: &str = "10.96.0.10";
/// The cluster domain: twill-dnsd's default zone.
const LAB_CLUSTER_DOMAIN: &str = "cluster.local";
/// The zone the lab's upstream resolver (dnsmasq on the first external host) serves.
pub const LAB_UPSTREAM_ZONE: &str = "lab.example";
/// TTL of every record of [`LAB_UPSTREAM_ZONE`], and of its negative answers: short, so
/// that cache expiry and serve-stale show within seconds.
pub const LAB_UPSTREAM_TTL: u32 = 3;

/// A pod's resolv.conf, as the kubelet writes it for `dnsPolicy: ClusterFirst`.
fn pod_resolv_conf(namespace: &str) -> String {
    let d = LAB_CLUSTER_DOMAIN;
    format!(
        "# written by netctl lab\n\
         search {namespace}.svc.{d} svc.{d} {d}\n\
         nameserver {LAB_DNS_IP}\n\
         options ndots:5\n"
    )
}

/// Where the upstream resolver of a lab's external host keeps its files.
fn upstream_paths(host: &Host) -> DaemonPaths {
    let dir = host.state_dir.join("dnsmasq");
    DaemonPaths {
        config: dir.join("dnsmasq.conf"),
        socket: dir.join("unused.sock"),
        state_dir: dir.clone(),
        log: dir.join("dnsmasq.log"),
        dir,
    }
}

/// The pid file of the upstream resolver on `host` (`hosts/ext1/dnsmasq/dnsmasq.pid` in
/// the lab's state directory), written once it serves.
fn upstream_pid_file(host: &Host) -> PathBuf {
    upstream_paths(host).dir.join("dnsmasq.pid")
}

/// The lab's upstream resolver, if `up` started one: the external host and its address.
fn upstream_of(lab: &Lab) -> Option<(Host, SocketAddrV4)> {
    let host = lab.externals().into_iter().next()?;
    let addr = SocketAddrV4::new(host.plan.underlay_ip, 53);
    upstream_pid_file(&host).exists().then_some((host, addr))
}

/// `program` in one of `PATH`'s directories, or in /usr/sbin or /sbin (not always in the
/// `PATH` of a root shell reached through sudo).
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// An upstream resolver for names outside the cluster: dnsmasq on the first external host,
/// authoritative for [`LAB_UPSTREAM_ZONE`] (every lab host as `<host>.lab.example`, and
/// `whoami.lab.example` TXT "upstream"; NXDOMAIN and NODATA with an SOA, as a real
/// resolver gives them) and REFUSED for every other name (the lab has no way out).
/// Returns its address once it runs; `None` when the lab has no external host or dnsmasq
/// is not installed (then the lab has no upstream, as before).
fn start_upstream(lab: &Lab) -> anyhow::Result<Option<SocketAddrV4>> {
    let Some(host) = lab.externals().into_iter().next() else {
        return Ok(None);
    };
    let Some(dnsmasq) = find_program("dnsmasq") else {
        eprintln!(
            "warning: dnsmasq not found (apt-get install dnsmasq-base): no upstream resolver \
             on {}; names outside the cluster get SERVFAIL",
            host.name()
        );
        return Ok(None);
    };
    let ip = host.plan.underlay_ip;
    let paths = upstream_paths(&host);
    let pid_file = upstream_pid_file(&host);
    let zone = LAB_UPSTREAM_ZONE;
    let mut config = format!(
        "# written by netctl lab up\n\
         keep-in-foreground\nno-resolv\nno-hosts\nbind-interfaces\n\
         listen-address={ip}\nport=53\nuser=root\n\
         pid-file={}\nlog-facility=-\nlog-queries\n\
         auth-zone={zone}\nauth-server=ns.{zone},{ip}\nauth-ttl={LAB_UPSTREAM_TTL}\n\
         auth-soa=1,hostmaster.{zone},1200,120,604800\n\
         host-record=ns.{zone},{ip}\n\
         txt-record=whoami.{zone},upstream\n",
        pid_file.display()
    );
    for h in lab.manifest().hosts() {
        config.push_str(&format!(
            "host-record={}.{zone},{}\n",
            h.name(),
            h.plan.underlay_ip
        ));
    }
    let args = vec![format!("--conf-file={}", paths.config.display())];
    let mut child = spawn_daemon(&dnsmasq, &host, &paths, &config, &args)?;
    // dnsmasq writes its pid file once its sockets are bound.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
        if pid.trim() == child.id().to_string() {
            return Ok(Some(SocketAddrV4::new(ip, 53)));
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() > deadline {
            let log = std::fs::read_to_string(&paths.log).unwrap_or_default();
            bail!(
                "dnsmasq on {} {}: {}",
                host.name(),
                exited.map_or("did not start within 5s".to_owned(), |s| format!(
                    "exited ({s})"
                )),
                log.trim()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// How pods find names, and something to try.
fn print_dns(lab: &Lab) {
    let d = LAB_CLUSTER_DOMAIN;
    println!(
        "\ncluster DNS: {LAB_DNS_IP} (kube-system/kube-dns), answered by twill-dnsd on each \
         node; every pod's resolv.conf has it, with search <namespace>.svc.{d} svc.{d} {d} \
         and ndots:5"
    );
    match upstream_of(lab) {
        Some((host, addr)) => println!(
            "names outside the cluster: forwarded to dnsmasq on {} ({addr}, zone \
             {LAB_UPSTREAM_ZONE}, TTL {LAB_UPSTREAM_TTL}s), cached, and served stale while \
             it does not answer",
            host.name()
        ),
        None => println!("names outside the cluster: no upstream resolver, SERVFAIL"),
    }
    println!(
        "try: netctl lab exec {} -- getent hosts kube-dns.kube-system",
        lab.manifest()
            .pods
            .first()
            .map_or("<pod>", |p| p.name.as_str()),
    );
}

/// The cluster DNS Service (kube-system/kube-dns, no backends of its own: a query finds the
/// node's twill-dnsd, or is refused), and a twill-dnsd on every node, listening on the
/// node's address and taking over the Service IP (`[intercept]`). Returns once every
/// node's server has taken it over.
fn start_dns(lab: &Lab) -> anyhow::Result<()> {
    let dnsd = sibling("twill-dnsd")?;
    let upstreams = match start_upstream(lab)? {
        Some(addr) => format!("\"{addr}\""),
        None => String::new(),
    };
    let objects = lab.manifest().state_dir.join("cluster-dns.yaml");
    std::fs::write(
        &objects,
        format!(
            "# written by netctl lab up\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {{name: kube-system}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: kube-dns, namespace: kube-system}}\n\
             spec:\n  clusterIP: {LAB_DNS_IP}\n  ports: [{{name: dns, port: 53, protocol: UDP}}, \
             {{name: dns-tcp, port: 53, protocol: TCP}}]\n"
        ),
    )
    .with_context(|| format!("writing {}", objects.display()))?;
    crate::apply::apply_files(
        vec![objects],
        crate::store::StoreArgs {
            etcd_endpoints: None,
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            lab: lab.name().to_owned(),
        },
    )
    .context("storing the cluster DNS Service")?;
    let endpoint = lab.etcd_endpoint();
    for node in lab.nodes() {
        let dir = node.state_dir.join("twill-dnsd");
        let paths = DaemonPaths {
            config: dir.join("dnsd.toml"),
            socket: dir.join("unused.sock"),
            state_dir: dir.clone(),
            log: dir.join("dnsd.log"),
            dir,
        };
        let mut config = format!(
            "# written by netctl lab up\n\
             listen = [\"{}:53\"]\n\
             [etcd]\nendpoints = [\"{endpoint}\"]\n",
            node.plan.underlay_ip
        );
        if let Some(tls) = lab.etcd_tls() {
            config.push_str(&format!(
                "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                tls.ca_file.display(),
                tls.cert_file.display(),
                tls.key_file.display()
            ));
        }
        // Without an upstream, names outside the cluster get SERVFAIL at once.
        config.push_str(&format!(
            "[forward]\nupstreams = [{upstreams}]\n\
             [intercept]\nservice_ip = \"{LAB_DNS_IP}\"\npin_dir = \"{}\"\n\
             [metrics]\nlisten = \"{}:{LAB_DNS_METRICS_PORT}\"\n\
             [records]\ntwilld_socket = \"{}\"\n",
            node.bpffs_dir.display(),
            node.plan.underlay_ip,
            DaemonPaths::of(&node).socket.display()
        ));
        let args = vec![
            "run".to_owned(),
            "--config".to_owned(),
            paths.config.display().to_string(),
        ];
        spawn_daemon(&dnsd, &node, &paths, &config, &args)?;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for node in lab.nodes() {
        while twill_bpf::read_local_backends(&node.bpffs_dir).map_or(true, |e| e.is_empty()) {
            if Instant::now() > deadline {
                let log = node.state_dir.join("twill-dnsd").join("dnsd.log");
                bail!(
                    "twill-dnsd on {} did not take over {LAB_DNS_IP} (log: {})",
                    node.name(),
                    log.display()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

fn daemon_status(node: &Host) -> Result<NodeStatus, String> {
    let paths = DaemonPaths::of(node);
    match twill_api::call(&paths.socket, &Request::Status, Duration::from_secs(5)) {
        Ok(Response::Status { status }) => Ok(status),
        Ok(other) => Err(format!("answered {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

fn wait_ready(node: &Host, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = daemon_status(node);
        if let Ok(s) = &status
            && s.not_ready.is_none()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(DaemonPaths::of(node).log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            bail!(
                "twilld on {} is not ready after {timeout:?}: {}\n  {}",
                node.name(),
                match status {
                    Ok(s) => s.not_ready.unwrap_or_default(),
                    Err(e) => e,
                },
                tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every node's overlay reaches every other node, so the connectivity check
/// tests the network rather than how fast the daemons heard of each other. Gives up
/// quietly after `timeout`: the check then shows what does not work.
fn wait_overlay(lab: &Lab, timeout: Duration) {
    let nodes = lab.nodes();
    let remote = u32::try_from(nodes.len().saturating_sub(1)).unwrap_or(u32::MAX);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let converged = nodes.iter().all(|n| {
            daemon_status(n).is_ok_and(|s| s.overlay.peers == remote && s.overlay.problem.is_none())
        });
        if converged {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn parse_labels(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .filter(|i| !i.is_empty())
        .map(|i| {
            let (k, v) = i
                .split_once('=')
                .with_context(|| format!("label {i:?} is not key=value"))?;
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// `http=8080,dns=53/UDP`
fn parse_ports(items: &[String]) -> anyhow::Result<Vec<twill_k8s::NamedPort>> {
    items
        .iter()
        .filter(|i| !i.is_empty())
        .map(|i| {
            let (name, rest) = i
                .split_once('=')
                .with_context(|| format!("port {i:?} is not name=port[/UDP|/SCTP]"))?;
            twill_k8s::names::iana_svc_name(name)
                .map_err(|e| anyhow::anyhow!("port {i:?}: {e}"))?;
            let (number, protocol) = match rest.split_once('/') {
                Some((n, "TCP")) => (n, twill_k8s::Protocol::Tcp),
                Some((n, "UDP")) => (n, twill_k8s::Protocol::Udp),
                Some((n, "SCTP")) => (n, twill_k8s::Protocol::Sctp),
                Some((_, p)) => bail!("port {i:?}: {p:?} is not TCP, UDP or SCTP"),
                None => (rest, twill_k8s::Protocol::Tcp),
            };
            let port: u16 = number
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .with_context(|| format!("port {i:?}: {number:?} is not a port (1-65535)"))?;
            Ok(twill_k8s::NamedPort {
                name: name.to_owned(),
                port,
                protocol,
            })
        })
        .collect()
}

fn check_pod_name(kind: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        bail!("{kind} {name:?} is invalid: use up to 40 lower-case letters, digits and '-'");
    }
    Ok(())
}

/// Wires a pod through the CNI binary, exactly as a runtime would.
fn add_pod(
    lab: &mut Lab,
    name: &str,
    node: &str,
    namespace: &str,
    labels: BTreeMap<String, String>,
    named_ports: Vec<twill_k8s::NamedPort>,
) -> anyhow::Result<LabPod> {
    check_pod_name("pod name", name)?;
    check_pod_name("namespace", namespace)?;
    if lab
        .manifest()
        .pods
        .iter()
        .any(|p| p.name == name && p.namespace == namespace)
    {
        bail!(
            "pod {namespace}/{name} already exists in lab {}",
            lab.name()
        );
    }
    let host = lab
        .host(node)
        .filter(|h| h.plan.role == Role::Node)
        .with_context(|| {
            let names: Vec<String> = lab.nodes().iter().map(|n| n.name().to_owned()).collect();
            format!(
                "lab {} has no node {node}; its nodes are {}",
                lab.name(),
                names.join(", ")
            )
        })?;
    let twill = sibling("twill")?;
    let netns = lab.create_netns(&format!("pod-{namespace}-{name}"))?;
    let netns_name = netns
        .name()
        .expect("the lab names its namespaces")
        .to_owned();
    lab.write_netns_etc(&netns_name, "resolv.conf", &pod_resolv_conf(namespace))?;
    let netns_path = netns.path().display().to_string();
    let container_id = format!("lab-{namespace}-{name}");
    let args = format!("K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}");
    let mut vars = cni_vars("ADD", &container_id, &netns_path, "eth0");
    vars.push(("CNI_ARGS", &args));
    let conf = cni_config("1.1.0", &DaemonPaths::of(&host));
    let out = invoke_cni(&twill, &host, &vars, &conf.to_string())?;
    if !out.status.success() {
        bail!(
            "CNI ADD for {namespace}/{name} failed: {}",
            out.stdout.trim()
        );
    }
    let result: serde_json::Value =
        serde_json::from_str(&out.stdout).context("reading the CNI result")?;
    let ip: Ipv4Addr = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("the CNI result has no address: {result}"))?;
    // Like a runtime, which starts the containers well after ADD: the pod is ready for
    // traffic once twilld has its programs on (ADD only queues them).
    let key = twill_api::AttachmentKey {
        container_id: container_id.clone(),
        ifname: "eth0".to_owned(),
    };
    let socket = DaemonPaths::of(&host).socket;
    twill_api::wait_attached(&socket, &key, std::time::Duration::from_secs(10))
        .map_err(|e| anyhow::anyhow!("pod {namespace}/{name}: {e}"))?;
    let pod = LabPod {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        node: node.to_owned(),
        netns: netns.path().to_owned(),
        container_id,
        ip,
        labels,
    };
    lab.record_pod(pod.clone())?;
    // The pod's object, as `netctl apply` would store it: Services select by its labels.
    let object = twill_k8s::Object::Pod(twill_k8s::Pod {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        labels: pod.labels.clone(),
        named_ports,
        hostname: None,
        subdomain: None,
    });
    let key = twill_api::cluster::object_key(object.resource(), object.namespace(), object.name());
    let value = serde_json::to_string(&object).expect("plain data");
    let store = crate::store::StoreArgs {
        etcd_endpoints: None,
        etcd_ca: None,
        etcd_cert: None,
        etcd_key: None,
        lab: lab.name().to_owned(),
    };
    crate::store::with_etcd(&store, |mut c| async move {
        c.put(key, value, None)
            .await
            .context("storing the pod's object")?;
        Ok(())
    })?;
    Ok(pod)
}

fn lab_state(m: &Manifest) -> &'static str {
    if m.is_stale() {
        "stale (its owner is gone; `netctl lab cleanup` removes it)"
    } else if !m.ready {
        "starting"
    } else if m.owner.is_some() {
        "up (held by a process)"
    } else {
        "up"
    }
}

fn print_lab(m: &Manifest) {
    println!(
        "lab {}: {} ({} nodes, etcd {} in netns {})",
        m.plan.name,
        lab_state(m),
        m.plan.nodes().count(),
        m.etcd_endpoint(),
        m.plan.underlay_netns
    );
    println!();
    let remote = m.plan.nodes().count().saturating_sub(1);
    println!(
        "{:<8} {:<9} {:<14} {:<16} {:<6} STATUS",
        "HOST", "ROLE", "UNDERLAY IP", "POD SUBNET", "PEERS"
    );
    for host in m.hosts() {
        let (role, subnet, peers, status) = match host.plan.role {
            Role::External => ("external", "-".to_owned(), "-".to_owned(), "-".to_owned()),
            Role::Node => match daemon_status(&host) {
                Ok(s) => (
                    "node",
                    s.subnet.map_or("-".to_owned(), |s| s.to_string()),
                    format!("{}/{remote}", s.overlay.peers),
                    {
                        let state = match (s.not_ready, s.overlay.problem) {
                            (Some(r), _) => format!("not ready: {r}"),
                            (None, Some(p)) => format!("ready, overlay trouble: {p}"),
                            (None, None) => "ready".to_owned(),
                        };
                        let work = &s.background;
                        let mut state = if work.attaching + work.retiring > 0 {
                            format!(
                                "{state} (background: {} pod attaches, {} pairs to delete)",
                                work.attaching, work.retiring
                            )
                        } else {
                            state
                        };
                        // Policy trouble is said in words: its pods are denied.
                        for p in &s.policy.problems {
                            state.push_str(&format!("; policy: {p}"));
                        }
                        state
                    },
                ),
                Err(_) => (
                    "node",
                    "-".to_owned(),
                    "-".to_owned(),
                    "no twilld".to_owned(),
                ),
            },
        };
        println!(
            "{:<8} {:<9} {:<14} {:<16} {:<6} {}",
            host.plan.name, role, host.plan.underlay_ip, subnet, peers, status
        );
    }
    if !m.pods.is_empty() {
        println!();
        println!(
            "{:<20} {:<12} {:<8} {:<14} LABELS",
            "POD", "NAMESPACE", "NODE", "IP"
        );
        for p in &m.pods {
            let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "{:<20} {:<12} {:<8} {:<14} {}",
                p.name,
                p.namespace,
                p.node,
                p.ip,
                labels.join(",")
            );
        }
    }
}

/// Pings every pod from every other pod (in parallel) and prints the matrix.
/// Returns whether every pair worked.
fn print_connectivity(pods: &[LabPod]) -> bool {
    let results: Vec<Vec<Option<bool>>> = thread::scope(|s| {
        let handles: Vec<Vec<_>> = pods
            .iter()
            .map(|from| {
                pods.iter()
                    .map(|to| {
                        (from.name != to.name || from.namespace != to.namespace).then(|| {
                            s.spawn(move || {
                                let Ok(ns) = NetNs::from_path(&from.netns) else {
                                    return false;
                                };
                                let mut cmd = Command::new("ping");
                                // One probe a second until a reply, for at most 3 s.
                                cmd.args(["-c", "1", "-w", "3", &to.ip.to_string()])
                                    .stdout(Stdio::null())
                                    .stderr(Stdio::null());
                                ns.run(move || cmd.status())
                                    .ok()
                                    .and_then(Result::ok)
                                    .is_some_and(|st| st.success())
                            })
                        })
                    })
                    .collect()
            })
            .collect();
        handles
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|h| h.map(|h| h.join().unwrap_or(false)))
                    .collect()
            })
            .collect()
    });
    let width = pods.iter().map(|p| p.name.len()).max().unwrap_or(4).max(4) + 2;
    println!();
    println!("connectivity (ping from each row to each column):");
    print!("{:<width$}", "");
    for p in pods {
        print!("{:<width$}", p.name);
    }
    println!();
    let mut failures = 0;
    let mut pairs = 0;
    for (from, row) in pods.iter().zip(&results) {
        print!("{:<width$}", from.name);
        for cell in row {
            let text = match cell {
                None => "-",
                Some(true) => "ok",
                Some(false) => "FAIL",
            };
            if let Some(ok) = cell {
                pairs += 1;
                failures += usize::from(!ok);
            }
            print!("{text:<width$}");
        }
        println!();
    }
    if failures == 0 {
        println!("all {pairs} pod pairs reach each other");
    } else {
        println!("{failures} of {pairs} pod pairs FAILED");
    }
    failures == 0
}

/// The last warnings of each node's twilld, to start from when something does not work.
fn print_daemon_warnings(lab: &Lab) {
    for node in lab.nodes() {
        let path = DaemonPaths::of(&node).log;
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        let recent = &warnings[warnings.len().saturating_sub(5)..];
        if !recent.is_empty() {
            println!("\ntwilld on {} ({}):", node.name(), path.display());
            for line in recent {
                println!("  {line}");
            }
        }
    }
}

fn exec(lab: &str, target: &str, command: &[String]) -> anyhow::Result<()> {
    let manifest = Manifest::load(lab)?;
    let (program, args) = command.split_first().context("no command given")?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let mut child = if let Some(host) = manifest.host(target) {
        host.spawn(cmd)?
    } else if let Some(pod) = manifest.pods.iter().find(|p| p.name == target) {
        let netns = NetNs::from_path(&pod.netns)?;
        match netns.name() {
            // `ip netns exec` gives the command a mount namespace of its own with the
            // pod's /etc/netns/<name> files (its resolv.conf) over /etc.
            Some(name) => {
                let mut ip = Command::new("ip");
                ip.args(["netns", "exec", name, program])
                    .args(args)
                    .stdin(Stdio::inherit())
                    .stdout(Stdio::inherit())
                    .stderr(Stdio::inherit());
                ip.spawn()
                    .with_context(|| format!("starting ip netns exec {name} {program}"))?
            }
            None => netns
                .run(move || cmd.spawn())?
                .with_context(|| format!("starting {program} in pod {target}"))?,
        }
    } else {
        let mut names: Vec<String> = manifest.plan.hosts.iter().map(|h| h.name.clone()).collect();
        names.extend(manifest.pods.iter().map(|p| p.name.clone()));
        bail!(
            "lab {lab} has no host or pod {target}; it has {}",
            names.join(", ")
        );
    };
    let status = child
        .wait()
        .with_context(|| format!("waiting for {program}"))?;
    std::process::exit(
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
    );
}
