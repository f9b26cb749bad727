//! Linux process facts read from `/proc` (no `unsafe`): our CPU time, the machine's CPU
//! use, a target's RSS, unread bytes in our sockets, and the open-file limit.

use std::collections::HashSet;

/// Raises the soft open-file limit to the hard limit; returns (soft, hard) after.
pub fn raise_nofile() -> (u64, u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            },
        );
    }
    let now = getrlimit(Resource::Nofile);
    (
        now.current.unwrap_or(u64::MAX),
        now.maximum.unwrap_or(u64::MAX),
    )
}

/// CPU seconds (user + system, all threads) used by this process so far.
pub fn self_cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the `(comm)`: state is field 3; utime 14, stime 15 (1-based).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// Machine-wide CPU counters (busy, total) in ticks from `/proc/stat`.
pub fn machine_cpu() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = stat.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Resident set size of process `pid` in bytes (`VmRSS`), if readable.
pub fn pid_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Sum of the kernel receive queues (unread bytes) of established TCP sockets whose
/// remote port is one of `ports`: the client side of our connections, i.e. data the
/// generator has not read yet.
pub fn recv_queue_bytes(ports: &HashSet<u16>) -> u64 {
    let mut sum = 0;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        sum += parse_recv_queue(&text, ports);
    }
    sum
}

/// Parses `/proc/net/tcp` text (see [`recv_queue_bytes`]).
pub fn parse_recv_queue(text: &str, ports: &HashSet<u16>) -> u64 {
    let mut sum = 0;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().take(5).collect();
        let (Some(rem), Some(state), Some(queues)) = (f.get(2), f.get(3), f.get(4)) else {
            continue;
        };
        if *state != "01" {
            continue;
        }
        let port = rem
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        if !port.is_some_and(|p| ports.contains(&p)) {
            continue;
        }
        if let Some(rx) = queues
            .split_once(':')
            .and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok())
        {
            sum += rx;
        }
    }
    sum
}

/// Number of CPUs available to this process.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Total memory of the machine in bytes (`MemTotal`).
pub fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:9C40 0100007F:0BB8 01 00000000:00000010 00:00000000 00000000  0 0 1\n\
   1: 0100007F:9C41 0100007F:0BB8 06 00000000:00000100 00:00000000 00000000  0 0 2\n\
   2: 0100007F:0BB8 0100007F:9C40 01 00000000:00000200 00:00000000 00000000  0 0 3\n";
        let ports: HashSet<u16> = [3000].into_iter().collect();
        assert_eq!(parse_recv_queue(text, &ports), 16);
    }

    #[test]
    fn reads_own_process() {
        assert!(pid_rss(std::process::id()).is_some_and(|r| r > 0));
        assert!(self_cpu_secs() >= 0.0);
        let (busy, total) = machine_cpu();
        assert!(busy <= total);
    }
}
