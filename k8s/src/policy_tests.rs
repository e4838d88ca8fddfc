use std::collections::BTreeMap;

use super::*;

const FULL: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web.allow-front
  namespace: shop
  labels: {team: web}
  annotations: {twill.io/enforcement: audit, owner: "someone else"}
  creationTimestamp: null
spec:
  podSelector:
    matchLabels: {app: web}
    matchExpressions:
    - {key: tier, operator: In, values: [front, edge]}
    - {key: track, operator: NotIn, values: [canary]}
    - {key: app.kubernetes.io/name, operator: Exists}
    - {key: legacy, operator: DoesNotExist, values: []}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: front}}
    - namespaceSelector: {matchLabels: {env: prod}}
    - namespaceSelector: {matchLabels: {env: prod}}
      podSelector: {}
    - ipBlock: {cidr: 10.1.2.3/16, except: [10.1.7.0/24, 10.1.8.9/24]}
    ports:
    - {port: 80}
    - {protocol: TCP, port: 8000, endPort: 8080}
    - {protocol: UDP, port: dns}
    - {protocol: SCTP, port: 9999}
    - {protocol: UDP}
  - {}
  egress:
  - to:
    - ipBlock: {cidr: "2001:db8::/32", except: ["2001:db8:1::/48"]}
    ports: [{port: 53, protocol: UDP}]
status: {conditions: []}
"#;

fn sel(labels: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        match_expressions: Vec::new(),
    }
}

fn expr(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelExpression {
    LabelExpression {
        key: key.into(),
        operator,
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

fn tcp(port: Option<PolicyPortNumber>, end_port: Option<u16>) -> PolicyPort {
    PolicyPort {
        protocol: Protocol::Tcp,
        port,
        end_port,
    }
}

fn net(s: &str) -> ipnetwork::IpNetwork {
    s.parse().unwrap()
}

fn only_policy(text: &str) -> NetworkPolicy {
    let (objects, errors) = parse("p.yaml", text);
    assert_eq!(errors, [], "{text}");
    match &objects[..] {
        [
            Parsed {
                object: Object::NetworkPolicy(p),
                ..
            },
        ] => p.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_policy_with_every_field_becomes_the_model() {
    let policy = only_policy(FULL);
    let want = NetworkPolicy {
        namespace: "shop".into(),
        name: "web.allow-front".into(),
        labels: BTreeMap::from([("team".into(), "web".into())]),
        pod_selector: LabelSelector {
            match_labels: BTreeMap::from([("app".into(), "web".into())]),
            match_expressions: vec![
                expr("tier", SelectorOperator::In, &["front", "edge"]),
                expr("track", SelectorOperator::NotIn, &["canary"]),
                expr("app.kubernetes.io/name", SelectorOperator::Exists, &[]),
                expr("legacy", SelectorOperator::DoesNotExist, &[]),
            ],
        },
        ingress_isolation: true,
        egress_isolation: true,
        ingress: vec![
            PolicyRule {
                peers: vec![
                    PolicyPeer::Pods {
                        namespaces: None,
                        pods: sel(&[("app", "front")]),
                    },
                    PolicyPeer::Pods {
                        namespaces: Some(sel(&[("env", "prod")])),
                        pods: LabelSelector::default(),
                    },
                    PolicyPeer::Pods {
                        namespaces: Some(sel(&[("env", "prod")])),
                        pods: LabelSelector::default(),
                    },
                    // Host bits are accepted (as the API does) and dropped.
                    PolicyPeer::IpBlock {
                        cidr: net("10.1.0.0/16"),
                        except: vec![net("10.1.7.0/24"), net("10.1.8.0/24")],
                    },
                ],
                ports: vec![
                    tcp(Some(PolicyPortNumber::Number(80)), None),
                    tcp(Some(PolicyPortNumber::Number(8000)), Some(8080)),
                    PolicyPort {
                        protocol: Protocol::Udp,
                        port: Some(PolicyPortNumber::Named("dns".into())),
                        end_port: None,
                    },
                    PolicyPort {
                        protocol: Protocol::Sctp,
                        port: Some(PolicyPortNumber::Number(9999)),
                        end_port: None,
                    },
                    PolicyPort {
                        protocol: Protocol::Udp,
                        port: None,
                        end_port: None,
                    },
                ],
            },
            PolicyRule {
                peers: vec![],
                ports: vec![],
            },
        ],
        egress: vec![PolicyRule {
            peers: vec![PolicyPeer::IpBlock {
                cidr: net("2001:db8::/32"),
                except: vec![net("2001:db8:1::/48")],
            }],
            ports: vec![PolicyPort {
                protocol: Protocol::Udp,
                port: Some(PolicyPortNumber::Number(53)),
                end_port: None,
            }],
        }],
        enforcement: Enforcement::Audit,
    };
    assert_eq!(policy, want);
    assert_eq!(
        policy.pod_selector.to_string(),
        "app=web,tier in (front,edge),track notin (canary),app.kubernetes.io/name,!legacy"
    );
    assert_eq!(
        Object::NetworkPolicy(policy.clone()).describe(),
        "NetworkPolicy shop/web.allow-front"
    );
    assert_eq!(
        Object::NetworkPolicy(policy.clone()).resource(),
        "networkpolicies"
    );
    let stored = serde_json::to_string(&Object::NetworkPolicy(policy.clone())).unwrap();
    assert_eq!(
        serde_json::from_str::<Object>(&stored).unwrap(),
        Object::NetworkPolicy(policy)
    );
}

fn netpol(spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n{spec}"
    )
}

#[test]
fn policy_types_and_ports_are_defaulted_as_the_api_server_does() {
    let rule = "[{from: [{podSelector: {}}]}]";
    let out = "[{to: [{podSelector: {}}]}]";
    // (spec, ingress isolation, egress isolation, ingress rules, egress rules)
    let cases: Vec<(String, bool, bool, usize, usize)> = vec![
        ("  podSelector: {}\n".into(), true, false, 0, 0),
        (
            format!("  podSelector: {{}}\n  ingress: {rule}\n"),
            true,
            false,
            1,
            0,
        ),
        (
            "  podSelector: {}\n  egress: []\n".into(),
            true,
            false,
            0,
            0,
        ),
        // An empty rule is a rule: Egress is added.
        (
            "  podSelector: {}\n  egress: [{}]\n".into(),
            true,
            true,
            0,
            1,
        ),
        (
            format!("  podSelector: {{}}\n  egress: {out}\n"),
            true,
            true,
            0,
            1,
        ),
        (
            format!("  podSelector: {{}}\n  policyTypes: []\n  egress: {out}\n"),
            true,
            true,
            0,
            1,
        ),
        (
            "  podSelector: {}\n  policyTypes: [Egress]\n".into(),
            false,
            true,
            0,
            0,
        ),
        // Explicit types win; rules of a type not listed are kept (the API keeps them).
        (
            format!("  podSelector: {{}}\n  policyTypes: [Egress]\n  ingress: {rule}\n"),
            false,
            true,
            1,
            0,
        ),
        (
            format!("  podSelector: {{}}\n  policyTypes: [Ingress]\n  egress: {out}\n"),
            true,
            false,
            0,
            1,
        ),
        (
            "  podSelector: {}\n  policyTypes: [Egress, Ingress]\n".into(),
            true,
            true,
            0,
            0,
        ),
    ];
    for (spec, ingress, egress, n_in, n_out) in cases {
        let p = only_policy(&netpol(&spec));
        assert_eq!(
            (
                p.ingress_isolation,
                p.egress_isolation,
                p.ingress.len(),
                p.egress.len()
            ),
            (ingress, egress, n_in, n_out),
            "{spec}"
        );
    }
    let p = only_policy(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]\n",
    );
    assert_eq!(p.namespace, "default");
    assert_eq!(p.enforcement, Enforcement::Enforce);
    assert!(p.pod_selector.is_empty());
    assert_eq!(
        p.ingress[0].ports,
        [tcp(Some(PolicyPortNumber::Number(80)), None)]
    );
    let enforced = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, annotations: {twill.io/enforcement: enforce}}\nspec: {podSelector: {}}\n";
    assert_eq!(only_policy(enforced).enforcement, Enforcement::Enforce);
}

#[test]
fn every_policy_problem_names_the_field() {
    let ps = "  podSelector: {}\n";
    let ingress = |rules: &str| format!("{ps}  ingress: {rules}\n");
    let egress = |rules: &str| format!("{ps}  egress: {rules}\n");
    let cases: Vec<(String, &str)> = vec![
        // Kind, version, strict fields.
        ("apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {}}\n".into(),
         "f.yaml: document 1: apiVersion: NetworkPolicy needs apiVersion networking.k8s.io/v1, not extensions/v1beta1"),
        (netpol(&format!("{ps}  ingres: []\n")),
         "f.yaml: document 1 (NetworkPolicy shop/p): spec.ingres: unknown field `ingres`"),
        (netpol(&ingress("[{from: [{podSelector: {}, serviceAccount: x}]}]")),
         "spec.ingress[0].from[0].serviceAccount: unknown field `serviceAccount`"),
        (netpol(&ingress("[{from: [{podSelector: {matchLabel: {a: b}}}]}]")),
         "spec.ingress[0].from[0].podSelector.matchLabel: unknown field `matchLabel`"),
        (netpol(&ingress("[{from: [{ipBlock: {cidr: 10.0.0.0/8, expect: []}}]}]")),
         "spec.ingress[0].from[0].ipBlock.expect: unknown field `expect`"),
        (netpol(&egress("[{to: [{ipBlock: {except: []}}]}]")),
         "spec.egress[0].to[0].ipBlock: missing field `cidr`"),
        (netpol(&ingress("[{ports: [{port: 80, endport: 90}]}]")),
         "spec.ingress[0].ports[0].endport: unknown field `endport`"),
        (netpol("  podSelector: {}\n  ingress: [{from: []}]\n  status: {}\n"),
         "spec.status: unknown field `status`"),
        // Metadata.
        ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: Allow}\nspec: {podSelector: {}}\n".into(),
         "metadata.name: \"Allow\" is not a DNS subdomain"),
        ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: shop}\nspec: {podSelector: {}}\n".into(),
         "metadata.name: missing"),
        ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a.b}\nspec: {podSelector: {}}\n".into(),
         "metadata.namespace: \"a.b\" is not a DNS label"),
        ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, labels: {\"-x\": y}}\nspec: {podSelector: {}}\n".into(),
         "metadata.labels.-x: label key \"-x\" is invalid"),
        ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, annotations: {twill.io/enforcement: dry-run}}\nspec: {podSelector: {}}\n".into(),
         "metadata.annotations.twill.io/enforcement: \"dry-run\" is not a mode (enforce, audit)"),
        // podSelector is required.
        (netpol("  policyTypes: [Ingress]\n"), "(NetworkPolicy shop/p): spec.podSelector: missing"),
        ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\n".into(),
         "(NetworkPolicy shop/p): spec.podSelector: missing"),
        // Label selectors.
        (netpol("  podSelector: {matchLabels: {\"app/\": web}}\n"),
         "spec.podSelector.matchLabels.app/: label key \"app/\" is invalid"),
        (netpol("  podSelector: {matchLabels: {app: \"w e b\"}}\n"),
         "spec.podSelector.matchLabels.app: label value \"w e b\" is invalid"),
        (netpol("  podSelector: {matchExpressions: [{key: app, operator: In, values: [a]}, {key: app, operator: Equals, values: [a]}]}\n"),
         "spec.podSelector.matchExpressions[1].operator: \"Equals\" is not an operator (In, NotIn, Exists, DoesNotExist)"),
        (netpol("  podSelector: {matchExpressions: [{key: app, operator: in, values: [a]}]}\n"),
         "spec.podSelector.matchExpressions[0].operator: \"in\" is not an operator"),
        (netpol("  podSelector: {matchExpressions: [{key: app, operator: In}]}\n"),
         "spec.podSelector.matchExpressions[0].values: In needs at least one value"),
        (netpol("  podSelector: {matchExpressions: [{key: app, operator: NotIn, values: []}]}\n"),
         "spec.podSelector.matchExpressions[0].values: NotIn needs at least one value"),
        (netpol("  podSelector: {matchExpressions: [{key: app, operator: Exists, values: [a]}]}\n"),
         "spec.podSelector.matchExpressions[0].values: Exists takes no values"),
        (netpol("  podSelector: {matchExpressions: [{key: app, operator: DoesNotExist, values: [a]}]}\n"),
         "spec.podSelector.matchExpressions[0].values: DoesNotExist takes no values"),
        (netpol("  podSelector: {matchExpressions: [{key: \"bad key\", operator: Exists}]}\n"),
         "spec.podSelector.matchExpressions[0].key: label key \"bad key\" is invalid"),
        (netpol("  podSelector: {matchExpressions: [{key: app, operator: In, values: [ok, \"-no\"]}]}\n"),
         "spec.podSelector.matchExpressions[0].values[1]: label value \"-no\" is invalid"),
        (netpol("  podSelector: {matchExpressions: [{operator: Exists}]}\n"),
         "spec.podSelector.matchExpressions[0]: missing field `key`"),
        (netpol(&ingress("[{from: [{namespaceSelector: {matchExpressions: [{key: env, operator: Has}]}}]}]")),
         "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].operator: \"Has\" is not an operator"),
        (netpol(&egress("[{to: [{podSelector: {}}, {podSelector: {matchLabels: {a: \"b c\"}}}]}]")),
         "spec.egress[0].to[1].podSelector.matchLabels.a: label value \"b c\" is invalid"),
        // Peers.
        (netpol(&ingress("[{from: [{podSelector: {}}, {}]}]")),
         "spec.ingress[0].from[1]: a peer needs podSelector, namespaceSelector or ipBlock"),
        (netpol(&ingress("[{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]")),
         "spec.ingress[0].from[0].ipBlock: cannot be combined with podSelector or namespaceSelector in one peer"),
        (netpol(&egress("[{to: [{ipBlock: {cidr: 10.0.0.0/8}, namespaceSelector: {}}]}]")),
         "spec.egress[0].to[0].ipBlock: cannot be combined"),
        // ipBlock.
        (netpol(&ingress("[{from: [{ipBlock: {cidr: 10.0.0.0}}]}]")),
         "spec.ingress[0].from[0].ipBlock.cidr: \"10.0.0.0\" is not a CIDR"),
        (netpol(&ingress("[{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]")),
         "spec.ingress[0].from[0].ipBlock.cidr: \"10.0.0.0/33\" is not a CIDR"),
        (netpol(&ingress("[{from: [{ipBlock: {cidr: 10.0.0.0/255.0.0.0}}]}]")),
         "spec.ingress[0].from[0].ipBlock.cidr: \"10.0.0.0/255.0.0.0\" is not a CIDR"),
        (netpol(&ingress("[{from: [{ipBlock: {cidr: 10.0/8}}]}]")),
         "spec.ingress[0].from[0].ipBlock.cidr: \"10.0/8\" is not a CIDR"),
        (netpol(&ingress("[{from: [{ipBlock: {cidr: 010.0.0.0/8}}]}]")),
         "spec.ingress[0].from[0].ipBlock.cidr: \"010.0.0.0/8\" is not a CIDR"),
        (netpol(&ingress("[{from: [{ipBlock: {cidr: \"\"}}]}]")),
         "spec.ingress[0].from[0].ipBlock.cidr: missing"),
        (netpol(&ingress("[{from: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.0.0/16x]}}]}]")),
         "spec.ingress[0].from[1].ipBlock.except[1]: \"10.2.0.0/16x\" is not a CIDR"),
        (netpol(&ingress("[{from: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 11.0.0.0/16]}}]}]")),
         "spec.ingress[0].from[1].ipBlock.except[1]: 11.0.0.0/16 is not strictly inside cidr 10.0.0.0/8"),
        (netpol(&ingress("[{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]}]")),
         "spec.ingress[0].from[0].ipBlock.except[0]: 10.0.0.0/8 is not strictly inside cidr 10.0.0.0/8"),
        (netpol(&ingress("[{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/8]}}]}]")),
         "spec.ingress[0].from[0].ipBlock.except[0]: 10.0.0.0/8 is not strictly inside cidr 10.0.0.0/16"),
        (netpol(&egress("[{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [\"::/64\"]}}]}]")),
         "spec.egress[0].to[0].ipBlock.except[0]: ::/64 is not strictly inside cidr 10.0.0.0/8"),
        // Ports.
        (netpol(&ingress("[{ports: [{port: 80}, {protocol: ICMP, port: 1}]}]")),
         "spec.ingress[0].ports[1].protocol: \"ICMP\" is not a protocol (TCP, UDP, SCTP)"),
        (netpol(&ingress("[{ports: [{protocol: udp}]}]")),
         "spec.ingress[0].ports[0].protocol: \"udp\" is not a protocol (TCP, UDP, SCTP)"),
        (netpol(&ingress("[{ports: [{port: 0}]}]")),
         "spec.ingress[0].ports[0].port: 0 is not a port (1-65535)"),
        (netpol(&egress("[{ports: [{port: 65536}]}]")),
         "spec.egress[0].ports[0].port: 65536 is not a port (1-65535)"),
        (netpol(&ingress("[{ports: [{port: \"80\"}]}]")),
         "spec.ingress[0].ports[0].port: \"80\" is not a port name (1-15 lower-case letters, digits or '-', with a letter, no '--' and no '-' at either end); a port number is written without quotes"),
        (netpol(&ingress("[{ports: [{port: http--alt}]}]")),
         "spec.ingress[0].ports[0].port: \"http--alt\" is not a port name"),
        (netpol(&ingress("[{ports: [{port: a-very-long-portname}]}]")),
         "spec.ingress[0].ports[0].port: \"a-very-long-portname\" is not a port name"),
        (netpol(&ingress("[{ports: [{port: 1.5}]}]")),
         "spec.ingress[0].ports[0].port: data did not match any variant"),
        (netpol(&ingress("[{ports: [{endPort: 90}]}]")),
         "spec.ingress[0].ports[0].endPort: needs a numeric port to start the range"),
        (netpol(&ingress("[{ports: [{port: http, endPort: 90}]}]")),
         "spec.ingress[0].ports[0].endPort: cannot be used with a named port (http): needs a numeric port"),
        (netpol(&egress("[{ports: [{port: 90, endPort: 80}]}]")),
         "spec.egress[0].ports[0].endPort: 80 is below port 90"),
        (netpol(&egress("[{ports: [{port: 90, endPort: 65536}]}]")),
         "spec.egress[0].ports[0].endPort: 65536 is not a port (1-65535)"),
        // policyTypes.
        (netpol(&format!("{ps}  policyTypes: [Ingress, egress]\n")),
         "spec.policyTypes[1]: \"egress\" is not a policy type (Ingress, Egress)"),
        (netpol(&format!("{ps}  policyTypes: [Egress, Ingress, Egress]\n")),
         "spec.policyTypes[2]: Egress is listed twice"),
        (netpol(&format!("{ps}  policyTypes: Ingress\n")),
         "spec.policyTypes: invalid type: string \"Ingress\", expected a sequence"),
    ];
    for (text, expected) in cases {
        let (objects, errors) = parse("f.yaml", &text);
        assert!(objects.is_empty(), "{text}: parsed {objects:?}");
        let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            all.iter().any(|e| e.contains(expected)),
            "{text}\n  want: {expected}\n  got:  {all:#?}"
        );
    }
}

#[test]
fn every_problem_of_a_policy_is_reported_at_once() {
    let text = netpol(
        "  podSelector: {matchExpressions: [{key: a, operator: Is}]}\n  policyTypes: [Sideways]\n  ingress: [{from: [{}], ports: [{port: 0}]}]\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]}]\n",
    );
    let (objects, errors) = parse("f.yaml", &text);
    assert!(objects.is_empty());
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.podSelector.matchExpressions[0].operator",
            "spec.ingress[0].from[0]",
            "spec.ingress[0].ports[0].port",
            "spec.egress[0].to[0].ipBlock.except[0]",
            "spec.policyTypes[0]",
        ]
    );
}

#[test]
fn sctp_is_taken_by_policies_and_pods_and_refused_by_services_and_slices() {
    let p = only_policy(&netpol(
        "  podSelector: {}\n  ingress: [{ports: [{protocol: SCTP, port: 3868}, {protocol: SCTP, port: diameter}]}]\n",
    ));
    assert_eq!(p.ingress[0].ports[0].protocol, Protocol::Sctp);
    assert_eq!(p.ingress[0].ports[0].to_string(), "3868/SCTP");
    assert_eq!(p.ingress[0].ports[1].to_string(), "diameter/SCTP");

    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: hss}\nspec: {containers: [{name: c, ports: [{name: diameter, containerPort: 3868, protocol: SCTP}]}]}\n";
    let (objects, errors) = parse("pod.yaml", pod);
    assert_eq!(errors, []);
    let Object::Pod(pod) = &objects[0].object else {
        panic!()
    };
    assert_eq!(
        pod.named_ports,
        [NamedPort {
            name: "diameter".into(),
            port: 3868,
            protocol: Protocol::Sctp
        }]
    );
    let bad_pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: hss}\nspec: {containers: [{name: c, ports: [{containerPort: 1, protocol: QUIC}]}]}\n";
    let errors: Vec<String> = parse("pod.yaml", bad_pod)
        .1
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "pod.yaml: document 1 (Pod default/hss): spec.containers[0].ports[0].protocol: \"QUIC\" is not a protocol (TCP, UDP, SCTP)"
        ]
    );

    let refused = [
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: hss}\nspec: {ports: [{port: 3868, protocol: SCTP}]}\n",
            "s.yaml: document 1 (Service default/hss): spec.ports[0].protocol: SCTP is not supported yet (TCP, UDP)",
        ),
        (
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: hss-1, labels: {kubernetes.io/service-name: hss}}\naddressType: IPv4\nendpoints: [{addresses: [\"10.0.0.1\"]}]\nports: [{port: 3868, protocol: SCTP}]\n",
            "s.yaml: document 1 (EndpointSlice default/hss-1): ports[0].protocol: SCTP is not supported yet (TCP, UDP)",
        ),
    ];
    for (text, want) in refused {
        let (objects, errors) = parse("s.yaml", text);
        assert!(objects.is_empty());
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors, [want]);
    }
    assert_eq!(
        serde_json::to_string(&Protocol::Sctp).unwrap(),
        "\"SCTP\"",
        "stored as Kubernetes writes it"
    );
}
