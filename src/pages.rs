//! The few HTML pages the gateway itself serves, embedded in the binary from `static/`.

const STARTING: &str = include_str!("../static/starting.html");
const UNAUTHORIZED: &str = include_str!("../static/unauthorized.html");
const LOGIN: &str = include_str!("../static/login.html");
const SIGNED_OUT: &str = include_str!("../static/signed_out.html");
const ERROR: &str = include_str!("../static/error.html");
pub const PORTAL: &str = include_str!("../static/portal.html");
pub const PORTAL_CSS: &str = include_str!("../static/portal.css");
pub const PORTAL_JS: &str = include_str!("../static/portal.js");
pub const ADMIN: &str = include_str!("../static/admin.html");
pub const ADMIN_JS: &str = include_str!("../static/admin.js");
pub const ADMIN_CSS: &str = include_str!("../static/admin.css");
pub const TOKENS: &str = include_str!("../static/tokens.html");
pub const TOKENS_JS: &str = include_str!("../static/tokens.js");
/// A copy of OpenCode's own `/site.webmanifest` (1.18.33). Browsers fetch a page's manifest
/// without cookies, so a signed-in person's OpenCode page would get a 401 for it (and a
/// console error); the gateway answers such requests with this copy. A real-OpenCode test
/// checks that it still equals what OpenCode serves.
pub const OPENCODE_MANIFEST: &str = include_str!("../static/opencode.webmanifest");

/// Shown to a browser navigation while the user's instance is not ready; it follows
/// `/-/api/instance/progress` and reloads when the instance is ready.
pub fn starting() -> &'static str {
    STARTING
}

/// The 401 page: why, and (when there is a sign-in flow) a link that signs in again and
/// comes back to `back_to`.
pub fn unauthorized(login: Option<&str>, back_to: &str, reason: &str) -> String {
    let action = match login {
        Some(login) => {
            let href = format!("{login}?next={}", percent_encode(back_to));
            format!("<a href=\"{}\">Sign in</a>", escape_html(&href))
        }
        None => "Sign in through your organisation's sign-in page, then try again.".to_owned(),
    };
    UNAUTHORIZED
        .replace("{{action}}", &action)
        .replace("{{reason}}", &escape_html(reason))
}

/// A browser's page for an error other than "not signed in": same look as the rest.
pub fn error(status: u16, title: &str, message: &str) -> String {
    ERROR
        .replace("{{status}}", &status.to_string())
        .replace("{{title}}", &escape_html(title))
        .replace("{{message}}", &escape_html(message))
}

/// After `/-/logout` when there is no identity-provider logout page to go to.
pub fn signed_out(login: Option<&str>) -> String {
    let action = match login {
        Some(login) => format!(
            "<a href=\"{}?next=/\">Sign in again</a>",
            escape_html(login)
        ),
        None => String::new(),
    };
    SIGNED_OUT.replace("{{action}}", &action)
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

/// A page's asset: public (it holds nothing about anyone), revalidated each time so an
/// upgraded gateway is picked up at once.
pub fn asset(content_type: &'static str, body: &'static str) -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-content-type-options", "nosniff"))
        .body(body)
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

pub use chamberlain_actors::encode::percent_encode;

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
    fn error_page_escapes_the_message() {
        let page = error(503, "Not now", "<script>x</script>");
        assert!(page.contains("503") && page.contains("Not now"));
        assert!(!page.contains("<script>x"));
    }

    #[test]
    fn unauthorized_page_links_back() {
        let page = unauthorized(Some("/-/login"), "/session/a b", "token <expired>");
        assert!(page.contains("/-/login?next=/session/a%20b"));
        assert!(page.contains("token &lt;expired&gt;"));
        let page = unauthorized(None, "/", "no token");
        assert!(!page.contains("/-/login"));
    }
}
