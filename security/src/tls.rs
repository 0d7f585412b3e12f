//! Mutual TLS for every hop: the flags, the files, and the rules.
//!
//! Every server and client takes `--tls-ca`, `--tls-cert` and `--tls-key`
//! (all three or none). With them, a server accepts only peers whose
//! certificate chains to the CA (and tells them apart by the identity the
//! certificate names, see [`crate::identity`]); a client verifies the
//! server the same way and shows its own certificate. Without them a
//! server speaks plaintext and authenticates nobody, which it refuses on
//! any address but loopback unless told `--insecure`. An `https://` URL
//! never falls back to plaintext; with TLS configured an `http://` URL is
//! upgraded to `https://`, never the other way round.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::identity::{self, Identity as Named};

/// The TLS flags every server and client takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// The CA certificate (PEM) every peer's certificate must chain to;
    /// with --tls-cert and --tls-key it turns on mutual TLS.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This component's certificate (PEM), issued by the CA
    /// (`schedctl certs issue`).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Serve plaintext without authentication on a non-loopback address
    /// (refused without this flag).
    #[arg(long)]
    pub insecure: bool,
}

impl TlsArgs {
    /// The certificate material, or `None` when no TLS flag is given.
    pub fn load(&self) -> Result<Option<Tls>, TlsError> {
        Tls::load(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
        )
    }
}

/// TLS to etcd (etcd's own certificates, which name no sched identity).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EtcdTlsArgs {
    /// The CA that signed etcd's server certificate (PEM); turns on TLS to
    /// etcd (every --etcd endpoint dialled as https://).
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// A client certificate for etcd's --client-cert-auth (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The key of --etcd-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

/// PEM material for TLS to etcd: the CA, and a client certificate and key.
pub type EtcdPem = (Vec<u8>, Option<(Vec<u8>, Vec<u8>)>);

impl EtcdTlsArgs {
    /// The files' contents, or `None` without --etcd-ca.
    pub fn load(&self) -> Result<Option<EtcdPem>, TlsError> {
        let read = |flag: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                flag,
                path: path.display().to_string(),
                source,
            })
        };
        let Some(ca) = &self.etcd_ca else {
            if self.etcd_cert.is_some() {
                return Err(TlsError::Incomplete {
                    flag: "--etcd-ca",
                    given: "--etcd-cert",
                });
            }
            return Ok(None);
        };
        let identity = match (&self.etcd_cert, &self.etcd_key) {
            (Some(c), Some(k)) => Some((read("--etcd-cert", c)?, read("--etcd-key", k)?)),
            _ => None,
        };
        Ok(Some((read("--etcd-ca", ca)?, identity)))
    }
}

/// Why the TLS material cannot be used; the message names the flag.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag}: needed with {given} (give --tls-ca, --tls-cert and --tls-key together)")]
    Incomplete {
        flag: &'static str,
        given: &'static str,
    },
    #[error("{flag} {path}: {source}")]
    Read {
        flag: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{flag} {path}: {message}")]
    Invalid {
        flag: &'static str,
        path: String,
        message: String,
    },
}

/// A CA, and this component's certificate and key, all PEM.
#[derive(Clone)]
pub struct Tls {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
    identity: Named,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Tls")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the three files; `None` if none is given, an error naming the
    /// missing flag if only some are.
    pub fn load(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Option<Tls>, TlsError> {
        let given = [("--tls-ca", ca), ("--tls-cert", cert), ("--tls-key", key)];
        let Some(&(first, _)) = given.iter().find(|(_, p)| p.is_some()) else {
            return Ok(None);
        };
        if let Some(&(flag, _)) = given.iter().find(|(_, p)| p.is_none()) {
            return Err(TlsError::Incomplete { flag, given: first });
        }
        let read = |flag: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                flag,
                path: path.display().to_string(),
                source,
            })
        };
        let (ca, cert, key) = (ca.unwrap(), cert.unwrap(), key.unwrap());
        let tls = Tls::from_pem(
            read("--tls-ca", ca)?,
            read("--tls-cert", cert)?,
            read("--tls-key", key)?,
        )
        .map_err(|(flag, message)| TlsError::Invalid {
            flag,
            path: match flag {
                "--tls-ca" => ca,
                "--tls-key" => key,
                _ => cert,
            }
            .display()
            .to_string(),
            message,
        })?;
        Ok(Some(tls))
    }

    /// From PEM text already read; the error names the flag at fault.
    pub fn from_pem(
        ca: Vec<u8>,
        cert: Vec<u8>,
        key: Vec<u8>,
    ) -> Result<Tls, (&'static str, String)> {
        let first_der = |pem: &[u8], flag: &'static str| {
            let text = std::str::from_utf8(pem).map_err(|_| (flag, "not PEM text".to_string()))?;
            x509_parser::pem::parse_x509_pem(text.as_bytes())
                .map(|(_, p)| p.contents)
                .map_err(|e| (flag, format!("not a PEM certificate: {e}")))
        };
        first_der(&ca, "--tls-ca")?;
        let leaf = first_der(&cert, "--tls-cert")?;
        let identity = identity::from_der(&leaf).map_err(|e| ("--tls-cert", e.to_string()))?;
        if !String::from_utf8_lossy(&key).contains("PRIVATE KEY") {
            return Err(("--tls-key", "not a PEM private key".into()));
        }
        Ok(Tls {
            ca,
            cert,
            key,
            identity,
        })
    }

    /// Who this component's own certificate says it is.
    pub fn identity(&self) -> &Named {
        &self.identity
    }

    /// A server that requires a client certificate from the CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
    }

    /// A client that trusts only the CA and shows its certificate.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
    }
}

/// The `--tls-ca/--tls-cert/--tls-key` arguments naming these files, for a
/// process started with them.
pub fn flags(ca: &Path, cert: &Path, key: &Path) -> Vec<String> {
    vec![
        "--tls-ca".into(),
        ca.display().to_string(),
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ]
}

/// A URL a client cannot use as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?} is not a URL (like https://127.0.0.1:7070)")]
    NotAUrl(String),
    #[error(
        "{0}: https:// needs --tls-ca, --tls-cert and --tls-key (it never falls back to plaintext)"
    )]
    HttpsWithoutTls(String),
    #[error("{0}: only http:// and https:// are understood")]
    Scheme(String),
}

/// `url` as it will be dialled: `http://` upgraded to `https://` when TLS
/// is configured; `https://` without TLS refused.
pub fn dial_url(url: &str, tls: bool) -> Result<String, UrlError> {
    let url = url.trim();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| UrlError::NotAUrl(url.to_string()))?;
    match (scheme, tls) {
        ("https", false) => Err(UrlError::HttpsWithoutTls(url.to_string())),
        ("https", true) | ("http", true) => Ok(format!("https://{rest}")),
        ("http", false) => Ok(url.to_string()),
        _ => Err(UrlError::Scheme(url.to_string())),
    }
}

/// An endpoint for `url`, with TLS when `tls` is given.
pub fn endpoint(url: &str, tls: Option<&Tls>) -> Result<Endpoint, UrlError> {
    let dial = dial_url(url, tls.is_some())?;
    let e = Endpoint::from_shared(dial.clone())
        .map_err(|_| UrlError::NotAUrl(url.to_string()))?
        // Requests go out at once, not held for an ACK (tonic's default
        // too; said here so that no change of default brings the 40 ms
        // delayed-ACK stall back).
        .tcp_nodelay(true);
    match tls {
        Some(t) => e
            .tls_config(t.client())
            .map_err(|_| UrlError::NotAUrl(url.to_string())),
        None => Ok(e),
    }
}

/// Whether a server may listen on `addr` as configured: plaintext only on
/// loopback unless `insecure`. Logs the one line that says what is in
/// force.
pub fn check_listen(
    addr: SocketAddr,
    tls: Option<&Tls>,
    insecure: bool,
    what: &str,
) -> Result<(), String> {
    match tls {
        Some(t) => {
            tracing::info!(%addr, identity = %t.identity(), "{what}: mutual TLS");
            Ok(())
        }
        None if addr.ip().is_loopback() || insecure => {
            tracing::warn!(
                %addr,
                "{what}: plaintext, no authentication (give --tls-ca, --tls-cert and --tls-key)"
            );
            Ok(())
        }
        None => Err(format!(
            "{what}: refusing to serve plaintext on {addr}, which is not a loopback address: \
             give --tls-ca, --tls-cert and --tls-key, or --insecure"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_never_falls_back_and_tls_upgrades_http() {
        assert_eq!(dial_url("http://h:1", false).unwrap(), "http://h:1");
        assert_eq!(dial_url("http://h:1", true).unwrap(), "https://h:1");
        assert_eq!(dial_url("https://h:1", true).unwrap(), "https://h:1");
        assert_eq!(
            dial_url("https://h:1", false),
            Err(UrlError::HttpsWithoutTls("https://h:1".into()))
        );
        assert!(matches!(
            dial_url("ftp://h:1", false),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(dial_url("h:1", false), Err(UrlError::NotAUrl(_))));
    }

    #[test]
    fn plaintext_is_refused_off_loopback() {
        let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:1".parse().unwrap();
        assert!(check_listen(lo, None, false, "x").is_ok());
        let e = check_listen(any, None, false, "x").unwrap_err();
        assert!(e.contains("--insecure"), "{e}");
        assert!(check_listen(any, None, true, "x").is_ok());
    }

    #[test]
    fn the_flags_come_all_together() {
        let e = Tls::load(Some(Path::new("/x")), None, None).unwrap_err();
        assert!(e.to_string().starts_with("--tls-cert"), "{e}");
        assert!(Tls::load(None, None, None).unwrap().is_none());
    }
}
