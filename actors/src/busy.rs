//! Is an agent at work in this instance? OpenCode's agents run on their own after a prompt,
//! with no client connected, so "no client activity" is not "idle".
//!
//! OpenCode (1.18.33) keeps one state per *directory*: `GET /session/status` answers for the
//! directory of the request (`?directory=`, else its working directory) and lists only
//! sessions that are not idle (`busy`, or `retry` while it retries a provider). The
//! directories in use are those of its sessions, which `GET /experimental/session` lists
//! across projects, most recently updated first: a working session is being updated, so it is
//! among the first.

use std::collections::BTreeSet;

use crate::encode::percent_encode;
use crate::status::Upstream;

/// Sessions looked at (their distinct directories are asked for their state).
const RECENT_SESSIONS: usize = 50;
const MAX_BODY: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
#[error("asking OpenCode what is running: {0}")]
pub struct BusyError(String);

/// How many sessions are busy (or retrying) across the instance's directories.
pub async fn busy_sessions(client: &awc::Client, upstream: &Upstream) -> Result<u32, BusyError> {
    let recent: serde_json::Value = get(
        client,
        upstream,
        &format!("/experimental/session?limit={RECENT_SESSIONS}"),
    )
    .await?;
    let mut busy = 0;
    for dir in directories(&recent) {
        let status = get(
            client,
            upstream,
            &format!("/session/status?directory={}", percent_encode(&dir)),
        )
        .await?;
        busy += count_busy(&status);
    }
    Ok(busy)
}

async fn get(
    client: &awc::Client,
    upstream: &Upstream,
    path: &str,
) -> Result<serde_json::Value, BusyError> {
    let mut response = client
        .get(format!("http://{}{path}", upstream.addr))
        .insert_header(("authorization", &*upstream.authorization))
        .send()
        .await
        .map_err(|e| BusyError(format!("{path}: {e}")))?;
    if !response.status().is_success() {
        return Err(BusyError(format!("{path}: answered {}", response.status())));
    }
    let body = response
        .body()
        .limit(MAX_BODY)
        .await
        .map_err(|e| BusyError(format!("{path}: {e}")))?;
    serde_json::from_slice(&body).map_err(|e| BusyError(format!("{path}: {e}")))
}

/// The distinct directories of a session list (OpenCode's working directory included by
/// asking without one is not needed: its sessions are listed too).
fn directories(sessions: &serde_json::Value) -> BTreeSet<String> {
    sessions
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("directory")?.as_str())
        .map(str::to_owned)
        .collect()
}

/// Entries of a `/session/status` answer that are at work.
fn count_busy(status: &serde_json::Value) -> u32 {
    status
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|s| {
            matches!(
                s.get("type").and_then(|t| t.as_str()),
                Some("busy" | "retry")
            )
        })
        .count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn directories_and_busy_sessions_are_read_from_opencodes_answers() {
        let sessions = json!([
            {"id": "a", "directory": "/h/workspace/kit"},
            {"id": "b", "directory": "/h/workspace"},
            {"id": "c", "directory": "/h/workspace/kit"},
            {"id": "d"}
        ]);
        let dirs: Vec<_> = directories(&sessions).into_iter().collect();
        assert_eq!(dirs, ["/h/workspace", "/h/workspace/kit"]);
        let status = json!({
            "a": {"type": "busy"},
            "b": {"type": "retry", "attempt": 2, "message": "429"},
            "c": {"type": "idle"}
        });
        assert_eq!(count_busy(&status), 2);
        assert_eq!(count_busy(&json!({})), 0);
        assert_eq!(count_busy(&json!("unexpected")), 0);
    }
}
