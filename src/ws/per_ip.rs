//! The per-IP table behind the per-IP limits: for each client address (an
//! IPv6 client counts per /64), its open connections and its connects of
//! the last minute. Admission checks it and [`ConnectionGuard`] counts in
//! it; both reach it under the one lock in [`WsState`](super::WsState).
//!
//! [`ConnectionGuard`]: super::guard::ConnectionGuard

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Per-IP counts. An entry outlives its last connection by up to a minute
/// (its connects still count against the rate limit), so entries of
/// addresses that are gone are swept out once the map has doubled since the
/// last sweep: every address ever seen (say, through `X-Forwarded-For`)
/// never accumulates.
#[derive(Default)]
pub(super) struct PerIp {
    pub(super) map: HashMap<IpAddr, IpEntry>,
    sweep_at: usize,
}

impl PerIp {
    const MIN_SWEEP: usize = 1024;

    pub(super) fn sweep_if_due(&mut self, now: Instant) {
        if self.map.len() < self.sweep_at.max(Self::MIN_SWEEP) {
            return;
        }
        self.map.retain(|_, e| {
            e.open > 0 || e.connects.back().is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60))
        });
        self.sweep_at = self.map.len() * 2;
    }
}

#[derive(Default)]
pub(super) struct IpEntry {
    pub(super) open: usize,
    /// Accepted connects in the last minute (at most the rate limit).
    pub(super) connects: VecDeque<Instant>,
}

/// The client's IP as the limits see it: IPv6 clients count per /64.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let v4: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(ip_key(v4), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn per_ip_entries_of_gone_addresses_are_swept() {
        let mut p = PerIp::default();
        let long_ago = Instant::now();
        let now = long_ago + Duration::from_secs(61);
        for i in 0..PerIp::MIN_SWEEP as u32 {
            let e = p.map.entry(IpAddr::from(i.to_be_bytes())).or_default();
            e.connects.push_back(long_ago);
        }
        p.map.entry("10.9.9.9".parse().unwrap()).or_default().open = 1; // still connected
        p.map.entry("10.9.9.8".parse().unwrap()).or_default().connects.push_back(now); // connected a moment ago
        p.sweep_if_due(now);
        assert_eq!(p.map.len(), 2, "only the live and the recent entries stay");
        assert_eq!(p.sweep_at, 4);
        p.sweep_if_due(now); // below MIN_SWEEP: nothing to do
        assert_eq!(p.map.len(), 2);
    }
}
