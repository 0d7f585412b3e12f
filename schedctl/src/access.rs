//! How schedctl reaches the scheduler and proves who it is: the `--server`,
//! `--tls-*` and `--token` flags (or their `SCHEDCTL_*` variables), and a
//! config file of named contexts, as kubeconfig has:
//!
//! ```yaml
//! current-context: dev
//! contexts:
//!   - name: dev
//!     server: https://127.0.0.1:7070
//!     tls-ca: /tmp/sched-dev/pki/ca.crt
//!     tls-cert: /tmp/sched-dev/pki/admin.crt
//!     tls-key: /tmp/sched-dev/pki/admin.key
//!     token-file: /tmp/sched-dev/pki/admin.token   # or token: ...
//! ```
//!
//! A flag or variable wins over the context; the context over the
//! defaults (`http://127.0.0.1:7070`, no TLS, no token). Also here:
//! `schedctl certs` (a small CA) and `schedctl token new`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::client::Target;
use sched_security::certs;
use sched_security::{Kind, Role, Tls};

/// The default scheduler address.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// The flags of every command that talks to the scheduler (global within
/// it: `schedctl get --server URL jobs` and `schedctl get jobs --server
/// URL` alike; `schedctl --server URL get jobs` too, see `Cli`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AccessArgs {
    /// The global scheduler's address (several replicas: comma-separated);
    /// without a scheme, http:// (https:// with TLS flags or a TLS context)
    /// [default: the context's, or http://127.0.0.1:7070].
    #[arg(long, global = true, env = "SCHEDCTL_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// The CA certificate the scheduler's certificate must chain to.
    #[arg(long, global = true, env = "SCHEDCTL_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Your user certificate (`schedctl certs issue --kind user`).
    #[arg(long, global = true, env = "SCHEDCTL_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert.
    #[arg(long, global = true, env = "SCHEDCTL_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Your bearer token (`schedctl token new`).
    #[arg(
        long,
        global = true,
        env = "SCHEDCTL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// A config file of contexts [default: ~/.config/schedctl/config.yaml,
    /// if it exists].
    #[arg(long, global = true, env = "SCHEDCTL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The context to use [default: the file's current-context].
    #[arg(long, global = true, env = "SCHEDCTL_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
}

/// A config file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<ContextEntry>,
}

/// One context of a config file.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ContextEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

fn default_config() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".config/schedctl/config.yaml");
    p.exists().then_some(p)
}

/// The context in force, if a config file is.
fn context(args: &AccessArgs) -> anyhow::Result<Option<ContextEntry>> {
    let Some(path) = args.config.clone().or_else(default_config) else {
        if let Some(c) = &args.context {
            bail!("--context {c}: no config file (--config or SCHEDCTL_CONFIG)");
        }
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--config: cannot read {}", path.display()))?;
    let file: ConfigFile = serde_yaml::from_str(&text)
        .with_context(|| format!("--config {}: invalid", path.display()))?;
    let Some(name) = args.context.clone().or(file.current_context) else {
        return Ok(None);
    };
    let found = file.contexts.into_iter().find(|c| c.name == name);
    match found {
        Some(c) => Ok(Some(c)),
        None => bail!("--context: {name:?} is not a context of {}", path.display()),
    }
}

/// Where and as whom remote commands connect.
pub fn target(args: &AccessArgs) -> anyhow::Result<Target> {
    let ctx = context(args)?.unwrap_or_default();
    let server = args
        .server
        .clone()
        .or(ctx.server)
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());
    let tls = Tls::load(
        args.tls_ca.as_deref().or(ctx.tls_ca.as_deref()),
        args.tls_cert.as_deref().or(ctx.tls_cert.as_deref()),
        args.tls_key.as_deref().or(ctx.tls_key.as_deref()),
    )?;
    if let Some(t) = &tls {
        if t.identity().kind != Kind::User {
            bail!(
                "--tls-cert: {} is not a user certificate (schedctl certs issue --kind user)",
                t.identity()
            );
        }
    }
    let token = match (args.token.clone().or(ctx.token), &ctx.token_file) {
        (Some(t), _) => Some(t),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("token-file: cannot read {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let server = server_urls(&server, tls.is_some())?;
    Ok(Target { server, tls, token })
}

/// `list` (comma-separated addresses) with a scheme on each: `HOST:PORT`
/// means http://, or https:// when TLS is configured. A scheme other than
/// those is a usage error now, not a connection retried for minutes.
fn server_urls(list: &str, tls: bool) -> anyhow::Result<String> {
    let mut urls = Vec::new();
    for u in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let (scheme, rest) = match u.split_once("://") {
            Some((scheme, rest)) => (scheme, rest),
            None => (if tls { "https" } else { "http" }, u),
        };
        if scheme != "http" && scheme != "https" {
            return Err(crate::usage(format!(
                "--server: {u:?}: the scheme {scheme:?} is not understood (http:// or https://)"
            )));
        }
        if rest.is_empty() || rest.starts_with(':') || rest.starts_with('/') {
            return Err(crate::usage(format!(
                "--server: {u:?} names no host (like http://127.0.0.1:7070)"
            )));
        }
        urls.push(format!("{scheme}://{rest}"));
    }
    if urls.is_empty() {
        return Err(crate::usage("--server: no address given"));
    }
    Ok(urls.join(","))
}

/// `schedctl certs`.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Make a CA: DIR/ca.crt and DIR/ca.key (readable only by you).
    Init {
        /// Where to write the CA (created if missing).
        dir: PathBuf,
    },
    /// Issue a certificate for a component or a user: OUT/NAME.crt and
    /// OUT/NAME.key, valid for localhost and 127.0.0.1 plus any --san.
    Issue {
        /// The CA's directory (from `certs init`).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// scheduler, cluster (NAME: the cluster's), node (NAME: the
        /// machine's) or user.
        #[arg(long, value_parser = parse_kind)]
        kind: Kind,
        /// Whose certificate: the cluster's, machine's or user's name
        /// (`scheduler` for the scheduler).
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Where to write the pair [default: the CA's directory].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Another DNS name or IP address the holder serves on (repeat).
        #[arg(long, value_name = "NAME|IP")]
        san: Vec<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = certs::DEFAULT_DAYS, value_name = "N", allow_hyphen_values = true)]
        days: i64,
    },
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    s.parse()
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

pub fn certs(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init { dir } => {
            let (crt, key) = certs::init_ca(&dir)?;
            println!("CA: {} (key {})", crt.display(), key.display());
        }
        CertsCommand::Issue {
            ca,
            kind,
            name,
            out,
            san,
            days,
        } => {
            let out = out.unwrap_or_else(|| ca.clone());
            let req = certs::Request {
                kind,
                name: &name,
                sans: &san,
                days,
            };
            let (crt, key) = certs::issue(&ca, &req, &out)?;
            println!("{kind}/{name}: {} (key {})", crt.display(), key.display());
        }
    }
    Ok(())
}

/// `schedctl token`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a token: prints it (give it to the user) and the line for the
    /// scheduler's --tokens file (which holds only its SHA-256).
    New {
        /// The user the token names.
        #[arg(long, value_name = "NAME")]
        user: String,
        /// The tenant whose jobs the user submits and sees.
        #[arg(long, value_name = "NAME")]
        tenant: String,
        /// admin, submitter or viewer.
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
}

pub fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::New { user, tenant, role } = cmd;
    for (flag, v) in [("--user", &user), ("--tenant", &tenant)] {
        sched_security::identity::valid_name(v).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
    }
    let token = sched_security::tokens::generate().context("cannot read /dev/urandom")?;
    println!("token: {token}");
    println!(
        "tokens-file line:\n  - {{user: {user}, tenant: {tenant}, role: {role}, sha256: {}}}",
        sched_security::tokens::sha256_hex(&token)
    );
    Ok(())
}

/// Writes a config file with one context, `name`, made current.
pub fn write_config(path: &Path, ctx: ContextEntry) -> anyhow::Result<()> {
    let file = ConfigFile {
        current_context: Some(ctx.name.clone()),
        contexts: vec![ctx],
    };
    let text = serde_yaml::to_string(&file)?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_without_a_scheme_gets_the_one_tls_implies() {
        assert_eq!(
            server_urls("127.0.0.1:7070", false).unwrap(),
            "http://127.0.0.1:7070"
        );
        assert_eq!(
            server_urls("127.0.0.1:7070", true).unwrap(),
            "https://127.0.0.1:7070"
        );
        assert_eq!(
            server_urls("a:1, https://b:2", true).unwrap(),
            "https://a:1,https://b:2"
        );
    }

    #[test]
    fn a_bad_server_is_a_usage_error() {
        for bad in ["ftp://x", "http://", "", ":7070"] {
            let e = server_urls(bad, false).unwrap_err();
            assert!(e.downcast_ref::<crate::Usage>().is_some(), "{bad}: {e}");
        }
    }
}
