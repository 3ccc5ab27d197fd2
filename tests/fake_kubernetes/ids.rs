//! Random identifiers: object UIDs, `generateName` suffixes and Event name suffixes.

use std::io::Read;

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    if read.is_err() {
        // No /dev/urandom (unlikely): the std hasher's per-process random keys will do.
        use std::hash::{BuildHasher, Hasher};
        for (i, chunk) in buf.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            let v = h.finish().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    buf
}

/// A version 4 UUID, the form of `metadata.uid`.
pub fn uuid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The five characters the API server appends to `generateName` (its alphabet has no vowels).
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes::<5>()
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// Sixteen hex digits, like the suffix of an Event's name.
pub fn hex_suffix() -> String {
    random_bytes::<8>()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A random number, for jitter.
pub fn random_u64() -> u64 {
    u64::from_le_bytes(random_bytes::<8>())
}
