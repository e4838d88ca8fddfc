//! `FQDNPolicy` from its wire form to the [`crate::fqdn`] model, every problem named by its
//! field path. Metadata and the pod selector are checked as for a NetworkPolicy; names
//! and patterns are lower-cased and lose one trailing dot.

use crate::{
    Problems, Protocols,
    fqdn::{FqdnPolicy, FqdnPort, FqdnRule, FqdnSelector},
    policy::LabelSelector,
    wire,
};

pub(crate) fn fqdn_policy_obj(p: &mut Problems<'_>, w: wire::FqdnPolicy) -> FqdnPolicy {
    let name = crate::meta_name(p, &w.metadata, crate::names::dns1123_subdomain);
    let namespace = crate::meta_namespace(p, &w.metadata);
    crate::labels(p, "metadata.labels", &w.metadata.labels);
    let pod_selector = match &w.spec.pod_selector {
        Some(s) => crate::policy_parse::selector(p, "spec.podSelector", s),
        None => {
            p.add(
                "spec.podSelector",
                "missing ({} selects every pod of the namespace)",
            );
            LabelSelector::default()
        }
    };
    let egress = w
        .spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| rule(p, &format!("spec.egress[{i}]"), r))
        .collect();
    FqdnPolicy {
        namespace,
        name,
        labels: w.metadata.labels,
        pod_selector,
        egress,
    }
}

fn rule(p: &mut Problems<'_>, field: &str, w: &wire::FqdnRule) -> FqdnRule {
    let to_fqdns = match &w.to_fqdns {
        None => {
            p.add(
                format!("{field}.toFQDNs"),
                "missing (a list of matchName or matchPattern entries)",
            );
            Vec::new()
        }
        Some(list) if list.is_empty() => {
            p.add(
                format!("{field}.toFQDNs"),
                "needs at least one matchName or matchPattern",
            );
            Vec::new()
        }
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(j, s)| selector(p, &format!("{field}.toFQDNs[{j}]"), s))
            .collect(),
    };
    FqdnRule {
        to_fqdns,
        ports: w
            .ports
            .iter()
            .flatten()
            .enumerate()
            .map(|(k, w)| port(p, &format!("{field}.ports[{k}]"), w))
            .collect(),
    }
}

fn selector(p: &mut Problems<'_>, field: &str, w: &wire::FqdnSelector) -> Option<FqdnSelector> {
    let (key, text, wildcard) = match (&w.match_name, &w.match_pattern) {
        (Some(n), None) => ("matchName", n, false),
        (None, Some(n)) => ("matchPattern", n, true),
        (Some(_), Some(_)) => {
            p.add(field, "has both matchName and matchPattern (one of them)");
            return None;
        }
        (None, None) => {
            p.add(field, "needs matchName or matchPattern");
            return None;
        }
    };
    match dns_name(text, wildcard) {
        Ok(n) if wildcard => Some(FqdnSelector::Pattern(n)),
        Ok(n) => Some(FqdnSelector::Name(n)),
        Err(e) => {
            p.add(format!("{field}.{key}"), e);
            None
        }
    }
}

/// A DNS name (a pattern when `wildcard`: `*` allowed too), lower-cased and without one
/// trailing dot: labels of 1-63 of `a-z 0-9 - _`, at most 253 characters in all.
fn dns_name(text: &str, wildcard: bool) -> Result<String, String> {
    let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
    if name.is_empty() {
        return Err("empty (a name such as example.org)".into());
    }
    if let Some(c) = name.chars().find(|&c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || (wildcard && c == '*'))
    }) {
        let allowed = if wildcard {
            "letters, digits, '-', '_', '*' and '.'"
        } else {
            "letters, digits, '-', '_' and '.'"
        };
        return Err(format!(
            "{text:?} has {c:?}: a {} takes only {allowed}",
            if wildcard { "pattern" } else { "name" }
        ));
    }
    if name.len() > 253 {
        return Err(format!(
            "{text:?} is longer than 253 characters ({})",
            name.len()
        ));
    }
    if name.split('.').any(str::is_empty) {
        return Err(format!(
            "{text:?} has an empty label (a leading dot or \"..\")"
        ));
    }
    if let Some(l) = name.split('.').find(|l| l.len() > 63) {
        return Err(format!(
            "{text:?} has a label longer than 63 characters ({})",
            l.len()
        ));
    }
    Ok(name)
}

fn port(p: &mut Problems<'_>, field: &str, w: &wire::FqdnPort) -> FqdnPort {
    let protocol = crate::protocol(
        p,
        format!("{field}.protocol"),
        w.protocol.as_deref(),
        Protocols::WithSctp,
    );
    let start = match &w.port {
        None => None,
        Some(wire::IntOrString::Int(n)) => Some(crate::port(p, format!("{field}.port"), *n)),
        Some(wire::IntOrString::Str(s)) => {
            let message = if s.parse::<i64>().is_ok() {
                format!("{s:?} is a string: a port number is written without quotes")
            } else {
                "named ports are not allowed in an FQDNPolicy: an outside host has no pod ports"
                    .to_owned()
            };
            p.add(format!("{field}.port"), message);
            Some(0)
        }
    };
    let end = w.end_port.map(|end| {
        let efield = format!("{field}.endPort");
        match start {
            None => {
                p.add(efield, "needs port to start the range");
                0
            }
            Some(start) => {
                let end_number = crate::port(p, efield.clone(), end);
                if start != 0 && end_number != 0 && end_number < start {
                    p.add(efield, format!("{end} is below port {start}"));
                }
                end_number
            }
        }
    });
    match (start, end) {
        // No port: every port of the protocol.
        (None, _) => FqdnPort {
            protocol,
            port: 1,
            end_port: u16::MAX,
        },
        (Some(port), end) => FqdnPort {
            protocol,
            port,
            end_port: end.unwrap_or(port),
        },
    }
}
