//! A public key together with the one algorithm it may verify. The algorithm always comes
//! from the key (its type and curve, or the JWK's own `alg`), never from the token, so a
//! token cannot choose `none`, or HMAC keyed with the public key's bytes.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::token::{decode, RawToken};

pub struct VerifyingKey {
    pub alg: Algorithm,
    key: DecodingKey,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyParseError {
    #[error("not a PEM public key (EC P-256/P-384, RSA or Ed25519): {0}")]
    Pem(String),
    #[error("algorithm {0:?} cannot be used with a {1} key")]
    AlgorithmMismatch(Algorithm, &'static str),
}

impl VerifyingKey {
    /// A PEM public key (SubjectPublicKeyInfo). `alg` may pick among the algorithms of the
    /// key's family (RS256 vs PS512, say); without it RSA means RS256 and EC means the
    /// curve's ES algorithm.
    pub fn from_pem(pem: &[u8], alg: Option<Algorithm>) -> Result<Self, KeyParseError> {
        let (key, family, default) = if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            let default = ec_algorithm(&key).ok_or_else(|| {
                KeyParseError::Pem("EC key is not an uncompressed P-256 or P-384 point".into())
            })?;
            (key, "EC", default)
        } else if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            (key, "RSA", Algorithm::RS256)
        } else {
            match DecodingKey::from_ed_pem(pem) {
                Ok(key) => (key, "Ed25519", Algorithm::EdDSA),
                Err(e) => return Err(KeyParseError::Pem(e.to_string())),
            }
        };
        let alg = match alg {
            None => default,
            Some(a) if a.family() == default.family() && (family != "EC" || a == default) => a,
            Some(a) => return Err(KeyParseError::AlgorithmMismatch(a, family)),
        };
        Ok(VerifyingKey { alg, key })
    }

    /// A signing key from a JWKS, or `None` (with the reason) for keys that may not verify
    /// tokens: encryption keys, symmetric keys, unsupported curves, and keys whose `alg`
    /// does not fit their type.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, String> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Err("an encryption key".into());
        }
        let by_type = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                ref other => return Err(format!("unsupported curve {other:?}")),
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            AlgorithmParameters::OctetKeyPair(_) => return Err("unsupported OKP curve".into()),
            AlgorithmParameters::OctetKey(_) => return Err("a symmetric key".into()),
            _ => return Err("an unknown key type".into()),
        };
        let alg = match jwk.common.key_algorithm {
            None => by_type,
            Some(declared) => {
                let declared = signing_algorithm(declared)
                    .ok_or_else(|| format!("not a signature algorithm: {declared:?}"))?;
                let fits = declared.family() == by_type.family()
                    && (by_type.family() != jsonwebtoken::AlgorithmFamily::Ec
                        || declared == by_type);
                if !fits {
                    return Err(format!("alg {declared:?} does not fit the key type"));
                }
                declared
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
        Ok(VerifyingKey { alg, key })
    }

    /// Checks the token's signature over its signing input exactly as received.
    pub fn verifies(&self, raw: &RawToken<'_>) -> bool {
        if let Some(ring_alg) = ring_ecdsa(self.alg) {
            // ECDSA (every ALB token, most Cognito-less JWKS) goes to ring, which verifies
            // P-256 about four times faster than the pure-Rust backend: this is the cost of
            // every first sight of a token.
            let (Ok(point), Ok(sig)) = (self.key.try_get_as_bytes(), decode(raw.signature)) else {
                return false;
            };
            return ring::signature::UnparsedPublicKey::new(ring_alg, point)
                .verify(raw.signing_input.as_bytes(), &sig)
                .is_ok();
        }
        jsonwebtoken::crypto::verify(
            raw.signature_unpadded(),
            raw.signing_input.as_bytes(),
            &self.key,
            self.alg,
        )
        .unwrap_or(false)
    }
}

/// ring's fixed-length (JWS `r || s`) ECDSA verification for an ES algorithm.
fn ring_ecdsa(alg: Algorithm) -> Option<&'static ring::signature::EcdsaVerificationAlgorithm> {
    match alg {
        Algorithm::ES256 => Some(&ring::signature::ECDSA_P256_SHA256_FIXED),
        Algorithm::ES384 => Some(&ring::signature::ECDSA_P384_SHA384_FIXED),
        _ => None,
    }
}

/// The ES algorithm for an EC key, from the length of its uncompressed SEC1 point (ring
/// verifies only uncompressed points; JWKs always describe them).
fn ec_algorithm(key: &DecodingKey) -> Option<Algorithm> {
    let point = key.try_get_as_bytes().ok()?;
    match (point.first(), point.len()) {
        (Some(4), 65) => Some(Algorithm::ES256),
        (Some(4), 97) => Some(Algorithm::ES384),
        _ => None,
    }
}

fn signing_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        // HMAC needs a shared secret, which a public key set must never supply.
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    // Keys made for these tests with openssl; they protect nothing.
    const RSA_PRIVATE: &str = include_str!("../../tests/fixtures/rsa-test-private.pem");
    const RSA_PUBLIC: &str = include_str!("../../tests/fixtures/rsa-test-public.pem");
    const ED_PRIVATE: &str = include_str!("../../tests/fixtures/ed25519-test-private.pem");
    const ED_PUBLIC: &str = include_str!("../../tests/fixtures/ed25519-test-public.pem");

    fn signed(alg: Algorithm, key: &EncodingKey) -> String {
        encode(&Header::new(alg), &json!({"sub": "a", "exp": 1}), key).unwrap()
    }

    fn tampered(token: &str) -> String {
        let mut parts: Vec<&str> = token.split('.').collect();
        let payload = super::super::token::encode(br#"{"sub":"b","exp":1}"#);
        parts[1] = &payload;
        parts.join(".")
    }

    fn check(key: &VerifyingKey, token: &str) {
        assert!(
            key.verifies(&RawToken::split(token).unwrap()),
            "{:?}",
            key.alg
        );
        let bad = tampered(token);
        assert!(
            !key.verifies(&RawToken::split(&bad).unwrap()),
            "{:?}",
            key.alg
        );
    }

    #[test]
    fn rsa_keys_default_to_rs256_and_may_pick_another_rsa_algorithm() {
        let private = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let key = VerifyingKey::from_pem(RSA_PUBLIC.as_bytes(), None).unwrap();
        assert_eq!(key.alg, Algorithm::RS256);
        check(&key, &signed(Algorithm::RS256, &private));
        let pss = VerifyingKey::from_pem(RSA_PUBLIC.as_bytes(), Some(Algorithm::PS256)).unwrap();
        check(&pss, &signed(Algorithm::PS256, &private));
        for wrong in [Algorithm::ES256, Algorithm::HS256, Algorithm::EdDSA] {
            assert!(VerifyingKey::from_pem(RSA_PUBLIC.as_bytes(), Some(wrong)).is_err());
        }
    }

    #[test]
    fn rsa_jwk_as_cognito_publishes_it() {
        let private = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let mut jwk = Jwk::from_encoding_key(&private, Algorithm::RS256).unwrap();
        jwk.common.key_id = Some("cognito-kid".into());
        let key = VerifyingKey::from_jwk(&jwk).unwrap();
        assert_eq!(key.alg, Algorithm::RS256);
        check(&key, &signed(Algorithm::RS256, &private));
    }

    #[test]
    fn ed25519_keys_verify_eddsa() {
        let private = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
        let key = VerifyingKey::from_pem(ED_PUBLIC.as_bytes(), None).unwrap();
        assert_eq!(key.alg, Algorithm::EdDSA);
        check(&key, &signed(Algorithm::EdDSA, &private));
    }

    #[test]
    fn p256_keys_verify_es256_padded_or_not() {
        use p256::ecdsa::signature::Signer;
        use p256::pkcs8::{EncodePublicKey, LineEnding};
        let signing = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let pem = signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let key = VerifyingKey::from_pem(pem.as_bytes(), None).unwrap();
        assert_eq!(key.alg, Algorithm::ES256);
        assert!(VerifyingKey::from_pem(pem.as_bytes(), Some(Algorithm::ES384)).is_err());
        let input = format!(
            "{}.{}",
            super::super::token::encode(br#"{"alg":"ES256"}"#),
            super::super::token::encode(br#"{"sub":"a"}"#)
        );
        let sig: p256::ecdsa::Signature = signing.sign(input.as_bytes());
        let unpadded = super::super::token::encode(&sig.to_bytes());
        check(&key, &format!("{input}.{unpadded}"));
        use base64::Engine;
        let padded = base64::engine::general_purpose::URL_SAFE.encode(sig.to_bytes());
        assert!(padded.ends_with('='));
        check(&key, &format!("{input}.{padded}"));
    }
}
