//! Pod IPs from the `--pod-ips` range (`127.0.3.1-127.0.3.250`), lowest free first.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

pub struct IpPool {
    first: u32,
    last: u32,
    taken: BTreeSet<u32>,
}

impl IpPool {
    pub fn parse(range: &str) -> Result<IpPool, String> {
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        let parse = |s: &str| {
            s.trim()
                .parse::<Ipv4Addr>()
                .map(u32::from)
                .map_err(|e| format!("bad address {s:?} in --pod-ips: {e}"))
        };
        let (first, last) = (parse(a)?, parse(b)?);
        if first > last {
            return Err(format!("empty --pod-ips range {range:?}"));
        }
        Ok(IpPool {
            first,
            last,
            taken: BTreeSet::new(),
        })
    }

    pub fn take(&mut self) -> Option<Ipv4Addr> {
        let free = (self.first..=self.last).find(|ip| !self.taken.contains(ip))?;
        self.taken.insert(free);
        Some(Ipv4Addr::from(free))
    }

    pub fn free(&mut self, ip: Ipv4Addr) {
        self.taken.remove(&u32::from(ip));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hands_out_and_reuses() {
        let mut pool = super::IpPool::parse("127.0.3.1-127.0.3.2").unwrap();
        let a = pool.take().unwrap();
        assert_eq!(a.to_string(), "127.0.3.1");
        assert_eq!(pool.take().unwrap().to_string(), "127.0.3.2");
        assert!(pool.take().is_none());
        pool.free(a);
        assert_eq!(pool.take(), Some(a));
    }
}
