//! A small CA: what `schedctl certs init` and `schedctl certs issue` do,
//! and what `schedctl dev` and the tests use for a throwaway one.
//!
//! Keys are ECDSA P-256 (rcgen's default, which every TLS stack accepts).
//! Leaf certificates are valid for `localhost`, `127.0.0.1` and `::1`
//! plus any extra names, carry the identity URI (`sched://KIND/NAME`), and
//! are good for both ends of a connection (server and client auth), since
//! every component is both.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::identity::{self, Kind};

/// The CA's files in its directory.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";

/// How long a CA is valid.
const CA_DAYS: i64 = 3650;
/// How long an issued certificate is valid unless told otherwise.
pub const DEFAULT_DAYS: i64 = 365;

/// Why a certificate could not be made; the message names the file or field.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} already exists; not overwriting a CA")]
    Exists(String),
    #[error("{path}: {message}")]
    BadCa { path: String, message: String },
    #[error("--name: {0}")]
    BadName(String),
    #[error("--san {0:?}: not a DNS name or IP address")]
    BadSan(String),
    #[error("--days: must be 1 to 3650, not {0}")]
    BadDays(i64),
    #[error("{0}")]
    Rcgen(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `contents` to a new file with `mode` (keys 0600), replacing
/// nothing unless `replace`.
fn write(path: &Path, contents: &str, mode: u32, replace: bool) -> Result<(), CertError> {
    let mut o = fs::OpenOptions::new();
    o.write(true).mode(mode);
    if replace {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    let mut f = o.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CertError::Exists(path.display().to_string())
        } else {
            CertError::Io {
                path: path.display().to_string(),
                source: e,
            }
        }
    })?;
    f.write_all(contents.as_bytes()).map_err(io(path))
}

/// Makes a CA in `dir` (`ca.crt`, and `ca.key` readable only by its
/// owner). Refuses to overwrite one.
pub fn init_ca(dir: &Path) -> Result<(PathBuf, PathBuf), CertError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let (crt, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    for p in [&crt, &key_path] {
        if p.exists() {
            return Err(CertError::Exists(p.display().to_string()));
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "sched");
    dn.push(DnType::CommonName, "sched CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(CA_DAYS);
    let cert = params.self_signed(&key)?;
    write(&key_path, &key.serialize_pem(), 0o600, false)?;
    write(&crt, &cert.pem(), 0o644, false)?;
    Ok((crt, key_path))
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub kind: Kind,
    pub name: &'a str,
    /// Extra DNS names or IP addresses the holder serves on.
    pub sans: &'a [String],
    pub days: i64,
}

/// Issues a certificate signed by the CA in `ca_dir`, written as
/// `out/NAME.crt` and `out/NAME.key` (0600); replaces an earlier pair of
/// the same name.
pub fn issue(
    ca_dir: &Path,
    req: &Request<'_>,
    out: &Path,
) -> Result<(PathBuf, PathBuf), CertError> {
    identity::valid_name(req.name).map_err(CertError::BadName)?;
    if !(1..=CA_DAYS).contains(&req.days) {
        return Err(CertError::BadDays(req.days));
    }
    let (ca_crt, ca_key) = (ca_dir.join(CA_CERT), ca_dir.join(CA_KEY));
    let ca_pem = fs::read_to_string(&ca_crt).map_err(io(&ca_crt))?;
    let key_pem = fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
    let bad = |path: &Path, e: rcgen::Error| CertError::BadCa {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let ca_key_pair = KeyPair::from_pem(&key_pem).map_err(|e| bad(&ca_key, e))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key_pair).map_err(|e| bad(&ca_crt, e))?;

    let mut sans = vec![
        SanType::URI(identity::uri(req.kind, req.name).try_into()?),
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
        SanType::IpAddress("::1".parse::<IpAddr>().expect("an address")),
    ];
    for s in req.sans {
        sans.push(match s.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                identity::valid_name(s).map_err(|_| CertError::BadSan(s.clone()))?;
                SanType::DnsName(
                    s.as_str()
                        .try_into()
                        .map_err(|_| CertError::BadSan(s.clone()))?,
                )
            }
        });
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "sched");
    dn.push(DnType::OrganizationalUnitName, req.kind.as_str());
    dn.push(DnType::CommonName, req.name);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(req.days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    fs::create_dir_all(out).map_err(io(out))?;
    let (crt_path, key_path) = (
        out.join(format!("{}.crt", req.name)),
        out.join(format!("{}.key", req.name)),
    );
    write(&key_path, &key.serialize_pem(), 0o600, true)?;
    write(&crt_path, &cert.pem(), 0o644, true)?;
    Ok((crt_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_certificate_names_its_identity() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        assert!(matches!(init_ca(dir.path()), Err(CertError::Exists(_))));
        let sans = vec!["10.0.0.7".to_string(), "m1.example".to_string()];
        let req = Request {
            kind: Kind::Cluster,
            name: "east-a",
            sans: &sans,
            days: 30,
        };
        let (crt, key) = issue(dir.path(), &req, dir.path()).unwrap();
        let pem = fs::read(&crt).unwrap();
        let (_, p) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let id = identity::from_der(&p.contents).unwrap();
        assert_eq!((id.kind, id.name.as_str()), (Kind::Cluster, "east-a"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let tls = crate::tls::Tls::load(
            Some(&dir.path().join(CA_CERT)),
            Some(&crt),
            Some(&dir.path().join("east-a.key")),
        )
        .unwrap()
        .unwrap();
        assert_eq!(tls.identity().label(), "cluster/east-a");
    }

    #[test]
    fn bad_requests_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let none: Vec<String> = Vec::new();
        let bad_name = Request {
            kind: Kind::Node,
            name: "a/b",
            sans: &none,
            days: 1,
        };
        assert!(issue(dir.path(), &bad_name, dir.path())
            .unwrap_err()
            .to_string()
            .starts_with("--name"));
        let sans = vec!["not a name".to_string()];
        let bad_san = Request {
            kind: Kind::Node,
            name: "m1",
            sans: &sans,
            days: 1,
        };
        assert!(issue(dir.path(), &bad_san, dir.path())
            .unwrap_err()
            .to_string()
            .starts_with("--san"));
        let missing = tempfile::tempdir().unwrap();
        let req = Request {
            kind: Kind::Node,
            name: "m1",
            sans: &none,
            days: 1,
        };
        assert!(issue(missing.path(), &req, dir.path())
            .unwrap_err()
            .to_string()
            .contains("ca.crt"));
    }
}
