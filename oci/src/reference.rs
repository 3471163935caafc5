//! Image references as wasmpod writes them into layouts and pushes them:
//! the distribution grammar (oci-spec's `Reference`), plus the rules a node
//! needs on top: an explicit registry domain (containerd does not expand
//! `name:tag` the way Docker does), a tag or a digest, and sha256 digests.

use oci_spec::distribution::Reference;

use crate::blob::BuildError;

/// Checks that `reference` is fully qualified: `domain/path[:tag][@digest]`
/// with an explicit registry domain and at least one of tag and digest.
pub fn validate_reference(reference: &str) -> Result<(), BuildError> {
    check(reference).map_err(|reason| BuildError::InvalidReference {
        reference: reference.to_owned(),
        reason,
    })
}

fn check(reference: &str) -> Result<(), String> {
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    let Some((domain, _)) = name.split_once('/') else {
        return Err(
            "a registry domain and repository path are required (e.g. 'docker.io/library/name')"
                .to_owned(),
        );
    };
    if !(domain.contains('.') || domain.contains(':') || domain == "localhost") {
        return Err(format!(
            "{domain:?} is not a registry domain (it needs a '.', a ':port' or to be 'localhost')"
        ));
    }
    check_domain(domain)?;
    // A ':' after the last '/' starts the tag; earlier ones belong to a port.
    let has_tag = name
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'));
    if !has_tag && digest.is_none() {
        return Err("a tag or digest is required (e.g. ':latest')".to_owned());
    }
    if let Some(digest) = digest {
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(format!(
                "digest {digest:?} must be 'sha256:' and 64 lowercase hex digits"
            ));
        }
    }
    let parsed = Reference::try_from(reference).map_err(|e| e.to_string())?;
    if parsed.registry() != domain {
        return Err(format!("{domain:?} is not a registry domain"));
    }
    Ok(())
}

/// A host name (labels of letters, digits and inner '-') with an optional
/// numeric port: what the grammar takes as a domain.
fn check_domain(domain: &str) -> Result<(), String> {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "port {port:?} of domain {domain:?} is not a number"
            ));
        }
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!("domain {domain:?} is not a valid host name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_validated() {
        for good in [
            "docker.io/wasmpod/probe:p1",
            "localhost/probe:latest",
            "localhost:5000/a/b-c/d__e:v1.2_3",
            "ghcr.io/x/y@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "ghcr.io/x/y:t@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(check(good).is_ok(), "{good}: {:?}", check(good));
        }
        for bad in [
            "",
            "probe:p1",
            "wasmpod/probe:p1",
            "docker.io/wasmpod/probe",
            "docker.io/WasmPod/probe:p1",
            "docker.io/wasmpod/probe:",
            "docker.io/wasmpod/probe:-x",
            "docker.io//probe:p1",
            "docker.io/a/b:c@sha256:abc",
            "exa_mple.com/a:b",
            "localhost:port/a:b",
            "docker.io/a/b@sha512:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            let err = validate_reference(bad).expect_err(bad);
            assert!(
                matches!(err, BuildError::InvalidReference { .. }),
                "{bad}: {err}"
            );
        }
    }
}
