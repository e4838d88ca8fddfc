use std::collections::BTreeMap;

use super::*;

const FULL: &str = r#"
apiVersion: policy.twill.io/v1alpha1
kind: FQDNPolicy
metadata:
  name: allow-example
  namespace: shop
  labels: {team: web}
  annotations: {owner: someone}
spec:
  podSelector:
    matchLabels: {app: client}
    matchExpressions: [{key: tier, operator: In, values: [front]}]
  egress:
  - toFQDNs:
    - matchName: Allowed.Example.
    - matchPattern: "*.example.org"
    ports:
    - port: 443
      endPort: 445
      protocol: TCP
    - port: 53
      protocol: UDP
    - {port: 3868, protocol: SCTP}
    - {protocol: UDP}
    - {port: 80}
  - toFQDNs: [{matchPattern: "api-*.EXAMPLE.net"}]
status: {}
"#;

fn only_fqdn(text: &str) -> FqdnPolicy {
    let (objects, errors) = parse("f.yaml", text);
    assert_eq!(errors, [], "{text}");
    match &objects[..] {
        [
            Parsed {
                object: Object::FqdnPolicy(p),
                ..
            },
        ] => p.clone(),
        other => panic!("{other:?}"),
    }
}

fn port(protocol: Protocol, port: u16, end_port: u16) -> FqdnPort {
    FqdnPort {
        protocol,
        port,
        end_port,
    }
}

#[test]
fn a_valid_fqdn_policy_becomes_the_model() {
    let policy = only_fqdn(FULL);
    let want = FqdnPolicy {
        namespace: "shop".into(),
        name: "allow-example".into(),
        labels: BTreeMap::from([("team".into(), "web".into())]),
        pod_selector: LabelSelector {
            match_labels: BTreeMap::from([("app".into(), "client".into())]),
            match_expressions: vec![LabelExpression {
                key: "tier".into(),
                operator: SelectorOperator::In,
                values: vec!["front".into()],
            }],
        },
        egress: vec![
            FqdnRule {
                to_fqdns: vec![
                    FqdnSelector::Name("allowed.example".into()),
                    FqdnSelector::Pattern("*.example.org".into()),
                ],
                ports: vec![
                    port(Protocol::Tcp, 443, 445),
                    port(Protocol::Udp, 53, 53),
                    port(Protocol::Sctp, 3868, 3868),
                    // No port: every port of the protocol.
                    port(Protocol::Udp, 1, 65535),
                    port(Protocol::Tcp, 80, 80),
                ],
            },
            FqdnRule {
                to_fqdns: vec![FqdnSelector::Pattern("api-*.example.net".into())],
                ports: vec![],
            },
        ],
    };
    assert_eq!(policy, want);
    assert!(!policy.egress[0].any_port());
    assert!(policy.egress[1].any_port());
    assert_eq!(policy.egress[0].ports[0].to_string(), "443-445/TCP");
    assert_eq!(policy.egress[0].ports[1].to_string(), "53/UDP");
    let object = Object::FqdnPolicy(policy.clone());
    assert_eq!(object.kind(), "FQDNPolicy");
    assert_eq!(object.resource(), "fqdnpolicies");
    assert_eq!(object.namespace(), Some("shop"));
    assert_eq!(object.name(), "allow-example");
    assert_eq!(object.describe(), "FQDNPolicy shop/allow-example");

    // Stored in etcd as JSON, like the other kinds.
    let stored = serde_json::to_string(&object).unwrap();
    assert!(stored.starts_with(r#"{"kind":"FQDNPolicy","#), "{stored}");
    assert!(
        stored.contains(r#"{"name":"allowed.example"},{"pattern":"*.example.org"}"#),
        "{stored}"
    );
    assert_eq!(serde_json::from_str::<Object>(&stored).unwrap(), object);
}

fn fqdnpol(spec: &str) -> String {
    format!(
        "apiVersion: policy.twill.io/v1alpha1\nkind: FQDNPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n{spec}"
    )
}

#[test]
fn an_fqdn_policy_without_rules_or_namespace_is_valid() {
    let none = only_fqdn(
        "apiVersion: policy.twill.io/v1alpha1\nkind: FQDNPolicy\nmetadata: {name: p}\nspec: {podSelector: {}}\n",
    );
    assert_eq!(none.namespace, "default");
    assert!(none.pod_selector.is_empty());
    assert_eq!(none.egress, []);
    assert_eq!(
        only_fqdn(&fqdnpol("  podSelector: {}\n  egress: []\n")),
        none_in_shop()
    );
    let empty_ports = only_fqdn(&fqdnpol(
        "  podSelector: {}\n  egress: [{toFQDNs: [{matchPattern: \"*\"}], ports: []}]\n",
    ));
    assert!(empty_ports.egress[0].any_port());
    assert_eq!(
        empty_ports.egress[0].to_fqdns,
        [FqdnSelector::Pattern("*".into())]
    );
}

fn none_in_shop() -> FqdnPolicy {
    FqdnPolicy {
        namespace: "shop".into(),
        name: "p".into(),
        labels: BTreeMap::new(),
        pod_selector: LabelSelector::default(),
        egress: vec![],
    }
}

#[test]
fn every_fqdn_policy_problem_names_the_field() {
    let ps = "  podSelector: {}\n";
    let egress = |rules: &str| fqdnpol(&format!("{ps}  egress: {rules}\n"));
    let to = |names: &str| egress(&format!("[{{toFQDNs: {names}}}]"));
    let ports = |ports: &str| {
        egress(&format!(
            "[{{toFQDNs: [{{matchName: a.example}}], ports: {ports}}}]"
        ))
    };
    let long_label = "a".repeat(64);
    let long_name = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(62)
    );
    let cases: Vec<(String, String)> = vec![
        // Kind, version, strict fields.
        ("apiVersion: policy.twill.io/v1\nkind: FQDNPolicy\nmetadata: {name: p}\nspec: {podSelector: {}}\n".into(),
         "f.yaml: document 1: apiVersion: FQDNPolicy needs apiVersion policy.twill.io/v1alpha1, not policy.twill.io/v1".into()),
        ("apiVersion: policy.twill.io/v1alpha1\nkind: FqdnPolicy\nmetadata: {name: p}\n".into(),
         "kind: FqdnPolicy is not a kind twill handles (Namespace, Pod, Service, EndpointSlice, NetworkPolicy, FQDNPolicy, BGPPeer)".into()),
        (fqdnpol(&format!("{ps}  ingress: []\n")),
         "f.yaml: document 1 (FQDNPolicy shop/p): spec.ingress: unknown field `ingress`".into()),
        (egress("[{toFQDNs: [{matchName: a.example}], to: []}]"),
         "spec.egress[0].to: unknown field `to`".into()),
        (egress("[{toFqdns: [{matchName: a.example}]}]"),
         "spec.egress[0].toFqdns: unknown field `toFqdns`".into()),
        (to("[{matchName: a.example, matchRegex: a}]"),
         "spec.egress[0].toFQDNs[0].matchRegex: unknown field `matchRegex`".into()),
        (ports("[{port: 443, endport: 445}]"),
         "spec.egress[0].ports[0].endport: unknown field `endport`".into()),
        (to("[{matchName: [a.example]}]"),
         "spec.egress[0].toFQDNs[0].matchName: invalid type: sequence, expected a string".into()),
        (fqdnpol(&format!("{ps}  egress: {{toFQDNs: []}}\n")),
         "spec.egress: invalid type: map, expected a sequence".into()),
        // Metadata, as for a NetworkPolicy.
        ("apiVersion: policy.twill.io/v1alpha1\nkind: FQDNPolicy\nmetadata: {name: Allow}\nspec: {podSelector: {}}\n".into(),
         "metadata.name: \"Allow\" is not a DNS subdomain".into()),
        ("apiVersion: policy.twill.io/v1alpha1\nkind: FQDNPolicy\nmetadata: {namespace: shop}\nspec: {podSelector: {}}\n".into(),
         "metadata.name: missing".into()),
        ("apiVersion: policy.twill.io/v1alpha1\nkind: FQDNPolicy\nmetadata: {name: p, namespace: a.b}\nspec: {podSelector: {}}\n".into(),
         "metadata.namespace: \"a.b\" is not a DNS label".into()),
        ("apiVersion: policy.twill.io/v1alpha1\nkind: FQDNPolicy\nmetadata: {name: p, labels: {\"-x\": y}}\nspec: {podSelector: {}}\n".into(),
         "metadata.labels.-x: label key \"-x\" is invalid".into()),
        ("apiVersion: policy.twill.io/v1alpha1\nkind: FQDNPolicy\nmetadata: {name: p, uid: x}\nspec: {podSelector: {}}\n".into(),
         "metadata.uid: unknown field `uid`".into()),
        // podSelector is required and checked as a label selector.
        (fqdnpol("  egress: []\n"),
         "(FQDNPolicy shop/p): spec.podSelector: missing ({} selects every pod of the namespace)".into()),
        ("apiVersion: policy.twill.io/v1alpha1\nkind: FQDNPolicy\nmetadata: {name: p, namespace: shop}\n".into(),
         "(FQDNPolicy shop/p): spec.podSelector: missing".into()),
        (fqdnpol("  podSelector: {matchLabels: {app: \"w e b\"}}\n"),
         "spec.podSelector.matchLabels.app: label value \"w e b\" is invalid".into()),
        (fqdnpol("  podSelector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}\n"),
         "spec.podSelector.matchExpressions[0].operator: \"Equals\" is not an operator (In, NotIn, Exists, DoesNotExist)".into()),
        (fqdnpol("  podSelector: {matchExpressions: [{key: app, operator: Exists, values: [a]}]}\n"),
         "spec.podSelector.matchExpressions[0].values: Exists takes no values".into()),
        // toFQDNs: required, non-empty, one of matchName / matchPattern per entry.
        (egress("[{ports: [{port: 443}]}]"),
         "spec.egress[0].toFQDNs: missing (a list of matchName or matchPattern entries)".into()),
        (egress("[{toFQDNs: [{matchName: a.example}]}, {toFQDNs: []}]"),
         "spec.egress[1].toFQDNs: needs at least one matchName or matchPattern".into()),
        (to("[{matchName: a.example}, {matchName: b.example, matchPattern: \"*.example\"}]"),
         "spec.egress[0].toFQDNs[1]: has both matchName and matchPattern (one of them)".into()),
        (to("[{}]"),
         "spec.egress[0].toFQDNs[0]: needs matchName or matchPattern".into()),
        // Names.
        (to("[{matchName: \"\"}]"),
         "spec.egress[0].toFQDNs[0].matchName: empty (a name such as example.org)".into()),
        (to("[{matchName: .}]"),
         "spec.egress[0].toFQDNs[0].matchName: empty".into()),
        (to("[{matchName: \"*.example.org\"}]"),
         "spec.egress[0].toFQDNs[0].matchName: \"*.example.org\" has '*': a name takes only letters, digits, '-', '_' and '.'".into()),
        (to("[{matchName: \"a b.example\"}]"),
         "spec.egress[0].toFQDNs[0].matchName: \"a b.example\" has ' '".into()),
        (to("[{matchName: \"bücher.example\"}]"),
         "spec.egress[0].toFQDNs[0].matchName: \"bücher.example\" has 'ü'".into()),
        (to("[{matchName: a..example}]"),
         "spec.egress[0].toFQDNs[0].matchName: \"a..example\" has an empty label (a leading dot or \"..\")".into()),
        (to("[{matchName: .a.example}]"),
         "spec.egress[0].toFQDNs[0].matchName: \".a.example\" has an empty label".into()),
        (to("[{matchName: a.example..}]"),
         "spec.egress[0].toFQDNs[0].matchName: \"a.example..\" has an empty label".into()),
        (to(&format!("[{{matchName: {long_label}.example}}]")),
         format!("spec.egress[0].toFQDNs[0].matchName: \"{long_label}.example\" has a label longer than 63 characters (64)")),
        (to(&format!("[{{matchName: {long_name}}}]")),
         "is longer than 253 characters (254)".into()),
        // Patterns.
        (to("[{matchPattern: \"*.exam?le.org\"}]"),
         "spec.egress[0].toFQDNs[0].matchPattern: \"*.exam?le.org\" has '?': a pattern takes only letters, digits, '-', '_', '*' and '.'".into()),
        (to("[{matchName: ok.example}, {matchPattern: \"*..example\"}]"),
         "spec.egress[0].toFQDNs[1].matchPattern: \"*..example\" has an empty label".into()),
        (to("[{matchPattern: \"\"}]"),
         "spec.egress[0].toFQDNs[0].matchPattern: empty".into()),
        (to(&format!("[{{matchPattern: \"*{long_label}.example\"}}]")),
         format!("spec.egress[0].toFQDNs[0].matchPattern: \"*{long_label}.example\" has a label longer than 63 characters (65)")),
        // Ports.
        (ports("[{port: http}]"),
         "spec.egress[0].ports[0].port: named ports are not allowed in an FQDNPolicy: an outside host has no pod ports".into()),
        (ports("[{port: \"443\"}]"),
         "spec.egress[0].ports[0].port: \"443\" is a string: a port number is written without quotes".into()),
        (ports("[{port: 443}, {port: 0}]"),
         "spec.egress[0].ports[1].port: 0 is not a port (1-65535)".into()),
        (ports("[{port: 65536}]"),
         "spec.egress[0].ports[0].port: 65536 is not a port (1-65535)".into()),
        (ports("[{port: 1.5}]"),
         "spec.egress[0].ports[0].port: data did not match any variant".into()),
        (ports("[{endPort: 445}]"),
         "spec.egress[0].ports[0].endPort: needs port to start the range".into()),
        (ports("[{port: 445, endPort: 443}]"),
         "spec.egress[0].ports[0].endPort: 443 is below port 445".into()),
        (ports("[{port: 443, endPort: 65536}]"),
         "spec.egress[0].ports[0].endPort: 65536 is not a port (1-65535)".into()),
        (ports("[{port: 53, protocol: udp}]"),
         "spec.egress[0].ports[0].protocol: \"udp\" is not a protocol (TCP, UDP, SCTP)".into()),
        (ports("[{port: 1, protocol: ICMP}]"),
         "spec.egress[0].ports[0].protocol: \"ICMP\" is not a protocol (TCP, UDP, SCTP)".into()),
    ];
    for (text, expected) in cases {
        let (objects, errors) = parse("f.yaml", &text);
        assert!(objects.is_empty(), "{text}: parsed {objects:?}");
        let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            all.iter().any(|e| e.contains(&expected)),
            "{text}\n  want: {expected}\n  got:  {all:#?}"
        );
    }
}

#[test]
fn every_problem_of_an_fqdn_policy_is_reported_at_once() {
    let text = fqdnpol(
        "  podSelector: {matchExpressions: [{key: a, operator: Is}]}\n  egress:\n  - toFQDNs: [{matchName: a..b}, {}]\n    ports: [{port: http}, {endPort: 9}]\n  - {}\n",
    );
    let (objects, errors) = parse("f.yaml", &text);
    assert!(objects.is_empty());
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.podSelector.matchExpressions[0].operator",
            "spec.egress[0].toFQDNs[0].matchName",
            "spec.egress[0].toFQDNs[1]",
            "spec.egress[0].ports[0].port",
            "spec.egress[0].ports[1].endPort",
            "spec.egress[1].toFQDNs",
        ]
    );
}

#[test]
fn names_and_patterns_match_as_documented() {
    let name = |s: &str| FqdnSelector::Name(s.into());
    let pattern = |s: &str| FqdnSelector::Pattern(s.into());
    // (selector, name, selected)
    let cases = [
        (name("allowed.example"), "allowed.example", true),
        (name("allowed.example"), "ALLOWED.Example", true),
        (name("allowed.example"), "allowed.example.", true),
        (name("allowed.example"), "Allowed.Example.", true),
        (name("allowed.example"), "allowed.example..", false),
        (name("allowed.example"), "a.allowed.example", false),
        (name("allowed.example"), "allowed.example.org", false),
        (name("allowed.example"), "allowedxexample", false),
        (name("allowed.example"), "", false),
        (name("_dmarc.example"), "_DMARC.example.", true),
        (pattern("*.example.org"), "a.example.org", true),
        (pattern("*.example.org"), "A.Example.ORG.", true),
        (pattern("*.example.org"), "under_score.example.org", true),
        (pattern("*.example.org"), "example.org", false),
        (pattern("*.example.org"), "a.b.example.org", false),
        (pattern("*.example.org"), ".example.org", false),
        (pattern("*.example.org"), "a.example.org.evil", false),
        (pattern("*.example.org"), "a.example.net", false),
        (pattern("*.example.org"), "a b.example.org", false),
        (pattern("api-*.example.org"), "api-1.example.org", true),
        (
            pattern("api-*.example.org"),
            "API-eu-west.example.org",
            true,
        ),
        (pattern("api-*.example.org"), "api-.example.org", true),
        (pattern("api-*.example.org"), "api.example.org", false),
        (pattern("api-*.example.org"), "xapi-1.example.org", false),
        (pattern("api-*.example.org"), "api-1.eu.example.org", false),
        (pattern("*-*.example.org"), "a-b-c.example.org", true),
        (pattern("*-*.example.org"), "-.example.org", true),
        (pattern("*-*.example.org"), "abc.example.org", false),
        (pattern("a*b*c.example"), "aXXbYYc.example", true),
        (pattern("a*b*c.example"), "abbbc.example", true),
        (pattern("a*b*c.example"), "acb.example", false),
        (pattern("www.*.example"), "www.eu.example", true),
        (pattern("www.*.example"), "www.eu.west.example", false),
        (pattern("*.*"), "a.b", true),
        (pattern("*.*"), "a", false),
        (pattern("*"), "anything.at.all.example.", true),
        (pattern("*"), "x", true),
        (pattern("*"), "", true),
        // A pattern without `*` is a name.
        (pattern("exact.example"), "EXACT.example.", true),
        (pattern("exact.example"), "a.exact.example", false),
    ];
    for (selector, candidate, want) in cases {
        assert_eq!(
            selector.matches(candidate),
            want,
            "{selector:?} against {candidate:?}"
        );
    }
}

#[test]
fn rules_for_a_name_are_the_rules_that_select_it() {
    let policy = only_fqdn(&fqdnpol(
        "  podSelector: {}\n  egress:\n  - toFQDNs: [{matchName: api.example.org}]\n    ports: [{port: 443}]\n  - toFQDNs: [{matchPattern: \"*.example.org\"}, {matchName: other.example}]\n  - toFQDNs: [{matchName: other.example}]\n    ports: [{port: 53, protocol: UDP}]\n",
    ));
    let rules = |name: &str| -> Vec<usize> { policy.rules_for(name).map(|(i, _)| i).collect() };
    assert_eq!(rules("api.example.org"), [0, 1]);
    assert_eq!(rules("API.example.org."), [0, 1]);
    assert_eq!(rules("www.example.org"), [1]);
    assert_eq!(rules("other.example"), [1, 2]);
    assert_eq!(rules("example.org"), Vec::<usize>::new());
    let (i, rule) = policy.rules_for("other.example").last().unwrap();
    assert_eq!(i, 2);
    assert_eq!(rule.ports, [port(Protocol::Udp, 53, 53)]);
    assert!(!rule.any_port());
    assert!(policy.egress[1].any_port());
}

#[test]
fn an_fqdn_policy_and_a_network_policy_of_one_name_are_different_objects() {
    let text = format!(
        "{}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: shop}}\nspec: {{podSelector: {{}}}}\n---\n{}",
        fqdnpol("  podSelector: {}\n"),
        fqdnpol("  podSelector: {matchLabels: {a: b}}\n"),
    );
    let (objects, errors) = parse("f.yaml", &text);
    assert_eq!(objects.len(), 3);
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        ["f.yaml: document 3 (FQDNPolicy shop/p): the same object appears twice"]
    );
}
