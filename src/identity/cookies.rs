//! The few cookie operations the gateway needs on raw `Cookie` header values.

/// The value of cookie `name` in a `Cookie` header value.
pub fn find<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// The header value without the cookies in `names`; `None` if nothing is left.
pub fn without(header: &str, names: &[&str]) -> Option<String> {
    let kept: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k).trim();
            !names.contains(&key)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cookies_by_exact_name() {
        let h = "a=1; chamberlain_dev_user=alice; xchamberlain_dev_user=eve";
        assert_eq!(find(h, "chamberlain_dev_user"), Some("alice"));
        assert_eq!(find(h, "a"), Some("1"));
        assert_eq!(find(h, "b"), None);
        assert_eq!(find("k=\"quoted\"", "k"), Some("quoted"));
    }

    #[test]
    fn removes_only_named_cookies() {
        let h = "a=1; chamberlain_dev_user=alice;b=2";
        assert_eq!(
            without(h, &["chamberlain_dev_user"]).as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(
            without("chamberlain_dev_user=alice", &["chamberlain_dev_user"]),
            None
        );
        assert_eq!(without("flag; a=1", &["a"]).as_deref(), Some("flag"));
    }
}
