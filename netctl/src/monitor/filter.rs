//! `netctl monitor`'s filters, pure: which flow records a user asked to see.
//!
//! Each filter flag names a field and a value. Repeated flags of one field OR (`--reason
//! a --reason b`: either), different fields AND (`--reason a --from x`: both), and
//! `--not` negates the filter flag after it: negated filters of one field exclude every
//! value they name (`--not --reason a --not --reason b`: neither).

use std::{collections::BTreeMap, net::Ipv4Addr};

use twill_api::flow::{FlowEndpoint, FlowEvent};

/// What a filter flag looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    /// `NAMESPACE/NAME`: the source, destination or backend pod.
    Pod,
    /// Any pod end's namespace.
    Namespace,
    /// `IP` or `NAMESPACE/NAME`: the source.
    From,
    /// `IP` or `NAMESPACE/NAME`: the destination or the backend.
    To,
    Verdict,
    Reason,
    Protocol,
    /// Any end's port.
    Port,
    /// `NAMESPACE/NAME`.
    Service,
    /// `NAMESPACE/NAME`: the policy of either direction's verdict, or one isolating it.
    Policy,
    /// A DNS query's name (`*.NAME`: any name under it).
    Dns,
}

impl Field {
    /// Every field with its flag (without the dashes).
    pub const ALL: [(Field, &'static str); 11] = [
        (Field::Pod, "pod"),
        (Field::Namespace, "namespace"),
        (Field::From, "from"),
        (Field::To, "to"),
        (Field::Verdict, "verdict"),
        (Field::Reason, "reason"),
        (Field::Protocol, "protocol"),
        (Field::Port, "port"),
        (Field::Service, "service"),
        (Field::Policy, "policy"),
        (Field::Dns, "dns"),
    ];

    pub fn flag(self) -> &'static str {
        Field::ALL
            .iter()
            .find(|(f, _)| *f == self)
            .map(|(_, n)| *n)
            .expect("every field is in ALL")
    }
}

pub const VERDICTS: [&str; 3] = ["forwarded", "dropped", "refused"];

/// The reasons of DNS query records (twill-dnsd's, not the datapath's).
pub const DNS_REASONS: [&str; 5] = [
    "dns-zone",
    "dns-cache",
    "dns-upstream",
    "dns-fqdn-denied",
    "dns-not-ready",
];

/// A DNS name as compared: lower case, without the final dot.
fn dns_name(text: &str) -> String {
    text.trim_end_matches('.').to_ascii_lowercase()
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    Text(String),
    Named(String, String),
    Ip(Ipv4Addr),
    Port(u16),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    field: Field,
    value: Value,
    negated: bool,
}

/// Filters as given, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters(Vec<Filter>);

fn named(flag: &str, text: &str) -> Result<Value, String> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(Value::Named(ns.to_owned(), name.to_owned()))
        }
        _ => Err(format!("--{flag} {text:?}: expected NAMESPACE/NAME")),
    }
}

impl Filters {
    /// Checks `(field, value, negated)` filters, in the order given.
    pub fn new(given: Vec<(Field, String, bool)>) -> Result<Filters, String> {
        let mut filters = Vec::new();
        for (field, text, negated) in given {
            let flag = field.flag();
            let value = match field {
                Field::Pod | Field::Service | Field::Policy => named(flag, &text)?,
                Field::From | Field::To => match text.parse::<Ipv4Addr>() {
                    Ok(ip) => Value::Ip(ip),
                    Err(_) => named(flag, &text).map_err(|_| {
                        format!("--{flag} {text:?}: expected an IPv4 address or NAMESPACE/POD")
                    })?,
                },
                Field::Namespace if !text.is_empty() => Value::Text(text),
                Field::Namespace => return Err("--namespace: empty".to_owned()),
                Field::Verdict => {
                    let v = text.to_lowercase();
                    if !VERDICTS.contains(&v.as_str()) {
                        return Err(format!(
                            "--verdict {text:?}: expected one of {}",
                            VERDICTS.join(", ")
                        ));
                    }
                    Value::Text(v)
                }
                Field::Reason => {
                    let known: Vec<&str> = twill_abi::metrics::Reason::ALL
                        .iter()
                        .map(|r| r.name())
                        .chain(DNS_REASONS)
                        .collect();
                    if !known.contains(&text.as_str()) {
                        return Err(format!(
                            "--reason {text:?}: expected one of {}",
                            known.join(", ")
                        ));
                    }
                    Value::Text(text)
                }
                Field::Protocol => {
                    let p = text.to_uppercase();
                    let ok = ["TCP", "UDP", "ICMP", "SCTP"].contains(&p.as_str())
                        || p.strip_prefix("PROTO-")
                            .is_some_and(|n| n.parse::<u8>().is_ok());
                    if !ok {
                        return Err(format!(
                            "--protocol {text:?}: expected TCP, UDP, ICMP, SCTP or proto-N"
                        ));
                    }
                    Value::Text(p)
                }
                Field::Dns => {
                    let name = dns_name(&text);
                    let bare = name.strip_prefix("*.").unwrap_or(&name);
                    if bare.is_empty() || bare.contains('*') || bare.contains(' ') {
                        return Err(format!(
                            "--dns {text:?}: expected a DNS name, or *.NAME for any name under it"
                        ));
                    }
                    Value::Text(name)
                }
                Field::Port => Value::Port(
                    text.parse()
                        .map_err(|_| format!("--port {text:?}: expected a port number"))?,
                ),
            };
            filters.push(Filter {
                field,
                value,
                negated,
            });
        }
        Ok(Filters(filters))
    }

    /// Whether the record passes: for every field, some of its plain filters match (if it
    /// has any) and none of its negated ones does.
    pub fn matches(&self, e: &FlowEvent) -> bool {
        let mut groups: BTreeMap<(Field, bool), bool> = BTreeMap::new();
        for f in &self.0 {
            let hit = groups.entry((f.field, f.negated)).or_insert(false);
            *hit = *hit || f.matches(e);
        }
        groups.into_iter().all(|((_, negated), hit)| hit != negated)
    }
}

fn is_pod(end: &FlowEndpoint, ns: &str, name: &str) -> bool {
    end.namespace.as_deref() == Some(ns) && end.pod.as_deref() == Some(name)
}

fn ends(e: &FlowEvent) -> impl Iterator<Item = &FlowEndpoint> {
    [Some(&e.source), Some(&e.destination), e.backend.as_ref()]
        .into_iter()
        .flatten()
}

impl Filter {
    fn matches(&self, e: &FlowEvent) -> bool {
        let is = |end: &FlowEndpoint| match &self.value {
            Value::Ip(ip) => end.ip == Some(*ip),
            Value::Named(ns, name) => is_pod(end, ns, name),
            _ => false,
        };
        match (&self.field, &self.value) {
            (Field::Pod, Value::Named(ns, name)) => ends(e).any(|end| is_pod(end, ns, name)),
            (Field::Namespace, Value::Text(ns)) => {
                ends(e).any(|end| end.namespace.as_deref() == Some(ns))
            }
            (Field::From, _) => is(&e.source),
            (Field::To, _) => is(&e.destination) || e.backend.as_ref().is_some_and(is),
            (Field::Verdict, Value::Text(v)) => e.verdict == *v,
            (Field::Reason, Value::Text(r)) => e.reason == *r,
            (Field::Protocol, Value::Text(p)) => e
                .protocol
                .as_deref()
                .is_some_and(|x| x.eq_ignore_ascii_case(p)),
            (Field::Port, Value::Port(p)) => ends(e).any(|end| end.port == Some(*p)),
            (Field::Dns, Value::Text(wanted)) => e.dns.as_ref().is_some_and(|d| {
                let name = dns_name(&d.query);
                match wanted.strip_prefix("*.") {
                    Some(parent) => name
                        .strip_suffix(parent)
                        .is_some_and(|head| head.ends_with('.')),
                    None => name == *wanted,
                }
            }),
            (Field::Service, Value::Named(ns, name)) => e
                .service
                .as_ref()
                .is_some_and(|s| s.namespace == *ns && s.name == *name),
            (Field::Policy, Value::Named(ns, name)) => {
                let wanted = format!("{ns}/{name}");
                [&e.policy.egress, &e.policy.ingress]
                    .into_iter()
                    .flatten()
                    .any(|side| {
                        side.policy.as_deref() == Some(&wanted)
                            || side.isolated_by.contains(&wanted)
                    })
            }
            _ => false,
        }
    }
}

/// The filters in command-line order: `values` are `(position, field, value)` of each
/// filter flag's value, `nots` the positions of the `--not` flags. Each `--not` negates
/// the first filter after it.
pub fn in_order(
    mut values: Vec<(usize, Field, String)>,
    nots: &[usize],
) -> Result<Vec<(Field, String, bool)>, String> {
    values.sort_by_key(|v| v.0);
    let mut negated = vec![false; values.len()];
    for n in nots {
        let Some(i) = values.iter().position(|v| v.0 > *n) else {
            return Err("--not must be followed by a filter flag (--pod, --reason, ...)".into());
        };
        if negated[i] {
            return Err(format!(
                "--not --not before --{}: say what to exclude once",
                values[i].1.flag()
            ));
        }
        negated[i] = true;
    }
    Ok(values
        .into_iter()
        .zip(negated)
        .map(|((_, field, value), negated)| (field, value, negated))
        .collect())
}

#[cfg(test)]
mod tests {
    use twill_api::flow::{FlowPolicy, FlowService, PolicySide};

    use super::*;

    fn end(ip: &str, port: u16, pod: Option<(&str, &str)>) -> FlowEndpoint {
        FlowEndpoint {
            ip: Some(ip.parse().unwrap()),
            port: Some(port),
            namespace: pod.map(|p| p.0.to_owned()),
            pod: pod.map(|p| p.1.to_owned()),
            ..FlowEndpoint::default()
        }
    }

    /// client -> websvc -> web, forwarded; other -> web, denied by web-policy.
    fn records() -> [FlowEvent; 3] {
        let translated = FlowEvent {
            verdict: "forwarded".into(),
            reason: "service-translated".into(),
            protocol: Some("TCP".into()),
            source: end("10.244.1.3", 40000, Some(("default", "client"))),
            destination: end("10.96.0.80", 80, None),
            service: Some(FlowService {
                namespace: "default".into(),
                name: "websvc".into(),
                ip: Some("10.96.0.80".parse().unwrap()),
                port: 80,
            }),
            backend: Some(end("10.244.2.5", 8080, Some(("default", "web")))),
            ..FlowEvent::default()
        };
        let denied = FlowEvent {
            verdict: "dropped".into(),
            reason: "drop-policy-denied".into(),
            protocol: Some("TCP".into()),
            source: end("10.244.1.4", 40001, Some(("test", "other"))),
            destination: end("10.244.2.5", 8080, Some(("default", "web"))),
            policy: FlowPolicy {
                egress: None,
                ingress: Some(PolicySide {
                    verdict: "denied".into(),
                    policy: Some("default/web-policy".into()),
                    rule: None,
                    isolated_by: vec!["default/web-policy".into()],
                }),
            },
            ..FlowEvent::default()
        };
        let refused = FlowEvent {
            verdict: "refused".into(),
            reason: "no-backend".into(),
            protocol: Some("UDP".into()),
            source: end("10.244.1.3", 5353, Some(("default", "client"))),
            destination: end("10.96.0.81", 53, None),
            ..FlowEvent::default()
        };
        [translated, denied, refused]
    }

    /// Which of [`records`] pass `args` (`--flag value`, `--not`).
    fn pass(args: &[&str]) -> Result<Vec<usize>, String> {
        let mut values = Vec::new();
        let mut nots = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let flag = args[i].trim_start_matches("--");
            if flag == "not" {
                nots.push(i);
            } else {
                let field = Field::ALL.iter().find(|(_, n)| *n == flag).unwrap().0;
                values.push((i + 1, field, args[i + 1].to_owned()));
                i += 1;
            }
            i += 1;
        }
        let filters = Filters::new(in_order(values, &nots)?)?;
        Ok(records()
            .iter()
            .enumerate()
            .filter(|(_, r)| filters.matches(r))
            .map(|(i, _)| i)
            .collect())
    }

    #[test]
    fn repeated_flags_or_and_different_flags_and() {
        let cases: &[(&[&str], &[usize])] = &[
            (&[], &[0, 1, 2]),
            (&["--reason", "no-backend"], &[2]),
            (
                &["--reason", "no-backend", "--reason", "drop-policy-denied"],
                &[1, 2],
            ),
            (&["--from", "default/client"], &[0, 2]),
            (&["--from", "default/client", "--protocol", "tcp"], &[0]),
            (&["--from", "10.244.1.4"], &[1]),
            (&["--to", "default/web"], &[0, 1]),
            (&["--to", "10.96.0.80"], &[0]),
            (&["--pod", "default/web"], &[0, 1]),
            (&["--namespace", "test"], &[1]),
            (&["--port", "8080"], &[0, 1]),
            (&["--port", "53", "--port", "40001"], &[1, 2]),
            (&["--service", "default/websvc"], &[0]),
            (&["--policy", "default/web-policy"], &[1]),
            (&["--verdict", "dropped", "--verdict", "refused"], &[1, 2]),
            (&["--verdict", "dropped", "--from", "default/client"], &[]),
        ];
        for (args, want) in cases {
            assert_eq!(pass(args).unwrap(), *want, "{args:?}");
        }
    }

    #[test]
    fn not_negates_the_next_filter_only() {
        let cases: &[(&[&str], &[usize])] = &[
            (&["--not", "--reason", "no-backend"], &[0, 1]),
            (
                &[
                    "--not",
                    "--reason",
                    "no-backend",
                    "--not",
                    "--verdict",
                    "dropped",
                ],
                &[0],
            ),
            // Negated values of one field exclude each of them.
            (
                &[
                    "--not",
                    "--reason",
                    "no-backend",
                    "--not",
                    "--reason",
                    "drop-policy-denied",
                ],
                &[0],
            ),
            // Only the flag right after --not is negated.
            (
                &["--not", "--from", "default/client", "--protocol", "TCP"],
                &[1],
            ),
            (
                &["--protocol", "TCP", "--not", "--from", "default/client"],
                &[1],
            ),
            (
                &["--from", "default/client", "--not", "--to", "10.96.0.80"],
                &[2],
            ),
        ];
        for (args, want) in cases {
            assert_eq!(pass(args).unwrap(), *want, "{args:?}");
        }
        assert!(
            pass(&["--reason", "no-backend", "--not"])
                .unwrap_err()
                .contains("followed by")
        );
        assert!(
            pass(&["--not", "--not", "--reason", "no-backend"])
                .unwrap_err()
                .contains("once")
        );
    }

    #[test]
    fn bad_values_are_refused_with_what_was_expected() {
        for (args, want) in [
            (
                &["--pod", "web"][..],
                "--pod \"web\": expected NAMESPACE/NAME",
            ),
            (
                &["--from", "web"],
                "expected an IPv4 address or NAMESPACE/POD",
            ),
            (
                &["--verdict", "allowed"],
                "expected one of forwarded, dropped, refused",
            ),
            (
                &["--reason", "dropped"],
                "expected one of forwarded, not-ipv4",
            ),
            (&["--port", "http"], "expected a port number"),
            (&["--protocol", "tcpx"], "expected TCP, UDP"),
            (&["--dns", "a.*.example"], "expected a DNS name"),
            (&["--reason", "dns-nope"], "dns-zone, dns-cache"),
        ] {
            let err = pass(args).unwrap_err();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn dns_filters_match_a_name_or_the_names_under_one() {
        let query = |name: &str| FlowEvent {
            kind: "dns".into(),
            reason: "dns-upstream".into(),
            dns: Some(twill_api::flow::FlowDns {
                query: name.into(),
                ..Default::default()
            }),
            ..FlowEvent::default()
        };
        let events = [
            query("www.example.com."),
            query("example.com."),
            query("notexample.com."),
            FlowEvent::default(),
        ];
        let pass = |field: Field, value: &str, negated: bool| -> Vec<usize> {
            let f = Filters::new(vec![(field, value.to_owned(), negated)]).unwrap();
            (0..events.len())
                .filter(|i| f.matches(&events[*i]))
                .collect()
        };
        assert_eq!(pass(Field::Dns, "Example.com", false), [1]);
        assert_eq!(pass(Field::Dns, "example.com.", false), [1]);
        assert_eq!(pass(Field::Dns, "*.example.com", false), [0]);
        assert_eq!(pass(Field::Dns, "*.com", false), [0, 1, 2]);
        assert_eq!(pass(Field::Dns, "*.example.com", true), [1, 2, 3]);
        assert_eq!(pass(Field::Reason, "dns-upstream", false), [0, 1, 2]);
    }
}
