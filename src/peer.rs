//! Who is on the other end of a TCP connection from this host: the uid owning the client's
//! socket, from `/proc/net/tcp` and `/proc/net/tcp6`. With a uid per user this tells a
//! user's process from the operator's tools. It is the admin listener's second line (the
//! operator token is the first), and it answers only when it is sure:
//!
//! - an IPv4 client may sit in either table (an `AF_INET6` socket connecting to
//!   `::ffff:127.0.0.1` is listed in `tcp6` while the listener sees plain IPv4), and a
//!   dual-stack listener reports IPv4 clients as IPv4-mapped: both tables are searched in
//!   both spellings;
//! - a socket its process already closed (inode 0, or `TIME_WAIT`, which the kernel lists
//!   as uid 0) belongs to nobody any more: a request sent and closed at once has no owner,
//!   not root's.

use std::net::{IpAddr, SocketAddr};

use crate::forwarded::canonical;

/// `TIME_WAIT` in the `st` column.
const TIME_WAIT: &str = "06";

/// The uid owning the open socket whose local address is `client` (the peer of one of our
/// connections), if it is on this host and still open. `local`: the peer is on this host,
/// so its socket must be there.
pub fn socket_owner(client: SocketAddr, local: bool) -> Option<u32> {
    let wanted = spellings(client);
    // The tables can skip entries while they change under the reader (many connections
    // opening and closing on a busy host): look more than once, a moment apart, for a peer
    // of this host. Only a socket not found waits, at most 15 ms in all.
    let attempts = if local { 5 } else { 1 };
    for attempt in 0..attempts {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(1 << (attempt - 1)));
        }
        let mut owners = Vec::new();
        for (file, local) in &wanted {
            if let Ok(text) = std::fs::read_to_string(file) {
                owners.extend(find(&text, local));
            }
        }
        owners.sort_unstable();
        owners.dedup();
        match owners.as_slice() {
            [uid] => return Some(*uid),
            [] => continue,
            _ => return None,
        }
    }
    None
}

/// The table rows that can describe `client`'s socket.
fn spellings(client: SocketAddr) -> Vec<(&'static str, String)> {
    let port = client.port();
    match canonical(client.ip()) {
        IpAddr::V4(ip) => {
            let mapped = ip.to_ipv6_mapped().octets();
            vec![
                ("/proc/net/tcp", hex_v4(ip.octets(), port)),
                ("/proc/net/tcp6", hex_v6(mapped, port)),
            ]
        }
        IpAddr::V6(ip) => vec![("/proc/net/tcp6", hex_v6(ip.octets(), port))],
    }
}

/// The uids of open sockets whose local address is `local`.
fn find(table: &str, local: &str) -> Vec<u32> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1) != Some(&local) {
                return None;
            }
            let open = fields.get(3) != Some(&TIME_WAIT)
                && fields.get(9).is_some_and(|inode| *inode != "0");
            if !open {
                return None;
            }
            fields.get(7)?.parse().ok()
        })
        .collect()
}

/// `0100007F:1F90` for 127.0.0.1:8080: the address as the kernel prints it (native-endian
/// 32-bit words, which is little-endian on every platform this runs on).
fn hex_v4(octets: [u8; 4], port: u16) -> String {
    format!("{:08X}:{port:04X}", u32::from_le_bytes(octets))
}

fn hex_v6(octets: [u8; 16], port: u16) -> String {
    let words: String = octets
        .chunks(4)
        .map(|w| format!("{:08X}", u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
        .collect();
    format!("{words}:{port:04X}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    #[test]
    fn finds_the_owner_of_an_open_socket_only() {
        let table = format!(
            "{HEADER}   1: 0100007F:B4FD 0100007F:CA44 01 00000000:00000000 03:0000077D 00000000  200001        0 4242 3 0\n\
             \x20  2: 0100007F:B4FE 0100007F:CA44 06 00000000:00000000 03:0000077D 00000000     0        0 0 3 0\n\
             \x20  3: 0100007F:B4FF 0100007F:CA44 04 00000000:00000000 03:0000077D 00000000  200001        0 0 3 0\n"
        );
        assert_eq!(hex_v4([127, 0, 0, 1], 0xB4FD), "0100007F:B4FD");
        assert_eq!(find(&table, "0100007F:B4FD"), [200_001]);
        assert!(
            find(&table, "0100007F:B4FE").is_empty(),
            "TIME_WAIT is nobody's"
        );
        assert!(
            find(&table, "0100007F:B4FF").is_empty(),
            "closed by its process"
        );
        assert!(find(&table, "0100007F:B500").is_empty());
    }

    #[test]
    fn ipv4_clients_are_looked_up_in_both_tables() {
        let v4: SocketAddr = "127.0.0.1:46333".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:46333".parse().unwrap();
        let expected = vec![
            ("/proc/net/tcp", "0100007F:B4FD".to_owned()),
            (
                "/proc/net/tcp6",
                "0000000000000000FFFF00000100007F:B4FD".to_owned(),
            ),
        ];
        assert_eq!(spellings(v4), expected);
        assert_eq!(spellings(mapped), expected);
        let v6: SocketAddr = "[::1]:46333".parse().unwrap();
        assert_eq!(
            spellings(v6),
            [(
                "/proc/net/tcp6",
                "00000000000000000000000001000000:B4FD".to_owned()
            )]
        );
    }

    #[test]
    fn knows_the_owner_of_a_real_connection() {
        let me = nix::unistd::geteuid().as_raw();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _server = listener.accept().unwrap();
        assert_eq!(socket_owner(client.local_addr().unwrap(), true), Some(me));
    }

    #[test]
    fn knows_the_owner_of_an_ipv6_socket_speaking_ipv4() {
        // The client socket is AF_INET6 (listed in tcp6); the listener sees 127.0.0.1.
        let me = nix::unistd::geteuid().as_raw();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let Ok(_client) = std::net::TcpStream::connect(("::ffff:127.0.0.1", port)) else {
            return; // no IPv6 on this host
        };
        let (_server, peer) = listener.accept().unwrap();
        assert!(peer.is_ipv4());
        assert_eq!(socket_owner(peer, true), Some(me));
    }

    #[test]
    fn a_closed_client_has_no_owner() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        drop(client);
        assert_eq!(socket_owner(peer, true), None);
    }
}
