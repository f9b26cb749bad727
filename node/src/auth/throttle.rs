//! Throttles in front of password work: logins per client address and per account name,
//! signups per client address (`FANOUT_LOGIN_PER_IP_PER_MINUTE`,
//! `FANOUT_LOGIN_PER_USERNAME_PER_MINUTE`, `FANOUT_SIGNUP_PER_IP_PER_MINUTE`). Each is a
//! `governor` keyed limiter: N attempts at once, then one more every 60/N seconds.
//!
//! They run before any store lookup or hashing, so a refused attempt costs microseconds, and
//! they are per node (a cluster of K nodes behind a balancer allows up to K times as many).
//!
//! Keys are bounded in memory: IPv6 addresses count per /64 (one host usually owns a whole
//! /64, so per-address limits would be free to dodge), account names are kept as a keyed
//! 64-bit hash, and every [`SWEEP_INTERVAL`] the state of keys that have fully recovered is
//! dropped (`retain_recent`), so memory follows the keys seen in the last minute or so.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// How often the limiters forget keys whose state is back to fresh.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Which limit refused an attempt (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Attempts from the client's address.
    Ip,
    /// Attempts on one account name.
    Username,
}

impl Limit {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Ip => "ip",
            Limit::Username => "username",
        }
    }
}

/// An attempt refused by a throttle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// The limit that refused it.
    pub limit: Limit,
    /// When the next attempt may succeed (`Retry-After`, rounded up to whole seconds).
    pub retry_after: Duration,
}

impl Throttled {
    /// `Retry-After` in whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs();
        let rounded = if self.retry_after.subsec_nanos() > 0 {
            secs + 1
        } else {
            secs
        };
        rounded.max(1)
    }
}

/// Attempts per minute of each throttle; 0 turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// Logins per client address.
    pub login_per_ip: u32,
    /// Logins per account name (username or e-mail as given).
    pub login_per_username: u32,
    /// Signups per client address.
    pub signup_per_ip: u32,
}

/// The address key of a client: IPv4 as is (IPv4-mapped IPv6 included), IPv6 by /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// One keyed limiter plus its sweeping.
struct KeyedLimit<K: std::hash::Hash + Eq + Clone, C: Clock> {
    limiter: RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    last_sweep: Mutex<Instant>,
}

impl<K: std::hash::Hash + Eq + Clone, C: Clock + Clone> KeyedLimit<K, C> {
    fn new(per_minute: u32, clock: &C) -> Option<Self> {
        let per_minute = NonZeroU32::new(per_minute)?;
        Some(Self {
            limiter: RateLimiter::dashmap_with_clock(Quota::per_minute(per_minute), clock.clone()),
            clock: clock.clone(),
            last_sweep: Mutex::new(Instant::now()),
        })
    }

    fn check(&self, key: &K, limit: Limit) -> Result<(), Throttled> {
        self.maybe_sweep();
        self.limiter.check_key(key).map_err(|not_until| Throttled {
            limit,
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    /// Sweeps when the last sweep is [`SWEEP_INTERVAL`] old; never waits for another
    /// thread's sweep.
    fn maybe_sweep(&self) {
        let Ok(mut last) = self.last_sweep.try_lock() else {
            return;
        };
        if last.elapsed() >= SWEEP_INTERVAL {
            *last = Instant::now();
            self.sweep();
        }
    }

    fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The login and signup throttles of a node.
pub struct CredentialThrottle<C: Clock = DefaultClock> {
    login_ip: Option<KeyedLimit<IpAddr, C>>,
    login_username: Option<KeyedLimit<u64, C>>,
    signup_ip: Option<KeyedLimit<IpAddr, C>>,
    names: RandomState,
}

impl CredentialThrottle {
    /// Throttles on the real clock.
    pub fn new(settings: ThrottleSettings) -> Self {
        Self::with_clock(settings, &DefaultClock::default())
    }
}

impl<C: Clock + Clone> CredentialThrottle<C> {
    /// Throttles on `clock` (tests use a fake one).
    pub fn with_clock(settings: ThrottleSettings, clock: &C) -> Self {
        Self {
            login_ip: KeyedLimit::new(settings.login_per_ip, clock),
            login_username: KeyedLimit::new(settings.login_per_username, clock),
            signup_ip: KeyedLimit::new(settings.signup_per_ip, clock),
            names: RandomState::new(),
        }
    }

    /// Counts a login attempt from `ip` on `account` (`username:<name>` or
    /// `email:<lower-case address>`); refused when either limit is reached. The address is
    /// checked first, so attempts refused for it do not use up the account's budget.
    pub fn check_login(&self, ip: IpAddr, account: &str) -> Result<(), Throttled> {
        if let Some(limit) = &self.login_ip {
            limit.check(&source_key(ip), Limit::Ip)?;
        }
        if let Some(limit) = &self.login_username {
            limit.check(&self.names.hash_one(account), Limit::Username)?;
        }
        Ok(())
    }

    /// Counts a signup attempt from `ip`.
    pub fn check_signup(&self, ip: IpAddr) -> Result<(), Throttled> {
        match &self.signup_ip {
            Some(limit) => limit.check(&source_key(ip), Limit::Ip),
            None => Ok(()),
        }
    }

    /// Forgets every key whose limiter state is back to fresh (done by itself every
    /// [`SWEEP_INTERVAL`]).
    pub fn sweep(&self) {
        for limit in [&self.login_ip, &self.signup_ip].into_iter().flatten() {
            limit.sweep();
        }
        if let Some(limit) = &self.login_username {
            limit.sweep();
        }
    }

    /// Keys held in memory by all limiters.
    pub fn tracked_keys(&self) -> usize {
        let ips: usize = [&self.login_ip, &self.signup_ip]
            .into_iter()
            .flatten()
            .map(|l| l.limiter.len())
            .sum();
        ips + self.login_username.as_ref().map_or(0, |l| l.limiter.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn ip(text: &str) -> IpAddr {
        text.parse()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    fn throttle(clock: &FakeRelativeClock) -> CredentialThrottle<FakeRelativeClock> {
        CredentialThrottle::with_clock(
            ThrottleSettings {
                login_per_ip: 6,
                login_per_username: 2,
                signup_per_ip: 1,
            },
            clock,
        )
    }

    #[test]
    fn per_username_then_recovers() {
        let clock = FakeRelativeClock::default();
        let t = throttle(&clock);
        let a = ip("10.0.0.1");
        assert!(t.check_login(a, "username:alice").is_ok());
        assert!(t.check_login(a, "username:alice").is_ok());
        let refused = t.check_login(a, "username:alice").unwrap_err();
        assert_eq!(refused.limit, Limit::Username);
        // 2 per minute: one more every 30 s.
        assert_eq!(refused.retry_after_secs(), 30);
        // Other accounts are not affected, from the same address or another.
        assert!(t.check_login(a, "username:bob").is_ok());
        assert!(t.check_login(ip("10.0.0.2"), "email:carol@x.io").is_ok());
        clock.advance(Duration::from_secs(30));
        assert!(t.check_login(ip("10.0.0.3"), "username:alice").is_ok());
    }

    #[test]
    fn per_ip_counts_every_account() {
        let clock = FakeRelativeClock::default();
        let t = throttle(&clock);
        let a = ip("10.0.0.1");
        for i in 0..6 {
            assert!(t.check_login(a, &format!("username:u{i}")).is_ok());
        }
        let refused = t.check_login(a, "username:fresh").unwrap_err();
        assert_eq!(refused.limit, Limit::Ip);
        assert_eq!(refused.retry_after_secs(), 10);
        // The refused attempt did not use the account's budget.
        assert!(t.check_login(ip("10.0.0.2"), "username:fresh").is_ok());
        assert!(t.check_login(ip("10.0.0.2"), "username:fresh").is_ok());
        // Signups have their own budget.
        assert!(t.check_signup(a).is_ok());
        assert_eq!(t.check_signup(a).unwrap_err().retry_after_secs(), 60);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(source_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(source_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        let clock = FakeRelativeClock::default();
        let t = throttle(&clock);
        assert!(t.check_signup(ip("2001:db8::1")).is_ok());
        assert!(t.check_signup(ip("2001:db8::ffff")).is_err());
        assert!(t.check_signup(ip("2001:db8:0:1::1")).is_ok());
    }

    #[test]
    fn sweep_forgets_recovered_keys() {
        let clock = FakeRelativeClock::default();
        let t = throttle(&clock);
        for i in 0..100 {
            let _ = t.check_login(
                ip(&format!("10.0.{}.{}", i / 250, i % 250)),
                &format!("username:{i}"),
            );
        }
        assert_eq!(t.tracked_keys(), 200);
        t.sweep();
        assert_eq!(t.tracked_keys(), 200, "keys still counting are kept");
        clock.advance(Duration::from_secs(61));
        t.sweep();
        assert_eq!(t.tracked_keys(), 0);
    }

    #[test]
    fn zero_turns_a_throttle_off() {
        let t = CredentialThrottle::new(ThrottleSettings {
            login_per_ip: 0,
            login_per_username: 0,
            signup_per_ip: 0,
        });
        for _ in 0..1000 {
            assert!(t.check_login(ip("10.0.0.1"), "username:a").is_ok());
            assert!(t.check_signup(ip("10.0.0.1")).is_ok());
        }
        assert_eq!(t.tracked_keys(), 0);
    }
}
