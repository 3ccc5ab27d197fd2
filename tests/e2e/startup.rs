//! Start-up: what the gateway says when it cannot listen, and the addresses it accepts.

use std::net::TcpListener;

use awc::http::StatusCode;

use crate::support::{run_to_exit, Gateway};

#[test]
fn a_taken_port_is_named_before_anything_starts() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    for flag in ["--listen", "--admin-listen"] {
        let (status, err) = run_to_exit(&[flag, &taken]);
        assert_eq!(status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "chamberlain: cannot listen on {taken} ({flag}): stop the program that holds \
                 the address, or choose another with {flag}: Address already in use"
            )),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        // Nothing was started: no actor, no isolation set-up, no listener.
        assert!(!err.contains("isolation in force"), "{err}");
    }
}

#[actix_web::test]
async fn a_host_name_is_a_listen_address() {
    let gw = Gateway::fake(&["--listen", "localhost:0", "--admin-listen", "localhost:0"]);
    assert!(gw.base.starts_with("http://127.0.0.1:"), "{}", gw.base);
    assert!(gw.admin.starts_with("http://127.0.0.1:"), "{}", gw.admin);
    let resp = gw.get("alice", "/session").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());

    let (status, err) = run_to_exit(&["--listen", "nowhere.invalid:8080"]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("invalid value 'nowhere.invalid:8080' for '--listen <LISTEN>': \"nowhere.invalid:8080\" is not an address like 127.0.0.1:8080 or localhost:8080"),
        "{err}"
    );
}
