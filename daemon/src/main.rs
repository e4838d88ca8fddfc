//! `twilld`, twill's node daemon. It leases the node's pod subnet in etcd, hands out pod
//! addresses to the CNI binary over a local socket, and carries the eBPF object inside its
//! binary (through `twill-bpf`), so a node needs nothing else to run the dataplane.
#![forbid(unsafe_code)]

// The daemon's core, which every capability shares.
mod config;
mod lease;
mod metrics;
mod node;
mod policy;
mod server;
mod state;
mod watch;

// Capabilities, a folder each (`policy` joins them), and outbound NAT, one file.
mod bgp;
mod flows;
mod masquerade;
mod overlay;
mod pods;
mod services;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use etcd_client::Client;
use tracing::{error, info, warn};
use twill_abi::lb::wire_ip;
use twill_bpf::{Datapath, OBJECT};

use crate::{
    config::{Config, OverlayMode, Overrides},
    lease::{LeaseSpec, Outcome, Renewal},
    node::Node,
    overlay::{peers, underlay, vxlan},
    pods::{podsync, podwork},
};

/// This build's version: the crate version and the git commit it was built from (see
/// `build.rs`). Printed by `--version`, shown in the node's status and node record.
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("TWILL_GIT_COMMIT"),
    ")"
);

/// Read when `--config` is not given, if it exists.
const DEFAULT_CONFIG: &str = "/etc/twill/twilld.toml";

#[derive(Parser)]
#[command(name = "twilld", version = VERSION, about = "twill node daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node daemon.
    Run {
        /// Configuration file (TOML); see twilld.example.toml. Default: /etc/twill/twilld.toml
        /// if it exists, else built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
        /// Tests only: maps (comma-separated names) whose layout this run treats as one
        /// version newer than their pins', so the migration of a layout change runs on
        /// real maps (see `Datapath::load_upgrading`). The pins are left at a version no
        /// build knows, so a later start without the flag resets those maps.
        #[arg(long, hide = true, value_delimiter = ',')]
        test_layout_bump: Vec<String>,
    },
    /// Check a configuration file and print the result, without running.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Load every embedded eBPF program into this kernel, report what loaded, and unload
    /// them: a quick "will twill's dataplane run on this node" check.
    Check {
        /// bpffs directory for the maps' pins during the check (removed afterwards).
        #[arg(long, default_value = "/sys/fs/bpf/twill-check")]
        pin_dir: PathBuf,
    },
}

fn main() {
    limit_malloc_arenas();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("twilld: {e:#}");
        std::process::exit(1);
    }
}

/// glibc gives each thread that allocates its own arena (up to 8 per core), and each
/// keeps its peak: with the runtime's and the request threads that was a third of the
/// daemon's resident memory at 5,000 pods and 1,000 policies. Two arenas are plenty for a
/// daemon whose work is one pass at a time. glibc reads `MALLOC_ARENA_MAX` only when the
/// process starts, so `twilld run` starts itself again with it set (unless the operator
/// set it).
fn limit_malloc_arenas() {
    use std::os::unix::process::CommandExt as _;
    let mut args = std::env::args_os();
    let _ = args.next();
    let args: Vec<std::ffi::OsString> = args.collect();
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() || args.first().is_none_or(|a| a != "run") {
        return;
    }
    // Only returns if the exec failed; then the daemon runs as it is.
    let error = std::process::Command::new("/proc/self/exe")
        .args(&args)
        .env("MALLOC_ARENA_MAX", "2")
        .exec();
    eprintln!("twilld: starting again with MALLOC_ARENA_MAX=2 failed ({error}); going on");
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            config,
            overrides,
            test_layout_bump,
        } => {
            let config = load_config(config, &overrides)?;
            init_logging();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(daemon(config, test_layout_bump))
        }
        Command::CheckConfig { config, overrides } => {
            let config = load_config(config, &overrides)?;
            println!("{config:#?}");
            Ok(())
        }
        Command::Check { pin_dir } => {
            let existed = pin_dir.exists();
            let loaded = Datapath::load(&pin_dir);
            // Only remove what the check itself created.
            if !existed {
                let _ = std::fs::remove_dir_all(&pin_dir);
            }
            loaded.with_context(|| {
                format!(
                    "the eBPF dataplane does not load on this kernel (pins in {})",
                    pin_dir.display()
                )
            })?;
            println!("embedded eBPF object: {} bytes", OBJECT.len());
            for program in twill_abi::programs::ALL {
                println!("loaded and verified: {program}");
            }
            println!("dataplane check passed");
            Ok(())
        }
    }
}

fn load_config(path: Option<PathBuf>, overrides: &Overrides) -> anyhow::Result<Config> {
    let (name, text) = match path {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            (path.display().to_string(), text)
        }
        None => match std::fs::read_to_string(DEFAULT_CONFIG) {
            Ok(text) => (DEFAULT_CONFIG.to_owned(), text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                ("(defaults)".to_owned(), String::new())
            }
            Err(e) => return Err(e).with_context(|| format!("reading {DEFAULT_CONFIG}")),
        },
    };
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
        .to_lowercase();
    Ok(Config::from_toml(&name, &text, overrides, &hostname)?)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TWILL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

async fn daemon(config: Config, bumped: Vec<String>) -> anyhow::Result<()> {
    info!(node = %config.node_name, "starting twilld {VERSION}");
    // Pods are routed through the node: forwarding must be on.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .context("enabling IPv4 forwarding (/proc/sys/net/ipv4/ip_forward)")?;
    // Bound before anything else is set up: a taken port stops the start at once.
    let metrics_listener = match &config.metrics {
        Some(m) => Some(twill_metrics_http::bind(m.listen, "metrics.listen").await?),
        None => None,
    };
    let instruments = metrics::Instruments::default();

    let (connection, handle, _) = rtnetlink::new_connection().context("opening netlink")?;
    tokio::spawn(connection);
    let underlay = underlay::detect(&handle, config.underlay_interface.as_deref()).await?;
    let pod_mtu = config
        .mtu
        .unwrap_or(underlay.mtu.saturating_sub(config.encapsulation_overhead()));
    info!(interface = %underlay.name, ip = %underlay.ip, mtu = underlay.mtu, pod_mtu, "underlay");

    let (routing, vtep_mac) = match config.overlay {
        OverlayMode::Vxlan => {
            let device = vxlan::ensure_device(
                &handle,
                &underlay,
                vxlan::Settings::of_node(&config, &underlay),
            )
            .await
            .with_context(|| format!("creating the VXLAN device {}", vxlan::DEVICE))?;
            let vtep_mac = peers::format_mac(&device.mac);
            info!(device = vxlan::DEVICE, vni = config.vxlan_vni, port = config.vxlan_port, mac = %vtep_mac, "overlay device");
            let overlay = Arc::new(overlay::Overlay::new(
                handle.clone(),
                device,
                config.cluster,
                config.node_name.clone(),
                instruments.clone(),
            ));
            tokio::spawn(overlay::run(config.clone(), overlay.clone(), config.resync));
            (Routing::Vxlan(overlay), Some(vtep_mac))
        }
        OverlayMode::Bgp => {
            // The cross-subnet fallback's VXLAN device, or none (one of an earlier run goes).
            let fallback = bgp::fallback_device(&handle, &config, &underlay).await?;
            let vtep_mac = fallback.as_ref().map(|d| peers::format_mac(&d.mac));
            let restarting =
                bgp::routes_kept(&handle, &underlay, &config.cluster, fallback.as_ref()).await;
            let listener = bgp::bind(&config)?;
            let speaker = Arc::new(bgp::Speaker::new(&config, &underlay));
            info!(
                as_number = config.bgp.as_number,
                port = config.bgp.listen_port,
                "BGP-routed mode: no encapsulation"
            );
            tokio::spawn(bgp::run(
                config.clone(),
                speaker.clone(),
                handle.clone(),
                underlay.clone(),
                fallback,
                listener,
                restarting,
            ));
            (Routing::Bgp(speaker), vtep_mac)
        }
    };
    let overlay_device = matches!(routing, Routing::Vxlan(_)).then(|| vxlan::DEVICE.to_owned());

    vxlan::ensure_service_route(&handle, config.service_cidr)
        .await
        .with_context(|| {
            format!(
                "routing the service CIDR {} as unreachable",
                config.service_cidr
            )
        })?;
    if config.masquerade {
        masquerade::ensure(config.cluster.network()).context("setting up outbound NAT")?;
        info!(
            chain = masquerade::CHAIN,
            "pod traffic leaving the cluster is masqueraded"
        );
    }
    // Not fatal: pods reach each other without it; the node's conntrack, where something
    // enables it, then holds one-way entries for their flows (see `masquerade`).
    match masquerade::ensure_untracked(config.cluster.network()) {
        Ok(()) => info!(
            chain = masquerade::UNTRACKED_CHAIN,
            "pod-to-pod traffic is not connection-tracked"
        ),
        Err(e) => warn!("leaving pod-to-pod traffic connection-tracked: {e}"),
    }

    let state = state::StateDir::open(&config.state_dir)?;
    let service_cidr = Some((
        config.service_cidr.network().octets(),
        config.service_cidr.prefix(),
    ));
    if !bumped.is_empty() {
        warn!(maps = ?bumped, "--test-layout-bump: treating these maps' layouts as changed (tests only)");
    }
    let (datapath, changes) =
        Datapath::load_upgrading(&config.bpffs_root, service_cidr, config.map_sizes, &bumped)
            .with_context(|| {
                format!(
                    "loading the eBPF dataplane (pins in {})",
                    config.bpffs_root.display()
                )
            })?;
    // Policy maps that start empty are refilled by the first policy pass before the
    // programs of the earlier run (which still read the old maps) are swapped out.
    let policy_reset = log_map_changes(&changes);
    // Host processes of this node reach Services through the socket programs.
    let mut datapath = datapath;
    datapath
        .attach_cgroup(&config.cgroup_root)
        .with_context(|| {
            format!(
                "attaching the Service socket programs to the node's cgroup {} (paths.cgroup_root)",
                config.cgroup_root.display()
            )
        })?;
    info!(cgroup = %config.cgroup_root.display(), "host processes reach Services through socket translation");
    datapath
        .set_node_config(node_config(&config, underlay.ip, None))
        .context("writing the node's addresses for the programs")?;
    let node = Arc::new(Node::new(
        config.node_name.clone(),
        pod_mtu,
        state,
        config.lease_ttl,
        // NodePort programs (underlay and VXLAN ingress) come and go with NodePort
        // Services; see the services loop.
        Some(node::Dataplane::new(
            datapath,
            (underlay.name.clone(), overlay_device.clone()),
        )),
        instruments,
    )?);
    match &routing {
        Routing::Vxlan(overlay) => {
            let _ = node.overlay.set(overlay.clone());
        }
        Routing::Bgp(speaker) => {
            let _ = node.bgp.set(speaker.clone());
        }
    }
    let pods = pod_interfaces(&handle).await?;
    if policy_reset.is_empty() {
        take_over_programs(&node, &pods)?;
    } else {
        warn!(maps = ?policy_reset, "policy maps start empty: the programs of the earlier run stay attached (enforcing the policy they had) until the first policy pass has refilled them");
        let node = node.clone();
        let pods = pods.clone();
        tokio::spawn(async move {
            while !node.with_dataplane(|d| d.policy.refilled()).unwrap_or(true) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            info!("policy maps refilled: taking over the programs of the earlier run");
            // Attaches wait for the kernel: off the reactor.
            let done = tokio::task::spawn_blocking(move || take_over_programs(&node, &pods)).await;
            if let Ok(Err(e)) = done {
                error!("{e:#}");
            }
        });
    }
    node.forget_deleted_pods();
    flows::start(&config, &node, handle.clone())?;
    let listener = server::bind(&config.socket)?;
    info!(socket = %config.socket.display(), "listening");
    tokio::spawn(server::serve(listener, node.clone()));
    tokio::spawn(podsync::run(config.clone(), node.clone()));
    tokio::spawn(services::run(config.clone(), node.clone()));
    tokio::spawn(policy::run(config.clone(), node.clone()));
    tokio::spawn(podwork::run(node.clone(), handle.clone()));
    if let (Some(listener), Some(m)) = (metrics_listener, &config.metrics) {
        let scraper =
            metrics::scrape::Scraper::new(node.clone(), config.bpffs_root.clone(), m.map_walk);
        info!(listen = %m.listen, "serving Prometheus metrics at /metrics");
        tokio::spawn(twill_metrics_http::serve(
            listener,
            Arc::new(scraper),
            "twilld",
        ));
    }

    let spec = LeaseSpec {
        node: config.node_name.clone(),
        cluster: config.cluster,
        ttl: config.lease_ttl,
        quarantine: config.lease_quarantine,
        underlay_ip: underlay.ip,
        vtep_mac,
        timeout: config.etcd_timeout,
        flows_listen: config
            .flows
            .remote
            .as_ref()
            .and_then(|r| r.advertised(underlay.ip)),
        labels: config.node_labels.clone(),
    };
    tokio::select! {
        () = lease_loop(&config, &spec, &node, &routing) => unreachable!("the lease loop never ends"),
        signal = shutdown_signal() => {
            // The leases are left to expire on their own: a restart within the TTL keeps
            // the subnet and other nodes' routes to it.
            info!("{signal}: stopping; the subnet lease stays until it expires");
            let _ = std::fs::remove_file(&config.socket);
            Ok(())
        }
    }
}

/// Logs what the load did to maps an earlier run pinned, loudly for those reset. Returns
/// the policy maps reset (their contents come back with the first policy pass).
fn log_map_changes(changes: &[twill_bpf::MapChange]) -> Vec<&'static str> {
    use twill_abi::maps;
    const POLICY_MAPS: [&str; 5] = [
        maps::POLICY_ENDPOINTS,
        maps::POLICY_PEERS,
        maps::POLICY_PORTS,
        maps::POLICY_RULES,
        maps::POLICY_STATE,
    ];
    let mut policy_reset = Vec::new();
    for change in changes {
        match &change.plan {
            twill_bpf::Plan::Reset { .. } => {
                error!("map {change}");
                if POLICY_MAPS.contains(&change.name) {
                    policy_reset.push(change.name);
                }
            }
            twill_bpf::Plan::Migrate { .. } if change.dropped > 0 => warn!("map {change}"),
            _ => info!("map {change}"),
        }
    }
    policy_reset
}

/// Gives the programs pinned by an earlier run (a restart) this run's programs, in place,
/// so their traffic is never without translation: the overlay and NodePort programs and
/// each pod's; links of pods deleted meanwhile are released. Then the migrated maps'
/// late entries are carried and the old maps released.
fn take_over_programs(node: &Node, pods: &[String]) -> anyhow::Result<()> {
    if let Some(Err(e)) = node.with_dataplane(|d| d.take_over_node_programs()) {
        return Err(anyhow::Error::new(e).context("taking over the overlay and NodePort programs"));
    }
    for ifname in pods {
        if let Some(Err(e)) = node.with_dataplane(|d| d.ensure_attached(ifname)) {
            warn!(interface = %ifname, "re-attaching the pod programs: {:#}", anyhow::Error::new(e));
        }
    }
    if let Some(gone) = node.with_dataplane(|d| d.datapath.forget_pods_except(pods))
        && !gone.is_empty()
    {
        info!(interfaces = ?gone, "released the programs of pods gone while stopped");
    }
    for (map, copied) in node
        .with_dataplane(|d| d.datapath.finish_migrations())
        .unwrap_or_default()
    {
        info!(
            map,
            copied,
            "migration done: entries the old programs added meanwhile carried, old map released"
        );
    }
    Ok(())
}

/// Host-side pod veths on this node: twill's names (`tw` + 12 hex digits).
async fn pod_interfaces(handle: &rtnetlink::Handle) -> anyhow::Result<Vec<String>> {
    let links = twill_netlink::links(handle)
        .await
        .context("listing interfaces")?;
    Ok(links
        .iter()
        .filter_map(|l| twill_netlink::link_name(l).map(str::to_owned))
        .filter(|n| twill_api::is_twill_ifname(n, twill_api::HOST_IFNAME_PREFIX))
        .collect())
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

pub(crate) async fn connect(config: &Config) -> anyhow::Result<Client> {
    Ok(twill_store::connect(&config.etcd()).await?)
}

/// Leases the subnet, keeps the lease alive, and leases again when it is lost. Never
/// returns: etcd trouble and an exhausted cluster CIDR are waited out, not fatal.
/// What the programs must know about this node (wire order).
fn node_config(
    config: &Config,
    underlay_ip: std::net::Ipv4Addr,
    vtep: Option<std::net::Ipv4Addr>,
) -> twill_abi::lb::NodeConfig {
    let cluster = config.cluster.network();
    twill_abi::lb::NodeConfig {
        node_ip: wire_ip(underlay_ip.octets()),
        vtep_ip: vtep.map_or(0, |v| wire_ip(v.octets())),
        cluster_net: wire_ip(cluster.network().octets()),
        cluster_mask: wire_ip(cluster.mask().octets()),
    }
}

/// How pods on other nodes are reached: the VXLAN overlay, or BGP-announced routes.
enum Routing {
    Vxlan(Arc<overlay::Overlay>),
    Bgp(Arc<bgp::Speaker>),
}

impl Routing {
    async fn subnet_leased(&self, subnet: ipnetwork::Ipv4Network) {
        match self {
            Routing::Vxlan(overlay) => overlay.local_subnet(subnet).await,
            Routing::Bgp(speaker) => speaker.local_subnet(Some(subnet)),
        }
    }

    fn subnet_lost(&self) {
        if let Routing::Bgp(speaker) = self {
            speaker.local_subnet(None);
        }
    }

    /// The node's address in its pod subnet, where the mode gives it one (the VXLAN
    /// device's; the BGP mode has none).
    /// The source address of NodePort flows sent to other nodes' backends, so that their
    /// replies come back to this node: the VTEP address over VXLAN; with BGP-routed pod
    /// subnets the node's own underlay address, which every node routes to.
    fn nodeport_source(
        &self,
        subnet: ipnetwork::Ipv4Network,
        underlay_ip: std::net::Ipv4Addr,
    ) -> std::net::Ipv4Addr {
        match self {
            Routing::Vxlan(_) => twill_ipam::PodSubnet(subnet).node_address(),
            Routing::Bgp(_) => underlay_ip,
        }
    }
}

async fn lease_loop(config: &Config, spec: &LeaseSpec, node: &Node, routing: &Routing) {
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    const FIRST_BACKOFF: Duration = Duration::from_millis(200);
    let mut backoff = FIRST_BACKOFF;
    let retry = |node: &Node, problem: String, backoff: &mut Duration| {
        node.etcd_failed(problem);
        let wait = *backoff;
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        wait
    };
    loop {
        let mut client = match connect(config).await {
            Ok(client) => client,
            Err(e) => {
                let msg = format!("{e:#}");
                warn!("{msg}");
                tokio::time::sleep(retry(node, msg, &mut backoff)).await;
                continue;
            }
        };
        let held = match lease::acquire(&mut client, spec, node.remembered_subnet()).await {
            Ok(Outcome::Held { held, lost }) => {
                if let Some((subnet, holder)) = lost {
                    node.warn(format!(
                        "this node's previous pod subnet {subnet} is now held by node \
                         {holder}; refusing to use it"
                    ));
                }
                held
            }
            Ok(Outcome::Exhausted { subnets }) => {
                let msg = format!(
                    "cluster CIDR {} is exhausted: all {subnets} /{} subnets are held by other \
                     nodes or in quarantine; retrying",
                    spec.cluster.network(),
                    spec.cluster.node_prefix()
                );
                error!("{msg}");
                node.etcd_ok();
                node.etcd_failed(msg);
                tokio::time::sleep(MAX_BACKOFF).await;
                continue;
            }
            Err(e) => {
                let msg = format!("leasing a pod subnet: {e}");
                warn!("{msg}");
                tokio::time::sleep(retry(node, msg, &mut backoff)).await;
                continue;
            }
        };
        if let Err(e) = node.subnet_leased(held.subnet) {
            error!("recording pod subnet {}: {e:#}", held.subnet);
            tokio::time::sleep(MAX_BACKOFF).await;
            continue;
        }
        routing.subnet_leased(held.subnet).await;
        let source = routing.nodeport_source(held.subnet, spec.underlay_ip);
        if let Some(Err(e)) = node.with_dataplane(|d| {
            d.datapath
                .set_node_config(node_config(config, spec.underlay_ip, Some(source)))
        }) {
            error!("telling the programs the node's NodePort source address {source}: {e:#}");
        }
        info!(subnet = %held.subnet, "holding pod subnet");
        backoff = FIRST_BACKOFF;

        let period = spec.ttl / 3;
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(period).await;
            match lease::renew(&mut client, spec, &held).await {
                Ok(Renewal::Renewed) => {
                    node.etcd_ok();
                    last_ok = Instant::now();
                }
                Ok(Renewal::Lost(why)) => {
                    warn!(subnet = %held.subnet, "lease lost: {why}; leasing again");
                    node.subnet_lost(why);
                    routing.subnet_lost();
                    break;
                }
                Err(e) => {
                    warn!("renewing the lease: {e}");
                    node.etcd_failed(format!("renewing the lease: {e}"));
                    // Past the TTL the leases may be gone on etcd's side: start over with
                    // a fresh connection, which takes the subnet back if it is still ours.
                    if last_ok.elapsed() > spec.ttl {
                        break;
                    }
                }
            }
        }
    }
}
