//! `sched-security`: who may call what.
//!
//! - [`tls`]: the `--tls-*` flags, loading the certificate files, client
//!   endpoints and server configuration for mutual TLS, and the rule that
//!   plaintext is served only on loopback unless `--insecure`.
//! - [`identity`]: the kind and name a certificate gives its holder.
//! - [`tokens`]: users, tenants and roles from bearer tokens.
//! - [`auth`]: the server side: a [`auth::Guard`] turns a request into a
//!   verified component or user, or a refusal.
//! - [`certs`]: a small CA (`schedctl certs`).

pub mod auth;
pub mod certs;
pub mod identity;
pub mod tls;
pub mod tokens;

pub use auth::{Bearer, Guard, User};
pub use identity::{Identity, Kind};
pub use tls::{Tls, TlsArgs};
pub use tokens::{Principal, Role, Tokens};
