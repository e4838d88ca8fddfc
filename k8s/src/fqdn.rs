//! `FQDNPolicy` (policy.twill.io/v1alpha1) as validated: which names outside the cluster
//! the pods it selects may resolve, and so reach, on which ports.
//!
//! Matching a DNS name against an [`FqdnSelector`]:
//!
//! - Comparison is ASCII case-insensitive, and one trailing dot of the name is ignored
//!   (`WWW.Example.ORG.` is `www.example.org`).
//! - `matchName` ([`FqdnSelector::Name`]) matches exactly that name.
//! - In `matchPattern` ([`FqdnSelector::Pattern`]), `*` matches any run, possibly empty, of
//!   the characters `a-z`, `0-9`, `-` and `_` inside one label. It never crosses a dot:
//!   `*.example.org` matches `a.example.org` but neither `example.org` nor
//!   `a.b.example.org`, and `api-*.example.org` matches `api-1.example.org` and
//!   `api-.example.org`. The pattern and the name must have the same number of labels.
//! - The pattern `*` alone matches every name.
//!
//! A name with an empty label (`a..b`, `.a`) is matched by nothing but the lone `*`.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

use crate::{LabelSelector, Protocol};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FqdnPolicy {
    pub namespace: String,
    pub name: String,
    /// Not used for enforcement; kept so `netctl get -l` and `-o yaml` see them (stored
    /// policies from before they were kept have none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The pods (in `namespace`) the policy applies to; empty selects them all.
    pub pod_selector: LabelSelector,
    /// No rules: the selected pods may resolve and reach no name outside the cluster.
    pub egress: Vec<FqdnRule>,
}

/// One `spec.egress[i]` rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FqdnRule {
    /// `toFQDNs`: never empty in a validated policy.
    pub to_fqdns: Vec<FqdnSelector>,
    /// Empty: every port and protocol.
    pub ports: Vec<FqdnPort>,
}

/// One element of `toFQDNs`, lower-case and without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FqdnSelector {
    /// `matchName`: exactly this name.
    Name(String),
    /// `matchPattern`: `*` stands for part of one label (see the module doc).
    Pattern(String),
}

/// One element of `ports`: `port..=end_port` of `protocol`. An entry written without
/// `port` stands for every port of its protocol (`1..=65535`), as in a NetworkPolicy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FqdnPort {
    pub protocol: Protocol,
    pub port: u16,
    /// Equal to `port` when the entry is not a range.
    pub end_port: u16,
}

impl FqdnSelector {
    /// The name or pattern as written (normalized).
    pub fn as_str(&self) -> &str {
        match self {
            FqdnSelector::Name(s) | FqdnSelector::Pattern(s) => s,
        }
    }

    /// Whether `name` (any case, with or without the trailing dot) is selected.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        match self {
            FqdnSelector::Name(n) => name.eq_ignore_ascii_case(n),
            FqdnSelector::Pattern(p) if p == "*" => true,
            FqdnSelector::Pattern(p) => {
                let mut want = p.split('.');
                let mut got = name.split('.');
                loop {
                    match (want.next(), got.next()) {
                        (None, None) => return true,
                        (Some(w), Some(g)) if !g.is_empty() && label_matches(w, g) => {}
                        _ => return false,
                    }
                }
            }
        }
    }
}

/// What `*` may stand for.
fn wildcard_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// One label of a pattern against one label of a name: `*` matches a run of
/// [`wildcard_char`]s, anything else itself (ASCII case-insensitive).
fn label_matches(pattern: &str, label: &str) -> bool {
    let (pattern, label) = (pattern.as_bytes(), label.as_bytes());
    // at[j]: the pattern's first i bytes match the label's first j bytes (dynamic
    // programming over i; labels are at most 63 bytes, so this is cheap and has no
    // exponential backtracking on patterns with several `*`).
    let mut at = vec![false; label.len() + 1];
    at[0] = true;
    for &p in pattern {
        if p == b'*' {
            for j in 1..=label.len() {
                at[j] = at[j] || (at[j - 1] && wildcard_char(label[j - 1]));
            }
        } else {
            for j in (1..=label.len()).rev() {
                at[j] = at[j - 1] && label[j - 1].eq_ignore_ascii_case(&p);
            }
            at[0] = false;
        }
    }
    at[label.len()]
}

impl fmt::Display for FqdnSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FqdnPolicy {
    /// The rules of this policy whose toFQDNs select `name`.
    pub fn rules_for<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (usize, &'a FqdnRule)> + 'a {
        self.egress
            .iter()
            .enumerate()
            .filter(move |(_, r)| r.to_fqdns.iter().any(|s| s.matches(name)))
    }
}

impl FqdnRule {
    /// true when the rule allows every port and protocol (no ports)
    pub fn any_port(&self) -> bool {
        self.ports.is_empty()
    }
}

impl fmt::Display for FqdnPort {
    /// `443/TCP`, `8000-8080/UDP`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port == self.end_port {
            write!(f, "{}/{}", self.port, self.protocol)
        } else {
            write!(f, "{}-{}/{}", self.port, self.end_port, self.protocol)
        }
    }
}
