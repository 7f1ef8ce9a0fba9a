//! Network identity of a request: trusted proxies and the client address behind them, and the
//! `Host` / `Origin` allow-lists of `/mcp`.
//!
//! **Client address.** The address is the socket peer unless that peer is listed in
//! `remote_mcp.trusted_proxies`; then `X-Forwarded-For` is read from the right, skipping
//! entries that are themselves trusted proxies, and the first untrusted entry is the client.
//! Entries left of it were written by the client and are never believed, so a forged
//! `X-Forwarded-For` cannot move a request into another rate-limit bucket. Without trusted
//! proxies the header is ignored entirely.
//!
//! **Client key** ([`ClientKey`]). Rate limits and connection limits count IPv4 addresses as
//! they are and IPv6 addresses by their /64, since one subscriber usually holds a whole /64.
//!
//! **Host and Origin.** `Host` must name an allowed authority (DNS-rebinding protection);
//! a present `Origin` must be an allowed origin (browsers send it on cross-origin requests).
//! Entries are normalized at configuration time, so the per-request check only compares.

use axum::http::HeaderMap;
use std::net::IpAddr;
use url::Url;

/// Most `X-Forwarded-For` entries examined (from the right). Bounds the work per request.
const MAX_FORWARDED_ENTRIES: usize = 32;

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`, or a single address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    network: IpAddr,
    prefix: u8,
}

fn mask_v4(ip: u32, prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        ip & (u32::MAX << (32 - u32::from(prefix)))
    }
}

fn mask_v6(ip: u128, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        ip & (u128::MAX << (128 - u32::from(prefix)))
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are treated as the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

impl IpNet {
    /// Parses `addr` or `addr/prefix`. Host bits set below the prefix are refused (they are
    /// usually a typo for another network).
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR network"))?;
        let ip = canonical(ip);
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?} has a prefix length outside 0-{max}"))?,
        };
        let masked = match ip {
            IpAddr::V4(v4) => IpAddr::V4(mask_v4(u32::from(v4), prefix).into()),
            IpAddr::V6(v6) => IpAddr::V6(mask_v6(u128::from(v6), prefix).into()),
        };
        if masked != ip {
            return Err(format!(
                "{text:?} has host bits set; write the network address (e.g. {masked}/{prefix})"
            ));
        }
        Ok(IpNet {
            network: masked,
            prefix,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_v4(u32::from(ip), self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_v6(u128::from(ip), self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(ip))
}

/// One `X-Forwarded-For` element: an IP, tolerating `1.2.3.4:567` and `[::1]:567`.
fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return ip.parse().ok().map(canonical);
    }
    let (ip, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The client address of a request that arrived from `peer` (see the module docs).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !is_trusted(peer, trusted) {
        return peer;
    }
    // Every X-Forwarded-For header, in order, as one list.
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    let joined = values.join(",");
    let mut current = peer;
    for entry in joined.rsplit(',').take(MAX_FORWARDED_ENTRIES) {
        match parse_forwarded_entry(entry) {
            Some(ip) if is_trusted(ip, trusted) => current = ip,
            Some(ip) => return ip,
            // Garbage was not written by a proxy we trust: the last trusted hop is the best
            // address we know.
            None => return current,
        }
    }
    current
}

/// The unit a client is counted in, for rate limits and connection limits: an IPv4 address,
/// or an IPv6 /64 (one subscriber usually holds a whole /64, so counting single IPv6 addresses
/// would let one client appear as 2^64 clients). IPv4-mapped IPv6 addresses count as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4(std::net::Ipv4Addr),
    /// The upper 64 bits of the address.
    V6Prefix64(u64),
}

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match canonical(ip) {
            IpAddr::V4(v4) => ClientKey::V4(v4),
            IpAddr::V6(v6) => ClientKey::V6Prefix64((u128::from(v6) >> 64) as u64),
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientKey::V4(v4) => write!(f, "{v4}"),
            ClientKey::V6Prefix64(prefix) => {
                let s = prefix.to_be_bytes();
                let segment = |i: usize| u16::from_be_bytes([s[2 * i], s[2 * i + 1]]);
                write!(
                    f,
                    "{:x}:{:x}:{:x}:{:x}::/64",
                    segment(0),
                    segment(1),
                    segment(2),
                    segment(3)
                )
            }
        }
    }
}

/// The rate-limit bucket of a client address.
pub fn rate_limit_key(ip: IpAddr) -> String {
    ClientKey::of(ip).to_string()
}

/// Whether `ip` is one of `trusted` (a configured proxy).
pub fn is_trusted_proxy(ip: IpAddr, trusted: &[IpNet]) -> bool {
    is_trusted(ip, trusted)
}

/// Whether a request carries any forwarding header (it came through a proxy).
pub fn has_forwarding_headers(headers: &HeaderMap) -> bool {
    ["x-forwarded-for", "forwarded", "x-real-ip"]
        .iter()
        .any(|name| headers.contains_key(*name))
}

/// An allowed `Host`: a host (any port) or `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRule {
    host: String,
    port: Option<u16>,
}

impl std::fmt::Display for HostRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) if self.host.contains(':') => write!(f, "[{}]:{port}", self.host),
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

fn normalize_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

fn parse_authority(text: &str) -> Option<(String, Option<u16>)> {
    let text = text.trim();
    if text.is_empty() || text.contains(['@', '/', '?', '#', ' ']) {
        return None;
    }
    let authority = http::uri::Authority::try_from(text).ok()?;
    let host = normalize_host(authority.host());
    if host.is_empty() {
        return None;
    }
    Some((host, authority.port_u16()))
}

impl HostRule {
    pub fn parse(text: &str) -> Result<HostRule, String> {
        if text.contains("://") {
            return Err(format!(
                "{text:?} must be a host or host:port, not a URL (e.g. gateway.example.com)"
            ));
        }
        let (host, port) =
            parse_authority(text).ok_or_else(|| format!("{text:?} is not a host or host:port"))?;
        Ok(HostRule { host, port })
    }

    /// The rule for a URL's host (any port).
    pub fn for_url(url: &Url) -> Option<HostRule> {
        url.host_str().map(|host| HostRule {
            host: normalize_host(host),
            port: None,
        })
    }

    fn matches(&self, host: &str, port: Option<u16>) -> bool {
        self.host == host && self.port.is_none_or(|allowed| Some(allowed) == port)
    }
}

/// Whether the request's `Host` (or, without one, the URI authority) is allowed. A missing
/// or malformed host is not.
pub fn host_allowed(uri: &http::Uri, headers: &HeaderMap, rules: &[HostRule]) -> bool {
    let mut values = headers.get_all(http::header::HOST).iter();
    let parsed = match (values.next(), values.next()) {
        (Some(value), None) => value.to_str().ok().and_then(parse_authority),
        (Some(_), Some(_)) => None,
        (None, _) => uri
            .authority()
            .and_then(|authority| parse_authority(authority.as_str())),
    };
    match parsed {
        Some((host, port)) => rules.iter().any(|rule| rule.matches(&host, port)),
        None => false,
    }
}

/// An allowed `Origin`, normalized to `scheme://host:port` (explicit port), or `null`.
pub fn normalize_origin(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text == "null" {
        return Ok("null".to_string());
    }
    let url = Url::parse(text).map_err(|_| format!("{text:?} is not an origin"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?} must use http:// or https://"));
    }
    let host = url
        .host_str()
        .ok_or_else(|| format!("{text:?} must name a host"))?;
    if !(url.path().is_empty() || url.path() == "/")
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(format!(
            "{text:?} must be an origin: scheme, host and optional port only"
        ));
    }
    let port = url
        .port_or_known_default()
        .ok_or_else(|| format!("{text:?} has no port"))?;
    Ok(format!(
        "{}://{}:{port}",
        url.scheme(),
        normalize_host(host)
    ))
}

/// Whether the request's `Origin` is acceptable: absent, or exactly one allowed origin.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let mut values = headers.get_all(http::header::ORIGIN).iter();
    match (values.next(), values.next()) {
        (None, _) => true,
        (Some(value), None) => value
            .to_str()
            .ok()
            .and_then(|text| normalize_origin(text).ok())
            .is_some_and(|origin| allowed.contains(&origin)),
        (Some(_), Some(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|text| IpNet::parse(text).unwrap())
            .collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn networks_parse_strictly_and_match() {
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(
            IpNet::parse("127.0.0.1")
                .unwrap()
                .contains("127.0.0.1".parse().unwrap())
        );
        assert!(
            IpNet::parse("2001:db8::/32")
                .unwrap()
                .contains("2001:db8:1::5".parse().unwrap())
        );
        assert!(
            IpNet::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(IpNet::parse("10.0.0.1/8").is_err());
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("proxy.internal").is_err());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let forged = xff(&["203.0.113.9"]);
        // Not trusted: the header is ignored.
        assert_eq!(client_ip(peer, &forged, &[]), peer);
        // Trusted: the right-most untrusted entry, whatever the client wrote to its left.
        let trusted = nets(&["127.0.0.1", "10.0.0.0/8"]);
        assert_eq!(
            client_ip(peer, &forged, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let chain = xff(&["1.1.1.1, 198.51.100.7", "10.0.0.5"]);
        assert_eq!(
            client_ip(peer, &chain, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // Garbage stops the walk at the last trusted hop.
        let garbage = xff(&["nonsense, 10.0.0.5"]);
        assert_eq!(
            client_ip(peer, &garbage, &trusted),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
        // No header: the proxy itself.
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer);
        assert_eq!(
            parse_forwarded_entry("[2001:db8::1]:443"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            parse_forwarded_entry("192.0.2.1:80"),
            Some("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn clients_are_grouped_per_ipv4_address_and_per_ipv6_64() {
        let key = |text: &str| ClientKey::of(text.parse().unwrap());
        // One /64: any interface identifier, and any textual form.
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_eq!(key("2001:db8:1:2::1"), key("2001:0db8:0001:0002:0:0:0:9"));
        assert_eq!(
            key("2001:db8:1:2::1"),
            ClientKey::V6Prefix64(0x2001_0db8_0001_0002)
        );
        // Neighbouring /64s are different clients, in every one of the 64 prefix bits.
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_ne!(key("2001:db8:1:2::1"), key("3001:db8:1:2::1"));
        assert_ne!(key("::1"), key("0:0:0:1::1"));
        // IPv4 counts per address; IPv4-mapped IPv6 is the same IPv4 client.
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_eq!(
            key("192.0.2.1"),
            ClientKey::V4("192.0.2.1".parse().unwrap())
        );
        // IPv4 and IPv6 never collide.
        assert_ne!(key("0.0.0.1"), key("::1"));
        assert_eq!(key("2001:db8:a:b::7").to_string(), "2001:db8:a:b::/64");
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        assert_eq!(
            rate_limit_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            rate_limit_key("2001:db8:1:2:bbbb::2".parse().unwrap())
        );
        assert_ne!(
            rate_limit_key("2001:db8:1:2::1".parse().unwrap()),
            rate_limit_key("2001:db8:1:3::1".parse().unwrap())
        );
        assert_eq!(
            rate_limit_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1"
        );
    }

    #[test]
    fn hosts_and_origins() {
        let rules = vec![
            HostRule::parse("Gateway.Example.com").unwrap(),
            HostRule::parse("127.0.0.1:8080").unwrap(),
        ];
        let uri: http::Uri = "/mcp".parse().unwrap();
        let with_host = |host: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::HOST, HeaderValue::from_str(host).unwrap());
            headers
        };
        assert!(host_allowed(
            &uri,
            &with_host("gateway.example.com"),
            &rules
        ));
        assert!(host_allowed(
            &uri,
            &with_host("gateway.example.com:443"),
            &rules
        ));
        assert!(host_allowed(&uri, &with_host("127.0.0.1:8080"), &rules));
        assert!(!host_allowed(&uri, &with_host("127.0.0.1:8081"), &rules));
        assert!(!host_allowed(&uri, &with_host("evil.example"), &rules));
        assert!(!host_allowed(&uri, &HeaderMap::new(), &rules));
        assert!(HostRule::parse("https://gateway.example.com").is_err());
        assert!(HostRule::parse("user@host").is_err());

        assert_eq!(
            normalize_origin("https://App.Example.com").unwrap(),
            "https://app.example.com:443"
        );
        assert!(normalize_origin("https://app.example.com/path").is_err());
        assert!(normalize_origin("ftp://app.example.com").is_err());
        let allowed = vec![normalize_origin("https://app.example.com").unwrap()];
        let with_origin = |origin: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            headers
        };
        assert!(origin_allowed(&HeaderMap::new(), &allowed));
        assert!(origin_allowed(
            &with_origin("https://app.example.com:443"),
            &allowed
        ));
        assert!(!origin_allowed(
            &with_origin("https://evil.example"),
            &allowed
        ));
        assert!(!origin_allowed(&with_origin("null"), &allowed));
        assert!(!origin_allowed(&with_origin("garbage"), &allowed));
    }
}
