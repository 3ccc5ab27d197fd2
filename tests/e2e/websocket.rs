//! The websocket bridge against the fake OpenCode: frames, closes, limits, keepalive, origin,
//! lifecycle.

use std::time::{Duration, Instant};

use actix_http::ws::Item;
use awc::http::{Method, StatusCode};
use awc::ws::{CloseCode, CloseReason, Frame, Message};
use bytes::Bytes;
use serde_json::Value;

use crate::support::{
    eventually, metric, next_frame, read_until_close, send, vm_hwm, Gateway, PATIENCE,
};

async fn fake_ws_stats(gw: &Gateway, user: &str) -> Value {
    gw.get(user, "/ws/stats").await.json()
}

/// Waits until the fake OpenCode's websocket stats for alice have `key` at `value`.
async fn wait_fake_ws(gw: &Gateway, what: &str, key: &str, value: u64) {
    eventually(what, PATIENCE, async || {
        let stats = fake_ws_stats(gw, "alice").await;
        if stats[key] == value {
            Ok(())
        } else {
            Err(stats)
        }
    })
    .await
}

#[actix_web::test]
async fn frames_cross_unchanged_both_ways() {
    let gw = Gateway::fake(&[]);
    assert_eq!(gw.get("alice", "/small").await.status, StatusCode::OK);
    let (resp, mut socket) = gw
        .ws(
            Some("alice"),
            "/ws",
            &[("sec-websocket-protocol", "chamberlain.test, other")],
        )
        .await
        .expect("websocket through the gateway");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "chamberlain.test",
        "subprotocol negotiated through"
    );

    send(&mut socket, Message::Text("hello".into())).await;
    assert_eq!(
        next_frame(&mut socket).await,
        Some(Frame::Text(Bytes::from_static(b"hello")))
    );

    let binary = Bytes::from_static(&[0, 1, 2, 0xfe, 0xff]);
    send(&mut socket, Message::Binary(binary.clone())).await;
    assert_eq!(next_frame(&mut socket).await, Some(Frame::Binary(binary)));

    let big: Bytes = (0..(1u32 << 20))
        .map(|i| (i % 253) as u8)
        .collect::<Vec<u8>>()
        .into();
    send(&mut socket, Message::Binary(big.clone())).await;
    match next_frame(&mut socket).await {
        Some(Frame::Binary(echo)) => assert!(echo == big, "1 MiB message changed"),
        other => panic!("expected the 1 MiB message back, got {other:?}"),
    }

    send(
        &mut socket,
        Message::Continuation(Item::FirstText(Bytes::from_static(b"frag"))),
    )
    .await;
    send(
        &mut socket,
        Message::Continuation(Item::Last(Bytes::from_static(b"ment"))),
    )
    .await;
    assert_eq!(
        next_frame(&mut socket).await,
        Some(Frame::Continuation(Item::FirstText(Bytes::from_static(
            b"frag"
        ))))
    );
    assert_eq!(
        next_frame(&mut socket).await,
        Some(Frame::Continuation(Item::Last(Bytes::from_static(b"ment"))))
    );

    // Pings are answered on each hop.
    send(&mut socket, Message::Ping(Bytes::from_static(b"are you"))).await;
    assert_eq!(
        next_frame(&mut socket).await,
        Some(Frame::Pong(Bytes::from_static(b"are you")))
    );

    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, "chamberlain_websockets_open"), 1.0);
    assert!(
        metric(
            &metrics,
            "chamberlain_websocket_bytes_total{direction=\"client_to_upstream\"}"
        ) > 1_048_576.0
    );
    assert!(
        metric(
            &metrics,
            "chamberlain_websocket_bytes_total{direction=\"upstream_to_client\"}"
        ) > 1_048_576.0
    );
}

#[actix_web::test]
async fn handshake_headers_are_filtered_and_upstream_pings_answered() {
    let gw = Gateway::fake(&[]);
    assert_eq!(gw.get("alice", "/small").await.status, StatusCode::OK);
    let (_, mut socket) = gw
        .ws(
            Some("alice"),
            "/ws?headers=1&ping=1",
            &[
                (
                    "sec-websocket-extensions",
                    "permessage-deflate; client_max_window_bits",
                ),
                ("cookie", "chamberlain_dev_user=alice; theme=dark"),
                ("authorization", "Bearer client-token"),
            ],
        )
        .await
        .expect("websocket");
    let Some(Frame::Text(headers)) = next_frame(&mut socket).await else {
        panic!("expected the upstream's view of the handshake");
    };
    let headers: Vec<(String, String)> = serde_json::from_slice(&headers).unwrap();
    let get = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert!(
        get("sec-websocket-extensions").is_empty(),
        "extensions not forwarded"
    );
    assert!(get("x-chamberlain-dev-user").is_empty());
    assert_eq!(get("cookie"), ["theme=dark"]);
    let auth = get("authorization");
    assert_eq!(auth.len(), 1);
    assert!(auth[0].starts_with("Basic "));
    // The fake pinged first; the gateway answered it, the client never saw it.
    send(&mut socket, Message::Text("after".into())).await;
    assert_eq!(
        next_frame(&mut socket).await,
        Some(Frame::Text(Bytes::from_static(b"after")))
    );
    assert_eq!(fake_ws_stats(&gw, "alice").await["pongs"], 1);
}

#[actix_web::test]
async fn close_codes_propagate_both_ways() {
    let gw = Gateway::fake(&[]);
    assert_eq!(gw.get("alice", "/small").await.status, StatusCode::OK);
    // Client-initiated.
    let (_, mut socket) = gw.ws(Some("alice"), "/ws", &[]).await.expect("websocket");
    send(
        &mut socket,
        Message::Close(Some(CloseReason {
            code: CloseCode::Other(4001),
            description: Some("bye".into()),
        })),
    )
    .await;
    let (reason, _) = read_until_close(&mut socket).await;
    assert_eq!(reason.map(|r| r.code), Some(CloseCode::Other(4001)));
    wait_fake_ws(&gw, "the close code reached OpenCode", "lastClose", 4001).await;

    // Upstream-initiated.
    let (_, mut socket) = gw.ws(Some("alice"), "/ws", &[]).await.expect("websocket");
    send(&mut socket, Message::Text("close:4002:done here".into())).await;
    let (reason, _) = read_until_close(&mut socket).await;
    let reason = reason.expect("a close reason");
    assert_eq!(reason.code, CloseCode::Other(4002));
    assert_eq!(reason.description.as_deref(), Some("done here"));
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "chamberlain_websocket_closes_total{code=\"4001\",by=\"client\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "chamberlain_websocket_closes_total{code=\"4002\",by=\"upstream\"}"
        ),
        1.0
    );
}

/// A client that stops reading is closed with 1013 at the cap; the gateway does not buffer
/// OpenCode's output without bound.
#[actix_web::test]
async fn a_client_that_stops_reading_is_closed_at_the_cap() {
    const FLOOD_MIB: usize = 96;
    let gw = Gateway::fake(&["--ws-max-frame", "1MiB", "--ws-max-buffer", "2MiB"]);
    assert_eq!(gw.get("alice", "/small").await.status, StatusCode::OK);
    let before = vm_hwm(gw.pid);
    let (_, mut socket) = gw
        .ws(Some("alice"), &format!("/ws?flood={FLOOD_MIB}"), &[])
        .await
        .expect("websocket");
    // Not reading: wait until the gateway gives up on this client.
    eventually("the slow client closed", PATIENCE, async || {
        let closes = metric(
            &gw.metrics().await,
            "chamberlain_websocket_closes_total{code=\"1013\",by=\"gateway\"}",
        );
        if closes < 1.0 {
            Err(closes)
        } else {
            Ok(())
        }
    })
    .await;
    let (reason, data) = read_until_close(&mut socket).await;
    assert_eq!(reason.map(|r| r.code), Some(CloseCode::Again));
    assert!(
        data < FLOOD_MIB << 20,
        "the whole flood was delivered ({data} bytes)"
    );
    let grown = vm_hwm(gw.pid).saturating_sub(before);
    assert!(
        grown < 32 << 20,
        "gateway peak memory grew by {} MiB",
        grown >> 20
    );
    wait_fake_ws(&gw, "the upstream socket closed", "open", 0).await;
}

#[actix_web::test]
async fn cross_origin_upgrades_are_refused() {
    let gw = Gateway::fake(&["--allowed-origin", "https://ide.example"]);
    assert_eq!(gw.get("alice", "/small").await.status, StatusCode::OK);
    let status = gw
        .ws_refused(Some("alice"), "/ws", &[("origin", "https://evil.example")])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        fake_ws_stats(&gw, "alice").await["open"],
        0,
        "nothing reached OpenCode"
    );
    let own = gw.base.clone();
    assert!(gw
        .ws(Some("alice"), "/ws", &[("origin", &own)])
        .await
        .is_ok());
    assert!(gw
        .ws(Some("alice"), "/ws", &[("origin", "https://ide.example")])
        .await
        .is_ok());
    assert_eq!(
        gw.ws_refused(None, "/ws", &[]).await,
        StatusCode::UNAUTHORIZED
    );
}

#[actix_web::test]
async fn upstream_failures_are_http_errors() {
    let gw = Gateway::fake(&[]);
    // Stopped instance: a socket alone does not start it.
    assert_eq!(
        gw.ws_refused(Some("alice"), "/ws", &[]).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(gw.state("alice").await, "absent");
    assert_eq!(gw.get("alice", "/small").await.status, StatusCode::OK);
    // OpenCode refuses the upgrade: its status comes through.
    assert_eq!(
        gw.ws_refused(Some("alice"), "/not-a-socket", &[]).await,
        StatusCode::NOT_FOUND
    );
    // OpenCode answers with something that is not an upgrade.
    assert_eq!(
        gw.ws_refused(Some("alice"), "/small", &[]).await,
        StatusCode::BAD_GATEWAY
    );
    // Not a websocket handshake at all.
    let bad = gw
        .request(
            Method::GET,
            Some("alice"),
            "/ws",
            &[("upgrade", "websocket"), ("connection", "upgrade")],
            None,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text());
}

/// Keepalive pings: a client that answers stays connected; one that does not is closed and
/// its upstream socket with it.
#[actix_web::test]
async fn clients_that_stop_answering_pings_are_disconnected() {
    let gw = Gateway::fake(&["--ws-ping-interval", "200ms", "--ws-client-timeout", "1s"]);
    assert_eq!(gw.get("alice", "/small").await.status, StatusCode::OK);
    let (_, mut lively) = gw.ws(Some("alice"), "/ws", &[]).await.expect("websocket");
    let (_, mut silent) = gw.ws(Some("alice"), "/ws", &[]).await.expect("websocket");
    let mut pings = 0;
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        if let Some(Frame::Ping(p)) = next_frame(&mut lively).await {
            pings += 1;
            send(&mut lively, Message::Pong(p)).await;
        }
    }
    assert!(pings >= 3, "keepalive pings arrive ({pings})");
    send(&mut lively, Message::Text("still here".into())).await;
    loop {
        match next_frame(&mut lively).await {
            Some(Frame::Text(t)) => {
                assert_eq!(t, "still here");
                break;
            }
            Some(Frame::Ping(p)) => send(&mut lively, Message::Pong(p)).await,
            other => panic!("unexpected {other:?}"),
        }
    }
    let (reason, _) = read_until_close(&mut silent).await;
    assert_eq!(reason.map(|r| r.code), Some(CloseCode::Away));
    wait_fake_ws(&gw, "the silent client's upstream socket closed", "open", 1).await;
}

/// Client messages are activity, and so is output flowing to an open socket (a build in a
/// terminal); once neither comes, the idle timeout stops the instance and its sockets close
/// with 1012.
#[actix_web::test]
async fn typing_and_output_on_an_open_socket_keep_an_instance_alive() {
    let gw = Gateway::fake(&["--idle-timeout", "1s"]);
    assert_eq!(gw.get("alice", "/small").await.status, StatusCode::OK);
    let (_, mut typing) = gw.ws(Some("alice"), "/ws", &[]).await.expect("websocket");
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        send(&mut typing, Message::Text("key".into())).await;
        assert_eq!(
            next_frame(&mut typing).await,
            Some(Frame::Text(Bytes::from_static(b"key")))
        );
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        gw.state("alice").await,
        "ready",
        "typing kept the instance alive"
    );
    send(&mut typing, Message::Close(None)).await;
    read_until_close(&mut typing).await;

    // Output alone, for well past the idle timeout.
    let (_, mut watching) = gw
        .ws(Some("alice"), "/ws?tick_ms=100", &[])
        .await
        .expect("websocket");
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        assert!(next_frame(&mut watching).await.is_some());
    }
    assert_eq!(
        gw.state("alice").await,
        "ready",
        "output to an open socket kept the instance alive"
    );
    // The socket closed, nothing flows: stopped.
    drop(watching);
    let (_, mut last) = gw.ws(Some("alice"), "/ws", &[]).await.expect("websocket");
    let (reason, _) = read_until_close(&mut last).await;
    assert_eq!(reason.map(|r| r.code), Some(CloseCode::Restart));
    gw.wait_state("alice", "stopped").await;
}

#[actix_web::test]
async fn gateway_shutdown_closes_sockets_cleanly() {
    let mut gw = Gateway::fake(&[]);
    assert_eq!(gw.get("alice", "/small").await.status, StatusCode::OK);
    let (_, mut socket) = gw.ws(Some("alice"), "/ws", &[]).await.expect("websocket");
    // The close frame waits in the socket while `terminate` holds this thread.
    let reader = actix_web::rt::spawn(async move { read_until_close(&mut socket).await });
    let status = gw.terminate();
    assert!(status.success());
    let (reason, _) = reader.await.unwrap();
    assert_eq!(reason.map(|r| r.code), Some(CloseCode::Away));
}
