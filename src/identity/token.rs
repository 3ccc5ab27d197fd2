//! Splitting a compact JWS (`header.payload.signature`) without trusting any of it.
//!
//! The ALB pads its base64url segments with `=`, which JWT libraries reject, and signs the
//! padded text; so segments are decoded with a padding-tolerant decoder and the signature
//! is checked over the signing input exactly as received. Nothing here verifies anything:
//! it only refuses shapes that can never be a valid token, cheaply and before any key is
//! looked up.

use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::GeneralPurpose;
use base64::engine::{DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine;
use serde::Deserialize;

/// Longest token accepted. ALB and Cognito tokens are 1–4 KiB; anything much larger is not
/// a token we issued and is refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// base64url that accepts both padded and unpadded input (RFC 7515 says unpadded; the ALB
/// pads).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A token split into its parts. Borrowed from the request; nothing is copied until the
/// header is decoded.
#[derive(Debug)]
pub struct RawToken<'a> {
    /// `header.payload` exactly as received: the signing input.
    pub signing_input: &'a str,
    pub header: &'a str,
    pub payload: &'a str,
    pub signature: &'a str,
}

/// The JOSE header fields either verifier looks at. Unknown fields are ignored; `alg` is
/// read as a plain string so that `none`, `HS256` and made-up names can be refused by
/// name rather than by a parse error.
#[derive(Debug, Deserialize)]
pub struct JoseHeader {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    /// ALB only: the load balancer that signed the token.
    #[serde(default)]
    pub signer: Option<String>,
    /// ALB only: the token's expiry (also in the payload).
    #[serde(default, deserialize_with = "super::claims::lenient_u64")]
    pub exp: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is empty")]
    Empty,
    #[error("token is {0} bytes long; at most {MAX_TOKEN_LEN} are accepted")]
    TooLong(usize),
    #[error("token has {0} segments; a signed JWT has 3")]
    Segments(usize),
    #[error("token {0} segment is not base64url")]
    Encoding(&'static str),
    #[error("token header is not a JSON object with an \"alg\": {0}")]
    Header(String),
}

impl<'a> RawToken<'a> {
    pub fn split(token: &'a str) -> Result<Self, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Empty);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong(token.len()));
        }
        let segments = token.split('.').count();
        if segments != 3 {
            return Err(TokenError::Segments(segments));
        }
        // Three segments, so both dots exist.
        let (signing_input, signature) = token.rsplit_once('.').ok_or(TokenError::Segments(1))?;
        let (header, payload) = signing_input
            .split_once('.')
            .ok_or(TokenError::Segments(2))?;
        for (name, part) in [
            ("header", header),
            ("payload", payload),
            ("signature", signature),
        ] {
            if !is_base64url(part) {
                return Err(TokenError::Encoding(name));
            }
        }
        Ok(RawToken {
            signing_input,
            header,
            payload,
            signature,
        })
    }

    pub fn header(&self) -> Result<JoseHeader, TokenError> {
        let bytes = decode(self.header).map_err(|_| TokenError::Encoding("header"))?;
        serde_json::from_slice(&bytes).map_err(|e| TokenError::Header(e.to_string()))
    }

    pub fn payload_bytes(&self) -> Result<Vec<u8>, TokenError> {
        decode(self.payload).map_err(|_| TokenError::Encoding("payload"))
    }

    /// The signature segment without padding, as `jsonwebtoken::crypto::verify` wants it.
    pub fn signature_unpadded(&self) -> &'a str {
        self.signature.trim_end_matches('=')
    }
}

/// Non-empty base64url text with at most two `=` at the end.
fn is_base64url(part: &str) -> bool {
    let body = part.trim_end_matches('=');
    !body.is_empty()
        && part.len() - body.len() <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn decode(segment: &str) -> Result<Vec<u8>, base64::DecodeError> {
    LENIENT.decode(segment)
}

#[cfg(test)]
pub fn encode(bytes: &[u8]) -> String {
    LENIENT.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn padded(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE.encode(bytes)
    }

    #[test]
    fn splits_padded_and_unpadded_tokens_alike() {
        let header = br#"{"alg":"ES256","kid":"k1","signer":"arn:x","exp":"17"}"#;
        let payload = br#"{"sub":"a"}"#;
        for (h, p) in [
            (padded(header), padded(payload)),
            (encode(header), encode(payload)),
        ] {
            let token = format!("{h}.{p}.c2ln");
            let raw = RawToken::split(&token).unwrap();
            assert_eq!(raw.signing_input, format!("{h}.{p}"));
            let jose = raw.header().unwrap();
            assert_eq!(jose.alg, "ES256");
            assert_eq!(jose.kid.as_deref(), Some("k1"));
            assert_eq!(jose.exp, Some(17));
            assert_eq!(raw.payload_bytes().unwrap(), payload);
        }
    }

    #[test]
    fn refuses_impossible_shapes() {
        let h = encode(br#"{"alg":"ES256"}"#);
        let cases = [
            (String::new(), TokenError::Empty),
            ("a.b".to_owned(), TokenError::Segments(2)),
            ("a.b.c.d".to_owned(), TokenError::Segments(4)),
            (format!("{h}..c"), TokenError::Encoding("payload")),
            (format!("{h}.b!.c"), TokenError::Encoding("payload")),
            (format!("{h}.b.c==="), TokenError::Encoding("signature")),
            (
                "a".repeat(MAX_TOKEN_LEN + 1),
                TokenError::TooLong(MAX_TOKEN_LEN + 1),
            ),
        ];
        for (token, want) in cases {
            assert_eq!(RawToken::split(&token).unwrap_err(), want, "{token:.40}");
        }
        let not_json = format!("{}.YQ.YQ", encode(b"not json"));
        assert!(matches!(
            RawToken::split(&not_json).unwrap().header(),
            Err(TokenError::Header(_))
        ));
        let no_alg = format!("{}.YQ.YQ", encode(br#"{"kid":"x"}"#));
        assert!(RawToken::split(&no_alg).unwrap().header().is_err());
    }

    #[test]
    fn signature_padding_is_stripped_for_the_verifier() {
        let raw = RawToken::split("YQ.YQ.YWI=").unwrap();
        assert_eq!(raw.signature_unpadded(), "YWI");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The parser never panics, and whatever it accepts has three base64url parts
        /// whose signing input is a prefix of the token.
        #[test]
        fn split_never_panics(token in "[A-Za-z0-9_=.\\-]{0,200}|\\PC{0,100}") {
            if let Ok(raw) = RawToken::split(&token) {
                prop_assert!(token.starts_with(raw.signing_input));
                prop_assert_eq!(
                    format!("{}.{}", raw.signing_input, raw.signature),
                    token.clone()
                );
                let _ = raw.header();
                let _ = raw.payload_bytes();
            }
        }

        /// Any JSON header survives the round trip, padded or not.
        #[test]
        fn round_trips_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 1..300)) {
            prop_assert_eq!(decode(&padded(&bytes)).unwrap(), bytes.clone());
            prop_assert_eq!(decode(&encode(&bytes)).unwrap(), bytes);
        }
    }
}
