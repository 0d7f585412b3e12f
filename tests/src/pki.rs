//! A throwaway CA for tests that run the stack with mutual TLS.

use std::path::PathBuf;

use sched_security::{certs, tokens, Kind, Role, Tls};

/// A CA in a temporary directory, and the certificates issued from it.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("a temporary directory");
        certs::init_ca(dir.path()).expect("a CA");
        Pki { dir }
    }

    /// Issues `kind`/`name` into `out` (a directory of its own, so that two
    /// certificates for one name can coexist): the CA's, the certificate's
    /// and the key's paths.
    pub fn issue_in(&self, out: &str, kind: Kind, name: &str) -> [PathBuf; 3] {
        let req = certs::Request {
            kind,
            name,
            sans: &[],
            days: 1,
        };
        let out = self.dir.path().join(out);
        let (crt, key) = certs::issue(self.dir.path(), &req, &out).expect("a certificate");
        [self.dir.path().join(certs::CA_CERT), crt, key]
    }

    /// The `--tls-*` flags of a new certificate for `kind`/`name`.
    pub fn flags(&self, kind: Kind, name: &str) -> Vec<String> {
        self.flags_in("issued", kind, name)
    }

    /// [`Pki::flags`], the pair written under `out`.
    pub fn flags_in(&self, out: &str, kind: Kind, name: &str) -> Vec<String> {
        let [ca, crt, key] = self.issue_in(out, kind, name);
        sched_security::tls::flags(&ca, &crt, &key)
    }

    /// A new certificate for `kind`/`name`, loaded for a client.
    pub fn tls(&self, kind: Kind, name: &str) -> Tls {
        self.tls_in("clients", kind, name)
    }

    /// [`Pki::tls`], the pair written under `out`.
    pub fn tls_in(&self, out: &str, kind: Kind, name: &str) -> Tls {
        let [ca, crt, key] = self.issue_in(out, kind, name);
        Tls::load(Some(&ca), Some(&crt), Some(&key))
            .expect("readable")
            .expect("all three files")
    }

    /// A new token for `user` of `tenant` with `role`, and the path of a
    /// `--tokens` file (in the CA's directory) that lists it alone.
    pub fn token(&self, user: &str, tenant: &str, role: Role) -> (String, PathBuf) {
        let token = tokens::generate().expect("/dev/urandom");
        let path = self.dir.path().join(format!("tokens-{user}.yaml"));
        let text = format!(
            "tokens:\n  - {{user: {user}, tenant: {tenant}, role: {role}, sha256: {}}}\n",
            tokens::sha256_hex(&token)
        );
        std::fs::write(&path, text).expect("write the tokens file");
        (token, path)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}
