//! A public key together with the one algorithm it may verify. The algorithm always comes
//! from the key (its type and curve, or the JWK's own `alg`), never from the token, so a
//! token cannot choose `none`, or HMAC keyed with the public key's bytes.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::token::RawToken;

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
            let default = ec_algorithm(&key)
                .ok_or_else(|| KeyParseError::Pem("EC key on an unsupported curve".into()))?;
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
        jsonwebtoken::crypto::verify(
            raw.signature_unpadded(),
            raw.signing_input.as_bytes(),
            &self.key,
            self.alg,
        )
        .unwrap_or(false)
    }
}

/// The ES algorithm for an EC key, from the length of its SEC1 point.
fn ec_algorithm(key: &DecodingKey) -> Option<Algorithm> {
    match key.try_get_as_bytes().ok()?.len() {
        65 | 33 => Some(Algorithm::ES256),
        97 | 49 => Some(Algorithm::ES384),
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
