//! The few cookie operations the gateway needs on raw `Cookie` header values.

/// The value of cookie `name` in a `Cookie` header value.
pub fn find<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// Cookie names that belong to the gateway: exact names, and name prefixes for cookies the
/// load balancer shards (`AWSELBAuthSessionCookie-0`, `-1`, …).
#[derive(Debug, Clone, Default)]
pub struct CookieNames {
    pub exact: Vec<String>,
    pub prefixes: Vec<&'static str>,
}

impl CookieNames {
    pub fn contains(&self, name: &str) -> bool {
        self.exact.iter().any(|n| n == name) || self.prefixes.iter().any(|p| name.starts_with(p))
    }
}

/// The names of every cookie in a `Cookie` header value.
pub fn names(header: &str) -> impl Iterator<Item = &str> {
    header
        .split(';')
        .filter_map(|pair| pair.split_once('=').map(|(k, _)| k.trim()))
        .filter(|k| !k.is_empty())
}

/// The header value without the cookies in `names`; `None` if nothing is left.
pub fn without(header: &str, names: &CookieNames) -> Option<String> {
    let kept: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k).trim();
            !names.contains(key)
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

    fn exact(names: &[&str]) -> CookieNames {
        CookieNames {
            exact: names.iter().map(|n| n.to_string()).collect(),
            prefixes: Vec::new(),
        }
    }

    #[test]
    fn removes_only_named_cookies() {
        let h = "a=1; chamberlain_dev_user=alice;b=2";
        let dev = exact(&["chamberlain_dev_user"]);
        assert_eq!(without(h, &dev).as_deref(), Some("a=1; b=2"));
        assert_eq!(without("chamberlain_dev_user=alice", &dev), None);
        assert_eq!(
            without("flag; a=1", &exact(&["a"])).as_deref(),
            Some("flag")
        );
    }

    #[test]
    fn removes_sharded_cookies_by_prefix() {
        let alb = CookieNames {
            exact: vec!["tok".into()],
            prefixes: vec!["AWSELBAuthSessionCookie"],
        };
        let h = "AWSELBAuthSessionCookie-0=x; keep=1; AWSELBAuthSessionCookie-1=y; tok=t";
        assert_eq!(without(h, &alb).as_deref(), Some("keep=1"));
        assert_eq!(
            names(h).collect::<Vec<_>>(),
            [
                "AWSELBAuthSessionCookie-0",
                "keep",
                "AWSELBAuthSessionCookie-1",
                "tok"
            ]
        );
    }
}
