//! Who a client is, for per-client limits: [`TrustedProxies`] decides whose
//! `X-Forwarded-For` is believed, and [`IpLimiter`] counts open connections per client
//! address (IPv6 per /64, since one host usually owns a whole /64).
//!
//! Two places apply `FANOUT_MAX_CONNECTIONS_PER_IP`:
//! - at accept ([`crate::listener`]), for peers that are not trusted proxies: the TCP peer
//!   *is* the client;
//! - at WebSocket-upgrade time ([`crate::http`]), for requests that come through a trusted
//!   proxy: the TCP peer is the proxy, which carries many clients, so the client address is
//!   read from `X-Forwarded-For` and the slot is held by the upgraded connection (a proxy
//!   tunnels one WebSocket per backend connection).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The per-client limits shared by the listener and the upgrade check.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    /// Open connections per client address.
    pub per_ip: Arc<IpLimiter>,
    /// Whose `X-Forwarded-For` is believed.
    pub proxies: TrustedProxies,
}

impl ClientLimits {
    /// From `FANOUT_MAX_CONNECTIONS_PER_IP` and `FANOUT_TRUSTED_PROXIES`.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self {
            per_ip: IpLimiter::new(cfg.max_connections_per_ip),
            proxies: TrustedProxies::new(cfg.trusted_proxies.0.clone()),
        }
    }
}

/// The networks whose `X-Forwarded-For` header is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Trusts `nets`.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    /// True when `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client address of a request from `peer`: `peer` itself unless it is a trusted
    /// proxy; then the right-most `X-Forwarded-For` entry that is not a trusted proxy (each
    /// proxy appends the address it got the request from, so entries left of the last
    /// untrusted one are client-controlled). `None` when a trusted proxy sent no usable
    /// header.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        if !self.contains(peer) {
            return Some(canonical(peer));
        }
        let mut hops: Vec<IpAddr> = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            let text = value.to_str().ok()?;
            for part in text.split(',') {
                hops.push(parse_hop(part.trim())?);
            }
        }
        let mut last = None;
        for hop in hops.into_iter().rev() {
            let hop = canonical(hop);
            if !self.contains(hop) {
                return Some(hop);
            }
            last = Some(hop);
        }
        // Every hop is a trusted proxy: the left-most one is the closest to the client.
        last
    }
}

/// One `X-Forwarded-For` hop: an address, possibly `[v6]:port` or `v4:port`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    let (host, _port) = hop.rsplit_once(':')?;
    host.parse().ok()
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64.
fn bucket(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Open connections per client address, against a limit.
#[derive(Debug)]
pub struct IpLimiter {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl IpLimiter {
    /// A limiter allowing `limit` connections per address; 0 = no limit.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// True when a limit is set.
    pub fn enabled(&self) -> bool {
        self.limit > 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for `ip`, or `None` when `ip` holds `limit` already (or no limit is set:
    /// then nothing is counted and `Some` of an empty slot is returned).
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        if !self.enabled() {
            return Some(IpSlot(None));
        }
        let key = bucket(ip);
        let mut open = self.lock();
        let count = open.entry(key).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(IpSlot(Some((self.clone(), key))))
    }

    /// Connections counted for `ip` now.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.lock().get(&bucket(ip)).copied().unwrap_or(0)
    }

    fn release(&self, key: IpAddr) {
        let mut open = self.lock();
        if let Some(count) = open.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&key);
            }
        }
    }
}

/// One counted connection of an address; released when dropped.
#[derive(Debug)]
pub struct IpSlot(Option<(Arc<IpLimiter>, IpAddr)>);

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some((limiter, key)) = self.0.take() {
            limiter.release(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).expect("header"));
        }
        headers
    }

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().expect("net")).collect())
    }

    #[test]
    fn header_ignored_from_untrusted_peers() {
        let p = proxies(&["10.0.0.0/8"]);
        let h = xff(&["1.2.3.4"]);
        assert_eq!(p.client_ip(ip("192.0.2.7"), &h), Some(ip("192.0.2.7")));
    }

    #[test]
    fn right_most_untrusted_hop_is_the_client() {
        let p = proxies(&["10.0.0.0/8"]);
        // The client forged "6.6.6.6"; the proxy appended the real one.
        let h = xff(&["6.6.6.6, 203.0.113.9", "10.1.1.1"]);
        assert_eq!(p.client_ip(ip("10.0.0.2"), &h), Some(ip("203.0.113.9")));
        assert_eq!(
            p.client_ip(ip("10.0.0.2"), &xff(&["[2001:db8::1]:443"])),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(
            p.client_ip(ip("10.0.0.2"), &xff(&["198.51.100.1:5000"])),
            Some(ip("198.51.100.1"))
        );
        assert_eq!(p.client_ip(ip("10.0.0.2"), &xff(&["garbage"])), None);
        assert_eq!(p.client_ip(ip("10.0.0.2"), &HeaderMap::new()), None);
        assert_eq!(
            p.client_ip(ip("10.0.0.2"), &xff(&["10.9.9.9, 10.8.8.8"])),
            Some(ip("10.9.9.9"))
        );
    }

    #[test]
    fn limiter_counts_and_releases() {
        let limiter = IpLimiter::new(2);
        let a = limiter.try_acquire(ip("192.0.2.1")).expect("first");
        let _b = limiter.try_acquire(ip("::ffff:192.0.2.1")).expect("second");
        assert!(limiter.try_acquire(ip("192.0.2.1")).is_none());
        assert!(limiter.try_acquire(ip("192.0.2.2")).is_some());
        drop(a);
        assert_eq!(limiter.count(ip("192.0.2.1")), 1);
        assert!(limiter.try_acquire(ip("192.0.2.1")).is_some());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let limiter = IpLimiter::new(1);
        let _a = limiter.try_acquire(ip("2001:db8:1:2::1")).expect("first");
        assert!(limiter.try_acquire(ip("2001:db8:1:2::ffff")).is_none());
        assert!(limiter.try_acquire(ip("2001:db8:1:3::1")).is_some());
    }

    #[test]
    fn disabled_limiter_counts_nothing() {
        let limiter = IpLimiter::new(0);
        for _ in 0..10 {
            assert!(limiter.try_acquire(ip("192.0.2.1")).is_some());
        }
        assert_eq!(limiter.count(ip("192.0.2.1")), 0);
    }
}
