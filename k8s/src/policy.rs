//! `NetworkPolicy` (networking.k8s.io/v1) as validated and defaulted: the model the policy
//! compiler (`twill-policy`) reads. Defaulting is the API server's: a port's protocol is
//! TCP, missing `policyTypes` become `[Ingress]` plus `Egress` when there are egress rules.

use std::{collections::BTreeMap, fmt};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::Protocol;

/// The annotation that puts a policy in dry-run: `twill.io/enforcement: audit`.
pub const ENFORCEMENT_ANNOTATION: &str = "twill.io/enforcement";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The pods (in `namespace`) the policy applies to; empty selects them all.
    pub pod_selector: LabelSelector,
    /// Defaulted: never both false.
    pub ingress_isolation: bool,
    pub egress_isolation: bool,
    /// Ingress rules; with `ingress_isolation` and no rules, all ingress is denied.
    pub ingress: Vec<PolicyRule>,
    pub egress: Vec<PolicyRule>,
    pub enforcement: Enforcement,
}

/// Whether a policy denies what it does not allow, or only counts it (dry-run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    #[default]
    Enforce,
    /// `twill.io/enforcement: audit`: evaluated, never denies; would-be denials counted.
    Audit,
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Enforcement::Enforce => "enforce",
            Enforcement::Audit => "audit",
        })
    }
}

/// One `ingress[i]` or `egress[i]` rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRule {
    /// `from` / `to`; empty matches every peer.
    pub peers: Vec<PolicyPeer>,
    /// Empty matches every port and protocol.
    pub ports: Vec<PolicyPort>,
}

/// One element of `from` / `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyPeer {
    /// `podSelector` and/or `namespaceSelector`: pods matching `pods` (empty: all) in the
    /// namespaces matching `namespaces` (`None`: only the policy's own namespace).
    Pods {
        namespaces: Option<LabelSelector>,
        pods: LabelSelector,
    },
    /// `ipBlock`: addresses in `cidr` but in none of `except`. IPv6 blocks are kept (they
    /// are valid API objects) and match nothing: twill's pods and nodes are IPv4.
    IpBlock {
        cidr: IpNetwork,
        except: Vec<IpNetwork>,
    },
}

/// One element of `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyPort {
    pub protocol: Protocol,
    /// `None`: every port of `protocol`.
    pub port: Option<PolicyPortNumber>,
    /// `endPort`: with a numeric `port`, the range `port..=end_port`.
    pub end_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyPortNumber {
    Number(u16),
    /// A container port name, resolved on the destination pod.
    Named(String),
}

impl fmt::Display for PolicyPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.port, self.end_port) {
            (None, _) => write!(f, "any/{}", self.protocol),
            (Some(PolicyPortNumber::Number(p)), Some(end)) => {
                write!(f, "{p}-{end}/{}", self.protocol)
            }
            (Some(PolicyPortNumber::Number(p)), None) => write!(f, "{p}/{}", self.protocol),
            (Some(PolicyPortNumber::Named(n)), _) => write!(f, "{n}/{}", self.protocol),
        }
    }
}

/// A label selector (`matchLabels` and `matchExpressions`, ANDed); empty matches all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<LabelExpression>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelExpression {
    pub key: String,
    pub operator: SelectorOperator,
    /// Non-empty for `In`/`NotIn`, empty for `Exists`/`DoesNotExist`.
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// True when the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether an object with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator {
                    SelectorOperator::In => value.is_some_and(|v| e.values.contains(v)),
                    // As Kubernetes: a missing key is "not in" any set.
                    SelectorOperator::NotIn => value.is_none_or(|v| !e.values.contains(v)),
                    SelectorOperator::Exists => value.is_some(),
                    SelectorOperator::DoesNotExist => value.is_none(),
                }
            })
    }
}

impl fmt::Display for LabelSelector {
    /// The `kubectl` form: `app=web,tier in (a,b),!legacy`; `<all>` when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("<all>");
        }
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for e in &self.match_expressions {
            parts.push(match e.operator {
                SelectorOperator::In => format!("{} in ({})", e.key, e.values.join(",")),
                SelectorOperator::NotIn => format!("{} notin ({})", e.key, e.values.join(",")),
                SelectorOperator::Exists => e.key.clone(),
                SelectorOperator::DoesNotExist => format!("!{}", e.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

impl std::str::FromStr for LabelSelector {
    type Err = String;

    /// The `kubectl -l` form, the inverse of the `Display` form: requirements joined by
    /// `,` (all must hold): `key=value` (or `==`), `key!=value` (true too when the key is
    /// missing), `key in (a,b)`, `key notin (a,b)`, `key` (exists), `!key` (does not
    /// exist). Empty (or `<all>`) selects everything.
    fn from_str(text: &str) -> Result<LabelSelector, String> {
        let mut selector = LabelSelector::default();
        let text = text.trim();
        if text.is_empty() || text == "<all>" {
            return Ok(selector);
        }
        let check_key = |k: &str| crate::names::label_key(k).map(|()| k.to_owned());
        let check_value = |v: &str| crate::names::label_value(v).map(|()| v.to_owned());
        for part in split_requirements(text)? {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!("{text:?} has an empty requirement"));
            }
            let (key, operator, values) = if let Some(key) = part.strip_prefix('!') {
                (
                    check_key(key.trim())?,
                    SelectorOperator::DoesNotExist,
                    vec![],
                )
            } else if let Some((k, v)) = part.split_once("!=") {
                let value = check_value(v.trim())?;
                (check_key(k.trim())?, SelectorOperator::NotIn, vec![value])
            } else if let Some((k, v)) = part.split_once('=') {
                let v = v.strip_prefix('=').unwrap_or(v).trim();
                let (key, value) = (check_key(k.trim())?, check_value(v)?);
                match selector.match_labels.entry(key) {
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(value);
                        continue;
                    }
                    // A second `key=` must hold too: as an expression.
                    std::collections::btree_map::Entry::Occupied(e) => {
                        (e.key().clone(), SelectorOperator::In, vec![value])
                    }
                }
            } else if let Some(open) = part.find('(') {
                let head: Vec<&str> = part[..open].split_whitespace().collect();
                let operator = match head[..] {
                    [_, "in"] => SelectorOperator::In,
                    [_, "notin"] => SelectorOperator::NotIn,
                    _ => return Err(format!("{part:?}: use KEY in (A,B) or KEY notin (A,B)")),
                };
                let inner = part[open + 1..]
                    .strip_suffix(')')
                    .ok_or_else(|| format!("{part:?}: the value list needs a closing ')'"))?;
                let values = inner
                    .split(',')
                    .map(|v| check_value(v.trim()))
                    .collect::<Result<Vec<_>, _>>()?;
                (check_key(head[0])?, operator, values)
            } else if part.contains(['<', '>']) {
                return Err(format!(
                    "{part:?}: the Gt and Lt operators are not supported"
                ));
            } else {
                (check_key(part)?, SelectorOperator::Exists, vec![])
            };
            selector.match_expressions.push(LabelExpression {
                key,
                operator,
                values,
            });
        }
        Ok(selector)
    }
}

/// `text` split at the commas outside parentheses.
fn split_requirements(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("{text:?} has a ')' without '('"))?;
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("{text:?} has a '(' without ')'"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}
