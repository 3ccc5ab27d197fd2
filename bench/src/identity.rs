//! Identity cost per request, in process: `Authenticator::identify` on a request carrying a
//! bearer token (`--auth jwt` with a PEM key, so no network is involved).
//!
//! - cache hit: the same token again (SHA-256 of the token, one map lookup, one clone);
//!   this path is the same for `--auth alb`, whose cache sits in front of the same code.
//! - cache miss: a fresh token each time: split, decode, claims, ES256 signature check.
//!
//! Run: `cargo run --release -p chamberlain-bench -- identity [--iterations N]`.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::test::TestRequest;
use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chamberlain::cli::{Cli, Command};
use chamberlain::identity::Authenticator;
use chamberlain::metrics::AuthMetrics;
use clap::Parser;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use serde_json::json;

const ROUNDS: usize = 5;

pub fn run(iterations: usize) -> anyhow::Result<()> {
    let key = loop {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("random: {e}"))?;
        if let Ok(k) = SigningKey::from_slice(&bytes) {
            break k;
        }
    };
    let dir = tempfile::tempdir()?;
    let pem = dir.path().join("key.pem");
    std::fs::write(
        &pem,
        key.verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("PEM: {e}"))?,
    )?;
    let pem = pem.to_str().context("temp path is not UTF-8")?;
    let cli = Cli::try_parse_from([
        "chamberlain",
        "serve",
        "--auth",
        "jwt",
        "--jwt-public-key",
        pem,
        "--jwt-issuer",
        "https://issuer.bench",
        "--jwt-audience",
        "bench",
        "--auth-cache-entries",
        "1000000",
    ])?;
    let Command::Serve(args) = cli.command else {
        anyhow::bail!("the arguments above are `serve`'s");
    };
    let tokens = std::sync::Arc::new(chamberlain::identity::access_tokens::AccessTokens::empty());
    let auth = Authenticator::new(&args.auth.settings(), AuthMetrics::default(), tokens)?;

    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let token = |n: usize| {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": "bench"});
        let claims = json!({
            "sub": format!("7c9e6679-7425-40de-944b-{n:012}"), "iss": "https://issuer.bench",
            "aud": "bench", "exp": exp, "email": format!("user{n}@example.com"),
            "name": format!("User {n}"),
            // Brings the token to the size of a Cognito ID token (about 1 KiB).
            "cognito:groups": ["engineering", "chamberlain-users"],
            "custom:profile": "p".repeat(560),
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig: Signature = key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    };
    let request = |t: &str| {
        TestRequest::get()
            .uri("/session")
            .insert_header(("authorization", format!("Bearer {t}")))
            .insert_header(("accept", "application/json"))
            .to_http_request()
    };

    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let misses = (iterations / 20).max(100);
    println!(
        "identity: {} bytes per token; {iterations} hits and {misses} misses per round, {ROUNDS} rounds",
        token(0).len()
    );
    let hit_req = request(&token(0));
    runtime.block_on(auth.identify(&hit_req))?;
    let mut hit_ns = Vec::new();
    let mut miss_ns = Vec::new();
    for round in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..iterations {
            let id = runtime.block_on(auth.identify(&hit_req))?;
            std::hint::black_box(id);
        }
        hit_ns.push(started.elapsed().as_nanos() as f64 / iterations as f64);

        let fresh: Vec<_> = (0..misses)
            .map(|i| request(&token(1 + round * misses + i)))
            .collect();
        let started = Instant::now();
        for req in &fresh {
            let id = runtime.block_on(auth.identify(req))?;
            std::hint::black_box(id);
        }
        miss_ns.push(started.elapsed().as_nanos() as f64 / misses as f64);
    }
    report("cache hit", &mut hit_ns, Some(2_000.0));
    report("cache miss (ES256 verify)", &mut miss_ns, None);
    Ok(())
}

fn report(what: &str, ns: &mut [f64], goal: Option<f64>) {
    ns.sort_by(|a, b| a.total_cmp(b));
    let median = ns[ns.len() / 2];
    let verdict = match goal {
        Some(g) if median < g => format!(" (goal < {:.1} µs: met)", g / 1000.0),
        Some(g) => format!(" (goal < {:.1} µs: NOT met)", g / 1000.0),
        None => String::new(),
    };
    println!(
        "  {what}: median {:.2} µs per request, best {:.2} µs, worst {:.2} µs{verdict}",
        median / 1000.0,
        ns[0] / 1000.0,
        ns[ns.len() - 1] / 1000.0
    );
}
