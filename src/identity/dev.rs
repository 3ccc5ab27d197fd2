//! Development identity: the user names themself, with the `X-Chamberlain-Dev-User` header
//! or the cookie set by `GET /-/login?user=<name>`. Nothing is verified, which is why the
//! gateway refuses to serve dev identity on a non-loopback address unless told to.

use actix_web::http::header::HeaderName;
use actix_web::HttpRequest;

use super::{cookies, AuthError, Credential, Identity, Person};

pub const HEADER: &str = "x-chamberlain-dev-user";
/// [`HEADER`] as a name made once: looked up by text, an unknown name is parsed and copied
/// to the heap on every request.
const HEADER_NAME: HeaderName = HeaderName::from_static(HEADER);
pub const COOKIE: &str = "chamberlain_dev_user";
pub const LOGIN_PATH: &str = "/-/login";
const MAX_NAME: usize = 64;

/// A dev user name: 1–64 ASCII letters, digits, `.`, `_`, `-`, starting with a letter or
/// digit. The same rule applies to the header, the cookie and the login form.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("dev user name is empty".to_owned());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "dev user name is {} bytes long; at most {MAX_NAME} are allowed",
            name.len()
        ));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("dev user name must start with a letter or digit".to_owned());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "dev user name contains {bad:?}; only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

pub fn identify(req: &HttpRequest) -> Result<Identity, AuthError> {
    let (name, credential) = if let Some(value) = req.headers().get(HEADER_NAME) {
        let name = value
            .to_str()
            .map_err(|_| AuthError::Malformed(format!("{HEADER} is not valid text")))?;
        (name, Credential::Header)
    } else {
        let cookie = req
            .headers()
            .get_all(actix_web::http::header::COOKIE)
            .filter_map(|v| v.to_str().ok())
            .find_map(|h| cookies::find(h, COOKIE));
        match cookie {
            Some(name) => (name, Credential::Cookie),
            None => return Err(AuthError::Missing),
        }
    };
    validate_name(name).map_err(AuthError::Malformed)?;
    Ok(identity_for(name, credential))
}

pub fn identity_for(name: &str, credential: Credential) -> Identity {
    let person = Person {
        user_id: name.to_owned(),
        email: Some(format!("{name}@localhost")),
        name: Some(name.to_owned()),
        email_verified: None,
        groups: Vec::new(),
    };
    Identity::new(person, credential)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn accepts_reasonable_names() {
        for name in ["alice", "Bob.Smith", "u-1_2", "9lives", &"a".repeat(64)] {
            assert!(validate_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn rejects_paths_controls_and_huge_names() {
        for name in [
            "",
            "a/b",
            "..",
            ".hidden",
            "a\0b",
            "-x",
            "a b",
            "ä",
            &"a".repeat(65),
        ] {
            assert!(validate_name(name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn header_wins_over_cookie() {
        let req = TestRequest::default()
            .insert_header((HEADER, "alice"))
            .insert_header(("cookie", "chamberlain_dev_user=bob"))
            .to_http_request();
        let id = identify(&req).unwrap();
        assert_eq!(id.user_id, "alice");
        assert_eq!(id.credential, Credential::Header);
        assert!(!id.credential.is_ambient());
        let req = TestRequest::default()
            .insert_header(("cookie", "x=1; chamberlain_dev_user=bob"))
            .to_http_request();
        let id = identify(&req).unwrap();
        assert_eq!(id.user_id, "bob");
        assert_eq!(id.email.as_deref(), Some("bob@localhost"));
        assert_eq!(id.credential, Credential::Cookie, "a cookie is ambient");
        assert!(id.credential.is_ambient());
    }

    #[test]
    fn missing_and_malformed_are_distinguished() {
        let req = TestRequest::default().to_http_request();
        assert!(matches!(identify(&req), Err(AuthError::Missing)));
        let req = TestRequest::default()
            .insert_header((HEADER, "../etc"))
            .to_http_request();
        assert!(matches!(identify(&req), Err(AuthError::Malformed(_))));
    }
}
