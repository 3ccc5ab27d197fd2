//! Model use per user per UTC day: what the relay counted, kept in `state/llm-usage.json`
//! (written atomically, read back at start, so a restart loses at most the last few seconds),
//! and the daily token budget.
//!
//! With several gateway replicas each also shares its use of today as a document of its own
//! (`crate::shared`), and counts the others' into every answer: the budget is a person's
//! across the replicas, and a replica that restarts finds its earlier use in its old
//! document.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::shared::{SharedChange, SharedDocuments};

/// One user's use on one day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Use {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Only with a price configured for the model used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

impl Use {
    pub fn tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    version: u32,
    /// `YYYY-MM-DD` (UTC) → user id → use.
    days: BTreeMap<String, BTreeMap<String, Use>>,
}

/// Days kept in the file (older ones are dropped when written).
const DAYS_KEPT: usize = 31;

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a usage file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot share the model use with the other gateways: {0}")]
    Share(String),
}

/// One replica's use of one day, as the replicas share it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Share {
    replica: String,
    day: String,
    users: BTreeMap<String, Use>,
}

/// This replica's place among the others.
struct Sharing {
    store: Arc<dyn SharedDocuments>,
    /// This replica's document (new at every start).
    replica: String,
    /// The other replicas' documents, by replica.
    others: Mutex<BTreeMap<String, Share>>,
}

pub struct UsageBook {
    path: PathBuf,
    sharing: Option<Sharing>,
    inner: Mutex<Inner>,
    /// One write at a time (a periodic one may still run when the last one starts).
    writing: Mutex<()>,
}

struct Inner {
    stored: Stored,
    /// Changed since the last write.
    dirty: bool,
}

/// A refusal: the user is at or over `--llm-daily-tokens`.
#[derive(Debug, Clone, PartialEq)]
pub struct OverBudget {
    pub used: u64,
    pub budget: u64,
    /// Seconds until the next UTC midnight.
    pub resets_in_secs: u64,
}

impl OverBudget {
    /// What the user is told. OpenCode retries a refusal whose text looks like a rate limit
    /// or a server error (it looks for `429`, `500`, `502`, `503`, `504`, `524` anywhere, and
    /// words such as "rate limit", "timeout", "try again later"): so no counts here (a budget
    /// of 15000 holds "500"), only hours and minutes, which have at most two digits.
    pub fn message(&self) -> String {
        let hours = self.resets_in_secs / 3600;
        let minutes = (self.resets_in_secs % 3600) / 60;
        format!(
            "Your daily model budget is used up: the tokens allowed per person per day (UTC) \
             have all been used. It resets at midnight UTC, in {hours} h {minutes} min. An \
             operator can raise it (--llm-daily-tokens)."
        )
    }
}

impl UsageBook {
    /// Reads the book at `path` (none yet is an empty book).
    pub fn open(path: PathBuf) -> Result<Self, UsageError> {
        let stored = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| UsageError::Parse {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Stored {
                version: 1,
                ..Stored::default()
            },
            Err(source) => return Err(UsageError::Read { path, source }),
        };
        Ok(Self {
            path,
            sharing: None,
            inner: Mutex::new(Inner {
                stored,
                dirty: false,
            }),
            writing: Mutex::new(()),
        })
    }

    /// The book at `path`, shared with the other replicas as document `replica`; `documents`
    /// are the replicas' documents there are now, and the watch of them feeds
    /// [`UsageBook::apply`].
    pub fn shared(
        path: PathBuf,
        store: Arc<dyn SharedDocuments>,
        replica: String,
        documents: Vec<Vec<u8>>,
    ) -> Result<Self, UsageError> {
        let mut book = Self::open(path)?;
        book.sharing = Some(Sharing {
            store,
            replica,
            others: Mutex::new(BTreeMap::new()),
        });
        book.apply(SharedChange::Reset(documents));
        Ok(book)
    }

    /// A change of the replicas' documents (this replica's own is ignored).
    pub fn apply(&self, change: SharedChange) {
        let Some(sharing) = &self.sharing else {
            return;
        };
        let parse = |doc: &[u8]| {
            serde_json::from_slice::<Share>(doc)
                .ok()
                .filter(|share| share.replica != sharing.replica)
        };
        let mut others = sharing.others.lock().unwrap_or_else(|e| e.into_inner());
        match change {
            SharedChange::Reset(documents) => {
                *others = documents
                    .iter()
                    .filter_map(|doc| parse(doc))
                    .map(|share| (share.replica.clone(), share))
                    .collect();
            }
            SharedChange::Put(document) => {
                if let Some(share) = parse(&document) {
                    others.insert(share.replica.clone(), share);
                }
            }
            SharedChange::Removed(id) => {
                others.remove(&id);
            }
        }
    }

    /// The other replicas' use of `day`, by user.
    fn others_on(&self, day: &str) -> BTreeMap<String, Use> {
        let mut sum: BTreeMap<String, Use> = BTreeMap::new();
        let Some(sharing) = &self.sharing else {
            return sum;
        };
        let others = sharing.others.lock().unwrap_or_else(|e| e.into_inner());
        for share in others.values().filter(|share| share.day == day) {
            for (user, used) in &share.users {
                add(sum.entry(user.clone()).or_default(), used);
            }
        }
        sum
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves counters, never a broken invariant.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds one request's use to `user`'s day.
    pub fn record(&self, user: &str, input: u64, output: u64, cost_usd: Option<f64>) {
        let day = utc_day(now_secs());
        let mut inner = self.lock();
        let entry = inner
            .stored
            .days
            .entry(day)
            .or_default()
            .entry(user.to_owned())
            .or_default();
        entry.requests += 1;
        entry.input_tokens = entry.input_tokens.saturating_add(input);
        entry.output_tokens = entry.output_tokens.saturating_add(output);
        if let Some(cost) = cost_usd {
            *entry.cost_usd.get_or_insert(0.0) += cost;
        }
        inner.dirty = true;
    }

    /// `user`'s use today (UTC), through every replica.
    pub fn today(&self, user: &str) -> Use {
        let day = utc_day(now_secs());
        let mut used = self
            .lock()
            .stored
            .days
            .get(&day)
            .and_then(|users| users.get(user))
            .copied()
            .unwrap_or_default();
        if let Some(elsewhere) = self.others_on(&day).get(user) {
            add(&mut used, elsewhere);
        }
        used
    }

    /// Everyone's use today (UTC), through every replica.
    pub fn everyone_today(&self) -> BTreeMap<String, Use> {
        let day = utc_day(now_secs());
        let mut all = self.others_on(&day);
        let own = self
            .lock()
            .stored
            .days
            .get(&day)
            .cloned()
            .unwrap_or_default();
        for (user, used) in own {
            add(all.entry(user).or_default(), &used);
        }
        all
    }

    /// `Err` when `user` may not make another call today under a budget of `budget` tokens
    /// (0: no budget).
    pub fn check(&self, user: &str, budget: u64) -> Result<(), OverBudget> {
        if budget == 0 {
            return Ok(());
        }
        let used = self.today(user).tokens();
        if used < budget {
            return Ok(());
        }
        let now = now_secs();
        Err(OverBudget {
            used,
            budget,
            resets_in_secs: 86_400 - now % 86_400,
        })
    }

    /// Writes the book if it changed since the last write (atomically: a temporary file
    /// renamed over the old one). Blocking.
    pub fn flush(&self) -> Result<(), UsageError> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let text = {
            let mut inner = self.lock();
            if !inner.dirty {
                return Ok(());
            }
            let days = &mut inner.stored.days;
            while days.len() > DAYS_KEPT {
                days.pop_first();
            }
            inner.stored.version = 1;
            let text = serde_json::to_vec_pretty(&inner.stored).map_err(|e| UsageError::Write {
                path: self.path.clone(),
                source: io::Error::other(e),
            })?;
            inner.dirty = false;
            text
        };
        chamberlain_actors::state_file::write_atomically(&self.path, &text, 0o600).map_err(
            |source| {
                // Try again next time.
                self.lock().dirty = true;
                UsageError::Write {
                    path: self.path.clone(),
                    source,
                }
            },
        )?;
        self.share()
    }

    /// Writes this replica's use of today for the others, and deletes documents of days
    /// that are over (any replica may: they are nobody's any more).
    fn share(&self) -> Result<(), UsageError> {
        let Some(sharing) = &self.sharing else {
            return Ok(());
        };
        let day = utc_day(now_secs());
        let share = Share {
            replica: sharing.replica.clone(),
            users: self
                .lock()
                .stored
                .days
                .get(&day)
                .cloned()
                .unwrap_or_default(),
            day: day.clone(),
        };
        let document = serde_json::to_vec(&share).map_err(|e| UsageError::Share(e.to_string()))?;
        if let Err(e) = sharing.store.put(&sharing.replica, document) {
            self.lock().dirty = true;
            return Err(UsageError::Share(e));
        }
        let over: Vec<String> = sharing
            .others
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|share| share.day < day)
            .map(|share| share.replica.clone())
            .collect();
        for id in over {
            sharing.store.delete(&id).map_err(UsageError::Share)?;
        }
        Ok(())
    }
}

fn add(total: &mut Use, more: &Use) {
    total.requests = total.requests.saturating_add(more.requests);
    total.input_tokens = total.input_tokens.saturating_add(more.input_tokens);
    total.output_tokens = total.output_tokens.saturating_add(more.output_tokens);
    if let Some(cost) = more.cost_usd {
        *total.cost_usd.get_or_insert(0.0) += cost;
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYY-MM-DD` of the UTC day holding `secs` since the epoch (the proleptic Gregorian
/// calendar, by Howard Hinnant's days-to-civil).
pub fn utc_day(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_days_are_calendar_dates() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(86_399), "1970-01-01");
        assert_eq!(utc_day(86_400), "1970-01-02");
        assert_eq!(utc_day(951_782_400), "2000-02-29");
        assert_eq!(utc_day(1_796_083_200), "2026-12-01");
        assert_eq!(utc_day(1_796_169_599), "2026-12-01");
    }

    #[test]
    fn use_is_counted_per_user_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("llm-usage.json");
        let book = UsageBook::open(path.clone()).unwrap();
        book.record("alice", 100, 20, None);
        book.record("alice", 5, 1, Some(0.25));
        book.record("bob", 7, 7, None);
        let alice = book.today("alice");
        assert_eq!(
            (alice.requests, alice.input_tokens, alice.output_tokens),
            (2, 105, 21)
        );
        assert_eq!(alice.cost_usd, Some(0.25));
        assert_eq!(book.today("carol"), Use::default());
        book.flush().unwrap();
        let again = UsageBook::open(path).unwrap();
        assert_eq!(again.today("alice"), alice);
        assert_eq!(again.everyone_today().len(), 2);
    }

    #[test]
    fn a_budget_refuses_at_or_over_it_and_says_when_it_resets() {
        let dir = tempfile::tempdir().unwrap();
        let book = UsageBook::open(dir.path().join("u.json")).unwrap();
        assert!(book.check("alice", 100).is_ok());
        book.record("alice", 60, 40, None);
        let over = book.check("alice", 100).unwrap_err();
        assert_eq!((over.used, over.budget), (100, 100));
        assert!(over.resets_in_secs > 0 && over.resets_in_secs <= 86_400);
        let message = over.message();
        assert!(
            message.starts_with("Your daily model budget is used up"),
            "{message}"
        );
        // Nothing OpenCode would take for a rate limit or a server error, and so retry.
        for retried in [
            "429",
            "500",
            "502",
            "503",
            "504",
            "524",
            "rate limit",
            "timeout",
            "try again",
            "unavailable",
            "overloaded",
            "too many",
        ] {
            assert!(
                !message.to_lowercase().contains(retried),
                "{retried} in {message}"
            );
        }
        assert!(book.check("alice", 0).is_ok(), "0 is no budget");
        assert!(book.check("bob", 100).is_ok(), "others unaffected");
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.json");
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(
            UsageBook::open(path),
            Err(UsageError::Parse { .. })
        ));
    }

    /// Shared documents in memory, as the cluster would keep them.
    #[derive(Default)]
    struct Documents(Mutex<BTreeMap<String, Vec<u8>>>);

    impl SharedDocuments for Documents {
        fn put(&self, id: &str, document: Vec<u8>) -> Result<(), String> {
            self.0.lock().unwrap().insert(id.into(), document);
            Ok(())
        }

        fn delete(&self, id: &str) -> Result<(), String> {
            self.0.lock().unwrap().remove(id);
            Ok(())
        }
    }

    #[test]
    fn replicas_count_each_others_use_into_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Documents::default());
        let a = UsageBook::shared(
            dir.path().join("a.json"),
            store.clone(),
            "a1".into(),
            vec![],
        )
        .unwrap();
        let b = UsageBook::shared(
            dir.path().join("b.json"),
            store.clone(),
            "b1".into(),
            vec![],
        )
        .unwrap();
        a.record("alice", 600, 0, None);
        a.flush().unwrap();
        let shared: Vec<Vec<u8>> = store.0.lock().unwrap().values().cloned().collect();
        assert_eq!(shared.len(), 1);
        b.apply(SharedChange::Put(shared[0].clone()));
        b.record("alice", 500, 0, None);
        assert_eq!(b.today("alice").tokens(), 1100);
        assert_eq!(b.today("alice").requests, 2);
        assert!(
            b.check("alice", 1000).is_err(),
            "the budget is the person's, not a replica's"
        );
        assert_eq!(b.everyone_today()["alice"].tokens(), 1100);
        // Its own document, echoed by the watch, is not counted twice.
        a.apply(SharedChange::Put(shared[0].clone()));
        assert_eq!(a.today("alice").tokens(), 600);
        // A replica started later finds the earlier ones' use.
        b.flush().unwrap();
        let all: Vec<Vec<u8>> = store.0.lock().unwrap().values().cloned().collect();
        let c =
            UsageBook::shared(dir.path().join("c.json"), store.clone(), "c1".into(), all).unwrap();
        assert_eq!(c.today("alice").tokens(), 1100);
        c.apply(SharedChange::Removed("a1".into()));
        assert_eq!(c.today("alice").tokens(), 500);
        // A day that is over is nobody's: the next flush deletes it.
        let old = serde_json::to_vec(&Share {
            replica: "z9".into(),
            day: "2020-01-01".into(),
            users: BTreeMap::from([("alice".to_owned(), Use::default())]),
        })
        .unwrap();
        store.0.lock().unwrap().insert("z9".into(), old.clone());
        c.apply(SharedChange::Put(old));
        c.record("bob", 1, 1, None);
        c.flush().unwrap();
        assert!(!store.0.lock().unwrap().contains_key("z9"));
    }
}
