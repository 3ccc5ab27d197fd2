//! The gateway and OpenCode must agree on which route a path names, or a guard on one route
//! (`/auth/*`) is bypassed by another spelling of it. OpenCode 1.18's router (Hono on Bun)
//! collapses repeated slashes (`//auth/x`), percent-decodes before matching (`/%61uth/x`),
//! ignores case (`/AUTH/x`) and a trailing slash; tried against the real binary. Rather than
//! imitate every rule, the gateway forwards only paths already in normal form, where every
//! reading agrees, and matches guards without regard to case.

/// Why `path` is not in normal form, if it is not: it has an empty segment (`//`), a dot
/// segment (`.` or `..`), a backslash, a percent-encoded unreserved character (`%61` for
/// `a`) or a malformed percent-encoding.
pub fn not_normal(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        return Some("the path must start with /");
    }
    if path.contains('\\') {
        return Some("the path contains a backslash");
    }
    // The last segment may be empty (a trailing slash); no other may be.
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() && segments.peek().is_some() {
            return Some("the path contains an empty segment (//)");
        }
        if matches!(segment, "." | "..") {
            return Some("the path contains a . or .. segment");
        }
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let decoded = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok());
            match decoded {
                None => return Some("the path contains a malformed percent-encoding"),
                Some(b) if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => {
                    return Some("the path percent-encodes a character that needs no encoding")
                }
                Some(_) => i += 3,
            }
        } else {
            i += 1;
        }
    }
    None
}

/// Whether `path` (in normal form) is under `prefix` (`/auth/`) as OpenCode routes it.
pub fn is_under(path: &str, prefix: &str) -> bool {
    path.len() >= prefix.len()
        && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_pass() {
        for ok in [
            "/",
            "/session",
            "/session/",
            "/auth/anthropic",
            "/L3Jvb3QvcHJvag/session/ses_1",
            "/file%2Fname",
            "/a%20b",
            "/a.b/..c/.d",
            "/pty/abc/connect",
        ] {
            assert_eq!(not_normal(ok), None, "{ok}");
        }
    }

    #[test]
    fn other_spellings_are_refused() {
        for bad in [
            "//auth/x",
            "/auth//x",
            "/%61uth/x",
            "/%2e/auth/x",
            "/%2E%2E/auth",
            "/./auth/x",
            "/x/../auth/x",
            "/auth/..",
            "/auth/.",
            "/\\auth/x",
            "/auth%",
            "/auth%4",
            "/auth%zz",
            "/%7E",
            "auth/x",
            "",
        ] {
            assert!(not_normal(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn guards_match_any_case() {
        assert!(is_under("/auth/x", "/auth/"));
        assert!(is_under("/AUTH/x", "/auth/"));
        assert!(is_under("/Auth/", "/auth/"));
        assert!(!is_under("/auth", "/auth/"));
        assert!(!is_under("/authx/y", "/auth/"));
        assert!(!is_under("/session/auth/x", "/auth/"));
    }
}
