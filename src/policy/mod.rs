//! Policy: which provider a request belongs to, and whether an unmatched destination may be
//! reached at all. Pure functions over the validated config.

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{Config, Provider};

/// The provider whose `hosts` match `host:port`. Exact patterns win over wildcards; among
/// wildcards the longest suffix wins; ties go to the first provider in the file.
pub fn match_host<'a>(config: &'a Config, host: &str, port: u16) -> Option<&'a Arc<Provider>> {
    let mut best: Option<(&Arc<Provider>, usize)> = None;
    for p in &config.providers {
        for pattern in &p.hosts {
            if pattern.matches(host, port) {
                let rank = match pattern.exact_host() {
                    Some(_) => usize::MAX,
                    None => pattern.written_len(),
                };
                if best.is_none_or(|(_, r)| rank > r) {
                    best = Some((p, rank));
                }
            }
        }
    }
    best.map(|(p, _)| p)
}

/// The provider whose `route` prefixes `path` on a segment boundary (longest prefix wins),
/// and the rest of the path after the prefix (always starting with `/`).
pub fn match_route<'a, 'p>(
    config: &'a Config,
    path: &'p str,
) -> Option<(&'a Arc<Provider>, &'p str)> {
    let mut best: Option<(&Arc<Provider>, usize)> = None;
    for p in &config.providers {
        let Some(route) = &p.route else { continue };
        let fits = path.starts_with(route.as_str())
            && matches!(path.as_bytes().get(route.len()), None | Some(b'/'));
        if fits && best.is_none_or(|(_, len)| route.len() > len) {
            best = Some((p, route.len()));
        }
    }
    best.map(|(p, len)| {
        let rest = &path[len..];
        (p, if rest.is_empty() { "/" } else { rest })
    })
}

/// Loopback, private, link-local (incl. cloud metadata 169.254.169.254), CGNAT, unique-local,
/// unspecified, multicast and broadcast addresses: not reachable by unmatched traffic unless
/// `allow_private_destinations` is set.
pub fn is_private_destination(ip: IpAddr) -> bool {
    match crate::config::canonical_ip(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 carrier-grade NAT
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            let seg0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg0 & 0xfe00) == 0xfc00 // unique local, incl. fd00:ec2::254
                || (seg0 & 0xffc0) == 0xfe80 // link-local
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        crate::config::parse(Path::new("t.toml"), text).expect("valid config")
    }

    #[test]
    fn hosts_match_exact_before_wildcard() {
        let c = config(
            r#"
            [providers.wild]
            hosts = ["*.example.com"]
            [providers.exact]
            hosts = ["api.example.com"]
            [providers.deeper]
            hosts = ["*.eu.example.com"]
            "#,
        );
        let name = |h: &str| match_host(&c, h, 443).map(|p| p.name.clone());
        assert_eq!(name("api.example.com").as_deref(), Some("exact"));
        assert_eq!(name("x.example.com").as_deref(), Some("wild"));
        assert_eq!(name("x.eu.example.com").as_deref(), Some("deeper"));
        assert_eq!(name("example.com"), None);
        assert_eq!(name("other.org"), None);
    }

    #[test]
    fn routes_match_on_segment_boundaries() {
        let c = config(
            r#"
            [providers.a]
            route = "/openai"
            upstream = "https://api.openai.com"
            [providers.b]
            route = "/openai/v2"
            upstream = "https://b.example.com"
            "#,
        );
        let m = |p: &str| match_route(&c, p).map(|(p, rest)| (p.name.clone(), rest.to_string()));
        assert_eq!(m("/openai/v1/chat"), Some(("a".into(), "/v1/chat".into())));
        assert_eq!(m("/openai"), Some(("a".into(), "/".into())));
        assert_eq!(m("/openai/v2/x"), Some(("b".into(), "/x".into())));
        assert_eq!(m("/openaix/v1"), None);
        assert_eq!(m("/"), None);
    }

    #[test]
    fn private_destinations() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(is_private_destination(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "172.32.0.1",
            "100.128.0.1",
        ] {
            assert!(!is_private_destination(ip.parse().unwrap()), "{ip}");
        }
    }
}
