//! Who is on the other end of a loopback TCP connection: the uid owning the client's
//! socket, from `/proc/net/tcp{,6}`. With a uid per user this tells a user's process from
//! the operator's tools, which the admin listener (unauthenticated, and on loopback by
//! default) must refuse.

use std::net::{IpAddr, SocketAddr};

/// The uid owning the socket whose local address is `client` (the peer of one of our
/// connections), if it is on this host.
pub fn socket_owner(client: SocketAddr) -> Option<u32> {
    let (file, want) = match client.ip() {
        IpAddr::V4(ip) => ("/proc/net/tcp", hex_v4(ip.octets(), client.port())),
        IpAddr::V6(ip) => ("/proc/net/tcp6", hex_v6(ip.octets(), client.port())),
    };
    // The table can skip entries while it changes under the reader; look more than once.
    for _ in 0..3 {
        let Ok(text) = std::fs::read_to_string(file) else {
            return None;
        };
        if let Some(uid) = find(&text, &want) {
            return Some(uid);
        }
    }
    None
}

fn find(table: &str, local: &str) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local))
            .then(|| fields.get(7)?.parse().ok())
            .flatten()
    })
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

    #[test]
    fn finds_the_owner_of_a_row() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   1: 0100007F:B4FD 0100007F:CA44 06 00000000:00000000 03:0000077D 00000000  200001        0 0 3 0\n";
        assert_eq!(hex_v4([127, 0, 0, 1], 0xB4FD), "0100007F:B4FD");
        assert_eq!(find(table, "0100007F:B4FD"), Some(200_001));
        assert_eq!(find(table, "0100007F:B4FE"), None);
    }

    #[test]
    fn knows_the_owner_of_a_real_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _server = listener.accept().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(socket_owner(client.local_addr().unwrap()), Some(me));
    }
}
