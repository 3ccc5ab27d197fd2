//! Watch streams: newline-delimited `{"type": ..., "object": ...}` over a chunked response.
//!
//! Like the API server's watch cache, a change is judged against the selector before and
//! after it: an object that starts matching is ADDED, one that stops matching is DELETED.
//! The stream ends at `timeoutSeconds`, or with an ERROR 410 `Expired` when the watcher fell
//! too far behind (the client then relists).

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::resources::Resource;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{Change, ChangeType, WatchStart};

const BOOKMARK_EVERY: Duration = Duration::from_secs(10);

pub struct Filter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, object: &Value) -> bool {
        let ns = object["metadata"]["namespace"].as_str().unwrap_or("");
        self.namespace.as_deref().is_none_or(|want| want == ns)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }
}

pub struct Options {
    pub bookmarks: bool,
    pub timeout: Duration,
    /// `sendInitialEvents=true`: mark the end of the initial ADDEDs with a bookmark.
    pub initial_events_end: bool,
}

/// The event a change means for this watcher, if any.
fn translate<'a>(change: &'a Change, filter: &Filter) -> Option<(&'static str, &'a Value)> {
    let now = filter.matches(&change.object);
    match change.kind {
        ChangeType::Added => now.then_some(("ADDED", &change.object)),
        ChangeType::Deleted => now.then_some(("DELETED", &change.object)),
        ChangeType::Modified => {
            let before = change.previous.as_ref().is_some_and(|p| filter.matches(p));
            match (before, now) {
                (true, true) => Some(("MODIFIED", &change.object)),
                (false, true) => Some(("ADDED", &change.object)),
                (true, false) => Some(("DELETED", &change.object)),
                (false, false) => None,
            }
        }
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

fn bookmark(resource: Resource, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": resource.kind(), "apiVersion": resource.group_version(), "metadata": meta}),
    )
}

struct Watcher {
    resource: Resource,
    filter: Filter,
    options: Options,
    pending: std::collections::VecDeque<Bytes>,
    start: Option<WatchStart>,
    /// The newest resourceVersion this watcher has seen, for bookmarks.
    seen: u64,
    deadline: Instant,
    next_bookmark: Instant,
    done: bool,
}

impl Watcher {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(bytes) = self.pending.pop_front() {
                return Some(bytes);
            }
            if self.done {
                return None;
            }
            let start = self.start.as_mut()?;
            tokio::select! {
                received = start.rx.recv() => match received {
                    Ok(change) => {
                        self.seen = self.seen.max(change.rv);
                        if let Some((kind, object)) = translate(&change, &self.filter) {
                            return Some(line(kind, object));
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        self.done = true;
                        return Some(line("ERROR", &ApiError::expired(self.seen, self.seen + 1).to_json()));
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = tokio::time::sleep_until(self.next_bookmark), if self.options.bookmarks => {
                    self.next_bookmark = Instant::now() + BOOKMARK_EVERY;
                    return Some(bookmark(self.resource, self.seen, false));
                }
                _ = tokio::time::sleep_until(self.deadline) => return None,
            }
        }
    }
}

/// The body of a watch response.
pub fn stream(
    resource: Resource,
    start: WatchStart,
    filter: Filter,
    options: Options,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    let mut pending = std::collections::VecDeque::new();
    let mut seen = start.rv;
    for change in &start.initial {
        seen = seen.max(change.rv);
        if let Some((kind, object)) = translate(change, &filter) {
            pending.push_back(line(kind, object));
        }
    }
    if options.initial_events_end && options.bookmarks {
        pending.push_back(bookmark(resource, seen, true));
    }
    let now = Instant::now();
    let watcher = Watcher {
        resource,
        deadline: now + options.timeout,
        next_bookmark: now + BOOKMARK_EVERY,
        filter,
        options,
        pending,
        start: Some(WatchStart {
            initial: Vec::new(),
            ..start
        }),
        seen,
        done: false,
    };
    futures_util::stream::unfold(watcher, |mut w| async move {
        w.next().await.map(|b| (Ok(b), w))
    })
}

/// A watch that fails at once: one ERROR event, then the end, as the API server does.
pub fn error_stream(
    error: ApiError,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    futures_util::stream::once(async move { Ok(line("ERROR", &error.to_json())) })
}
