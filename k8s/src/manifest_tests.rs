//! `manifest`: every object twill parses comes back unchanged through its YAML, defaults
//! and allocations included; lists parse as their items; `-l` selectors parse.

use std::{collections::BTreeMap, net::Ipv4Addr, str::FromStr};

use super::*;
use crate::{
    endpoints::PodPlacement,
    manifest::{list, pod_to_wire, to_wire, to_yaml},
};

/// Every kind, with the variants each has: written as a user would, relying on defaults.
const ALL: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: bare}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web, tier: front}}
spec:
  hostname: web-0
  subdomain: web
  containers:
  - name: nginx
    image: nginx:1.27
    ports:
    - {name: http, containerPort: 8080}
    - {containerPort: 9000}
  - name: side
    ports:
    - {name: dns, containerPort: 5353, protocol: UDP}
    - {name: sctp, containerPort: 7000, protocol: SCTP}
---
apiVersion: v1
kind: Pod
metadata: {name: bare}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  type: NodePort
  selector: {app: web}
  sessionAffinity: ClientIP
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, protocol: UDP, targetPort: "5353", nodePort: 30053}
---
apiVersion: v1
kind: Service
metadata: {name: fixed}
spec:
  clusterIP: 10.96.0.20
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{port: 443}]
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: shop}
spec: {clusterIP: None, selector: {app: db}}
---
apiVersion: v1
kind: Service
metadata: {name: alias, namespace: shop}
spec: {type: ExternalName, externalName: Example.ORG.}
---
apiVersion: v1
kind: Service
metadata: {name: external, namespace: shop}
spec: {ports: [{name: https, port: 443, targetPort: 8443}]}
---
apiVersion: v1
kind: Service
metadata: {name: empty-selector}
spec: {selector: {}, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: external-1
  namespace: shop
  labels: {kubernetes.io/service-name: external}
addressType: IPv4
endpoints:
- addresses: ["192.0.2.10", "192.0.2.12"]
  conditions: {ready: true}
  nodeName: node1
  hostname: ext-a
- addresses: ["192.0.2.11"]
  conditions: {ready: false, terminating: true}
- addresses: ["192.0.2.13"]
ports:
- {name: https, port: 8443}
- {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: none, labels: {kubernetes.io/service-name: x}}
addressType: IPv4
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-in
  namespace: shop
  labels: {owner: a}
  annotations: {twill.io/enforcement: audit}
spec:
  podSelector:
    matchLabels: {app: web}
    matchExpressions:
    - {key: tier, operator: In, values: [front, back]}
    - {key: legacy, operator: DoesNotExist}
    - {key: zone, operator: NotIn, values: [b]}
    - {key: canary, operator: Exists}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: front}}
    - namespaceSelector: {matchLabels: {team: a}}
    - namespaceSelector: {}
      podSelector: {matchLabels: {app: mon}}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    - ipBlock: {cidr: "2001:db8::/32"}
    ports:
    - {port: 8080, endPort: 8090}
    - {port: http}
    - {protocol: SCTP}
  - {}
  egress:
  - to: [{podSelector: {}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec: {podSelector: {}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-only, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Egress]
  ingress: [{from: [{podSelector: {}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-egress, namespace: shop}
spec:
  podSelector: {}
  egress: [{ports: [{port: 53, protocol: UDP}]}]
---
apiVersion: policy.twill.io/v1alpha1
kind: FQDNPolicy
metadata: {name: allow-example, namespace: shop, labels: {owner: b}}
spec:
  podSelector: {matchLabels: {app: client}}
  egress:
  - toFQDNs: [{matchName: Allowed.Example.}, {matchPattern: "*.example.org"}]
    ports:
    - {port: 443, endPort: 445, protocol: TCP}
    - {port: 80}
    - {protocol: UDP}
    - {port: 1, endPort: 65535}
  - toFQDNs: [{matchPattern: "*"}]
---
apiVersion: policy.twill.io/v1alpha1
kind: FQDNPolicy
metadata: {name: deny-outside, namespace: shop}
spec: {podSelector: {}, egress: []}
"#;

fn objects(text: &str) -> Vec<Object> {
    let (parsed, errors) = parse("all.yaml", text);
    assert_eq!(errors, [], "{text}");
    parsed.into_iter().map(|p| p.object).collect()
}

/// What `netctl apply` stores: ClusterIPs and NodePorts allocated.
fn allocated(objects: Vec<Object>) -> Vec<Object> {
    let mut next_ip = 1;
    let mut next_port = 30000;
    objects
        .into_iter()
        .map(|o| match o {
            Object::Service(mut s) => {
                if s.cluster_ip == ClusterIp::Auto {
                    s.cluster_ip = ClusterIp::Fixed(Ipv4Addr::new(10, 96, 0, next_ip));
                    next_ip += 1;
                }
                if s.service_type == ServiceType::NodePort {
                    for p in &mut s.ports {
                        p.node_port.get_or_insert_with(|| {
                            next_port += 1;
                            next_port
                        });
                    }
                }
                Object::Service(s)
            }
            o => o,
        })
        .collect()
}

fn reparse(yaml: &str) -> Object {
    let (parsed, errors) = parse("out.yaml", yaml);
    assert_eq!(errors, [], "{yaml}");
    assert_eq!(parsed.len(), 1, "{yaml}");
    parsed.into_iter().next().expect("one object").object
}

#[test]
fn every_object_comes_back_unchanged_through_its_yaml() {
    let all = allocated(objects(ALL));
    assert_eq!(all.len(), 18);
    for o in &all {
        let yaml = to_yaml(o);
        assert_eq!(&reparse(&yaml), o, "{yaml}");
        // JSON too (what `-o json` prints; JSON is YAML).
        let json = serde_json::to_string_pretty(&to_wire(o)).unwrap();
        assert_eq!(&reparse(&json), o, "{json}");
    }
    // Before allocation too (nothing stored is like that, but the inverse holds).
    for o in objects(ALL) {
        assert_eq!(reparse(&to_yaml(&o)), o);
    }
}

#[test]
fn a_list_parses_as_its_items_in_order() {
    let all = allocated(objects(ALL));
    let yaml = serde_yaml_ng::to_string(&list(all.iter().map(to_wire).collect())).expect("yaml");
    let (parsed, errors) = parse("list.yaml", &yaml);
    assert_eq!(errors, []);
    assert_eq!(
        parsed.into_iter().map(|p| p.object).collect::<Vec<_>>(),
        all
    );
    assert!(yaml.starts_with("apiVersion: v1\nitems:\n"), "{yaml}");
    assert!(
        yaml.ends_with("kind: List\nmetadata:\n  resourceVersion: ''\n"),
        "{yaml}"
    );
    let (parsed, errors) = parse(
        "empty.yaml",
        &serde_yaml_ng::to_string(&list(vec![])).unwrap(),
    );
    assert_eq!((parsed, errors), (vec![], vec![]));
}

#[test]
fn a_bad_item_of_a_list_is_named_by_its_index() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: ok}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: web}\n  spec: {ports: [{port: 0}]}\n";
    let (parsed, errors) = parse("l.yaml", text);
    assert_eq!(parsed.len(), 1);
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].to_string(),
        "l.yaml: document 1 (Service default/web): items[1].spec.ports[0].port: 0 is not a port (1-65535)"
    );
    let (_, errors) = parse("l.yaml", "apiVersion: v2\nkind: List\nitems: []\n");
    assert_eq!(errors[0].field, "apiVersion");
    let (_, errors) = parse("l.yaml", "apiVersion: v1\nkind: List\nitemz: []\n");
    assert_eq!(errors[0].field, "itemz");
    let (_, errors) = parse("l.yaml", "apiVersion: v1\nkind: List\nitems: {a: 1}\n");
    assert_eq!(errors[0].field, "items");
}

/// The value at `path` (`spec.ports.0.nodePort`) of `v`.
fn at<'a>(v: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    path.split('.').fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[k],
    })
}

fn find<'a>(all: &'a [Object], kind: &str, name: &str) -> &'a Object {
    all.iter()
        .find(|o| o.kind() == kind && o.name() == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn defaults_and_allocations_are_written_as_the_api_server_writes_them() {
    let all = allocated(objects(ALL));
    let web = to_wire(find(&all, "Service", "web"));
    assert_eq!(at(&web, "apiVersion"), "v1");
    assert_eq!(at(&web, "kind"), "Service");
    assert_eq!(at(&web, "metadata.namespace"), "shop");
    assert_eq!(at(&web, "spec.type"), "NodePort");
    assert_eq!(at(&web, "spec.clusterIP"), "10.96.0.1");
    assert_eq!(
        at(&web, "spec.clusterIPs"),
        &serde_json::json!(["10.96.0.1"])
    );
    assert_eq!(at(&web, "spec.ports.0.nodePort"), 30001);
    assert_eq!(at(&web, "spec.ports.0.protocol"), "TCP");
    assert_eq!(at(&web, "spec.ports.0.targetPort"), "http");
    assert_eq!(at(&web, "spec.ports.1.targetPort"), 5353);
    assert_eq!(at(&web, "spec.ports.1.nodePort"), 30053);
    assert_eq!(
        at(&web, "spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
        DEFAULT_AFFINITY_TIMEOUT
    );
    let fixed = to_wire(find(&all, "Service", "fixed"));
    assert_eq!(at(&fixed, "metadata.namespace"), "default");
    assert_eq!(at(&fixed, "spec.type"), "ClusterIP");
    assert_eq!(at(&fixed, "spec.ports.0.targetPort"), 443);
    assert!(at(&fixed, "spec.ports.0").get("nodePort").is_none());
    assert!(at(&fixed, "spec").get("externalTrafficPolicy").is_none());
    let headless = to_wire(find(&all, "Service", "headless"));
    assert_eq!(at(&headless, "spec.clusterIP"), "None");
    assert!(at(&headless, "spec").get("ports").is_none());
    let alias = to_wire(find(&all, "Service", "alias"));
    assert_eq!(at(&alias, "spec.externalName"), "example.org");
    assert!(at(&alias, "spec").get("clusterIP").is_none());

    let slice = to_wire(find(&all, "EndpointSlice", "external-1"));
    assert_eq!(
        at(&slice, "endpoints.2.conditions"),
        &serde_json::json!({"ready": true, "serving": true, "terminating": false})
    );
    assert_eq!(at(&slice, "endpoints.1.conditions.serving"), false);
    assert_eq!(at(&slice, "ports.1.protocol"), "UDP");

    let policy = to_wire(find(&all, "NetworkPolicy", "default-egress"));
    assert_eq!(
        at(&policy, "spec.policyTypes"),
        &serde_json::json!(["Ingress", "Egress"])
    );
    let deny = to_wire(find(&all, "NetworkPolicy", "deny-all"));
    assert_eq!(
        at(&deny, "spec"),
        &serde_json::json!({"podSelector": {}, "policyTypes": ["Ingress"]})
    );
    let audit = to_wire(find(&all, "NetworkPolicy", "web-in"));
    assert_eq!(
        at(&audit, "metadata.annotations")["twill.io/enforcement"],
        "audit"
    );
    assert_eq!(at(&audit, "spec.ingress.0.ports.1.protocol"), "TCP");
    assert_eq!(at(&audit, "spec.ingress.1"), &serde_json::json!({}));

    let fqdn = to_wire(find(&all, "FQDNPolicy", "allow-example"));
    assert_eq!(at(&fqdn, "metadata.labels.owner"), "b");
    assert_eq!(
        at(&fqdn, "spec.egress.0.toFQDNs"),
        &serde_json::json!([{"matchName": "allowed.example"}, {"matchPattern": "*.example.org"}])
    );
    assert_eq!(
        at(&fqdn, "spec.egress.0.ports"),
        &serde_json::json!([
            {"protocol": "TCP", "port": 443, "endPort": 445},
            {"protocol": "TCP", "port": 80},
            {"protocol": "UDP"},
            {"protocol": "TCP"},
        ])
    );
    let deny = to_wire(find(&all, "FQDNPolicy", "deny-outside"));
    assert_eq!(at(&deny, "spec.egress"), &serde_json::json!([]));
}

#[test]
fn a_pod_shows_its_node_and_address_and_its_named_ports() {
    let all = objects(ALL);
    let Object::Pod(pod) = find(&all, "Pod", "web-0") else {
        panic!()
    };
    let placed = PodPlacement {
        ip: Ipv4Addr::new(10, 244, 1, 5),
        node: "node2".into(),
    };
    let wire = pod_to_wire(pod, Some(&placed));
    assert_eq!(at(&wire, "spec.nodeName"), "node2");
    assert_eq!(at(&wire, "status.podIP"), "10.244.1.5");
    assert_eq!(at(&wire, "spec.hostname"), "web-0");
    assert_eq!(
        at(&wire, "spec.containers"),
        &serde_json::json!([{"name": "web-0", "ports": [
            {"name": "http", "containerPort": 8080, "protocol": "TCP"},
            {"name": "dns", "containerPort": 5353, "protocol": "UDP"},
            {"name": "sctp", "containerPort": 7000, "protocol": "SCTP"},
        ]}])
    );
    let yaml = serde_yaml_ng::to_string(&wire).unwrap();
    assert_eq!(reparse(&yaml), Object::Pod(pod.clone()), "{yaml}");
    assert!(pod_to_wire(pod, None).get("status").is_none());
}

#[test]
fn keys_come_out_in_alphabetical_order_as_kubectl_prints_them() {
    let all = allocated(objects(ALL));
    let yaml = to_yaml(find(&all, "Service", "fixed"));
    assert_eq!(
        yaml,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: fixed\n  namespace: default\nspec:\n  clusterIP: 10.96.0.20\n  clusterIPs:\n  - 10.96.0.20\n  ports:\n  - port: 443\n    protocol: TCP\n    targetPort: 443\n  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 60\n  type: ClusterIP\n"
    );
}

fn selector(text: &str) -> LabelSelector {
    LabelSelector::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn label_selectors_parse_in_the_kubectl_form() {
    let web = labels(&[("app", "web"), ("tier", "front")]);
    let db = labels(&[("app", "db")]);
    let none = labels(&[]);
    for (text, matches) in [
        ("", [true, true, true]),
        ("app=web", [true, false, false]),
        ("app==web", [true, false, false]),
        ("app!=web", [false, true, true]),
        ("tier", [true, false, false]),
        ("!tier", [false, true, true]),
        ("app=web,tier=front", [true, false, false]),
        ("app=web,tier=back", [false, false, false]),
        ("app=web,app=db", [false, false, false]),
        ("app in (web, db)", [true, true, false]),
        ("app notin (web),app", [false, true, false]),
        (" app = web , ! legacy ", [true, false, false]),
    ] {
        let s = selector(text);
        assert_eq!(
            [s.matches(&web), s.matches(&db), s.matches(&none)],
            matches,
            "{text:?}"
        );
    }
    for bad in [
        "app=web,",
        "app in (web",
        "app)",
        "app in web",
        "app>1",
        "-app",
        "app=has space",
        "app nearly (a)",
    ] {
        assert!(LabelSelector::from_str(bad).is_err(), "{bad:?}");
    }
    // The Display form parses back to the same selector.
    for text in [
        "app=web,tier in (a,b),zone notin (c),canary,!legacy",
        "<all>",
    ] {
        let s = selector(text);
        assert_eq!(selector(&s.to_string()), s, "{text}");
        assert_eq!(s.to_string(), text);
    }
}
