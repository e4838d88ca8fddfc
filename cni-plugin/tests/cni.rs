//! The `twill` binary, called exactly as a container runtime calls it (environment and
//! stdin), against a real twilld, real etcd and real namespaces in the lab.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use serde_json::{Value, json};
use twill_api::{AttachmentKey, Request, Response, host_ifname};
use twill_lab::{Host, Lab, LabSpec};
use twill_tests::{
    cni::{self, Outcome as _, VERSIONS, invoke, vars},
    daemon::Twilld,
    require_root,
};

const TWILL: &str = env!("CARGO_BIN_EXE_twill");

fn twill() -> &'static Path {
    Path::new(TWILL)
}

/// twilld is built next to the CNI binary by the same `cargo test`.
fn twilld() -> PathBuf {
    let path = Path::new(TWILL).with_file_name("twilld");
    assert!(
        path.exists(),
        "{} missing: run `cargo test` at the workspace root",
        path.display()
    );
    path
}

struct Node {
    lab: Lab,
    host: Host,
    daemon: Twilld,
}

fn node() -> Node {
    node_with(1)
}

fn node_with(nodes: u8) -> Node {
    node_config(nodes, "")
}

fn node_config(nodes: u8, config: &str) -> Node {
    require_root();
    let lab = Lab::up(&LabSpec::for_test(nodes, 0)).expect("lab up");
    let host = lab.nodes()[0].clone();
    let daemon = Twilld::start(&twilld(), &lab, &host, config, &[]);
    daemon.wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());
    Node { lab, host, daemon }
}

impl Node {
    fn pod_ns(&mut self, name: &str) -> String {
        self.lab
            .create_netns(name)
            .expect("pod namespace")
            .path()
            .display()
            .to_string()
    }

    fn call(&self, command: &str, container: &str, netns: &str, conf: &Value) -> cni::Output {
        invoke(
            twill(),
            &self.host,
            &vars(command, container, netns, "eth0"),
            &conf.to_string(),
        )
    }

    fn in_pod(&self, netns: &str, program: &str, args: &[&str]) -> std::process::Output {
        let ns = twill_netns::NetNs::from_path(netns).unwrap();
        let mut cmd = Command::new(program);
        cmd.args(args);
        ns.run(move || cmd.output()).unwrap().unwrap()
    }

    fn in_node(&self, program: &str, args: &[&str]) -> std::process::Output {
        self.host.output(program, args).unwrap()
    }

    fn lookup(&self, container: &str) -> Option<Ipv4Addr> {
        match self.daemon.request(&Request::Lookup {
            key: key(container),
        }) {
            Response::Found { address } => address.map(|a| a.ip),
            other => panic!("lookup: {other:?}"),
        }
    }
}

fn key(container: &str) -> AttachmentKey {
    AttachmentKey {
        container_id: container.to_owned(),
        ifname: "eth0".to_owned(),
    }
}

fn link_exists_on_node(node: &Node, name: &str) -> bool {
    node.in_node("ip", &["link", "show", name]).status.success()
}

#[test]
fn add_check_del_work_in_every_spec_version_and_pods_reach_each_other() {
    let mut node = node();
    let subnet = node.daemon.status().subnet.unwrap();
    let node_ip = node.host.plan.underlay_ip.to_string();
    let mut earlier: Option<Ipv4Addr> = None;
    for version in VERSIONS {
        let container = format!("ctr-{}", version.replace('.', "-"));
        let netns = node.pod_ns(&format!("p{}", version.replace('.', "")));
        let conf = cni::config(version, &node.daemon);
        let result = node.call("ADD", &container, &netns, &conf).ok();

        // The result, field by field.
        assert_eq!(result["cniVersion"], version);
        let host_if = host_ifname(&key(&container));
        let ifaces = result["interfaces"].as_array().unwrap();
        assert_eq!(ifaces.len(), 2, "{result}");
        assert_eq!(ifaces[0]["name"], host_if.as_str());
        assert!(
            ifaces[0].get("sandbox").is_none(),
            "the host side has no sandbox"
        );
        assert_eq!(ifaces[1]["name"], "eth0");
        assert_eq!(ifaces[1]["sandbox"], netns.as_str());
        for i in ifaces {
            let mac = i["mac"].as_str().unwrap();
            assert_eq!(mac.len(), 17, "{mac}");
        }
        assert_eq!(
            ifaces[1].get("mtu").is_some(),
            version == "1.1.0",
            "mtu only in 1.1.0"
        );
        let ips = result["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 1);
        let address = ips[0]["address"].as_str().unwrap();
        let ip: Ipv4Addr = address.strip_suffix("/32").expect("a /32").parse().unwrap();
        assert!(subnet.contains(ip) && ip != subnet.network() && ip != subnet.broadcast());
        assert_ne!(
            ip,
            Ipv4Addr::from(u32::from(subnet.network()) + 1),
            "the node's address"
        );
        assert_eq!(ips[0]["gateway"], "169.254.1.1");
        assert_eq!(ips[0]["interface"], 1);
        assert_eq!(ips[0].get("version").is_some(), version.starts_with("0."));
        assert_eq!(
            result["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}])
        );

        // Inside the pod: the address, the MTU (underlay 1500 - 50), the default route.
        let addr = String::from_utf8(
            node.in_pod(&netns, "ip", &["-o", "addr", "show", "eth0"])
                .stdout,
        )
        .unwrap();
        assert!(addr.contains(&format!("inet {ip}/32")), "{addr}");
        let link = String::from_utf8(
            node.in_pod(&netns, "ip", &["-o", "link", "show", "eth0"])
                .stdout,
        )
        .unwrap();
        assert!(link.contains("mtu 1450"), "{link}");
        let route = String::from_utf8(
            node.in_pod(&netns, "ip", &["route", "show", "default"])
                .stdout,
        )
        .unwrap();
        assert!(route.contains("via 169.254.1.1 dev eth0"), "{route}");

        // The pod reaches its node, and the pod added before it.
        let ping = node.in_pod(&netns, "ping", &["-c", "1", "-W", "2", &node_ip]);
        assert!(
            ping.status.success(),
            "{version}: pod cannot reach its node"
        );
        if let Some(other) = earlier {
            let ping = node.in_pod(&netns, "ping", &["-c", "1", "-W", "2", &other.to_string()]);
            assert!(
                ping.status.success(),
                "{version}: pod cannot reach pod {other}"
            );
        }

        if version != "0.3.0" && version != "0.3.1" {
            let mut check = conf.clone();
            check["prevResult"] = result.clone();
            let out = node.call("CHECK", &container, &netns, &check).ok();
            assert_eq!(out, Value::Null, "CHECK prints nothing on success");
        }
        earlier = Some(ip);
    }

    // DEL each, twice: the second is a no-op that succeeds too.
    for version in VERSIONS {
        let container = format!("ctr-{}", version.replace('.', "-"));
        let netns = format!(
            "/run/netns/{}-p{}",
            node.lab.manifest().plan.resource_dir,
            version.replace('.', "")
        );
        let conf = cni::config(version, &node.daemon);
        for _ in 0..2 {
            assert_eq!(
                node.call("DEL", &container, &netns, &conf).ok(),
                Value::Null
            );
        }
        assert!(!link_exists_on_node(&node, &host_ifname(&key(&container))));
        assert_eq!(node.lookup(&container), None, "{version}: address released");
    }
    assert_eq!(node.daemon.status().available_addresses, 253);
}

#[test]
fn twilld_attaches_the_programs_after_add_and_deletes_the_pair_after_del() {
    let mut node = node();
    let netns = node.pod_ns("pbg");
    let conf = cni::config("1.1.0", &node.daemon);
    let host_if = host_ifname(&key("bg"));
    let (tx, ty) = twill_api::retired_ifnames(&key("bg"));
    let links = node.host.bpffs_dir.join("links");
    let pins = |name: &str| -> Vec<String> {
        let mut found: Vec<String> = std::fs::read_dir(links.join(name))
            .map(|d| {
                d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
    };

    node.call("ADD", "bg", &netns, &conf).ok();
    // ADD only queued the attach; twilld does it in the background, soon.
    node.daemon
        .wait_status("pod programs attached", Duration::from_secs(10), |s| {
            s.background.attaching == 0
        });
    assert_eq!(pins(&host_if), ["twill_from_pod", "twill_to_pod"]);
    // Waiting for an attach that is done answers at once.
    twill_api::wait_attached(&node.daemon.socket, &key("bg"), Duration::from_secs(5)).unwrap();

    node.call("DEL", "bg", &netns, &conf).ok();
    // At once: the pod's interface has left the pod and the host name is free.
    let inside = node.in_pod(&netns, "ip", &["-o", "link", "show"]);
    let inside = String::from_utf8_lossy(&inside.stdout).into_owned();
    assert!(!inside.contains("eth0"), "{inside}");
    assert!(!link_exists_on_node(&node, &host_if));
    assert_eq!(node.lookup("bg"), None, "address released");
    // Then twilld deletes the renamed pair and releases its programs.
    node.daemon
        .wait_status("retired pair deleted", Duration::from_secs(10), |s| {
            s.background.retiring == 0
        });
    assert!(!link_exists_on_node(&node, &tx), "{tx} left behind");
    assert!(!link_exists_on_node(&node, &ty), "{ty} left behind");
    assert!(
        pins(&host_if).is_empty() && pins(&tx).is_empty(),
        "pins left"
    );

    // The same attachment again gets the same host name and its programs again.
    node.call("ADD", "bg", &netns, &conf).ok();
    twill_api::wait_attached(&node.daemon.socket, &key("bg"), Duration::from_secs(5)).unwrap();
    assert_eq!(pins(&host_if), ["twill_from_pod", "twill_to_pod"]);
    node.call("DEL", "bg", &netns, &conf).ok();
}

/// What a process in a pod's namespace finds of `eth0` at one moment.
#[derive(Debug, PartialEq, Eq)]
struct PodSide {
    up: bool,
    addresses: usize,
    routes: usize,
    /// A datagram to the gateway: sent, or the error.
    send: Result<(), String>,
}

fn pod_side(netns: &str) -> PodSide {
    let ns = twill_netns::NetNs::from_path(netns).unwrap();
    ns.run(|| {
        let ip = |args: &[&str]| -> Value {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {out:?}");
            serde_json::from_slice(&out.stdout).unwrap()
        };
        let link = ip(&["-j", "link", "show", "eth0"]);
        let addrs = ip(&["-4", "-j", "addr", "show", "dev", "eth0"]);
        let routes = ip(&["-4", "-j", "route", "show", "table", "all"]);
        let send = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .and_then(|s| s.send_to(b"first", (twill_api::POD_GATEWAY, 9)))
            .map(|_| ())
            .map_err(|e| e.to_string());
        PodSide {
            up: link[0]["flags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "UP"),
            addresses: addrs[0]["addr_info"].as_array().map_or(0, Vec::len),
            routes: routes.as_array().unwrap().len(),
            send,
        }
    })
    .unwrap()
}

#[test]
fn the_pod_cannot_send_before_twilld_answers_the_attach() {
    let mut node = node();
    let netns = node.pod_ns("early");
    let host_if = host_ifname(&key("early"));
    let pins = node.host.bpffs_dir.join("links").join(&host_if);
    // A proxy in front of twilld that stands for a daemon attaching synchronously (a pod
    // selected by a policy): it has the programs attached before it answers `Attached`,
    // and looks at the pod's side when the request comes and just before it answers.
    let proxy = node.daemon.socket.with_file_name("early-proxy.sock");
    let _ = std::fs::remove_file(&proxy);
    let listener = std::os::unix::net::UnixListener::bind(&proxy).unwrap();
    let daemon_socket = node.daemon.socket.clone();
    let ns = netns.clone();
    let watcher = thread::spawn(move || {
        use std::io::{BufRead as _, Write as _};
        loop {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            std::io::BufReader::new(&stream)
                .read_line(&mut line)
                .unwrap();
            let request = twill_api::decode_request(&line).unwrap();
            let timeout = Duration::from_secs(10);
            let mut answer = twill_api::call(&daemon_socket, &request, timeout).unwrap();
            let attach = matches!(request, Request::AttachPod { .. });
            let seen = if attach {
                assert!(matches!(answer, Response::Admitted { .. }), "{answer:?}");
                let at_request = pod_side(&ns);
                twill_api::wait_attached(&daemon_socket, &key("early"), timeout).unwrap();
                let pinned = std::fs::read_dir(&pins).map_or(0, Iterator::count);
                answer = Response::Attached {
                    ifname: host_ifname(&key("early")),
                };
                Some((at_request, pinned, pod_side(&ns)))
            } else {
                None
            };
            (&stream)
                .write_all(twill_api::encode_response(&answer).as_bytes())
                .unwrap();
            if let Some(seen) = seen {
                return seen;
            }
        }
    });
    let mut conf = cni::config("1.1.0", &node.daemon);
    conf["socket"] = json!(proxy);
    let result = node.call("ADD", "early", &netns, &conf).ok();
    let (at_request, pinned, at_answer) = watcher.join().unwrap();
    std::fs::remove_file(&proxy).unwrap();

    // Until the answer: down, no address, no route, nothing can be sent.
    for seen in [&at_request, &at_answer] {
        assert!(
            !seen.up && seen.addresses == 0 && seen.routes == 0,
            "{seen:?}"
        );
        assert!(seen.send.is_err(), "{seen:?}");
    }
    assert_eq!(pinned, 2, "both programs were on before the answer");
    // After it: the pod is wired as ADD's result says.
    let after = pod_side(&netns);
    assert!(
        after.up && after.addresses == 1 && after.routes >= 2,
        "{after:?}"
    );
    assert_eq!(after.send, Ok(()));
    assert_eq!(
        result["ips"][0]["address"],
        format!("{}/32", node.lookup("early").unwrap())
    );

    let conf = cni::config("1.1.0", &node.daemon);
    node.call("DEL", "early", &netns, &conf).ok();
    assert_eq!(node.lookup("early"), None);
}

#[test]
fn check_finds_what_was_broken_and_del_works_without_the_namespace() {
    let mut node = node();
    let netns = node.pod_ns("pod");
    let conf = cni::config("1.1.0", &node.daemon);
    let result = node.call("ADD", "ctr1", &netns, &conf).ok();
    let mut check = conf.clone();
    check["prevResult"] = result;

    // Someone removes the pod's address: CHECK says exactly that.
    let ip = node.lookup("ctr1").unwrap();
    node.in_pod(
        &netns,
        "ip",
        &["addr", "del", &format!("{ip}/32"), "dev", "eth0"],
    );
    let err = node.call("CHECK", "ctr1", &netns, &check).err();
    assert_eq!(err["code"], 101);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains(&format!("lacks {ip}/32")),
        "{err}"
    );

    // CHECK of an attachment twill never saw: unknown container.
    let err = node.call("CHECK", "never-added", &netns, &check).err();
    assert_eq!(err["code"], 3, "{err}");

    // The namespace vanishes with its pod; DEL with an empty CNI_NETNS still cleans up.
    let del = invoke(
        twill(),
        &node.host,
        &vars("DEL", "ctr1", "", "eth0"),
        &conf.to_string(),
    );
    assert_eq!(del.ok(), Value::Null);
    assert!(!link_exists_on_node(&node, &host_ifname(&key("ctr1"))));
    assert_eq!(node.lookup("ctr1"), None);
}

#[test]
fn chains_with_the_reference_portmap_and_bandwidth_plugins() {
    let mut node = node();
    let netns = node.pod_ns("pod");
    // Debian's reference plugins speak up to 1.0.0.
    let base = json!({"cniVersion": "1.0.0", "name": "pods"});
    let with = |extra: Value, prev: Option<&Value>| {
        let mut v = base.clone();
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        if let Some(p) = prev {
            v["prevResult"] = p.clone();
        }
        v
    };
    let twill_conf = cni::config("1.0.0", &node.daemon);
    let portmap_conf = json!({"type": "portmap",
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}});
    let bandwidth_conf = json!({"type": "bandwidth",
        "ingressRate": 8000000, "ingressBurst": 800000, "egressRate": 8000000, "egressBurst": 800000});
    let reference = |name: &str| Path::new("/usr/lib/cni").join(name);
    let run = |bin: &Path, command: &str, conf: &Value| {
        invoke(
            bin,
            &node.host,
            &vars(command, "ctr1", &netns, "eth0"),
            &conf.to_string(),
        )
    };

    let r1 = run(twill(), "ADD", &twill_conf).ok();
    let r2 = run(
        &reference("portmap"),
        "ADD",
        &with(portmap_conf.clone(), Some(&r1)),
    )
    .ok();
    let r3 = run(
        &reference("bandwidth"),
        "ADD",
        &with(bandwidth_conf.clone(), Some(&r2)),
    )
    .ok();
    // portmap found the pod's address through twill's result and mapped the port.
    let nat = String::from_utf8(node.in_node("iptables", &["-t", "nat", "-S"]).stdout).unwrap();
    let ip = node.lookup("ctr1").unwrap();
    assert!(
        nat.contains("--dport 8080") && nat.contains(&format!("{ip}:80")),
        "{nat}"
    );
    // bandwidth found the host veth through twill's result and shaped it.
    let host_if = host_ifname(&key("ctr1"));
    let qdisc = String::from_utf8(
        node.in_node("tc", &["qdisc", "show", "dev", &host_if])
            .stdout,
    )
    .unwrap();
    assert!(qdisc.contains("tbf"), "{qdisc}");

    // CHECK through the chain with the final result.
    let mut tconf = twill_conf.clone();
    tconf["prevResult"] = r3.clone();
    run(twill(), "CHECK", &tconf).ok();
    // Debian's portmap (1.1.1) fails its own CHECK for IPv4-only pods by looking for IPv6
    // rules it never made (containernetworking/plugins#819); accept exactly that.
    let pm = run(
        &reference("portmap"),
        "CHECK",
        &with(portmap_conf.clone(), Some(&r3)),
    );
    if !pm.status.success() {
        let msg = pm.err()["msg"].as_str().unwrap_or_default().to_owned();
        assert!(
            msg.contains("could not check ipv6 dnat"),
            "portmap CHECK: {msg}"
        );
    }
    run(
        &reference("bandwidth"),
        "CHECK",
        &with(bandwidth_conf.clone(), Some(&r3)),
    )
    .ok();

    // DEL in reverse order.
    run(
        &reference("bandwidth"),
        "DEL",
        &with(bandwidth_conf, Some(&r3)),
    )
    .ok();
    run(&reference("portmap"), "DEL", &with(portmap_conf, Some(&r3))).ok();
    run(twill(), "DEL", &twill_conf).ok();
    let nat = String::from_utf8(node.in_node("iptables", &["-t", "nat", "-S"]).stdout).unwrap();
    assert!(!nat.contains(&format!("{ip}:80")), "{nat}");
    assert!(!link_exists_on_node(&node, &host_if));
    assert_eq!(node.lookup("ctr1"), None);
}

#[test]
fn every_error_has_its_spec_code_and_names_the_problem() {
    let mut node = node();
    let netns = node.pod_ns("pod");
    let good = cni::config("1.1.0", &node.daemon);
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c.to_string()
    };
    let add_vars = vars("ADD", "ctr1", &netns, "eth0");
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u64, &'a str);
    let cases: Vec<Case> = vec![
        (
            "unsupported version",
            add_vars.clone(),
            with("cniVersion", json!("0.2.0")),
            1,
            "0.2.0 is not supported",
        ),
        (
            "CHECK before 0.4.0",
            vars("CHECK", "ctr1", &netns, "eth0"),
            with("cniVersion", json!("0.3.1")),
            1,
            "does not have the Check command",
        ),
        (
            "unknown field",
            add_vars.clone(),
            with("bridge", json!("cni0")),
            2,
            "unsupported field \"bridge\"",
        ),
        (
            "missing variables",
            vec![("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")],
            good.to_string(),
            4,
            "CNI_CONTAINERID, CNI_NETNS",
        ),
        (
            "netns that does not exist",
            vars("ADD", "ctr1", "/run/netns/no-such-ns", "eth0"),
            good.to_string(),
            4,
            "CNI_NETNS /run/netns/no-such-ns does not exist",
        ),
        (
            "not JSON",
            add_vars.clone(),
            "{\"cniVersion\":".to_owned(),
            6,
            "not valid JSON",
        ),
        (
            "bad field value",
            add_vars.clone(),
            with("mtu", json!(10)),
            7,
            "mtu: 10",
        ),
        (
            "daemon unreachable",
            add_vars.clone(),
            with("socket", json!("/run/twill/nowhere.sock")),
            11,
            "cannot reach twilld at /run/twill/nowhere.sock",
        ),
    ];
    for (name, env, stdin, code, message) in cases {
        let out = invoke(twill(), &node.host, &env, &stdin);
        let err = out.err();
        assert_eq!(err["code"], code, "{name}: {err}");
        let text = format!(
            "{} {}",
            err["msg"].as_str().unwrap_or_default(),
            err["details"].as_str().unwrap_or_default()
        );
        assert!(text.contains(message), "{name}: {text}");
        assert!(
            out.stdout.trim().lines().count() == 1,
            "{name}: stdout holds the error only"
        );
    }
    // Nothing was allocated or created by any of them.
    assert_eq!(node.lookup("ctr1"), None);
    assert!(!link_exists_on_node(&node, &host_ifname(&key("ctr1"))));

    // ADD where the interface name is taken: refused, and the existing one untouched.
    node.call("ADD", "ctr1", &netns, &good).ok();
    let ip = node.lookup("ctr1");
    let err = node.call("ADD", "ctr2", &netns, &good).err();
    assert_eq!(err["code"], 100);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("interface eth0 already exists"),
        "{err}"
    );
    assert_eq!(node.lookup("ctr1"), ip);
    assert_eq!(
        node.lookup("ctr2"),
        None,
        "the refused ADD allocated nothing"
    );
}

#[test]
fn status_follows_the_daemon_and_etcd() {
    let mut node = node_config(1, "[etcd]\ntimeout_seconds = 1\n[lease]\nttl_seconds = 3\n");
    let conf = cni::config("1.1.0", &node.daemon).to_string();
    let status = |node: &Node| invoke(twill(), &node.host, &[("CNI_COMMAND", "STATUS")], &conf);
    assert_eq!(status(&node).ok(), Value::Null, "ready: exit 0, no output");

    node.daemon.kill();
    let err = status(&node).err();
    assert_eq!(err["code"], 50);
    assert!(
        err["msg"].as_str().unwrap().contains("cannot reach twilld"),
        "{err}"
    );

    node.daemon.restart();
    node.daemon
        .wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());
    assert_eq!(status(&node).ok(), Value::Null);

    node.lab.pause_etcd().unwrap();
    node.daemon
        .wait_status("not ready", Duration::from_secs(60), |s| {
            s.not_ready.is_some()
        });
    let err = status(&node).err();
    assert_eq!(err["code"], 50);
    assert!(err["msg"].as_str().unwrap().contains("etcd"), "{err}");
    node.lab.resume_etcd().unwrap();
    node.daemon
        .wait_status("ready", Duration::from_secs(60), |s| s.not_ready.is_none());
    assert_eq!(status(&node).ok(), Value::Null);

    // With a pod on the node, losing etcd also threatens existing pods: 51.
    let netns = node.pod_ns("pod");
    node.call("ADD", "ctr1", &netns, &cni::config("1.1.0", &node.daemon))
        .ok();
    node.lab.pause_etcd().unwrap();
    node.daemon
        .wait_status("not ready", Duration::from_secs(60), |s| {
            s.not_ready.is_some()
        });
    let err = status(&node).err();
    assert_eq!(err["code"], 51, "{err}");
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("1 pod(s) may have limited connectivity"),
        "{err}"
    );
    node.lab.resume_etcd().unwrap();
    node.daemon
        .wait_status("ready", Duration::from_secs(60), |s| s.not_ready.is_none());
    assert_eq!(status(&node).ok(), Value::Null);
}

#[test]
fn fifty_concurrent_adds_get_fifty_distinct_addresses_and_dels_return_them() {
    let mut node = node();
    let subnet = node.daemon.status().subnet.unwrap();
    let namespaces: Vec<String> = (0..50).map(|i| node.pod_ns(&format!("c{i}"))).collect();
    let conf = cni::config("1.1.0", &node.daemon);
    let ips: Vec<Ipv4Addr> = thread::scope(|s| {
        let handles: Vec<_> = namespaces
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || {
                    let r = node.call("ADD", &format!("c{i}"), ns, conf).ok();
                    r["ips"][0]["address"]
                        .as_str()
                        .unwrap()
                        .trim_end_matches("/32")
                        .parse()
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: BTreeSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), 50, "{ips:?}");
    assert!(ips.iter().all(|ip| subnet.contains(*ip)));
    assert_eq!(node.daemon.status().available_addresses, 253 - 50);

    thread::scope(|s| {
        for (i, ns) in namespaces.iter().enumerate() {
            let (node, conf) = (&node, &conf);
            s.spawn(move || node.call("DEL", &format!("c{i}"), ns, conf).ok());
        }
    });
    assert_eq!(node.daemon.status().available_addresses, 253);
}

#[test]
fn del_while_the_daemon_is_down_succeeds_and_is_honoured_when_it_returns() {
    let mut node = node();
    let netns = node.pod_ns("pod");
    let conf = cni::config("1.1.0", &node.daemon);
    node.call("ADD", "ctr1", &netns, &conf).ok();
    let ip = node.lookup("ctr1").unwrap();

    node.daemon.kill();
    assert_eq!(node.call("DEL", "ctr1", &netns, &conf).ok(), Value::Null);
    assert!(!link_exists_on_node(&node, &host_ifname(&key("ctr1"))));
    let queued = twill_api::pending_release_path(&node.daemon.state_dir, &key("ctr1"));
    assert!(queued.exists(), "the release waits in {}", queued.display());

    node.daemon.restart();
    node.daemon
        .wait_status("ready", Duration::from_secs(10), |s| s.not_ready.is_none());
    assert_eq!(node.lookup("ctr1"), None, "{ip} was released on restart");
    assert!(!queued.exists());
}

#[test]
fn an_add_that_fails_half_way_leaves_nothing_behind() {
    let node = node();
    // A path that exists but is not a network namespace: allocation succeeds, wiring fails.
    let fake = node.host.state_dir.join("not-a-netns");
    std::fs::write(&fake, "").unwrap();
    let conf = cni::config("1.1.0", &node.daemon);
    let err = node
        .call("ADD", "ctr1", fake.to_str().unwrap(), &conf)
        .err();
    assert!(err["code"] == 102 || err["code"] == 4, "{err}");
    assert_eq!(node.lookup("ctr1"), None, "the address was released");
    assert!(!link_exists_on_node(&node, &host_ifname(&key("ctr1"))));
    assert_eq!(node.daemon.status().available_addresses, 253);
}

#[test]
fn gc_cleans_up_after_adds_killed_half_way() {
    let mut node = node();
    let conf = cni::config("1.1.0", &node.daemon);
    let keep_ns = node.pod_ns("keep");
    node.call("ADD", "keep", &keep_ns, &conf).ok();

    // Kill ADDs at different moments; wherever each one died, GC must clean up after it.
    for (i, delay_us) in [0u64, 500, 2000, 5000, 20000].iter().enumerate() {
        let ns = node.pod_ns(&format!("k{i}"));
        let mut cmd = Command::new(twill());
        cmd.env_clear()
            .envs(vars("ADD", &format!("killed{i}"), &ns, "eth0"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = node.host.spawn(cmd).unwrap();
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(conf.to_string().as_bytes());
        }
        thread::sleep(Duration::from_micros(*delay_us));
        let _ = child.kill();
        let _ = child.wait();
    }
    // Also the worst case, made deterministic: an address handed out and a host veth left.
    node.daemon.request(&Request::Allocate {
        key: key("ghost"),
        pod: None,
    });

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    invoke(
        twill(),
        &node.host,
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        &gc.to_string(),
    )
    .ok();

    assert!(
        node.lookup("keep").is_some(),
        "a valid attachment keeps its address"
    );
    assert!(link_exists_on_node(&node, &host_ifname(&key("keep"))));
    assert_eq!(node.lookup("ghost"), None);
    for i in 0..5 {
        let id = format!("killed{i}");
        assert_eq!(node.lookup(&id), None, "{id} still holds an address");
        assert!(
            !link_exists_on_node(&node, &host_ifname(&key(&id))),
            "{id}'s veth left"
        );
    }
    assert_eq!(node.daemon.status().available_addresses, 252);
}
