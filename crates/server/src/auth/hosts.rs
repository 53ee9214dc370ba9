//! Which hosts a request without credentials may be addressed to. A web page whose DNS name
//! its owner rebinds to this server's address makes the visitor's browser send requests that
//! carry the page's name in `Host` and no credentials; answering anonymous requests only when
//! they name this machine's loopback (or a configured host) keeps such a page from reading
//! keys through the browser.

use std::net::IpAddr;

use axum::http::uri::Authority;

/// The hosts anonymous requests may name besides loopback: `localhost`, `*.localhost` (which
/// browsers resolve to loopback themselves), 127.0.0.0/8 and `::1`, with any port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    any: bool,
    names: Vec<String>,
    addresses: Vec<IpAddr>,
}

impl AllowedHosts {
    /// Reads `[server] allowed_hosts`: host names and IP addresses without ports, or `"*"`
    /// for any host (no protection against DNS rebinding).
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut hosts = Self::default();
        for entry in entries {
            if entry == "*" {
                hosts.any = true;
            } else if let Ok(address) = entry.trim_start_matches('[').trim_end_matches(']').parse()
            {
                hosts.addresses.push(address);
            } else if !entry.is_empty()
                && entry
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                hosts.names.push(normalized(entry));
            } else {
                return Err(format!(
                    "{entry:?} is not a host name or an IP address (write it without a port), nor \"*\""
                ));
            }
        }
        Ok(hosts)
    }

    /// True when a request addressed to `host` (its `Host` header or URI authority, port
    /// included) may be answered anonymously. A request that names no host is not a
    /// browser's, and browsers are what rebinding needs.
    pub fn allows(&self, host: Option<&[u8]>) -> bool {
        let Some(host) = host else {
            return true;
        };
        if self.any {
            return true;
        }
        let Ok(authority) = Authority::try_from(host) else {
            return false;
        };
        if authority.as_str().contains('@') {
            return false;
        }
        let name = normalized(authority.host());
        match name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(address) => {
                address.to_canonical().is_loopback() || self.addresses.contains(&address)
            }
            Err(_) => {
                name == "localhost" || name.ends_with(".localhost") || self.names.contains(&name)
            }
        }
    }
}

/// Lowercase, without the trailing dot of a fully qualified name.
fn normalized(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(hosts: &AllowedHosts, host: &str) -> bool {
        hosts.allows(Some(host.as_bytes()))
    }

    #[test]
    fn loopback_names_and_addresses_are_allowed_with_any_port() {
        let loopback = AllowedHosts::default();
        for host in [
            "localhost",
            "LocalHost:8080",
            "localhost.:8080",
            "app.localhost:3000",
            "127.0.0.1",
            "127.9.9.9:8080",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:8080",
        ] {
            assert!(allows(&loopback, host), "{host}");
        }
        for host in [
            "attacker.example:8080",
            "localhost.attacker.example",
            "10.0.0.5:8080",
            "0.0.0.0:8080",
            "[::]:8080",
            "user@localhost",
            "local host",
            "",
        ] {
            assert!(!allows(&loopback, host), "{host}");
        }
        assert!(loopback.allows(None));
    }

    #[test]
    fn configured_hosts_are_allowed_too() {
        let entries = ["rkms.internal", "10.0.0.5", "[fd00::5]"].map(String::from);
        let hosts = AllowedHosts::parse(&entries).unwrap();
        assert!(allows(&hosts, "RKMS.internal:8443"));
        assert!(allows(&hosts, "10.0.0.5:8080"));
        assert!(allows(&hosts, "[fd00::5]:8080"));
        assert!(allows(&hosts, "localhost"));
        assert!(!allows(&hosts, "other.internal"));
        let any = AllowedHosts::parse(&["*".into()]).unwrap();
        assert!(allows(&any, "attacker.example"));
        for bad in ["rkms.internal:8443", "", "a b", "http://rkms"] {
            assert!(AllowedHosts::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
