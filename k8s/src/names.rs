//! The naming rules Kubernetes applies, as predicates that say what is wrong.

/// DNS-1123 label: 1-63 lower-case alphanumerics or '-', starting and ending alphanumeric.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    ok.then_some(()).ok_or_else(|| {
        format!("{s:?} is not a DNS label (1-63 lower-case letters, digits or '-', starting and ending with a letter or digit)")
    })
}

/// DNS-1035 label (Service names): a DNS-1123 label that starts with a letter.
pub fn dns1035_label(s: &str) -> Result<(), String> {
    dns1123_label(s)?;
    if s.starts_with(|c: char| c.is_ascii_lowercase()) {
        Ok(())
    } else {
        Err(format!("{s:?} must start with a letter"))
    }
}

/// DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 || s.split('.').any(|l| dns1123_label(l).is_err()) {
        return Err(format!(
            "{s:?} is not a DNS subdomain (lower-case labels joined by '.', at most 253 characters)"
        ));
    }
    Ok(())
}

/// IANA service name (named ports): 1-15 characters of lower-case letters, digits and '-',
/// with at least one letter, no '-' at either end, and no "--".
pub fn iana_svc_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    ok.then_some(()).ok_or_else(|| {
        format!("{s:?} is not a port name (1-15 lower-case letters, digits or '-', with a letter, no '--' and no '-' at either end)")
    })
}

fn qualified_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Label key: `[prefix/]name`, prefix a DNS subdomain, name 1-63 alphanumerics, '-', '_',
/// '.' starting and ending alphanumeric.
pub fn label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        dns1123_subdomain(p).map_err(|e| format!("label key {k:?}: prefix {e}"))?;
    }
    if qualified_part(name) {
        Ok(())
    } else {
        Err(format!(
            "label key {k:?} is invalid (name: 1-63 letters, digits, '-', '_', '.', starting and ending with a letter or digit)"
        ))
    }
}

/// Label value: empty, or like a label key's name part.
pub fn label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || qualified_part(v) {
        Ok(())
    } else {
        Err(format!(
            "label value {v:?} is invalid (at most 63 letters, digits, '-', '_', '.', starting and ending with a letter or digit)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_kubernetes_rules() {
        for good in ["web", "a", "web-1", &"a".repeat(63)] {
            dns1123_label(good).unwrap();
        }
        for bad in ["", "Web", "-web", "web-", "we_b", &"a".repeat(64)] {
            assert!(dns1123_label(bad).is_err(), "{bad:?}");
        }
        assert!(dns1035_label("1web").is_err());
        dns1123_subdomain("example.com").unwrap();
        for good in ["http", "web-8080", "h2c"] {
            iana_svc_name(good).unwrap();
        }
        for bad in ["8080", "http--alt", "-http", "a-very-long-portname", "HTTP"] {
            assert!(iana_svc_name(bad).is_err(), "{bad:?}");
        }
        for good in ["app", "app.kubernetes.io/name", "k8s-app", "A_b.c"] {
            label_key(good).unwrap();
        }
        for bad in ["", "/app", "app/", "-app", "Example.com/app"] {
            assert!(label_key(bad).is_err(), "{bad:?}");
        }
        label_value("").unwrap();
        label_value("v1.2_3").unwrap();
        assert!(label_value("has space").is_err());
    }
}
