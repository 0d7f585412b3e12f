//! Deciding who a caller is, on the server side of a call.
//!
//! A [`Guard`] knows what is in force on a server: mutual TLS (then every
//! peer has a verified certificate naming its kind and name) and, on the
//! global scheduler, tokens (then every user call carries a bearer token
//! naming a user, tenant and role). With neither, the server is open, as a
//! service started by hand on loopback is: every caller is an anonymous
//! admin.

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::identity::{self, Identity, Kind};
use crate::tokens::{Role, Tokens};

/// The user behind a call to the public API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// The tenant whose jobs the user works on; `None` when no tokens are
    /// in force (the job spec then says, `default` if it does not).
    pub tenant: Option<String>,
    pub role: Role,
}

impl User {
    /// Whether the user may read `tenant`'s jobs.
    pub fn sees(&self, tenant: &str) -> bool {
        self.role == Role::Admin || self.tenant.as_deref().is_none_or(|t| t == tenant)
    }

    /// Whether the user may change `tenant`'s jobs.
    pub fn changes(&self, tenant: &str) -> bool {
        self.role >= Role::Submitter && self.sees(tenant)
    }

    /// PERMISSION_DENIED unless the user's role is at least `role`; `what`
    /// says what was refused.
    pub fn require(&self, role: Role, what: &str) -> Result<(), Status> {
        if self.role >= role {
            return Ok(());
        }
        tracing::warn!(user = %self.name, role = %self.role, "denied: {what}");
        Err(Status::permission_denied(format!(
            "{what} needs the {role} role; {} is a {}",
            self.name, self.role
        )))
    }
}

/// What a server enforces.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    tls: bool,
    tokens: Option<Arc<Tokens>>,
}

impl Guard {
    /// No TLS and no tokens: everyone may do anything.
    pub fn open() -> Guard {
        Guard::default()
    }

    pub fn new(tls: bool, tokens: Option<Tokens>) -> Guard {
        Guard {
            tls,
            tokens: tokens.map(Arc::new),
        }
    }

    /// Whether mutual TLS is in force.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// Whether user tokens are in force.
    pub fn tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// The verified certificate identity of the caller; `None` when TLS is
    /// not in force.
    pub fn peer<T>(&self, request: &Request<T>) -> Result<Option<Identity>, Status> {
        if !self.tls {
            return Ok(None);
        }
        let certs = request.peer_certs();
        let Some(leaf) = certs.as_ref().and_then(|c| c.first()) else {
            return Err(Status::unauthenticated("no client certificate"));
        };
        identity::from_der(leaf)
            .map(Some)
            .map_err(|e| Status::unauthenticated(e.to_string()))
    }

    /// The component calling, which must be a `kind` named `name`:
    /// PERMISSION_DENIED (logged) otherwise. `Ok(None)` when TLS is not in
    /// force.
    pub fn component<T>(
        &self,
        request: &Request<T>,
        kind: Kind,
        name: &str,
    ) -> Result<Option<Identity>, Status> {
        let Some(peer) = self.peer(request)? else {
            return Ok(None);
        };
        if peer.kind == kind && peer.name == name {
            return Ok(Some(peer));
        }
        tracing::warn!(peer = %peer, claimed = %format!("{kind}/{name}"), "denied: a certificate speaking for another component");
        Err(Status::permission_denied(format!(
            "the certificate of {peer} cannot act for {kind} {name}"
        )))
    }

    /// The caller, which must be one of `kinds`; `Ok(None)` without TLS.
    pub fn one_of<T>(
        &self,
        request: &Request<T>,
        kinds: &[Kind],
    ) -> Result<Option<Identity>, Status> {
        let Some(peer) = self.peer(request)? else {
            return Ok(None);
        };
        if kinds.contains(&peer.kind) {
            return Ok(Some(peer));
        }
        tracing::warn!(peer = %peer, "denied: a certificate of the wrong kind");
        Err(Status::permission_denied(format!(
            "{} certificates cannot make this call",
            peer.kind
        )))
    }

    /// The user behind a bearer token, for callers outside gRPC (the
    /// status page): with tokens in force, the token's user
    /// (UNAUTHENTICATED without a valid one); without, an anonymous admin.
    /// Certificates are not looked at: a page served without TLS has none.
    pub fn token_user(&self, token: Option<&str>) -> Result<User, Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(User {
                name: "anonymous".to_string(),
                tenant: None,
                role: Role::Admin,
            });
        };
        let Some(token) = token else {
            return Err(Status::unauthenticated("a token is required"));
        };
        let Some(principal) = tokens.lookup(token.trim()) else {
            tracing::warn!("denied: an unknown token");
            return Err(Status::unauthenticated("the token is not valid"));
        };
        Ok(User {
            name: principal.user.clone(),
            tenant: Some(principal.tenant.clone()),
            role: principal.role,
        })
    }

    /// The user calling the public API.
    ///
    /// - Tokens in force: a valid `authorization: Bearer TOKEN` names the
    ///   user (UNAUTHENTICATED without one); with TLS too, the certificate
    ///   must be that user's.
    /// - TLS alone: the certificate must be a `user` one; its holder is an
    ///   admin (the CA is the trust).
    /// - Neither: an anonymous admin.
    pub fn user<T>(&self, request: &Request<T>) -> Result<User, Status> {
        let peer = self.peer(request)?;
        if let Some(p) = &peer {
            if p.kind != Kind::User {
                tracing::warn!(peer = %p, "denied: a component certificate calling the user API");
                return Err(Status::permission_denied(format!(
                    "{} certificates cannot call the scheduler's user API; use a user certificate",
                    p.kind
                )));
            }
        }
        let Some(tokens) = &self.tokens else {
            return Ok(User {
                name: peer.map_or_else(|| "anonymous".to_string(), |p| p.name),
                tenant: None,
                role: Role::Admin,
            });
        };
        let token = bearer(request.metadata())?;
        let Some(principal) = tokens.lookup(token) else {
            tracing::warn!("denied: an unknown token");
            return Err(Status::unauthenticated("the token is not valid"));
        };
        if let Some(p) = &peer {
            if p.name != principal.user {
                tracing::warn!(peer = %p, user = %principal.user, "denied: a token used with another user's certificate");
                return Err(Status::permission_denied(format!(
                    "the token is {}'s but the certificate is {}'s",
                    principal.user, p.name
                )));
            }
        }
        Ok(User {
            name: principal.user.clone(),
            tenant: Some(principal.tenant.clone()),
            role: principal.role,
        })
    }
}

/// The client side: adds `authorization: Bearer TOKEN` to every call (to
/// none without a token).
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<tonic::metadata::AsciiMetadataValue>);

/// A token that cannot travel in a header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the token is not printable ASCII")]
pub struct BadToken;

impl Bearer {
    pub fn new(token: Option<&str>) -> Result<Bearer, BadToken> {
        token
            .map(|t| format!("Bearer {}", t.trim()).parse().map_err(|_| BadToken))
            .transpose()
            .map(Bearer)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// The bearer token of a call; UNAUTHENTICATED without one.
pub fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    let value = metadata.get("authorization").ok_or_else(|| {
        Status::unauthenticated(
            "no token: send `authorization: Bearer TOKEN` (schedctl --token or SCHEDCTL_TOKEN)",
        )
    })?;
    value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Status::unauthenticated("the authorization header is not `Bearer TOKEN`"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::sha256_hex;

    fn guard() -> Guard {
        let text = format!(
            "tokens:\n  - {{user: alice, tenant: team-a, role: submitter, sha256: {}}}\n  - {{user: vic, tenant: team-a, role: viewer, sha256: {}}}\n",
            sha256_hex("a-token"),
            sha256_hex("v-token")
        );
        Guard::new(false, Some(Tokens::parse(&text).unwrap()))
    }

    fn with_token(t: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
        r
    }

    #[test]
    fn tokens_name_the_user_and_no_token_is_unauthenticated() {
        let g = guard();
        let u = g.user(&with_token("a-token")).unwrap();
        assert_eq!(
            (u.name.as_str(), u.tenant.as_deref(), u.role),
            ("alice", Some("team-a"), Role::Submitter)
        );
        assert_eq!(
            g.user(&Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            g.user(&with_token("nope")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn roles_and_tenants_bound_what_a_user_does() {
        let g = guard();
        let alice = g.user(&with_token("a-token")).unwrap();
        let vic = g.user(&with_token("v-token")).unwrap();
        assert!(alice.changes("team-a") && !alice.changes("team-b") && !alice.sees("team-b"));
        assert!(vic.sees("team-a") && !vic.changes("team-a"));
        assert_eq!(
            vic.require(Role::Submitter, "submit").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let open = Guard::open().user(&Request::new(())).unwrap();
        assert!(open.changes("anyone") && open.role == Role::Admin);
    }
}
