//! `netctl export` and `netctl import` on a real 3-node lab: pods wired through the CNI
//! binary, a Service and a NetworkPolicy; export; etcd stopped, its data deleted and an
//! empty etcd started on the same address; import; the lab carries on: no node changes
//! subnet, the old pods still reach each other and the Service, the policy is enforced
//! again, a new pod and a new Service get fresh addresses. Also: `--dry-run` writes
//! nothing, a changed file is refused for its checksum, a store with state is refused
//! without `--force`, and `--force` leaves out a Service whose IP someone else holds.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use etcd_client::GetOptions;
use twill_api::cluster;
use twill_lab::{Host, Lab, LabSpec};
use twill_netns::NetNs;
use twill_tests::{
    bench, cni,
    daemon::Twilld,
    require_root,
    scripts::{ECHO, PROBE},
};

const NETCTL: &str = env!("CARGO_BIN_EXE_netctl");
const CONFIG: &str = "[network]\nresync_seconds = 1\n[lease]\nttl_seconds = 5\n";

fn sibling(name: &str) -> PathBuf {
    Path::new(NETCTL).with_file_name(name)
}

/// Output of `netctl ARGS --lab LAB`, success or not.
fn run(lab: &Lab, args: &[&str], stdin: &str) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(NETCTL)
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
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("netctl ends")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(lab: &Lab, args: &[&str], stdin: &str) -> String {
    let out = run(lab, args, stdin);
    assert!(out.status.success(), "netctl {args:?}: {}", text(&out));
    text(&out)
}

fn refused(lab: &Lab, args: &[&str]) -> String {
    let out = run(lab, args, "");
    assert!(
        !out.status.success(),
        "netctl {args:?} succeeded: {}",
        text(&out)
    );
    text(&out)
}

struct Pod {
    netns: String,
    ip: Ipv4Addr,
}

impl Pod {
    fn reaches(&self, ip: Ipv4Addr) -> bool {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", PROBE, &ip.to_string(), "0.3"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let ns = NetNs::from_path(&self.netns).unwrap();
        let out = ns
            .run(move || cmd.output())
            .unwrap()
            .expect("run the probe");
        String::from_utf8_lossy(&out.stdout).starts_with("ok")
    }
}

fn add_pod(lab: &mut Lab, host: &Host, daemon: &Twilld, name: &str) -> Pod {
    let args = format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
    let (netns, ip) = cni::add_pod(&sibling("twill"), lab, host, daemon, name, &args);
    Pod { netns, ip }
}

fn until(what: &str, limit: Duration, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// Keys under `prefix` in the lab's etcd.
fn keys(lab: &Lab, prefix: &str) -> Vec<String> {
    let prefix = prefix.to_owned();
    bench::etcd(lab, async move |mut c| {
        c.get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("read etcd")
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_owned())
        .collect()
    })
}

fn pod_object(name: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\n\
         spec: {{containers: [{{name: c}}]}}\n---\n"
    )
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n\
spec:\n  type: NodePort\n  selector: {app: web}\n  ports: [{port: 8080, targetPort: 8080}]\n---\n";

const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
metadata: {name: web-from-client}\n\
spec:\n  podSelector: {matchLabels: {app: web}}\n  \
ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{port: 8080}]\n";

/// The ClusterIP `netctl get svc NAME` shows.
fn cluster_ip(lab: &Lab, name: &str) -> Ipv4Addr {
    let out = run(lab, &["get", "svc", name, "-o", "json"], "");
    assert!(out.status.success(), "{}", text(&out));
    let svc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    svc["spec"]["clusterIP"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("no clusterIP in {svc}"))
}

/// A lab with pods on three nodes: web (serving, behind a NodePort Service, let in only
/// from pods labelled client by a NetworkPolicy), client, other; and their daemons.
struct Cluster {
    lab: Lab,
    nodes: Vec<Host>,
    daemons: Vec<Twilld>,
    web: Pod,
    client: Pod,
    other: Pod,
    server: std::process::Child,
    service_ip: Ipv4Addr,
    subnets: Vec<ipnetwork::Ipv4Network>,
}

impl Cluster {
    fn up() -> Self {
        let mut lab = Lab::up(&LabSpec::for_test(3, 0)).expect("lab up");
        let nodes = lab.nodes();
        let daemons = Twilld::start_on_every_node(&sibling("twilld"), &lab, CONFIG);
        let mut objects = pod_object("web", "web");
        objects.push_str(&pod_object("client", "client"));
        objects.push_str(&pod_object("other", "other"));
        objects.push_str(&pod_object("late", "client"));
        objects.push_str(SERVICE);
        objects.push_str(POLICY);
        ok(&lab, &["apply", "-f", "-"], &objects);
        let web = add_pod(&mut lab, &nodes[1], &daemons[1], "web");
        let client = add_pod(&mut lab, &nodes[0], &daemons[0], "client");
        let other = add_pod(&mut lab, &nodes[2], &daemons[2], "other");
        let ns = NetNs::from_path(&web.netns).unwrap();
        let server = ns
            .run(|| {
                Command::new("python3")
                    .args(["-c", ECHO])
                    .stdout(Stdio::null())
                    .spawn()
            })
            .unwrap()
            .unwrap();
        let service_ip = cluster_ip(&lab, "web");
        let c = Self {
            subnets: daemons.iter().map(|d| d.status().subnet.unwrap()).collect(),
            lab,
            nodes,
            daemons,
            web,
            client,
            other,
            server,
            service_ip,
        };
        c.serving("client reaches web and the Service");
        until(
            "all three pod records are in etcd",
            Duration::from_secs(10),
            || keys(&c.lab, cluster::PODS).len() == 3,
        );
        c
    }

    /// Waits until client reaches web directly and through the Service, and other is kept
    /// out.
    fn serving(&self, what: &str) {
        until(what, Duration::from_secs(15), || {
            self.client.reaches(self.web.ip)
                && self.client.reaches(self.service_ip)
                && !self.other.reaches(self.web.ip)
        });
    }

    /// Every node holds the subnet it had, is ready, and never said its subnet changed.
    fn same_subnets(&self) {
        for (d, before) in self.daemons.iter().zip(&self.subnets) {
            let log = d.log_text();
            let leases: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("lease lost") || l.contains("holding pod subnet"))
                .collect();
            eprintln!("{}: {leases:#?}", d.node);
            let status = d.wait_status("ready", Duration::from_secs(15), |s| s.not_ready.is_none());
            assert_eq!(status.subnet.as_ref(), Some(before), "{}", d.node);
            assert!(!log.contains("pod subnet changed"), "{}:\n{log}", d.node);
        }
        assert_eq!(keys(&self.lab, cluster::SUBNETS).len(), 3);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[test]
fn a_wiped_store_is_restored_from_an_export_and_the_lab_carries_on() {
    require_root();
    let mut c = Cluster::up();
    let service_ip = c.service_ip;
    let dir = c.lab.manifest().state_dir.clone();
    let file = dir.join("export.yaml");
    let file_arg = file.display().to_string();
    let said = ok(&c.lab, &["export", "-o", &file_arg], "");
    eprintln!("{said}");
    assert!(
        said.contains("3 subnet lease(s)") && said.contains("3 pod record(s)"),
        "{said}"
    );
    let exported = std::fs::read_to_string(&file).unwrap();
    for want in [
        "kind: TwillExport",
        "formatVersion: 1",
        "sha256: ",
        "kind: TwillState",
        "kind: NetworkPolicy",
        &format!("clusterIP: {service_ip}"),
    ] {
        assert!(exported.contains(want), "{want:?} in:\n{exported}");
    }
    // Into the store it came from: refused, it holds twill state.
    let again = refused(&c.lab, &["import", &file_arg]);
    assert!(again.contains("already holds twill state"), "{again}");

    // The store is lost; the nodes carry on with what they have.
    c.lab.restart_etcd_fresh().expect("a fresh etcd");
    assert!(keys(&c.lab, cluster::OBJECTS).is_empty());
    // An empty store of another etcd cluster is not applied: the Service keeps working
    // and the policy keeps other out, for as long as the store stays empty (policy never
    // fails open).
    thread::sleep(Duration::from_secs(3));
    assert!(
        c.client.reaches(c.web.ip) && c.client.reaches(service_ip) && !c.other.reaches(c.web.ip),
        "3 s into the empty store the nodes kept their state"
    );
    for d in &c.daemons {
        let log = d.log_text();
        assert!(
            log.contains("holds no objects"),
            "{} says why:\n{log}",
            d.node
        );
    }

    // A changed byte is refused for its checksum, naming the problem.
    let bad = dir.join("corrupt.yaml");
    std::fs::write(
        &bad,
        exported.replacen("web-from-client", "web-from-clienT", 1),
    )
    .unwrap();
    let said = refused(&c.lab, &["import", &bad.display().to_string()]);
    assert!(said.contains("checksum mismatch"), "{said}");

    let dry = ok(&c.lab, &["import", &file_arg, "--dry-run"], "");
    eprintln!("{dry}");
    for want in [
        "service/default/web",
        "networkpolicy/default/web-from-client created",
        "dry run: nothing was written",
    ] {
        assert!(dry.contains(want), "{want:?} in:\n{dry}");
    }
    assert!(
        keys(&c.lab, cluster::OBJECTS).is_empty(),
        "the dry run wrote objects"
    );
    assert!(
        keys(&c.lab, cluster::SERVICE_IPS).is_empty(),
        "the dry run wrote claims"
    );

    let done = ok(&c.lab, &["import", &file_arg], "");
    eprintln!("{done}");
    assert!(!done.contains("CONFLICT"), "{done}");

    thread::sleep(Duration::from_secs(6)); // Past a lease TTL: renewals have run.
    c.same_subnets();
    c.serving("old pods reach web and the Service, the policy keeps other out again");
    let shown = ok(&c.lab, &["get", "svc"], "") + &ok(&c.lab, &["get", "netpol"], "");
    assert!(
        shown.contains(&service_ip.to_string()) && shown.contains("web-from-client"),
        "{shown}"
    );

    // New addresses are fresh: a pod, and a Service.
    let late = add_pod(&mut c.lab, &c.nodes[0], &c.daemons[0], "late");
    assert!(
        c.subnets[0].contains(late.ip),
        "{} in {}",
        late.ip,
        c.subnets[0]
    );
    assert!(
        ![c.web.ip, c.client.ip, c.other.ip].contains(&late.ip),
        "{}",
        late.ip
    );
    until("the new pod reaches web", Duration::from_secs(10), || {
        late.reaches(c.web.ip)
    });
    let second = SERVICE.replace("name: web}", "name: second}");
    ok(&c.lab, &["apply", "-f", "-"], &second);
    assert_ne!(cluster_ip(&c.lab, "second"), service_ip);

    // --force: someone else holds the Service's IP now; that part is reported and left
    // out, the rest of the file agrees with the store.
    ok(&c.lab, &["delete", "-f", "-"], SERVICE);
    let intruder = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: intruder}}\n\
         spec:\n  clusterIP: {service_ip}\n  ports: [{{port: 80}}]\n"
    );
    ok(&c.lab, &["apply", "-f", "-"], &intruder);
    let without = refused(&c.lab, &["import", &file_arg]);
    assert!(without.contains("already holds twill state"), "{without}");
    let forced = ok(&c.lab, &["import", &file_arg, "--force"], "");
    eprintln!("{forced}");
    let want = format!(
        "CONFLICT service/default/web (clusterIP {service_ip}): Service IP {service_ip} is \
         held by Service default/intruder in the store; not written"
    );
    assert!(forced.contains(&want), "{want:?} in:\n{forced}");
    assert!(
        forced.contains("networkpolicy/default/web-from-client unchanged"),
        "{forced}"
    );
    assert!(
        keys(
            &c.lab,
            &cluster::object_key("services", Some("default"), "web")
        )
        .is_empty(),
        "the conflicting Service was written"
    );
    let holder = bench::etcd(&c.lab, async move |mut c| {
        c.get(cluster::service_ip_key(service_ip), None)
            .await
            .unwrap()
            .kvs()[0]
            .value_str()
            .unwrap()
            .to_owned()
    });
    assert_eq!(holder, "default/intruder");
}

/// The documented procedure: the new etcd is imported into before the nodes can reach it
/// (here: the underlay namespace rejects connections to etcd that do not come from
/// inside it), so
/// the nodes never see an empty store: the Service and the policy hold throughout.
#[test]
fn an_import_before_the_nodes_reach_the_new_etcd_leaves_no_gap() {
    require_root();
    let mut c = Cluster::up();
    let file = c.lab.manifest().state_dir.join("export.yaml");
    let file_arg = file.display().to_string();
    ok(&c.lab, &["export", "-o", &file_arg], "");

    let underlay = c.lab.underlay().unwrap();
    let iptables = |op: &str| {
        let owned = op.to_owned();
        let status = underlay
            .run(move || {
                Command::new("iptables")
                    .args([&owned, "INPUT", "!", "-i", "lo", "-p", "tcp"])
                    .args(["--dport", "2379", "-j", "REJECT"])
                    .args(["--reject-with", "tcp-reset"])
                    .status()
            })
            .unwrap()
            .expect("run iptables");
        assert!(status.success(), "iptables {op}");
    };
    iptables("-I");
    c.lab.restart_etcd_fresh().expect("a fresh etcd");
    // netctl from inside the underlay namespace, through loopback.
    let netctl = Path::new(NETCTL).to_owned();
    let args = [
        "import".to_owned(),
        file_arg.clone(),
        "--etcd-endpoints".to_owned(),
        "http://127.0.0.1:2379".to_owned(),
    ];
    let out = underlay
        .run(move || Command::new(netctl).args(args).output())
        .unwrap()
        .expect("run netctl");
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("{}", text(&out));
    for _ in 0..10 {
        assert!(c.client.reaches(c.service_ip), "the Service went away");
        assert!(!c.other.reaches(c.web.ip), "the policy went away");
        thread::sleep(Duration::from_millis(200));
    }
    iptables("-D");
    thread::sleep(Duration::from_secs(6)); // Past a lease TTL: renewals have run.
    c.same_subnets();
    c.serving("old pods reach web and the Service, the policy keeps other out");
}
