//! `netctl get` output as kubectl users read it, and `netctl describe`, against a lab's
//! etcd (and, for describe, its nodes' daemons and pinned maps), through the binary:
//! `get -o yaml|json` is taken back by `apply -f` unchanged for every kind; `-o name`,
//! `-l`, `-n`, `-A` select as kubectl does; an unknown kind lists the kinds.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use twill_lab::{Lab, LabSpec, plan::random_name};
use twill_tests::{cni, daemon::Twilld, require_root};

const NETCTL: &str = env!("CARGO_BIN_EXE_netctl");

fn netctl(args: &[&str]) -> Output {
    Command::new(NETCTL)
        .args(args)
        .output()
        .expect("run netctl")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Stdout of a successful run.
fn ok(args: &[&str]) -> String {
    let out = netctl(args);
    assert!(out.status.success(), "netctl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = netctl(&["lab", "down", &self.0]);
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

/// Every kind `apply` takes, with the defaults and allocations each has.
const EVERYTHING: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web, tier: front}}
spec:
  hostname: web-0
  subdomain: web
  containers: [{name: nginx, image: nginx, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop, labels: {app: db}}
spec: {containers: [{name: c, ports: [{name: pg, containerPort: 5432}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: tool}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  type: NodePort
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80, targetPort: http}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: None, selector: {app: db}}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop}
spec: {ports: [{name: https, port: 443, targetPort: 8443}]}
---
apiVersion: v1
kind: Service
metadata: {name: alias, namespace: other}
spec: {type: ExternalName, externalName: example.org}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-1, namespace: shop, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
endpoints:
- {addresses: ["192.0.2.10"], nodeName: node1, hostname: ext-a}
- {addresses: ["192.0.2.11"], conditions: {ready: false}}
ports: [{name: https, port: 8443}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-in
  namespace: shop
  labels: {owner: web}
  annotations: {twill.io/enforcement: audit}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector: {matchLabels: {tier: front}}
      namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [shop]}]}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports: [{port: 8080, endPort: 8090}, {port: http}, {protocol: SCTP}]
  egress: [{to: [{podSelector: {}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec: {podSelector: {}}
---
apiVersion: policy.twill.io/v1alpha1
kind: FQDNPolicy
metadata: {name: allow-example, namespace: shop, labels: {owner: web}}
spec:
  podSelector: {matchLabels: {app: web}}
  egress:
  - toFQDNs: [{matchName: Api.Example.}, {matchPattern: "*.example.org"}]
    ports: [{port: 443, endPort: 445}, {protocol: UDP}]
---
apiVersion: policy.twill.io/v1alpha1
kind: FQDNPolicy
metadata: {name: deny-outside, namespace: other}
spec: {podSelector: {}, egress: []}
"#;

/// `(kind, objects of it in EVERYTHING)`.
const KINDS: [(&str, usize); 6] = [
    ("namespaces", 2),
    ("pods", 3),
    ("services", 4),
    ("endpointslices", 1),
    ("networkpolicies", 2),
    ("fqdnpolicies", 2),
];

#[test]
fn get_yaml_and_json_of_every_kind_apply_back_unchanged_and_select_as_kubectl() {
    require_root();
    let lab = random_name();
    let up = netctl(&[
        "lab",
        "up",
        "--bare",
        "--name",
        &lab,
        "--nodes",
        "1",
        "--externals",
        "0",
    ]);
    assert!(up.status.success(), "{}", text(&up));
    let _down = Down(lab.clone());
    let dir = TempDir(std::env::temp_dir().join(format!("twill-get-{lab}")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let all = write(&dir.0, "all.yaml", EVERYTHING);
    let said = ok(&["apply", "-f", &all, "--lab", &lab]);
    assert_eq!(said.matches(" created").count(), 14, "{said}");

    // Each kind's list, as YAML and as JSON, goes back in without a change.
    for (kind, count) in KINDS {
        for format in ["yaml", "json"] {
            let shown = ok(&["get", kind, "-A", "-o", format, "--lab", &lab]);
            let file = write(&dir.0, &format!("{kind}.{format}"), &shown);
            let said = ok(&["apply", "-f", &file, "--lab", &lab]);
            assert_eq!(
                (said.matches(" unchanged").count(), said.lines().count()),
                (count, count),
                "get {kind} -o {format}:\n{shown}\napply said:\n{said}"
            );
        }
    }
    // One object is printed alone, not in a List, and goes back in too.
    let web = ok(&[
        "get", "svc", "web", "-n", "shop", "-o", "yaml", "--lab", &lab,
    ]);
    assert!(web.starts_with("apiVersion: v1\nkind: Service\n"), "{web}");
    let file = write(&dir.0, "web.yaml", &web);
    let said = ok(&["apply", "-f", &file, "--lab", &lab]);
    assert!(
        said.starts_with("service/shop/web ") && said.trim_end().ends_with(" unchanged"),
        "{said}"
    );

    // Kubernetes-shaped, with what the API server would have filled in.
    let svc: serde_json::Value = serde_json::from_str(&ok(&[
        "get",
        "service/web",
        "-n",
        "shop",
        "-o",
        "json",
        "--lab",
        &lab,
    ]))
    .unwrap();
    assert_eq!(svc["apiVersion"], "v1");
    assert_eq!(svc["kind"], "Service");
    assert_eq!(svc["metadata"]["namespace"], "shop");
    let ip = svc["spec"]["clusterIP"].as_str().unwrap();
    assert!(ip.starts_with("10.96."), "{svc}");
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&node_port), "{svc}");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(svc["spec"]["ports"][1]["targetPort"], 53);
    assert_eq!(
        svc["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
        10800
    );
    let deny: serde_json::Value = serde_json::from_str(&ok(&[
        "get", "netpol", "deny-all", "-n", "shop", "-o", "json", "--lab", &lab,
    ]))
    .unwrap();
    assert_eq!(deny["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(deny["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    let list: serde_json::Value =
        serde_json::from_str(&ok(&["get", "fqdnpol", "-A", "-o", "json", "--lab", &lab])).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(
        list["items"][1]["spec"]["egress"][0]["toFQDNs"],
        serde_json::json!([{"matchName": "api.example"}, {"matchPattern": "*.example.org"}])
    );

    // Namespaces as kubectl has them: `default` without -n, every one with -A.
    assert_eq!(
        ok(&["get", "pods", "-o", "name", "--lab", &lab]),
        "pod/tool\n"
    );
    assert_eq!(
        ok(&["get", "pods", "-n", "shop", "-o", "name", "--lab", &lab]),
        "pod/db-0\npod/web-0\n"
    );
    assert_eq!(
        ok(&["get", "po", "-A", "-o", "name", "--lab", &lab]),
        "pod/tool\npod/db-0\npod/web-0\n"
    );
    assert_eq!(
        ok(&["get", "ns", "-o", "name", "--lab", &lab]),
        "namespace/other\nnamespace/shop\n"
    );
    assert_eq!(
        ok(&["get", "netpol", "-A", "-o", "name", "--lab", &lab]),
        "networkpolicy.networking.k8s.io/deny-all\nnetworkpolicy.networking.k8s.io/web-in\n"
    );
    // What -o name prints is a name `get` takes back.
    assert!(
        ok(&[
            "get",
            "networkpolicy.networking.k8s.io/web-in",
            "-n",
            "shop",
            "--lab",
            &lab
        ])
        .contains("web-in")
    );

    // Label selectors, as kubectl's -l.
    let names = |selector: &str| {
        ok(&[
            "get", "pods", "-A", "-l", selector, "-o", "name", "--lab", &lab,
        ])
    };
    assert_eq!(names("app=web"), "pod/web-0\n");
    assert_eq!(names("app!=web"), "pod/tool\npod/db-0\n");
    assert_eq!(names("app"), "pod/db-0\npod/web-0\n");
    assert_eq!(names("!app"), "pod/tool\n");
    assert_eq!(names("app in (web,db),tier"), "pod/web-0\n");
    assert_eq!(names("app=web,tier=back"), "");
    assert_eq!(
        ok(&[
            "get",
            "fqdnpol",
            "-A",
            "-l",
            "owner=web",
            "-o",
            "name",
            "--lab",
            &lab
        ]),
        "fqdnpolicy.policy.twill.io/allow-example\n"
    );
    let bad = netctl(&["get", "pods", "-l", "app in (web", "--lab", &lab]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("-l \"app in (web\""), "{}", text(&bad));

    // Tables: -o wide adds columns; nothing found says so, as kubectl does.
    let wide = ok(&["get", "svc", "-n", "shop", "-o", "wide", "--lab", &lab]);
    let header = wide.lines().next().unwrap();
    assert!(
        header.starts_with("NAMESPACE") && header.contains("SELECTOR"),
        "{wide}"
    );
    assert!(
        wide.lines()
            .any(|l| l.starts_with("shop") && l.contains(&format!("80:{node_port}/TCP"))),
        "{wide}"
    );
    let none = netctl(&["get", "svc", "--lab", &lab]);
    assert!(none.status.success());
    assert_eq!(text(&none), "No resources found in default namespace.\n");

    // A name that is not there fails, naming it; an unknown kind lists the kinds.
    let missing = netctl(&["get", "svc", "nope", "-n", "shop", "--lab", &lab]);
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("services \"nope\" not found in namespace shop"),
        "{}",
        text(&missing)
    );
    let unknown = netctl(&["get", "foo", "--lab", &lab]);
    assert!(!unknown.status.success());
    let said = text(&unknown);
    for kind in [
        "\"foo\"",
        "nodes (no)",
        "namespaces (ns)",
        "pods (po)",
        "services (svc)",
        "endpoints (ep)",
        "endpointslices",
        "networkpolicies (netpol)",
        "fqdnpolicies (fqdnpol)",
    ] {
        assert!(said.contains(kind), "{kind} in: {said}");
    }
}

const CONFIG: &str = "[network]\nresync_seconds = 1\n[lease]\nttl_seconds = 5\n";

fn sibling(name: &str) -> PathBuf {
    Path::new(NETCTL).with_file_name(name)
}

/// Runs `netctl` against `lab` until `check` holds for its stdout; that stdout.
fn until(lab: &Lab, args: &[&str], what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = run(lab, args, "");
        if check(&out) {
            return out;
        }
        assert!(Instant::now() < deadline, "{what}: not within 10 s:\n{out}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn run(lab: &Lab, args: &[&str], stdin: &str) -> String {
    twill_tests::netctl(&sibling("netctl"), lab, args, stdin)
}

/// What follows the line `heading` in `text`.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    text.split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no {heading:?} in:\n{text}"))
        .1
}

/// The line of `text` that starts with `start` (after indentation).
fn line<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{text}"))
}

#[test]
fn describe_shows_endpoints_per_node_frontends_programs_and_policies() {
    require_root();
    let mut lab = Lab::up(&LabSpec::for_test(2, 0)).expect("lab up");
    let nodes = lab.nodes();
    let mut daemons = Twilld::start_on_every_node(&sibling("twilld"), &lab, CONFIG);
    run(
        &lab,
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web-0, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-out, annotations: {twill.io/enforcement: audit}}
spec: {podSelector: {}, policyTypes: [Egress]}
---
apiVersion: policy.twill.io/v1alpha1
kind: FQDNPolicy
metadata: {name: web-names}
spec: {podSelector: {matchLabels: {app: web}}, egress: [{toFQDNs: [{matchName: example.org}]}]}
"#,
    );
    let twill = sibling("twill");
    let mut ips = Vec::new();
    for (i, name) in ["web-0", "web-1"].into_iter().enumerate() {
        let args = format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
        let (_, ip) = cni::add_pod(&twill, &mut lab, &nodes[i], &daemons[i], name, &args);
        ips.push(ip);
    }
    let (web0, web1) = (ips[0], ips[1]);

    // The pod as kubectl would show it, with where it runs; it goes back in unchanged.
    let yaml = until(
        &lab,
        &["get", "pod", "web-0", "-o", "yaml"],
        "web-0's record",
        |y| y.contains("podIP"),
    );
    assert!(yaml.contains(&format!("podIP: {web0}\n")), "{yaml}");
    assert!(yaml.contains("nodeName: node1\n"), "{yaml}");
    let dir = TempDir(std::env::temp_dir().join(format!("twill-describe-{}", lab.name())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = write(&dir.0, "web-0.yaml", &yaml);
    let said = run(&lab, &["apply", "-f", &file], "");
    assert_eq!(said.trim_end(), "pod/default/web-0 unchanged", "{yaml}");

    // A Service: its facts, its endpoints per node, and every node's frontends matching.
    let shown = until(
        &lab,
        &["describe", "service", "web"],
        "both nodes' frontends match",
        |d| d.matches("   match").count() == 2 && d.contains("web-1"),
    );
    assert!(line(&shown, "Type:").ends_with("NodePort"), "{shown}");
    let vip = line(&shown, "ClusterIP:")
        .split_whitespace()
        .last()
        .unwrap()
        .to_owned();
    assert!(vip.starts_with("10.96."), "{shown}");
    assert!(line(&shown, "Selector:").ends_with("app=web"), "{shown}");
    let port = line(&shown, "http ");
    assert!(
        port.contains("80/TCP") && port.contains("http (named)") && port.contains("30080/TCP"),
        "{shown}"
    );
    let endpoints = section(&shown, "Endpoints:");
    let row0: Vec<&str> = line(endpoints, "node1 ").split_whitespace().collect();
    assert_eq!(
        row0,
        ["node1", "web-0", &format!("{web0}:8080"), "http", "yes"],
        "{shown}"
    );
    let row1: Vec<&str> = line(endpoints, "node2 ").split_whitespace().collect();
    assert_eq!(
        row1,
        ["node2", "web-1", &format!("{web1}:9090"), "http", "yes"],
        "{shown}"
    );

    // A node whose daemon is gone keeps its old maps: a Service made since is missing
    // there, and describe says which node and what.
    daemons[1].kill();
    run(
        &lab,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: late}\nspec: {selector: {app: web}, ports: [{port: 81, targetPort: 8080}]}\n",
    );
    let late = until(
        &lab,
        &["describe", "svc", "late"],
        "node1's frontend for late",
        |d| {
            d.lines()
                .any(|l| l.trim_start().starts_with("node1 ") && l.ends_with("match"))
        },
    );
    let node2 = line(section(&late, "Node Frontends:"), "node2 ");
    assert!(
        node2.contains("DIFFER") && node2.contains(":81/TCP is missing"),
        "{late}"
    );

    // A pod: node, address, host interface, programs, Services, policies per direction.
    let pod = run(&lab, &["describe", "pod", "web-0"], "");
    assert!(line(&pod, "Node:").ends_with("node1"), "{pod}");
    assert!(line(&pod, "IP:").ends_with(&web0.to_string()), "{pod}");
    let host_if = twill_api::host_ifname(&twill_api::AttachmentKey {
        container_id: "web-0".into(),
        ifname: "eth0".into(),
    });
    assert!(line(&pod, "Interface:").contains(&host_if), "{pod}");
    let programs = line(&pod, "Programs:");
    assert!(
        programs.contains("attached (twill_from_pod, twill_to_pod pinned"),
        "{pod}"
    );
    let backs = line(&pod, "Backs Services:");
    assert!(
        backs.contains("default/web 80/TCP -> 8080")
            && backs.contains("default/late 81/TCP -> 8080"),
        "{pod}"
    );
    let policies = section(&pod, "NetworkPolicies:");
    assert!(
        line(policies, "Ingress:").ends_with("default/web-in (enforce)"),
        "{pod}"
    );
    assert!(
        line(policies, "Egress:").ends_with("default/web-out (audit)"),
        "{pod}"
    );
    let fqdn = section(&pod, "FQDNPolicies:");
    assert!(
        line(fqdn, "Egress:").ends_with("default/web-names"),
        "{pod}"
    );
    // web-1's node has no daemon now; its pins are still there to read.
    let other = run(&lab, &["describe", "po/web-1"], "");
    assert!(line(&other, "Programs:").contains("attached"), "{other}");
    drop(daemons);
}
