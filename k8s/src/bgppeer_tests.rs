use std::collections::BTreeMap;

use super::*;

const FULL: &str = r#"
apiVersion: bgp.twill.io/v1alpha1
kind: BGPPeer
metadata:
  name: tor1
  labels: {rack: r1}
spec:
  peerIP: 172.30.0.101
  asNumber: 4200000001
  nodeSelector:
    matchLabels: {kubernetes.io/hostname: node1}
    matchExpressions: [{key: rack, operator: NotIn, values: [r9]}]
  passwordFile: /etc/twill/bgp-tor1
  holdSeconds: 30
  keepaliveSeconds: 10
  passive: true
"#;

fn only_peer(text: &str) -> BgpPeer {
    let (objects, errors) = parse("p.yaml", text);
    assert_eq!(errors, [], "{text}");
    match &objects[..] {
        [
            Parsed {
                object: Object::BgpPeer(p),
                ..
            },
        ] => p.clone(),
        other => panic!("{other:?}"),
    }
}

/// `field: message` of every problem in `text`, which must not parse.
fn problems(text: &str) -> Vec<String> {
    let (objects, errors) = parse("p.yaml", text);
    assert!(objects.is_empty(), "{objects:?}");
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect()
}

fn with_spec(spec: &str) -> String {
    format!(
        "apiVersion: bgp.twill.io/v1alpha1\nkind: BGPPeer\nmetadata: {{name: rr}}\nspec:\n{spec}"
    )
}

#[test]
fn a_valid_bgp_peer_becomes_the_model() {
    let peer = only_peer(FULL);
    assert_eq!(
        peer,
        BgpPeer {
            name: "tor1".into(),
            labels: BTreeMap::from([("rack".into(), "r1".into())]),
            peer_ip: "172.30.0.101".parse().unwrap(),
            as_number: 4_200_000_001,
            node_selector: LabelSelector {
                match_labels: BTreeMap::from([("kubernetes.io/hostname".into(), "node1".into())]),
                match_expressions: vec![LabelExpression {
                    key: "rack".into(),
                    operator: SelectorOperator::NotIn,
                    values: vec!["r9".into()],
                }],
            },
            password_file: Some("/etc/twill/bgp-tor1".into()),
            hold_seconds: Some(30),
            keepalive_seconds: Some(10),
            passive: true,
        }
    );
    let node1 = BTreeMap::from([("kubernetes.io/hostname".into(), "node1".into())]);
    let node2 = BTreeMap::from([("kubernetes.io/hostname".into(), "node2".into())]);
    assert!(peer.selects(&node1));
    assert!(!peer.selects(&node2));
    let o = Object::BgpPeer(peer);
    assert_eq!(o.kind(), "BGPPeer");
    assert_eq!(o.resource(), "bgppeers");
    assert_eq!(o.namespace(), None);
    assert_eq!(o.describe(), "BGPPeer tor1");
}

#[test]
fn the_minimal_peer_selects_every_node_with_the_node_defaults() {
    let peer = only_peer(&with_spec("  peerIP: fd00::1\n  asNumber: 64512\n"));
    assert_eq!(peer.peer_ip, "fd00::1".parse::<std::net::IpAddr>().unwrap());
    assert!(peer.node_selector.is_empty());
    assert!(peer.selects(&BTreeMap::new()));
    assert_eq!(
        (peer.hold_seconds, peer.keepalive_seconds, peer.passive),
        (None, None, false)
    );
    assert_eq!(peer.password_file, None);
}

#[test]
fn the_peer_round_trips_through_yaml() {
    for text in [
        FULL.to_owned(),
        with_spec("  peerIP: 10.0.0.1\n  asNumber: 65001\n"),
        with_spec("  peerIP: 10.0.0.1\n  asNumber: 65001\n  holdSeconds: 0\n"),
    ] {
        let o = Object::BgpPeer(only_peer(&text));
        let yaml = manifest::to_yaml(&o);
        let (back, errors) = parse("back.yaml", &yaml);
        assert_eq!(errors, [], "{yaml}");
        assert_eq!(back[0].object, o, "{yaml}");
        assert!(yaml.contains("apiVersion: bgp.twill.io/v1alpha1"), "{yaml}");
        assert!(!yaml.contains("namespace"), "{yaml}");
    }
}

#[test]
fn bad_peers_are_refused_naming_the_field() {
    let cases: &[(&str, &str)] = &[
        ("  asNumber: 65001\n", "spec.peerIP: missing"),
        (
            "  peerIP: 172.30.0.300\n  asNumber: 65001\n",
            "spec.peerIP: \"172.30.0.300\" is not an IPv4 or IPv6 address",
        ),
        (
            "  peerIP: 0.0.0.0\n  asNumber: 65001\n",
            "spec.peerIP: 0.0.0.0 is not a router's address",
        ),
        (
            "  peerIP: 224.0.0.5\n  asNumber: 65001\n",
            "spec.peerIP: 224.0.0.5 is not a router's address",
        ),
        ("  peerIP: 10.0.0.1\n", "spec.asNumber: missing"),
        (
            "  peerIP: 10.0.0.1\n  asNumber: 0\n",
            "spec.asNumber: 0 is outside 1-4294967294",
        ),
        (
            "  peerIP: 10.0.0.1\n  asNumber: 4294967295\n",
            "spec.asNumber: 4294967295 is outside 1-4294967294",
        ),
        (
            "  peerIP: 10.0.0.1\n  asNumber: 23456\n",
            "spec.asNumber: 23456 is AS_TRANS",
        ),
        (
            "  peerIP: 10.0.0.1\n  asNumber: sixty\n",
            "spec.asNumber: invalid type",
        ),
        (
            "  peerIP: 10.0.0.1\n  asNumber: 65001\n  holdSeconds: 2\n",
            "spec.holdSeconds: 2 is not 0 (no keepalives) or 3-65535",
        ),
        (
            "  peerIP: 10.0.0.1\n  asNumber: 65001\n  holdSeconds: 70000\n",
            "spec.holdSeconds: 70000 is not 0",
        ),
        (
            "  peerIP: 10.0.0.1\n  asNumber: 65001\n  holdSeconds: 9\n  keepaliveSeconds: 4\n",
            "spec.keepaliveSeconds: 4 is more than a third of holdSeconds 9 (at most 3)",
        ),
        (
            "  peerIP: 10.0.0.1\n  asNumber: 65001\n  holdSeconds: 0\n  keepaliveSeconds: 1\n",
            "spec.keepaliveSeconds: holdSeconds 0 means no keepalives",
        ),
        (
            "  peerIP: 10.0.0.1\n  asNumber: 65001\n  keepaliveSeconds: 0\n",
            "spec.keepaliveSeconds: 0 is outside 1-21845",
        ),
        (
            "  peerIP: 10.0.0.1\n  asNumber: 65001\n  passwordFile: secrets/bgp\n",
            "spec.passwordFile: \"secrets/bgp\" is not an absolute path",
        ),
        (
            "  peerIP: 10.0.0.1\n  asNumber: 65001\n  passive: maybe\n",
            "spec.passive: invalid type",
        ),
        (
            "  peerIP: 10.0.0.1\n  asNumber: 65001\n  nodeSelector: {matchLabels: {\"bad key!\": x}}\n",
            "spec.nodeSelector.matchLabels.bad key!",
        ),
        (
            "  peerIP: 10.0.0.1\n  asNumber: 65001\n  nodeSelector:\n    matchExpressions: [{key: rack, operator: Near}]\n",
            "spec.nodeSelector.matchExpressions[0].operator: \"Near\" is not an operator",
        ),
        (
            "  peerIP: 10.0.0.1\n  asNumber: 65001\n  routeReflectorClient: true\n",
            "spec.routeReflectorClient: unknown field `routeReflectorClient`",
        ),
        (
            "  peerIP: 10.0.0.1\n  asNumber: 65001\n  nodeSelector: {matchLabel: {a: b}}\n",
            "spec.nodeSelector.matchLabel: unknown field `matchLabel`",
        ),
    ];
    for (spec, want) in cases {
        let got = problems(&with_spec(spec));
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "{spec}: want {want:?}, got {got:?}"
        );
    }
}

#[test]
fn a_bgp_peer_has_no_namespace_and_a_valid_name() {
    let got = problems(
        "apiVersion: bgp.twill.io/v1alpha1\nkind: BGPPeer\nmetadata: {name: Bad_Name, namespace: default}\nspec: {peerIP: 10.0.0.1, asNumber: 65001}\n",
    );
    assert!(
        got.iter()
            .any(|g| g == "metadata.namespace: a BGPPeer is cluster-scoped: it has no namespace"),
        "{got:?}"
    );
    assert!(
        got.iter().any(|g| g.starts_with("metadata.name: ")),
        "{got:?}"
    );
    let (_, errors) = parse(
        "p.yaml",
        "apiVersion: bgp.twill.io/v1\nkind: BGPPeer\nmetadata: {name: rr}\nspec: {peerIP: 10.0.0.1, asNumber: 65001}\n",
    );
    assert_eq!(
        errors[0].to_string(),
        "p.yaml: document 1: apiVersion: BGPPeer needs apiVersion bgp.twill.io/v1alpha1, not bgp.twill.io/v1"
    );
}

#[test]
fn errors_name_the_file_document_and_object() {
    let (_, errors) = parse(
        "peers.yaml",
        &with_spec("  peerIP: 10.0.0.1\n  asNumber: 0\n"),
    );
    assert_eq!(
        errors[0].to_string(),
        "peers.yaml: document 1 (BGPPeer rr): spec.asNumber: 0 is outside 1-4294967294 (0 and 4294967295 are reserved)"
    );
}
