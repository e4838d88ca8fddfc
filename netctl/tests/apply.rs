//! `netctl apply|delete|get services|endpoints|networkpolicies|fqdnpolicies` against a
//! lab's etcd, through the binary.

use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
};

use twill_lab::plan::random_name;
use twill_tests::require_root;

const NETCTL: &str = env!("CARGO_BIN_EXE_netctl");

fn netctl(args: &[&str]) -> Output {
    Command::new(NETCTL)
        .args(args)
        .output()
        .expect("run netctl")
}

fn netctl_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(NETCTL)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = netctl(&["lab", "down", &self.0]);
    }
}

/// The stored objects of `kind` in every namespace, as `get -o json` lists them.
fn items(lab: &str, kind: &str) -> serde_json::Value {
    let out = netctl(&["get", kind, "-A", "--lab", lab, "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["kind"], "List", "{list}");
    list["items"].clone()
}

fn services(lab: &str) -> serde_json::Value {
    items(lab, "services")
}

fn write(dir: &std::path::Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

#[test]
fn apply_allocates_keeps_refuses_whole_files_and_delete_releases() {
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
    let dir = std::env::temp_dir().join(format!("twill-apply-{lab}"));
    std::fs::create_dir_all(&dir).unwrap();

    let good = write(
        &dir,
        "good.yaml",
        r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop}
spec: {ports: [{name: https, port: 443}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-1, namespace: shop, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
endpoints: [{addresses: ["192.0.2.10"], nodeName: node1}, {addresses: ["192.0.2.11"], conditions: {ready: false}}]
ports: [{name: https, port: 8443}]
"#,
    );
    let out = netctl(&["apply", "-f", &good, "--lab", &lab]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).matches(" created").count(), 3, "{}", text(&out));
    let svcs = services(&lab);
    let web = svcs
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metadata"]["name"] == "web")
        .unwrap()
        .clone();
    let ip = web["spec"]["clusterIP"].as_str().unwrap().to_owned();
    assert!(ip.starts_with("10.96."), "{web}");
    let node_port = web["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&node_port));

    // Again: nothing changes, the same addresses stay.
    let out = netctl(&["apply", "-f", &good, "--lab", &lab]);
    assert_eq!(
        text(&out).matches(" unchanged").count(),
        3,
        "{}",
        text(&out)
    );
    assert_eq!(services(&lab), svcs);

    // Endpoints of the selector-less Service come from its slice.
    let eps = netctl(&["get", "endpoints", "-n", "shop", "--lab", &lab]);
    let eps = text(&eps);
    assert!(
        eps.contains("192.0.2.10:8443") && eps.contains("192.0.2.11:8443 (not ready)"),
        "{eps}"
    );

    // A file with one bad document stores nothing, and says where and why.
    let bad = write(
        &dir,
        "bad.yaml",
        r#"
apiVersion: v1
kind: Service
metadata: {name: fine, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: shop}
spec: {ports: [{port: 80, tragetPort: 8080}]}
"#,
    );
    let out = netctl(&["apply", "-f", &bad, "--lab", &lab]);
    assert!(!out.status.success());
    assert!(text(&out).contains("bad.yaml: document 2 (Service shop/broken): spec.ports[0].tragetPort: unknown field `tragetPort`"), "{}", text(&out));
    assert!(text(&out).contains("nothing was stored"));
    assert!(
        !services(&lab)
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["metadata"]["name"] == "fine")
    );

    // A ClusterIP or NodePort that another Service holds is refused, naming the field.
    let clash = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: clash, namespace: shop}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
    );
    let out = netctl_stdin(&["apply", "-f", "-", "--lab", &lab], &clash);
    assert!(!out.status.success());
    assert!(text(&out).contains(&format!("-: document 1 (Service shop/clash): spec.clusterIP: {ip} is already used by Service shop/web")), "{}", text(&out));
    let clash = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: clash, namespace: shop}}\nspec: {{type: NodePort, ports: [{{port: 80, nodePort: {node_port}}}]}}\n"
    );
    let out = netctl_stdin(&["apply", "-f", "-", "--lab", &lab], &clash);
    assert!(
        text(&out).contains(&format!(
            "spec.ports[0].nodePort: {node_port}/TCP is already used by Service shop/web"
        )),
        "{}",
        text(&out)
    );

    // Delete releases the addresses: a new Service gets web's ClusterIP back.
    let out = netctl(&["delete", "-f", &good, "--lab", &lab]);
    assert_eq!(text(&out).matches(" deleted").count(), 3, "{}", text(&out));
    assert_eq!(services(&lab), serde_json::json!([]));
    let again =
        "apiVersion: v1\nkind: Service\nmetadata: {name: next}\nspec: {ports: [{port: 80}]}\n";
    let out = netctl_stdin(&["apply", "-f", "-", "--lab", &lab], again);
    assert!(
        text(&out).contains(&format!("clusterIP {ip}")),
        "{}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn lab_up(lab: &str) -> Down {
    let up = netctl(&[
        "lab",
        "up",
        "--bare",
        "--name",
        lab,
        "--nodes",
        "1",
        "--externals",
        "0",
    ]);
    assert!(up.status.success(), "{}", text(&up));
    Down(lab.to_owned())
}

#[test]
fn a_network_policy_is_stored_and_shown_with_the_pods_it_selects() {
    require_root();
    let lab = random_name();
    let _down = lab_up(&lab);
    let dir = std::env::temp_dir().join(format!("twill-netpol-{lab}"));
    std::fs::create_dir_all(&dir).unwrap();
    let pods: String = ["web-0", "web-1", "web-2", "web-3"]
        .iter()
        .chain(&["db-0"])
        .map(|name| {
            let app = name.split('-').next().unwrap();
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {app}}}}}\nspec: {{containers: [{{name: c, ports: [{{name: diameter, containerPort: 3868, protocol: SCTP}}]}}]}}\n---\n"
            )
        })
        .collect();
    let file = write(
        &dir,
        "policy.yaml",
        &format!(
            r#"{pods}apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-from-front
  namespace: shop
  annotations: {{twill.io/enforcement: audit}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: front}}}}}}, {{ipBlock: {{cidr: 10.0.0.1/8, except: [10.1.0.0/16]}}}}]
    ports: [{{port: 8080, endPort: 8090}}, {{protocol: SCTP, port: diameter}}]
  egress:
  - to: [{{namespaceSelector: {{}}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: db-deny-all, namespace: shop}}
spec:
  podSelector: {{matchExpressions: [{{key: app, operator: In, values: [db]}}]}}
  policyTypes: [Ingress, Egress]
"#
        ),
    );
    let out = netctl(&["apply", "-f", &file, "--lab", &lab]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("networkpolicy/shop/web-from-front created")
            && said.contains("networkpolicy/shop/db-deny-all created"),
        "{said}"
    );

    let table = netctl(&["get", "netpol", "-n", "shop", "--lab", &lab]);
    assert!(table.status.success(), "{}", text(&table));
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        rows,
        [
            vec![
                "NAMESPACE",
                "NAME",
                "POD-SELECTOR",
                "TYPES",
                "MODE",
                "ALLOWED",
                "DENIED",
                "PODS"
            ],
            vec![
                "shop",
                "db-deny-all",
                "app in (db)",
                "Ingress,Egress",
                "enforce",
                "-",
                "-",
                "db-0"
            ],
            vec![
                "shop",
                "web-from-front",
                "app=web",
                "Ingress,Egress",
                "audit",
                "-",
                "-",
                "web-0,web-1,web-2 +1"
            ],
        ],
        "{table}"
    );
    let other = netctl(&["get", "networkpolicies", "-n", "elsewhere", "--lab", &lab]);
    assert_eq!(text(&other).lines().count(), 1, "{}", text(&other));

    // The stored objects, as validated and defaulted.
    let stored = items(&lab, "networkpolicies");
    let web = &stored[1];
    assert_eq!(web["metadata"]["name"], "web-from-front");
    assert_eq!(
        web["metadata"]["annotations"]["twill.io/enforcement"],
        "audit"
    );
    let ingress = &web["spec"]["ingress"][0];
    assert_eq!(ingress["from"][1]["ipBlock"]["cidr"], "10.0.0.0/8");
    assert_eq!(ingress["ports"][0]["endPort"], 8090);
    assert_eq!(ingress["ports"][0]["protocol"], "TCP");
    assert_eq!(ingress["ports"][1]["protocol"], "SCTP");
    let yaml = netctl(&["get", "netpol", "-A", "--lab", &lab, "-o", "yaml"]);
    assert!(
        String::from_utf8_lossy(&yaml.stdout).contains("name: db-deny-all"),
        "{}",
        text(&yaml)
    );

    // Applying again changes nothing; delete removes exactly what the file names.
    let out = netctl(&["apply", "-f", &file, "--lab", &lab]);
    assert_eq!(
        text(&out).matches(" unchanged").count(),
        7,
        "{}",
        text(&out)
    );
    let out = netctl(&["delete", "-f", &file, "--lab", &lab]);
    assert!(
        text(&out).contains("networkpolicy/shop/web-from-front deleted"),
        "{}",
        text(&out)
    );
    assert_eq!(items(&lab, "netpol"), serde_json::json!([]));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_network_policy_stores_nothing_of_its_file() {
    require_root();
    let lab = random_name();
    let _down = lab_up(&lab);
    let dir = std::env::temp_dir().join(format!("twill-netpol-bad-{lab}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = write(
        &dir,
        "mixed.yaml",
        r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector: {}
    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24, 10.1.0.0/24]}
    ports: [{port: "80"}]
"#,
    );
    let out = netctl(&["apply", "-f", &file, "--lab", &lab]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains(&format!(
            "{file}: document 2 (NetworkPolicy shop/web-in): spec.ingress[0].from[1].ipBlock.except[1]: 10.1.0.0/24 is not strictly inside cidr 10.0.0.0/16"
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "{file}: document 2 (NetworkPolicy shop/web-in): spec.ingress[0].ports[0].port: \"80\" is not a port name"
        )),
        "{said}"
    );
    assert!(said.contains("nothing was stored (2 problem(s))"), "{said}");
    assert_eq!(services(&lab), serde_json::json!([]));
    assert_eq!(items(&lab, "netpol"), serde_json::json!([]));
    let _ = std::fs::remove_dir_all(&dir);
}

fn table_rows(out: &Output) -> Vec<Vec<String>> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

#[test]
fn an_fqdn_policy_is_stored_and_listed_and_a_named_port_stores_nothing() {
    require_root();
    let lab = random_name();
    let _down = lab_up(&lab);
    let dir = std::env::temp_dir().join(format!("twill-fqdnpol-{lab}"));
    std::fs::create_dir_all(&dir).unwrap();
    let good = write(
        &dir,
        "fqdn.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: shop, labels: {app: client}}
spec: {containers: [{name: c}]}
---
apiVersion: policy.twill.io/v1alpha1
kind: FQDNPolicy
metadata:
  name: allow-example
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: client}
  egress:
  - toFQDNs:
    - matchName: Allowed.Example.
    - matchPattern: "*.example.org"
    ports:
    - {port: 443, endPort: 445, protocol: TCP}
  - toFQDNs: [{matchName: api.example.net}, {matchName: cdn.example.net}]
---
apiVersion: policy.twill.io/v1alpha1
kind: FQDNPolicy
metadata: {name: deny-outside, namespace: shop}
spec:
  podSelector: {}
  egress: []
"#,
    );
    let out = netctl(&["apply", "-f", &good, "--lab", &lab]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("fqdnpolicy/shop/allow-example created")
            && said.contains("fqdnpolicy/shop/deny-outside created"),
        "{said}"
    );

    let table = netctl(&["get", "fqdnpolicies", "-n", "shop", "--lab", &lab]);
    assert!(table.status.success(), "{}", text(&table));
    assert_eq!(
        table_rows(&table),
        [
            vec!["NAMESPACE", "NAME", "POD-SELECTOR", "NAMES"],
            vec![
                "shop",
                "allow-example",
                "app=client",
                "allowed.example,*.example.org,api.example.net +1"
            ],
            vec!["shop", "deny-outside", "<all>", "<none>"],
        ],
        "{}",
        text(&table)
    );
    let wide = netctl(&["get", "fqdnpol", "-n", "shop", "--lab", &lab, "-o", "wide"]);
    assert_eq!(
        table_rows(&wide)[1][4..],
        ["2", "any", "client-0"],
        "{}",
        text(&wide)
    );
    let other = netctl(&["get", "fqdnpol", "-n", "elsewhere", "--lab", &lab]);
    assert_eq!(text(&other).lines().count(), 1, "{}", text(&other));

    // The stored objects, as validated and normalized.
    let stored = items(&lab, "fqdnpol");
    let allow = &stored[0];
    assert_eq!(allow["metadata"]["name"], "allow-example");
    assert_eq!(
        allow["spec"]["egress"][0]["toFQDNs"],
        serde_json::json!([{"matchName": "allowed.example"}, {"matchPattern": "*.example.org"}])
    );
    assert_eq!(
        allow["spec"]["egress"][0]["ports"],
        serde_json::json!([{"protocol": "TCP", "port": 443, "endPort": 445}])
    );
    assert_eq!(stored[1]["spec"]["egress"], serde_json::json!([]));

    // A named port is refused, naming the field; nothing of that file is stored.
    let bad = write(
        &dir,
        "bad.yaml",
        r#"
apiVersion: policy.twill.io/v1alpha1
kind: FQDNPolicy
metadata: {name: fine, namespace: shop}
spec: {podSelector: {}, egress: [{toFQDNs: [{matchName: fine.example}]}]}
---
apiVersion: policy.twill.io/v1alpha1
kind: FQDNPolicy
metadata: {name: named-port, namespace: shop}
spec:
  podSelector: {}
  egress:
  - toFQDNs: [{matchPattern: "*.example.com"}]
    ports: [{port: 443}, {port: https}]
"#,
    );
    let out = netctl(&["apply", "-f", &bad, "--lab", &lab]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains(&format!(
            "{bad}: document 2 (FQDNPolicy shop/named-port): spec.egress[0].ports[1].port: named ports are not allowed in an FQDNPolicy: an outside host has no pod ports"
        )),
        "{said}"
    );
    assert!(said.contains("nothing was stored (1 problem(s))"), "{said}");
    let names: Vec<serde_json::Value> = items(&lab, "fqdnpol")
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].clone())
        .collect();
    assert_eq!(names, ["allow-example", "deny-outside"]);

    // Applying again changes nothing; delete removes exactly what the file names.
    let out = netctl(&["apply", "-f", &good, "--lab", &lab]);
    assert_eq!(
        text(&out).matches(" unchanged").count(),
        3,
        "{}",
        text(&out)
    );
    let out = netctl(&["delete", "-f", &good, "--lab", &lab]);
    assert!(
        text(&out).contains("fqdnpolicy/shop/allow-example deleted")
            && text(&out).contains("fqdnpolicy/shop/deny-outside deleted"),
        "{}",
        text(&out)
    );
    assert_eq!(items(&lab, "fqdnpolicies"), serde_json::json!([]));
    let _ = std::fs::remove_dir_all(&dir);
}
