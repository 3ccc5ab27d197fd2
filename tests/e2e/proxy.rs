//! The HTTP proxy against the fake OpenCode: headers, bodies, streaming, errors, event
//! streams and the child's environment.

use std::time::Duration;

use awc::http::{Method, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;

use crate::support::{as_u64, eventually, vm_hwm, Gateway, PATIENCE};

fn header_values(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str().unwrap().to_owned())
        .collect()
}

#[actix_web::test]
async fn request_headers_are_filtered_and_credentials_replaced() {
    let gw = Gateway::fake(&[]);
    let resp = gw
        .request(
            Method::PUT,
            Some("alice"),
            "/echo/some/path?x=1&y=%20",
            &[
                ("authorization", "Bearer client-token"),
                ("cookie", "chamberlain_dev_user=alice; theme=dark"),
                ("x-custom", "a"),
                ("x-custom", "b"),
                ("accept-encoding", "gzip"),
                ("x-forwarded-for", "203.0.113.7"),
            ],
            Some(Bytes::from_static(b"hello")),
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let echo = resp.json();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/echo/some/path");
    assert_eq!(echo["query"], "x=1&y=%20");
    assert_eq!(echo["bodyLen"], 5);
    let auth = header_values(&echo, "authorization");
    assert_eq!(auth.len(), 1);
    assert!(
        auth[0].starts_with("Basic "),
        "instance credentials: {auth:?}"
    );
    assert!(header_values(&echo, "x-chamberlain-dev-user").is_empty());
    assert_eq!(header_values(&echo, "cookie"), ["theme=dark"]);
    assert_eq!(header_values(&echo, "x-custom"), ["a", "b"]);
    assert_eq!(header_values(&echo, "accept-encoding"), ["gzip"]);
    // The client is no trusted proxy: its own X-Forwarded-For is replaced, not extended.
    assert_eq!(header_values(&echo, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(header_values(&echo, "x-forwarded-proto"), ["http"]);
    let host = header_values(&echo, "host");
    assert!(host[0].starts_with("127.0.0.1:"), "{host:?}");

    // HTTP clients rewrite `Connection` themselves, so send this one by hand.
    let raw = raw_request(
        &gw.base,
        "GET /echo/raw HTTP/1.1\r\nHost: localhost\r\nX-Chamberlain-Dev-User: alice\r\n\
         Connection: close, x-hop-req\r\nX-Hop-Req: 1\r\nTE: trailers\r\n\
         Proxy-Authorization: Basic eDp5\r\nX-Kept: 1\r\n\r\n",
    );
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body = body.find('{').map(|i| &body[i..]).unwrap_or(body);
    let body = &body[..=body.rfind('}').unwrap_or(0)];
    let echo: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw}"));
    for gone in ["x-hop-req", "te", "proxy-authorization", "connection"] {
        assert!(
            header_values(&echo, gone).is_empty(),
            "{gone} forwarded: {echo}"
        );
    }
    assert_eq!(header_values(&echo, "x-kept"), ["1"]);
}

fn raw_request(base: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[actix_web::test]
async fn responses_pass_through_unchanged() {
    let gw = Gateway::fake(&[]);
    let cookies = gw.get("alice", "/cookies").await;
    let set: Vec<_> = cookies.headers.get_all("set-cookie").collect();
    assert_eq!(set.len(), 2, "every Set-Cookie kept");

    let redirect = gw.get("alice", "/redirect").await;
    assert_eq!(
        redirect.status,
        StatusCode::FOUND,
        "redirects are not followed"
    );
    assert_eq!(redirect.header("location").as_deref(), Some("/elsewhere"));

    let gzip = gw
        .get_with("alice", "/gzip", &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(gzip.header("content-encoding").as_deref(), Some("gzip"));
    assert_eq!(
        &gzip.body[..],
        b"\x1f\x8b\x08\x00not-really-gzip",
        "not decompressed"
    );

    // (actix-web writes `Connection` itself, so the fake cannot list a header in it; the
    // response side of Connection-listed headers is covered by the unit tests.)
    let hop = gw.get("alice", "/hop").await;
    assert!(hop.header("keep-alive").is_none());
    assert_eq!(hop.header("x-end-to-end").as_deref(), Some("1"));

    let head = gw
        .request(
            Method::HEAD,
            Some("alice"),
            "/download?bytes=12345",
            &[],
            None,
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-length").as_deref(), Some("12345"));
    assert!(head.body.is_empty());

    let missing = gw.get("alice", "/no/such/route").await;
    assert_eq!(
        missing.status,
        StatusCode::OK,
        "the fake echoes unknown routes"
    );
    assert_eq!(missing.json()["path"], "/no/such/route");
}

const FNV_START: u64 = 0xcbf29ce484222325;
fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}
fn pattern_byte(i: u64) -> u8 {
    ((i * 7 + i / 251) % 256) as u8
}

/// 100 MB each way, sized and chunked, intact, with the gateway's peak memory flat.
#[actix_web::test]
async fn large_bodies_stream_both_ways_with_flat_memory() {
    const SIZE: u64 = 100 * 1024 * 1024;
    const CHUNK: usize = 256 * 1024;
    let gw = Gateway::fake(&[]);
    assert_eq!(gw.get("alice", "/small").await.status, StatusCode::OK);
    let before = vm_hwm(gw.pid);

    // Upload with a Content-Length, then without (chunked).
    let mut expected = FNV_START;
    let block: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    for _ in 0..(SIZE as usize / CHUNK) {
        expected = fnv(expected, &block);
    }
    for sized in [true, false] {
        let block = Bytes::from(block.clone());
        let chunks = futures_util::stream::iter(
            (0..(SIZE as usize / CHUNK)).map(move |_| Ok::<_, std::io::Error>(block.clone())),
        );
        let req = gw
            .client
            .post(gw.url("/upload"))
            .insert_header(("x-chamberlain-dev-user", "alice"));
        let mut resp = if sized {
            req.send_body(actix_web::body::SizedStream::new(SIZE, Box::pin(chunks)))
                .await
        } else {
            req.send_stream(chunks).await
        }
        .expect("upload");
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.expect("upload answer");
        assert_eq!(as_u64(&body["bytes"]), SIZE, "sized={sized}");
        assert_eq!(body["fnv"], format!("{expected:016x}"), "sized={sized}");
    }

    // Download with a Content-Length, then chunked.
    for query in ["", "&chunked=1"] {
        let mut resp = gw
            .client
            .get(gw.url(&format!("/download?bytes={SIZE}{query}")))
            .insert_header(("x-chamberlain-dev-user", "alice"))
            .send()
            .await
            .expect("download");
        assert_eq!(resp.status(), StatusCode::OK);
        if query.is_empty() {
            assert_eq!(
                resp.headers()
                    .get("content-length")
                    .unwrap()
                    .to_str()
                    .unwrap(),
                SIZE.to_string()
            );
        }
        let (mut offset, mut mismatch) = (0u64, None);
        while let Some(chunk) = resp.next().await {
            let chunk = chunk.expect("chunk");
            for (i, b) in chunk.iter().enumerate() {
                if mismatch.is_none() && *b != pattern_byte(offset + i as u64) {
                    mismatch = Some(offset + i as u64);
                }
            }
            offset += chunk.len() as u64;
        }
        assert_eq!(offset, SIZE, "query {query:?}");
        assert_eq!(mismatch, None, "query {query:?}");
    }

    let grown = vm_hwm(gw.pid).saturating_sub(before);
    assert!(
        grown < 48 * 1024 * 1024,
        "gateway peak memory grew by {} MiB while streaming 400 MiB",
        grown / 1024 / 1024
    );
}

#[actix_web::test]
async fn upstream_errors_have_their_own_status_codes() {
    let gw = Gateway::fake(&["--upstream-timeout", "1s"]);
    let timeout = gw.get("alice", "/slow?ms=3000").await;
    assert_eq!(
        timeout.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        timeout.text()
    );
    assert!(timeout.json()["error"]
        .as_str()
        .unwrap()
        .contains("did not answer"));

    let stop = gw.post("alice", "/fake/stop-listening").await;
    assert_eq!(stop.status, StatusCode::OK);
    let refused = eventually("a closed upstream port gives 502", PATIENCE, async || {
        let resp = gw.get("alice", "/small").await;
        if resp.status == StatusCode::BAD_GATEWAY {
            Ok(resp)
        } else {
            Err(resp.status)
        }
    })
    .await;
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("cannot reach OpenCode"));
}

#[actix_web::test]
async fn waiting_longer_than_the_wait_timeout_is_a_503_with_retry_after() {
    let gw = Gateway::fake(&[
        "--wait-timeout",
        "1s",
        "--opencode-arg=--fake-start-delay-ms=4000",
    ]);
    let resp = gw.get("alice", "/small").await;
    assert_eq!(
        resp.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        resp.text()
    );
    assert!(resp.header("retry-after").is_some());
    assert_eq!(resp.json()["state"], "starting");
    gw.wait_state("alice", "ready").await;
    assert_eq!(gw.get("alice", "/small").await.status, StatusCode::OK);
}

/// Events arrive one by one; silence gets keep-alive comments (never inside a line); the
/// stream ends cleanly when the instance stops.
#[actix_web::test]
async fn event_streams_are_relayed_event_by_event() {
    let gw = Gateway::fake(&["--sse-keepalive", "300ms"]);
    assert_eq!(gw.get("alice", "/small").await.status, StatusCode::OK);
    let mut events = gw
        .stream("alice", "/event", &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(events.status(), StatusCode::OK);
    assert_eq!(events.header("x-accel-buffering").as_deref(), Some("no"));
    assert!(events.header("content-encoding").is_none());
    let first = events.next_chunk().await.unwrap();
    assert!(first.contains("server.connected"), "{first}");

    let created = gw.post("alice", "/session").await.json();
    let id = created["id"].as_str().unwrap();
    events.read_until(&["session.created", id]).await;
    let keepalive = events.next_chunk().await.unwrap();
    assert_eq!(keepalive, ": keepalive\n", "a comment after silence");
    let open = crate::support::metric(&gw.metrics().await, "chamberlain_open_streams");
    assert_eq!(open, 1.0);

    // Half a line, then silence: nothing may be injected into the line.
    let mut partial = gw.stream("alice", "/event?partial=1", &[]).await;
    assert_eq!(
        partial.next_chunk().await.unwrap(),
        "data: {\"type\":\"partial\","
    );
    let silent =
        actix_web::rt::time::timeout(Duration::from_millis(1500), partial.next_chunk()).await;
    assert!(
        silent.is_err(),
        "nothing may be sent inside an unfinished line"
    );

    let stop = gw
        .admin_request(Method::POST, "/instances/alice/stop")
        .await;
    assert_eq!(stop.status, StatusCode::OK);
    for stream in [&mut events, &mut partial] {
        // Ends (cleanly) after at most a few more keep-alives.
        let rest = stream.read_to_end().await;
        assert!(
            rest.lines().all(|l| l.is_empty() || l.starts_with(':')),
            "{rest}"
        );
    }
    let open = crate::support::metric(&gw.metrics().await, "chamberlain_open_streams");
    assert_eq!(open, 0.0);
}

/// The child sees a cleared environment: its own HOME, XDG dirs, TMPDIR and password, and
/// nothing of the gateway's secrets.
#[actix_web::test]
async fn child_environment_is_cleared_and_user_scoped() {
    let gw = Gateway::start(
        std::path::Path::new(crate::support::FAKE),
        &[],
        &[
            ("AWS_SECRET_ACCESS_KEY", "gateway-secret"),
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
            ("CHAMBERLAIN_SOMETHING", "x"),
            ("LANG", "C.UTF-8"),
        ],
    );
    let env = gw.get("alice", "/env").await.json();
    let vars = env["env"].as_object().unwrap();
    let home = gw.data.path().canonicalize().unwrap().join("users/alice");
    let get = |k: &str| vars.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    assert_eq!(get("HOME"), Some(home.display().to_string()));
    assert_eq!(get("TMPDIR"), Some(home.join(".tmp").display().to_string()));
    assert_eq!(
        get("XDG_CONFIG_HOME"),
        Some(home.join(".config").display().to_string())
    );
    assert_eq!(
        get("XDG_DATA_HOME"),
        Some(home.join(".local/share").display().to_string())
    );
    assert_eq!(
        get("XDG_STATE_HOME"),
        Some(home.join(".local/state").display().to_string())
    );
    assert_eq!(
        get("XDG_CACHE_HOME"),
        Some(home.join(".cache").display().to_string())
    );
    assert_eq!(get("LANG").as_deref(), Some("C.UTF-8"));
    assert!(get("USER").is_some() && get("LOGNAME").is_some());
    assert!(get("OPENCODE_SERVER_PASSWORD").is_some_and(|p| p.len() >= 32));
    assert_eq!(env["cwd"], home.join("workspace").display().to_string());
    for leaked in vars.keys() {
        assert!(
            !leaked.starts_with("AWS_") && !leaked.starts_with("CHAMBERLAIN_"),
            "{leaked} leaked into the child"
        );
    }
    // Each start gets a fresh password.
    let first = get("OPENCODE_SERVER_PASSWORD");
    gw.admin_request(Method::POST, "/instances/alice/stop")
        .await;
    let again = gw.get("alice", "/env").await.json();
    assert_ne!(
        again["env"]["OPENCODE_SERVER_PASSWORD"]
            .as_str()
            .map(str::to_owned),
        first
    );
}
