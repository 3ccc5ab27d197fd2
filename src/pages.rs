//! The few HTML pages the gateway itself serves, embedded in the binary from `static/`.
//! Every page begins with `static/head.html` (doctype, charset, viewport, icon), joined at
//! compile time; the page's own file starts at its title.

/// A page of `static/`, after the common start of its head.
macro_rules! page {
    ($name:literal) => {
        concat!(
            include_str!("../static/head.html"),
            include_str!(concat!("../static/", $name, ".html"))
        )
    };
}

const STARTING: &str = page!("starting");
const UNAUTHORIZED: &str = page!("unauthorized");
const LOGIN: &str = page!("login");
const SIGNED_OUT: &str = page!("signed_out");
const ERROR: &str = page!("error");
/// The design tokens and base styles every page links first (`/-/static/base.css`; also on
/// the admin listener for the console). Served to anyone, signed in or not.
pub const BASE_CSS: &str = include_str!("../static/base.css");
pub const PORTAL: &str = page!("portal");
pub const PORTAL_CSS: &str = include_str!("../static/portal.css");
pub const PORTAL_JS: &str = include_str!("../static/portal.js");
pub const ADMIN: &str = page!("admin");
pub const ADMIN_JS: &str = include_str!("../static/admin.js");
pub const ADMIN_CSS: &str = include_str!("../static/admin.css");
pub const TOKENS: &str = page!("tokens");
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

    /// Every page the gateway serves, as served, with the stylesheet path it uses.
    fn all_pages() -> Vec<(&'static str, String, &'static str)> {
        let public = "/-/static/base.css";
        vec![
            ("starting", starting().to_owned(), public),
            (
                "401",
                unauthorized(Some("/-/login"), "/", "no token"),
                public,
            ),
            ("login", login("/", Some("bad name")), public),
            ("signed out", signed_out(Some("/-/login")), public),
            ("error", error(404, "Not found", "no such page"), public),
            ("portal", PORTAL.to_owned(), public),
            ("tokens", TOKENS.to_owned(), public),
            // Relative: the console is served at /-/admin and at the admin listener's /console.
            ("admin", ADMIN.to_owned(), "static/base.css"),
        ]
    }

    fn stylesheet_links(page: &str) -> Vec<&str> {
        page.split("<link rel=\"stylesheet\" href=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect()
    }

    fn inline_styles(page: &str) -> Vec<&str> {
        page.split("<style>")
            .skip(1)
            .filter_map(|rest| rest.split("</style>").next())
            .collect()
    }

    /// The custom properties (`--name: …`) that `css` defines.
    fn defined_tokens(css: &str) -> Vec<String> {
        css.split("--")
            .skip(1)
            .filter_map(|rest| {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                rest[name.len()..]
                    .trim_start()
                    .starts_with(':')
                    .then_some(name)
            })
            .collect()
    }

    #[test]
    fn every_page_begins_with_the_common_head_and_has_a_title() {
        let head = include_str!("../static/head.html");
        for (name, page, _) in all_pages() {
            assert!(page.starts_with(head), "{name}");
            let title = page.find("<title>").expect("a title");
            assert!(title < page.find("</head>").expect("a head"), "{name}");
            assert_eq!(page.matches("<!doctype html>").count(), 1, "{name}");
        }
    }

    #[test]
    fn every_page_links_the_shared_stylesheet_first() {
        for (name, page, base) in all_pages() {
            let links = stylesheet_links(&page);
            assert_eq!(links.first(), Some(&base), "{name}: {links:?}");
            if let Some(own) = page.find("<style>") {
                assert!(
                    page.find(base).unwrap() < own,
                    "{name}: its own styles must come after base.css"
                );
            }
        }
    }

    #[test]
    fn no_page_carries_the_design_tokens() {
        for (name, page, _) in all_pages() {
            for css in inline_styles(&page) {
                assert_eq!(defined_tokens(css), Vec::<String>::new(), "{name}");
                for what in [":root", "color-scheme", "system-ui", "font: 16px"] {
                    assert!(!css.contains(what), "{name} inlines {what:?}: {css}");
                }
            }
        }
        for (name, css) in [("portal.css", PORTAL_CSS), ("admin.css", ADMIN_CSS)] {
            assert_eq!(defined_tokens(css), Vec::<String>::new(), "{name}");
            for what in [":root", "color-scheme", "system-ui", "@import"] {
                assert!(!css.contains(what), "{name} carries {what:?}");
            }
        }
        let tokens = defined_tokens(BASE_CSS);
        for token in ["accent", "muted", "bad", "good", "warn", "line"] {
            assert!(tokens.iter().any(|t| t == token), "{token}: {tokens:?}");
        }
    }

    /// Each token a page or stylesheet uses is one base.css defines.
    #[test]
    fn every_token_used_is_defined_in_base_css() {
        let pages = all_pages();
        let mut sources: Vec<(&str, &str)> =
            vec![("portal.css", PORTAL_CSS), ("admin.css", ADMIN_CSS)];
        sources.extend(pages.iter().map(|(name, page, _)| (*name, page.as_str())));
        for (name, text) in sources {
            for rest in text.split("var(--").skip(1) {
                let token: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                assert!(
                    defined_tokens(BASE_CSS).contains(&token),
                    "{name} uses --{token}, which base.css does not define"
                );
            }
        }
    }

    /// Still readable when base.css does not load: it stands alone (loads nothing), and
    /// only it pairs a light text colour with a token background (without the tokens such
    /// a button would be white on white); every other style leaves text colours inherited.
    #[test]
    fn pages_stay_readable_without_the_shared_stylesheet() {
        for what in ["@import", "url("] {
            assert!(!BASE_CSS.contains(what), "base.css loads something: {what}");
        }
        let pages = all_pages();
        let mut styles: Vec<(&str, &str)> =
            vec![("portal.css", PORTAL_CSS), ("admin.css", ADMIN_CSS)];
        for (name, page, _) in &pages {
            styles.extend(inline_styles(page).into_iter().map(|css| (*name, css)));
        }
        for (name, css) in styles {
            for light in ["color: white", "color: #fff", "color:white", "color:#fff"] {
                assert!(
                    !css.contains(light),
                    "{name} sets {light:?} outside base.css"
                );
            }
        }
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
