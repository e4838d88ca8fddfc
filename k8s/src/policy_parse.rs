//! `NetworkPolicy` from its wire form to the [`crate::policy`] model: validated as the API
//! server validates it (`ValidateNetworkPolicySpec`, `ValidateNetworkPolicyPeer`,
//! `ValidateNetworkPolicyPort`, `ValidateIPBlock`, `ValidateLabelSelector` in Kubernetes'
//! `pkg/apis/networking/validation` and apimachinery), and defaulted as it defaults it
//! (`SetDefaults_NetworkPolicy`, `SetDefaults_NetworkPolicyPort`), every problem named by
//! its field path.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use ipnetwork::IpNetwork;

use crate::{
    Problems, Protocols,
    policy::{
        ENFORCEMENT_ANNOTATION, Enforcement, LabelExpression, LabelSelector, NetworkPolicy,
        PolicyPeer, PolicyPort, PolicyPortNumber, PolicyRule, SelectorOperator,
    },
    wire,
};

pub(crate) fn policy_obj(p: &mut Problems<'_>, w: wire::NetworkPolicy) -> NetworkPolicy {
    let name = crate::meta_name(p, &w.metadata, crate::names::dns1123_subdomain);
    let namespace = crate::meta_namespace(p, &w.metadata);
    crate::labels(p, "metadata.labels", &w.metadata.labels);
    let enforcement = match w.metadata.annotations.get(ENFORCEMENT_ANNOTATION) {
        None => Enforcement::Enforce,
        Some(v) if v == "enforce" => Enforcement::Enforce,
        Some(v) if v == "audit" => Enforcement::Audit,
        Some(v) => {
            p.add(
                format!("metadata.annotations.{ENFORCEMENT_ANNOTATION}"),
                format!("{v:?} is not a mode (enforce, audit)"),
            );
            Enforcement::Enforce
        }
    };
    let spec = w.spec;
    let pod_selector = match &spec.pod_selector {
        Some(s) => selector(p, "spec.podSelector", s),
        None => {
            p.add(
                "spec.podSelector",
                "missing ({} selects every pod of the namespace)",
            );
            LabelSelector::default()
        }
    };
    let ingress: Vec<PolicyRule> = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| rule(p, &format!("spec.ingress[{i}]"), "from", &r.from, &r.ports))
        .collect();
    let egress: Vec<PolicyRule> = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| rule(p, &format!("spec.egress[{i}]"), "to", &r.to, &r.ports))
        .collect();
    let (ingress_isolation, egress_isolation) = match spec.policy_types.as_deref() {
        // As the API server: Ingress always, Egress when there are egress rules.
        None | Some([]) => (true, !egress.is_empty()),
        Some(types) => {
            let (mut ingress, mut egress) = (false, false);
            for (i, t) in types.iter().enumerate() {
                let field = format!("spec.policyTypes[{i}]");
                let seen = match t.as_str() {
                    "Ingress" => std::mem::replace(&mut ingress, true),
                    "Egress" => std::mem::replace(&mut egress, true),
                    other => {
                        p.add(
                            field,
                            format!("{other:?} is not a policy type (Ingress, Egress)"),
                        );
                        continue;
                    }
                };
                if seen {
                    p.add(field, format!("{t} is listed twice"));
                }
            }
            (ingress, egress)
        }
    };
    NetworkPolicy {
        namespace,
        name,
        labels: w.metadata.labels,
        pod_selector,
        ingress_isolation,
        egress_isolation,
        ingress,
        egress,
        enforcement,
    }
}

/// One `ingress[i]` (peers under `from`) or `egress[i]` (under `to`).
fn rule(
    p: &mut Problems<'_>,
    field: &str,
    peers_key: &str,
    peers: &Option<Vec<wire::PolicyPeer>>,
    ports: &Option<Vec<wire::PolicyPort>>,
) -> PolicyRule {
    PolicyRule {
        peers: peers
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, w)| peer(p, &format!("{field}.{peers_key}[{i}]"), w))
            .collect(),
        ports: ports
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, w)| port(p, &format!("{field}.ports[{i}]"), w))
            .collect(),
    }
}

fn peer(p: &mut Problems<'_>, field: &str, w: &wire::PolicyPeer) -> PolicyPeer {
    let pods = w
        .pod_selector
        .as_ref()
        .map(|s| selector(p, &format!("{field}.podSelector"), s));
    let namespaces = w
        .namespace_selector
        .as_ref()
        .map(|s| selector(p, &format!("{field}.namespaceSelector"), s));
    match &w.ip_block {
        Some(block) => {
            if pods.is_some() || namespaces.is_some() {
                p.add(
                    format!("{field}.ipBlock"),
                    "cannot be combined with podSelector or namespaceSelector in one peer",
                );
            }
            ip_block(p, &format!("{field}.ipBlock"), block)
        }
        None => {
            if pods.is_none() && namespaces.is_none() {
                p.add(
                    field,
                    "a peer needs podSelector, namespaceSelector or ipBlock",
                );
            }
            PolicyPeer::Pods {
                namespaces,
                pods: pods.unwrap_or_default(),
            }
        }
    }
}

/// `10.0.0.0/8`, `2001:db8::/32`: an address, '/', a decimal prefix length. Host bits may
/// be set (the API accepts `10.0.0.1/24` for this legacy field); the network is kept.
fn cidr(text: &str) -> Result<IpNetwork, String> {
    let bad = || format!("{text:?} is not a CIDR (such as 10.0.0.0/8 or 2001:db8::/32)");
    let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let net = IpNetwork::new(addr, prefix).map_err(|_| bad())?;
    Ok(IpNetwork::new(net.network(), prefix).expect("the same prefix fits the network"))
}

fn ip_block(p: &mut Problems<'_>, field: &str, w: &wire::IpBlock) -> PolicyPeer {
    // Stands in for a cidr in error; the object is not returned then.
    let fallback = IpNetwork::new(Ipv4Addr::UNSPECIFIED.into(), 0).expect("/0 is a prefix");
    if w.cidr.is_empty() {
        p.add(format!("{field}.cidr"), "missing");
        return PolicyPeer::IpBlock {
            cidr: fallback,
            except: Vec::new(),
        };
    }
    let block = match cidr(&w.cidr) {
        Ok(n) => Some(n),
        Err(e) => {
            p.add(format!("{field}.cidr"), e);
            None
        }
    };
    let mut except = Vec::new();
    for (i, text) in w.except.iter().flatten().enumerate() {
        let efield = format!("{field}.except[{i}]");
        match cidr(text) {
            Ok(e) => {
                // As ValidateIPBlock: inside cidr and strictly smaller.
                if let Some(b) = block
                    && !(b.is_ipv4() == e.is_ipv4()
                        && e.prefix() > b.prefix()
                        && b.contains(e.network()))
                {
                    p.add(
                        efield,
                        format!("{e} is not strictly inside cidr {b} (must be a strict subset)"),
                    );
                }
                except.push(e);
            }
            Err(m) => p.add(efield, m),
        }
    }
    PolicyPeer::IpBlock {
        cidr: block.unwrap_or(fallback),
        except,
    }
}

fn port(p: &mut Problems<'_>, field: &str, w: &wire::PolicyPort) -> PolicyPort {
    let protocol = crate::protocol(
        p,
        format!("{field}.protocol"),
        w.protocol.as_deref(),
        Protocols::WithSctp,
    );
    let number = match &w.port {
        None => None,
        Some(wire::IntOrString::Int(n)) => Some(PolicyPortNumber::Number(crate::port(
            p,
            format!("{field}.port"),
            *n,
        ))),
        Some(wire::IntOrString::Str(s)) => {
            if let Err(e) = crate::names::iana_svc_name(s) {
                let hint = if s.parse::<i64>().is_ok() {
                    "; a port number is written without quotes"
                } else {
                    ""
                };
                p.add(format!("{field}.port"), format!("{e}{hint}"));
            }
            Some(PolicyPortNumber::Named(s.clone()))
        }
    };
    let end_port = w.end_port.map(|end| {
        let efield = format!("{field}.endPort");
        match &number {
            None => {
                p.add(efield, "needs a numeric port to start the range");
                0
            }
            Some(PolicyPortNumber::Named(n)) => {
                p.add(
                    efield,
                    format!("cannot be used with a named port ({n}): needs a numeric port"),
                );
                0
            }
            Some(PolicyPortNumber::Number(start)) => {
                let end_number = crate::port(p, efield.clone(), end);
                if end_number != 0 && end_number < *start {
                    p.add(efield, format!("{end} is below port {start}"));
                }
                end_number
            }
        }
    });
    PolicyPort {
        protocol,
        port: number,
        end_port,
    }
}

const OPERATORS: &str = "In, NotIn, Exists, DoesNotExist";

pub(crate) fn selector(
    p: &mut Problems<'_>,
    field: &str,
    w: &wire::LabelSelector,
) -> LabelSelector {
    let match_labels: BTreeMap<String, String> = w.match_labels.clone().unwrap_or_default();
    crate::labels(p, &format!("{field}.matchLabels"), &match_labels);
    let mut match_expressions = Vec::new();
    for (i, e) in w.match_expressions.iter().flatten().enumerate() {
        let efield = format!("{field}.matchExpressions[{i}]");
        p.check(format!("{efield}.key"), crate::names::label_key(&e.key));
        let values = e.values.clone().unwrap_or_default();
        let operator = match e.operator.as_str() {
            "In" => SelectorOperator::In,
            "NotIn" => SelectorOperator::NotIn,
            "Exists" => SelectorOperator::Exists,
            "DoesNotExist" => SelectorOperator::DoesNotExist,
            other => {
                p.add(
                    format!("{efield}.operator"),
                    format!("{other:?} is not an operator ({OPERATORS})"),
                );
                continue;
            }
        };
        match operator {
            SelectorOperator::In | SelectorOperator::NotIn if values.is_empty() => p.add(
                format!("{efield}.values"),
                format!("{} needs at least one value", e.operator),
            ),
            SelectorOperator::Exists | SelectorOperator::DoesNotExist if !values.is_empty() => p
                .add(
                    format!("{efield}.values"),
                    format!("{} takes no values", e.operator),
                ),
            _ => {}
        }
        for (j, v) in values.iter().enumerate() {
            p.check(
                format!("{efield}.values[{j}]"),
                crate::names::label_value(v),
            );
        }
        match_expressions.push(LabelExpression {
            key: e.key.clone(),
            operator,
            values,
        });
    }
    LabelSelector {
        match_labels,
        match_expressions,
    }
}
