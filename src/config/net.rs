//! Host patterns and client networks: small value types with their parsers.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// `api.openai.com`, `*.example.com` (any subdomain, not the apex), optionally with `:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lower-case host; for wildcards the suffix including the leading dot (`.example.com`).
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

impl HostPattern {
    /// Does `host` (any case, no trailing dot) on `port` match this pattern?
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host.strip_suffix('.').unwrap_or(host);
        if self.wildcard {
            host.len() > self.host.len()
                && host
                    .get(host.len() - self.host.len()..)
                    .is_some_and(|suffix| suffix.eq_ignore_ascii_case(&self.host))
        } else {
            host.eq_ignore_ascii_case(&self.host)
        }
    }

    /// The exact host name, when this is not a wildcard.
    pub fn exact_host(&self) -> Option<&str> {
        (!self.wildcard).then_some(self.host.as_str())
    }

    /// The length of the pattern as written (its `Display`), without building it: how
    /// specific a wildcard is when several match one request.
    pub fn written_len(&self) -> usize {
        let port = self
            .port
            .map_or(0, |p| 1 + itoa::Buffer::new().format(p).len());
        usize::from(self.wildcard) + self.host.len() + port
    }
}

impl FromStr for HostPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid host pattern {s:?}: {why}");
        let (name, port) = match s.rsplit_once(':') {
            Some((n, p)) if !n.contains(':') || n.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))?;
                (n, Some(port))
            }
            _ => (s, None),
        };
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let (wildcard, host) = match name.strip_prefix("*.") {
            Some(rest) => (true, format!(".{}", rest.to_ascii_lowercase())),
            None => (false, name.to_ascii_lowercase()),
        };
        let bare = host.trim_start_matches('.');
        if bare.is_empty() {
            return Err(bad("empty host"));
        }
        if bare.contains('*') {
            return Err(bad("`*` is allowed only as a leading `*.`"));
        }
        let ok = bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
        if !ok {
            return Err(bad(
                "expected a host name like \"api.openai.com\" or \"*.example.com\"",
            ));
        }
        Ok(HostPattern {
            host,
            wildcard,
            port,
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*{}", self.host)?;
        } else {
            write!(f, "{}", self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// A client network like `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The authority a request to `host:port` carries: an IPv6 address in brackets, the port
/// only when it is not the scheme's default. `host` is bare (no brackets).
pub fn authority(host: &str, port: u16, https: bool) -> String {
    let mut s = String::with_capacity(host.len() + 8);
    if host.contains(':') {
        s.push('[');
        s.push_str(host);
        s.push(']');
    } else {
        s.push_str(host);
    }
    if port != default_port(https) {
        s.push(':');
        s.push_str(itoa::Buffer::new().format(port));
    }
    s
}

/// 443 for https, 80 for http.
pub fn default_port(https: bool) -> u16 {
    if https {
        443
    } else {
        80
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected a network like \"10.0.0.0/8\" or an address, found {s:?}");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = canonical(addr.trim().parse::<IpAddr>().map_err(|_| bad())?);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Network { addr, prefix })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authority_brackets_ipv6_and_drops_the_default_port() {
        assert_eq!(authority("api.openai.com", 443, true), "api.openai.com");
        assert_eq!(
            authority("api.openai.com", 443, false),
            "api.openai.com:443"
        );
        assert_eq!(authority("localhost", 80, false), "localhost");
        assert_eq!(authority("127.0.0.1", 8080, false), "127.0.0.1:8080");
        assert_eq!(authority("::1", 443, true), "[::1]");
        assert_eq!(authority("::1", 8443, true), "[::1]:8443");
    }

    #[test]
    fn host_patterns() {
        let p: HostPattern = "api.openai.com".parse().unwrap();
        assert!(p.matches("API.OpenAI.com", 443));
        assert!(p.matches("api.openai.com.", 80));
        assert!(!p.matches("xapi.openai.com", 443));
        let w: HostPattern = "*.example.com".parse().unwrap();
        assert!(w.matches("a.example.com", 443));
        assert!(w.matches("a.b.EXAMPLE.com", 443));
        assert!(!w.matches("example.com", 443));
        assert!(!w.matches("badexample.com", 443));
        assert!(
            !w.matches("aéexample.com", 443),
            "a multi-byte host never panics"
        );
        let port: HostPattern = "127.0.0.1:8443".parse().unwrap();
        assert!(port.matches("127.0.0.1", 8443));
        assert!(!port.matches("127.0.0.1", 443));
        for bad in ["", "*.", "a*.com", "exa mple.com", "x:notaport", "*"] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn written_len_is_the_displayed_length() {
        for s in [
            "api.openai.com",
            "*.example.com",
            "*.example.com:8443",
            "127.0.0.1:9",
            "[::1]:443",
        ] {
            let p: HostPattern = s.parse().unwrap();
            assert_eq!(p.written_len(), p.to_string().len(), "{s}");
        }
    }

    #[test]
    fn networks() {
        let n: Network = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains("10.2.3.4".parse().unwrap()));
        assert!(n.contains("::ffff:10.2.3.4".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        let all: Network = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let one: Network = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("nope".parse::<Network>().is_err());
    }
}
