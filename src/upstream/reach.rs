//! Which network addresses an upstream may reach. A registry that clients name (a direct
//! registry, or a configured one with `public_addresses_only`) must not send ferry to
//! loopback, link-local, private or unspecified addresses: names are checked after
//! resolution, at connect time (no DNS rebinding), and so are realms and redirects.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether `ip` is an address on the public internet (not loopback, private, link-local,
/// shared/CGNAT, unspecified, multicast, broadcast or documentation space).
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    // The IANA IPv4 special-purpose registry's entries that are not globally reachable.
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 88 && c == 99) // deprecated 6to4 relay anycast
        || (a == 198 && (b & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || a >= 240) // reserved
}

/// The IPv4 address an IPv6 address carries, for the forms that route to it: IPv4-mapped
/// `::ffff:a.b.c.d` (handled by the caller), NAT64 `64:ff9b::/96` and 6to4 `2002::/16`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let from = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(from(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(from(s[1], s[2]));
    }
    None
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let first = s[0];
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    // The IANA IPv6 special-purpose registry's entries that are not globally reachable.
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || s[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible ::a.b.c.d (deprecated) and ::/96
        || (first == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64 64:ff9b:1::/48
        || (first == 0x100 && s[1..4] == [0, 0, 0]) // discard-only 100::/64
        || (first == 0x2001 && s[1] < 0x0200) // IETF protocol assignments 2001::/23 (Teredo too)
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (first & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
        || first == 0x2001 && s[1] == 0x0db8 // documentation 2001:db8::/32
        || (first & 0xfff0) == 0x3ff0 // documentation 3fff::/20
        || first == 0x5f00) // segment routing SIDs 5f00::/16
}

/// A literal address an upstream limited to public addresses may not reach.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "refused to connect to {0}: not a public address (a registry clients name may not reach \
     loopback, private or link-local addresses)"
)]
pub struct NotPublic(pub IpAddr);

/// Refuses a URL whose host is a literal non-public address (names are checked by
/// [`PublicAddressResolver`] when the connection is made).
pub(crate) fn check_literal_host(url: &reqwest::Url) -> Result<(), NotPublic> {
    let host = url.host_str().unwrap_or("");
    let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    else {
        return Ok(());
    };
    if is_public(ip) {
        Ok(())
    } else {
        Err(NotPublic(ip))
    }
}

/// A DNS resolver that keeps only public addresses, so every connection of the client that
/// uses it (registry, token realm, redirects) is checked on the address it really dials.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PublicAddressResolver;

impl reqwest::dns::Resolve for PublicAddressResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|addr| is_public(addr.ip()))
                .collect();
            if public.is_empty() {
                let shown: Vec<String> = resolved.iter().map(|a| a.ip().to_string()).collect();
                let reason = format!(
                    "refused to connect to {host}: it resolves to no public address ({}); a \
                     registry clients name may not reach loopback, private or link-local addresses",
                    shown.join(", ")
                );
                return Err(reason.into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass() {
        for private in [
            "127.0.0.1",
            "127.0.0.2",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "ff02::1",
            "2001:db8::1",
            // Gaps a hostile-upstream review found (issue 19, item 6), and the rest of the
            // IANA special-purpose registries.
            "198.18.0.1",
            "198.19.255.255",
            "192.88.99.1",
            "64:ff9b:1::a00:1",
            "::a00:1",
            "::8.8.8.8",
            "2002:a00:1::1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2001::1",
            "2001:0:4136:e378::1",
            "100::1",
            "3fff::1",
            "5f00::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "198.20.0.1",
            "2002:808:808::1",
            "2001:4860:4860::8888",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn literal_hosts_are_checked_and_names_left_to_the_resolver() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(check_literal_host(&url("https://127.0.0.1:5000/v2/")).is_err());
        assert!(check_literal_host(&url("https://[::1]/v2/")).is_err());
        assert!(check_literal_host(&url("http://169.254.169.254/latest/meta-data")).is_err());
        assert!(check_literal_host(&url("https://8.8.8.8/token")).is_ok());
        assert!(check_literal_host(&url("https://localhost/v2/")).is_ok());
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused_at_resolution() {
        use reqwest::dns::Resolve as _;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let error = match PublicAddressResolver.resolve(name).await {
            Ok(addrs) => panic!("localhost passed: {:?}", addrs.collect::<Vec<_>>()),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("no public address"), "{error}");
    }
}
