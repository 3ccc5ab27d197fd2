//! Test identity providers: P-256 keys generated per test, tokens signed the way an ALB or
//! Cognito signs them (padded or not), and a small HTTP key server that counts its hits.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use serde_json::{json, Value};

pub const ARN: &str =
    "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/chamberlain/50dc6c495c0c9188";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

pub struct Key {
    pub kid: String,
    signing: SigningKey,
}

impl Key {
    pub fn generate(kid: &str) -> Key {
        loop {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).expect("random bytes");
            // Almost every 32-byte string is a valid scalar; retry the rare one that is not.
            if let Ok(signing) = SigningKey::from_slice(&bytes) {
                return Key {
                    kid: kid.to_owned(),
                    signing,
                };
            }
        }
    }

    pub fn public_pem(&self) -> String {
        self.signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("PEM")
    }

    /// The key as a JWK, as a Cognito user pool publishes it (EC instead of RSA).
    pub fn jwk(&self) -> Value {
        let point = self.signing.verifying_key().to_sec1_point(false);
        let bytes = point.as_bytes();
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&bytes[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&bytes[33..65]),
        })
    }

    pub fn sign(&self, signing_input: &str) -> Vec<u8> {
        let sig: Signature = self.signing.sign(signing_input.as_bytes());
        sig.to_bytes().to_vec()
    }
}

pub fn b64(bytes: &[u8], padded: bool) -> String {
    if padded {
        URL_SAFE.encode(bytes)
    } else {
        URL_SAFE_NO_PAD.encode(bytes)
    }
}

/// A compact JWS with the given header and claims, signed by `key` (ES256).
pub fn es256(key: &Key, header: &Value, claims: &Value, padded: bool) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes(), padded),
        b64(claims.to_string().as_bytes(), padded)
    );
    let sig = b64(&key.sign(&input), padded);
    format!("{input}.{sig}")
}

/// The JOSE header an ALB puts on `x-amzn-oidc-data`.
pub fn alb_header(kid: &str, signer: &str, exp: u64) -> Value {
    json!({
        "typ": "JWT", "kid": kid, "alg": "ES256",
        "iss": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Example",
        "client": "4example0client1d", "signer": signer, "exp": exp,
    })
}

/// An ALB token for `claims`, padded the way the ALB pads.
pub fn alb_token(key: &Key, claims: &Value) -> String {
    let exp = claims["exp"].as_u64().unwrap_or_else(|| now() + 120);
    es256(key, &alb_header(&key.kid, ARN, exp), claims, true)
}

pub fn user_claims(sub: &str) -> Value {
    json!({
        "sub": sub, "email": format!("{sub}@example.com"), "username": sub,
        "exp": now() + 120, "iss": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Example",
    })
}

/// HS256 over the token, keyed with `secret` (a public key's PEM text, for the
/// algorithm-confusion attack).
pub fn hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes(), false),
        b64(claims.to_string().as_bytes(), false)
    );
    let key = jsonwebtoken::EncodingKey::from_secret(secret).expect("HMAC key");
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
        .expect("HMAC");
    format!("{input}.{sig}")
}

type Routes = Arc<Mutex<HashMap<String, (u16, String)>>>;

/// A key server on loopback: answers GETs from a table of paths (404 otherwise) and counts
/// requests per path.
pub struct KeyServer {
    pub url: String,
    routes: Routes,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl KeyServer {
    pub fn start() -> KeyServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind key server");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let routes: Routes = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let delay_ms: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let (r, h, d) = (routes.clone(), hits.clone(), delay_ms.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (r, h, d) = (r.clone(), h.clone(), d.clone());
                std::thread::spawn(move || {
                    let delay = d.load(std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(delay));
                    serve(stream, &r, &h)
                });
            }
        });
        KeyServer {
            url,
            routes,
            hits,
            delay_ms,
        }
    }

    /// Answers only after `ms` milliseconds (a slow key server).
    pub fn set_delay(&self, ms: u64) {
        self.delay_ms.store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn set(&self, path: &str, status: u16, body: &str) {
        self.routes
            .lock()
            .expect("routes")
            .insert(path.to_owned(), (status, body.to_owned()));
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .expect("hits")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

fn serve(mut stream: TcpStream, routes: &Routes, hits: &Mutex<HashMap<String, usize>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    *hits.lock().expect("hits").entry(path.clone()).or_default() += 1;
    let (status, body) = routes
        .lock()
        .expect("routes")
        .get(&path)
        .cloned()
        .unwrap_or((404, "not found".to_owned()));
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}
