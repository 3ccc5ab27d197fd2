//! Percent-encoding for URL parts built from values (directories, paths to return to).

/// Percent-encodes everything but unreserved characters and `/`.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_unreserved_characters_and_slashes_stay() {
        assert_eq!(
            super::percent_encode("/h/my project&x=1~"),
            "/h/my%20project%26x%3D1~"
        );
    }
}
