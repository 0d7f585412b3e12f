//! Who a certificate says its holder is.
//!
//! Every certificate our CA issues names one component: its kind
//! (`scheduler`, `cluster`, `node` or `user`) and its name, written as the
//! URI subject alternative name `sched://KIND/NAME` (and, for people reading
//! it with `openssl x509`, as the subject's organizational unit and common
//! name). Servers read the URI back from the peer's verified certificate
//! and allow a call only if it fits the caller: a cluster certificate for
//! `east-a` speaks only for the cluster `east-a`. The URI form follows
//! SPIFFE's idea of an identity in a URI SAN, without its trust-domain
//! machinery.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

/// The scheme of the URI that carries an identity.
pub const SCHEME: &str = "sched://";

/// What a certificate's holder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A global scheduler replica.
    Scheduler,
    /// A cluster's local agent; the name is the cluster's.
    Cluster,
    /// A node agent; the name is its machine's.
    Node,
    /// A person or a program acting for one (schedctl, a client).
    User,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Scheduler, Kind::Cluster, Kind::Node, Kind::User];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Scheduler => "scheduler",
            Kind::Cluster => "cluster",
            Kind::Node => "node",
            Kind::User => "user",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a kind (scheduler, cluster, node or user)"))
    }
}

/// A verified peer: what its certificate names, and the certificate's
/// SHA-256 fingerprint (which tells two certificates for the same name
/// apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub kind: Kind,
    pub name: String,
    pub fingerprint: String,
}

impl Identity {
    /// `kind/name`, as logs and errors show it.
    pub fn label(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// The URI that names `kind`/`name` in a certificate.
pub fn uri(kind: Kind, name: &str) -> String {
    format!("{SCHEME}{kind}/{name}")
}

/// Whether `name` may be named in a certificate: what cluster, machine and
/// user names may hold (letters, digits, `-`, `_`, `.`), 1 to 253 bytes.
pub fn valid_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{name:?}: a name is 1 to 253 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{name:?}: {c:?} is not allowed in a name (letters, digits, '-', '_', '.')"
        ));
    }
    Ok(())
}

/// Reads `kind/name` from a URI written by [`uri`].
fn parse_uri(uri: &str) -> Option<(Kind, String)> {
    let rest = uri.strip_prefix(SCHEME)?;
    let (kind, name) = rest.split_once('/')?;
    let kind = kind.parse().ok()?;
    valid_name(name).ok()?;
    Some((kind, name.to_string()))
}

/// Why a peer's certificate names no identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate cannot be read: {0}")]
    Unreadable(String),
    #[error("the certificate names no sched:// identity (issue it with `schedctl certs issue`)")]
    Missing,
    #[error("the certificate names more than one sched:// identity")]
    Ambiguous,
}

/// The identity in a DER certificate (the leaf of a verified chain).
pub fn from_der(der: &[u8]) -> Result<Identity, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Unreadable(e.to_string()))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Unreadable(e.to_string()))?;
    let mut found = None;
    for name in sans.iter().flat_map(|s| s.value.general_names.iter()) {
        if let GeneralName::URI(u) = name {
            if let Some(id) = parse_uri(u) {
                if found.replace(id).is_some() {
                    return Err(IdentityError::Ambiguous);
                }
            }
        }
    }
    let (kind, name) = found.ok_or(IdentityError::Missing)?;
    Ok(Identity {
        kind,
        name,
        fingerprint: fingerprint(der),
    })
}

/// The SHA-256 of a DER certificate, in lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_strangers_are_refused() {
        for kind in Kind::ALL {
            assert_eq!(
                parse_uri(&uri(kind, "east-a")),
                Some((kind, "east-a".into()))
            );
        }
        assert_eq!(parse_uri("sched://admin/x"), None);
        assert_eq!(parse_uri("sched://cluster/"), None);
        assert_eq!(parse_uri("sched://cluster/a/b"), None);
        assert_eq!(parse_uri("spiffe://cluster/a"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("m-1.rack_2").is_ok());
        assert!(valid_name("").is_err());
        assert!(valid_name("a b").unwrap_err().contains("' '"));
        assert!(valid_name(&"x".repeat(254)).is_err());
    }
}
