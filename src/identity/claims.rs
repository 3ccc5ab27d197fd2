//! Reading a verified token's claims into an [`Identity`], leniently: identity providers
//! disagree on types (Cognito sends `email_verified` as the string `"true"` through the ALB,
//! some issuers send `exp` as a string), and a claim of an unexpected type is treated as
//! absent rather than failing the sign-in. Only `sub` and `exp` are required.

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::Person;

/// Longest `sub` accepted; Cognito's are 36-character UUIDs.
const MAX_SUBJECT: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsError {
    #[error("token payload is not a JSON object")]
    NotAnObject,
    #[error("token has no \"sub\" claim")]
    NoSubject,
    #[error(
        "token \"sub\" is empty, longer than {MAX_SUBJECT} bytes or contains control characters"
    )]
    BadSubject,
    #[error("token has no \"exp\" claim")]
    NoExpiry,
    #[error("token expired {0} s ago")]
    Expired(u64),
    #[error("token is not valid for another {0} s")]
    NotYetValid(u64),
    #[error("token issuer {0:?} is not the configured issuer")]
    Issuer(Option<String>),
    #[error("token audience and client id match none of the configured ones")]
    Audience,
}

/// The claims of a token whose signature has been checked.
#[derive(Debug)]
pub struct Claims {
    map: Map<String, Value>,
}

impl Claims {
    pub fn parse(payload: &[u8]) -> Result<Self, ClaimsError> {
        match serde_json::from_slice(payload) {
            Ok(Value::Object(map)) => Ok(Claims { map }),
            _ => Err(ClaimsError::NotAnObject),
        }
    }

    /// A non-empty string claim without control characters (they would forge log lines
    /// and break pages; no real address or name has them).
    fn string(&self, name: &str) -> Option<&str> {
        self.map
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && !s.chars().any(char::is_control))
    }

    pub fn expiry(&self) -> Option<u64> {
        self.map.get("exp").and_then(number)
    }

    /// `exp` and `nbf` against `now` (seconds since the epoch), with `leeway` seconds of
    /// clock skew allowed either way. `header_exp` is the ALB's copy in the JOSE header;
    /// the earlier of the two wins. Returns the expiry in force.
    pub fn check_time(
        &self,
        now: u64,
        leeway: u64,
        header_exp: Option<u64>,
    ) -> Result<u64, ClaimsError> {
        let exp = match (self.expiry(), header_exp) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return Err(ClaimsError::NoExpiry),
        };
        if now > exp.saturating_add(leeway) {
            return Err(ClaimsError::Expired(now - exp));
        }
        if let Some(nbf) = self.map.get("nbf").and_then(number) {
            if nbf > now.saturating_add(leeway) {
                return Err(ClaimsError::NotYetValid(nbf - now));
            }
        }
        Ok(exp)
    }

    pub fn check_issuer(&self, issuer: &str) -> Result<(), ClaimsError> {
        match self.string("iss") {
            Some(iss) if iss.trim_end_matches('/') == issuer.trim_end_matches('/') => Ok(()),
            other => Err(ClaimsError::Issuer(other.map(str::to_owned))),
        }
    }

    /// Passes when `aud` (a string or an array) names one of `audiences` or `client_ids`,
    /// or `client_id` (Cognito access tokens) names one of `client_ids`. A Cognito ID
    /// token's `aud` is its app client id, hence the second clause.
    pub fn check_audience(
        &self,
        audiences: &[String],
        client_ids: &[String],
    ) -> Result<(), ClaimsError> {
        let auds: Vec<&str> = match self.map.get("aud") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let named = |list: &[String], value: &str| list.iter().any(|x| x == value);
        let ok = auds
            .iter()
            .any(|a| named(audiences, a) || named(client_ids, a))
            || self
                .string("client_id")
                .is_some_and(|c| named(client_ids, c));
        if ok {
            Ok(())
        } else {
            Err(ClaimsError::Audience)
        }
    }

    /// The person these claims name. `name` falls back to Cognito's `username` (userinfo)
    /// or `cognito:username` (ID tokens), then to the email address.
    pub fn person(&self) -> Result<Person, ClaimsError> {
        let sub = match self.map.get("sub") {
            None | Some(Value::Null) => return Err(ClaimsError::NoSubject),
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(ClaimsError::BadSubject),
        };
        if sub.is_empty() || sub.len() > MAX_SUBJECT || sub.chars().any(char::is_control) {
            return Err(ClaimsError::BadSubject);
        }
        let email = self.string("email").map(str::to_owned);
        let name = ["name", "username", "cognito:username", "preferred_username"]
            .iter()
            .find_map(|claim| self.string(claim))
            .map(str::to_owned)
            .or_else(|| email.clone());
        Ok(Person {
            user_id: sub.to_owned(),
            email,
            name,
            email_verified: self.map.get("email_verified").and_then(boolean),
            groups: self.groups(),
        })
    }
}

impl Claims {
    /// `cognito:groups`, else `groups`: an array of strings, or one string of names
    /// separated by commas or spaces. Bounded, since a token's size is the issuer's choice.
    fn groups(&self) -> Vec<String> {
        let value = self
            .map
            .get("cognito:groups")
            .or_else(|| self.map.get("groups"));
        let names: Vec<&str> = match value {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(s)) => s.split([',', ' ']).collect(),
            _ => Vec::new(),
        };
        names
            .into_iter()
            .map(str::trim)
            .filter(|g| !g.is_empty() && g.len() <= MAX_GROUP && !g.chars().any(char::is_control))
            .take(MAX_GROUPS)
            .map(str::to_owned)
            .collect()
    }
}

/// Most groups read from a token, and the longest name kept.
const MAX_GROUPS: usize = 100;
const MAX_GROUP: usize = 256;

/// A number of seconds written as a JSON number (integer or not) or a decimal string.
fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
}

fn boolean(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// serde helper for header fields read with the same leniency as claims.
pub fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Option::<Value>::deserialize(d)?.as_ref().and_then(number))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Claims {
        Claims::parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn cognito_userinfo_through_the_alb() {
        let c = claims(json!({
            "sub": "2f1c7d0e-1111-4a4a-9b9b-0123456789ab",
            "email_verified": "true",
            "email": "ana@example.com",
            "username": "ana",
            "exp": 1_900_000_000,
            "iss": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_x"
        }));
        let id = c.person().unwrap();
        assert_eq!(id.user_id, "2f1c7d0e-1111-4a4a-9b9b-0123456789ab");
        assert_eq!(id.email.as_deref(), Some("ana@example.com"));
        assert_eq!(id.name.as_deref(), Some("ana"));
        assert_eq!(id.email_verified, Some(true));
    }

    #[test]
    fn names_fall_back_and_odd_types_count_as_absent() {
        let c = claims(json!({"sub": "s", "cognito:username": "cu", "email": 5}));
        let id = c.person().unwrap();
        assert_eq!(id.name.as_deref(), Some("cu"));
        assert_eq!(id.email, None);
        let c = claims(json!({"sub": "s", "email": "e@x", "name": ""}));
        assert_eq!(c.person().unwrap().name.as_deref(), Some("e@x"));
    }

    #[test]
    fn subject_is_required_and_sane() {
        assert_eq!(
            claims(json!({"email": "x"})).person().unwrap_err(),
            ClaimsError::NoSubject
        );
        for bad in [json!(""), json!(7), json!("a\nb"), json!("x".repeat(257))] {
            assert_eq!(
                claims(json!({ "sub": bad })).person().unwrap_err(),
                ClaimsError::BadSubject
            );
        }
        assert!(matches!(
            Claims::parse(b"[1]"),
            Err(ClaimsError::NotAnObject)
        ));
    }

    #[test]
    fn time_checks_allow_leeway_and_prefer_the_earlier_expiry() {
        let c = claims(json!({"exp": "1000", "nbf": 900.5}));
        assert_eq!(c.check_time(1000, 0, None), Ok(1000));
        assert_eq!(c.check_time(1030, 30, None), Ok(1000));
        assert_eq!(c.check_time(1031, 30, None), Err(ClaimsError::Expired(31)));
        assert_eq!(c.check_time(930, 0, Some(940)), Ok(940));
        assert_eq!(
            c.check_time(800, 10, None),
            Err(ClaimsError::NotYetValid(100))
        );
        assert_eq!(
            claims(json!({})).check_time(1, 0, None),
            Err(ClaimsError::NoExpiry)
        );
        assert_eq!(claims(json!({})).check_time(1, 0, Some(5)), Ok(5));
    }

    #[test]
    fn audience_or_client_id() {
        let aud = |v: Value| claims(v);
        let audiences = vec!["api".to_owned()];
        let clients = vec!["client1".to_owned()];
        assert!(aud(json!({"aud": "api"}))
            .check_audience(&audiences, &clients)
            .is_ok());
        assert!(aud(json!({"aud": ["x", "api"]}))
            .check_audience(&audiences, &[])
            .is_ok());
        assert!(aud(json!({"aud": "client1"}))
            .check_audience(&[], &clients)
            .is_ok());
        assert!(aud(json!({"client_id": "client1"}))
            .check_audience(&[], &clients)
            .is_ok());
        assert!(aud(json!({"client_id": "api"}))
            .check_audience(&audiences, &clients)
            .is_err());
        assert!(aud(json!({"aud": "other"}))
            .check_audience(&audiences, &clients)
            .is_err());
    }

    proptest::proptest! {
        /// Claims from any payload bytes never panic, whatever the checks.
        #[test]
        fn any_payload_is_handled(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
                                  json_like in "\\{(\"[a-z_:]{1,8}\": ?(\"[^\"]{0,10}\"|[0-9.e-]{1,12}|true|null|\\[\\]), ?){0,6}\\}") {
            for input in [bytes.as_slice(), json_like.as_bytes()] {
                if let Ok(c) = Claims::parse(input) {
                    let _ = c.person();
                    let _ = c.check_time(1_000, 30, Some(5));
                    let _ = c.check_audience(&["a".into()], &["b".into()]);
                    let _ = c.check_issuer("i");
                }
            }
        }
    }

    #[test]
    fn issuer_ignores_a_trailing_slash() {
        let c = claims(json!({"iss": "https://idp.example/"}));
        assert!(c.check_issuer("https://idp.example").is_ok());
        assert!(c.check_issuer("https://evil.example").is_err());
        assert_eq!(
            claims(json!({})).check_issuer("x"),
            Err(ClaimsError::Issuer(None))
        );
    }
}
