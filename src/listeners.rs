//! Binding the gateway's TCP listeners, first thing at start-up: a port that is taken is
//! reported, naming the address and the flag, before anything else has started.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};

use anyhow::Context;

/// Pending connections the kernel queues per listener (actix-web's own default).
const BACKLOG: i32 = 1024;

/// A listening socket on `addr`, the address given by `flag`.
pub fn bind_tcp(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    let bind = || -> std::io::Result<TcpListener> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        Ok(socket.into())
    };
    bind().with_context(|| {
        format!(
            "cannot listen on {addr} ({flag}): stop the program that holds the address, or \
             choose another with {flag}"
        )
    })
}

/// `--listen`/`--admin-listen` values: `127.0.0.1:8080`, `[::1]:8080`, or a host name with a
/// port (`localhost:8080`), resolved now; of several addresses the first IPv4 one is taken
/// (so `localhost` is 127.0.0.1 whatever the resolver's order).
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let resolved: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| {
            format!("{text:?} is not an address like 127.0.0.1:8080 or localhost:8080 ({e})")
        })?
        .collect();
    resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| resolved.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_host_names_are_accepted() {
        assert_eq!(
            parse_addr("127.0.0.1:8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(parse_addr("[::1]:80").unwrap(), "[::1]:80".parse().unwrap());
        assert_eq!(
            parse_addr("localhost:8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        for bad in ["localhost", "8080", "no such host.invalid:80", ""] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_taken_address_is_named_with_its_flag() {
        let held = bind_tcp("127.0.0.1:0".parse().unwrap(), "--listen").unwrap();
        let addr = held.local_addr().unwrap();
        let err = format!("{:#}", bind_tcp(addr, "--admin-listen").unwrap_err());
        assert!(err.contains(&addr.to_string()), "{err}");
        assert!(err.contains("--admin-listen"), "{err}");
        assert!(err.contains("in use"), "{err}");
    }
}
