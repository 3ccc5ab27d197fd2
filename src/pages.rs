//! The few HTML pages the gateway itself serves, embedded in the binary from `static/`.

const STARTING: &str = include_str!("../static/starting.html");
const UNAUTHORIZED: &str = include_str!("../static/unauthorized.html");
const LOGIN: &str = include_str!("../static/login.html");

/// Shown to a browser navigation while the user's instance is not ready; it follows
/// `/-/api/instance/progress` and reloads when the instance is ready.
pub fn starting() -> &'static str {
    STARTING
}

pub fn unauthorized(login: &str, back_to: &str) -> String {
    let href = format!("{login}?next={}", percent_encode(back_to));
    UNAUTHORIZED.replace("{{login_href}}", &escape_html(&href))
}

/// The dev sign-in form; `error` explains a rejected name.
pub fn login(next: &str, error: Option<&str>) -> String {
    let error_html = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape_html(e)))
        .unwrap_or_default();
    LOGIN
        .replace("{{next}}", &escape_html(next))
        .replace("{{error}}", &error_html)
}

pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

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
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape_html("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn login_page_escapes_its_inputs() {
        let page = login("/\"><script>", Some("<b>bad</b>"));
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;b&gt;bad&lt;/b&gt;"));
    }

    #[test]
    fn unauthorized_page_links_back() {
        let page = unauthorized("/-/login", "/session/a b");
        assert!(page.contains("/-/login?next=/session/a%20b"));
    }
}
