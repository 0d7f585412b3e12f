//! Users, tenants and roles, from bearer tokens.
//!
//! The global scheduler's `--tokens FILE`:
//!
//! ```yaml
//! tokens:
//!   - {user: alice, tenant: team-a, role: submitter, sha256: 5e88...}
//! ```
//!
//! The file holds the SHA-256 of each token, never the token: a copy of it
//! lets nobody in. A caller sends `authorization: Bearer TOKEN`; the token's
//! hash names the user, the tenant whose jobs they work on and their role.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::identity::{hex, valid_name};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads its tenant's jobs, logs and the clusters.
    Viewer,
    /// A viewer that also submits, cancels and deletes its tenant's jobs.
    Submitter,
    /// Everything: every tenant's jobs, clusters, quotas.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Submitter => "submitter",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        [Role::Viewer, Role::Submitter, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a role (admin, submitter or viewer)"))
    }
}

/// A user a token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub tenant: String,
    pub role: Role,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tokens: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    user: String,
    tenant: String,
    role: Role,
    sha256: String,
}

/// A token file that cannot be used; the message names the entry and field.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// The tokens the scheduler accepts, by the SHA-256 of the token.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_hash: HashMap<String, Principal>,
}

impl Tokens {
    /// Reads and checks a token file.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Tokens::parse(&text).map_err(|message| TokensError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses a token file's text; the error names the field.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let file: File = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mut by_hash = HashMap::new();
        for (i, e) in file.tokens.into_iter().enumerate() {
            let at = |field: &str, why: String| format!("tokens[{i}].{field}: {why}");
            valid_name(&e.user).map_err(|w| at("user", w))?;
            valid_name(&e.tenant).map_err(|w| at("tenant", w))?;
            let hash = e.sha256.to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(at(
                    "sha256",
                    "not a SHA-256 (64 hex digits; `schedctl token new` makes one)".into(),
                ));
            }
            let principal = Principal {
                user: e.user,
                tenant: e.tenant,
                role: e.role,
            };
            if by_hash.insert(hash, principal).is_some() {
                return Err(at("sha256", "the same token is listed twice".into()));
            }
        }
        Ok(Tokens { by_hash })
    }

    /// Who `token` stands for, if anyone.
    pub fn lookup(&self, token: &str) -> Option<&Principal> {
        self.by_hash.get(&sha256_hex(token))
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// The SHA-256 of a token, in lower-case hex: what a token file lists.
pub fn sha256_hex(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// A new random token (256 bits from the operating system, hex).
pub fn generate() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_user_tenant_and_role() {
        let text = format!(
            "tokens:\n  - {{user: alice, tenant: team-a, role: submitter, sha256: {}}}\n",
            sha256_hex("secret")
        );
        let t = Tokens::parse(&text).unwrap();
        let p = t.lookup("secret").unwrap();
        assert_eq!(
            (p.user.as_str(), p.tenant.as_str(), p.role),
            ("alice", "team-a", Role::Submitter)
        );
        assert!(t.lookup("Secret").is_none());
    }

    #[test]
    fn bad_entries_name_their_field() {
        let e = Tokens::parse("tokens:\n  - {user: a, tenant: t, role: root, sha256: x}\n")
            .unwrap_err();
        assert!(e.contains("role"), "{e}");
        let e = Tokens::parse("tokens:\n  - {user: a, tenant: t, role: admin, sha256: abc}\n")
            .unwrap_err();
        assert!(e.contains("tokens[0].sha256"), "{e}");
        let e = Tokens::parse("tokens:\n  - {user: a, tenant: t, role: admin, token: x}\n")
            .unwrap_err();
        assert!(e.contains("token"), "{e}");
        let h = sha256_hex("x");
        let two = format!(
            "tokens:\n  - {{user: a, tenant: t, role: admin, sha256: {h}}}\n  - {{user: b, tenant: t, role: viewer, sha256: {h}}}\n"
        );
        assert!(Tokens::parse(&two)
            .unwrap_err()
            .contains("tokens[1].sha256"));
    }

    #[test]
    fn generated_tokens_differ() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
