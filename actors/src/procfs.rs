//! Per-process figures from `/proc`, for `/stats`.

/// Resident set size of `pid` in bytes, if the process exists and `/proc` is readable.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// `pid (name)` for each live process, for logs.
pub fn describe(pids: &[u32]) -> String {
    pids.iter()
        .map(|pid| {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("{pid} ({})", name.trim())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Processes the kernel's OOM killer has ended on this host since boot (`oom_kill` in
/// `/proc/vmstat`, Linux 4.13 and later).
pub fn host_oom_kills() -> Option<u64> {
    let vmstat = std::fs::read_to_string("/proc/vmstat").ok()?;
    parse_oom_kills(&vmstat)
}

fn parse_oom_kills(vmstat: &str) -> Option<u64> {
    vmstat
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss() {
        let text = "Name:\tx\nVmPeak:\t  10 kB\nVmRSS:\t    2048 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(text), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn parses_and_reads_oom_kills() {
        assert_eq!(parse_oom_kills("pgfault 1\noom_kill 7\nx 2\n"), Some(7));
        assert_eq!(parse_oom_kills("oom_kill_x 1\n"), None);
        assert!(
            host_oom_kills().is_some(),
            "this kernel has no oom_kill in /proc/vmstat"
        );
    }

    #[test]
    fn reads_own_rss() {
        assert!(rss_bytes(std::process::id()).unwrap_or(0) > 0);
    }
}
