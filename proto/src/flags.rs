//! Checks of the services' command-line values, as clap value parsers
//! (`#[arg(value_parser = sched_proto::flags::url)]`): a bad value stops
//! the process at start, with clap's usage error naming the flag, instead
//! of failing later (or never) in a way that does not say which flag was
//! wrong.

/// A server's address: `http://HOST:PORT` or `https://HOST:PORT` (a path
/// after it is refused: none of our servers has one).
pub fn url(s: &str) -> Result<String, String> {
    let wanted = "expected http://HOST:PORT or https://HOST:PORT";
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| format!("{s:?} is not a URL: {wanted}"))?;
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "{s:?}: the scheme {scheme:?} is not understood; {wanted}"
        ));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} has no port; {wanted}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return Err(format!("{s:?} has no valid host; {wanted}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(s.to_string()),
        _ => Err(format!("{s:?}: {port:?} is not a port (1-65535); {wanted}")),
    }
}

/// A machine label, `KEY=VALUE` with a key that is not empty.
pub fn label(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        None => Err(format!("{s:?} is not KEY=VALUE")),
        Some((k, _)) if k.trim().is_empty() => Err(format!("{s:?} has an empty key")),
        Some(_) => Ok(s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_a_known_scheme_a_host_and_a_port() {
        for ok in [
            "http://127.0.0.1:2379",
            "https://etcd.example:2379",
            "http://[::1]:7070",
            "http://localhost:7070/",
        ] {
            assert_eq!(url(ok).as_deref(), Ok(ok), "{ok}");
        }
        for (bad, why) in [
            ("notaurl", "is not a URL"),
            ("ftp://x:1", "scheme \"ftp\""),
            ("http://host", "no port"),
            ("http://:2379", "no valid host"),
            ("http://h:0", "is not a port"),
            ("http://h:99999", "is not a port"),
            ("http://h:x", "is not a port"),
        ] {
            let e = url(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn labels_need_a_key() {
        assert_eq!(label("zone=a").as_deref(), Ok("zone=a"));
        assert_eq!(label("ssd=").as_deref(), Ok("ssd="));
        assert!(label("=x").unwrap_err().contains("empty key"));
        assert!(label("x").unwrap_err().contains("not KEY=VALUE"));
    }
}
