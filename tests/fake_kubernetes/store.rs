//! The in-memory object store: one table per resource, one global resourceVersion counter,
//! and per table a history of recent changes plus a broadcast of new ones for watches.
//!
//! It owns the metadata the server stamps (uid, resourceVersion, creationTimestamp,
//! generation) and the change log; the rules of each verb live in `api.rs`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::resources::Resource;
use crate::status::ApiError;
use crate::{clock, ids, validate};

/// How many changes per resource a watch can resume from.
const HISTORY: usize = 2000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One change: the object after it (for a deletion, the last state) and before it.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub kind: ChangeType,
    pub object: Value,
    pub previous: Option<Value>,
}

struct Table {
    objects: BTreeMap<(String, String), Value>,
    history: VecDeque<Arc<Change>>,
    /// Every change after this resourceVersion is still in `history`.
    complete_after: u64,
    tx: broadcast::Sender<Arc<Change>>,
}

struct Inner {
    rv: u64,
    tables: HashMap<Resource, Table>,
}

pub struct Store {
    inner: Mutex<Inner>,
}

/// Where a new watch starts: the changes to send first, then the live ones.
pub struct WatchStart {
    pub initial: Vec<Arc<Change>>,
    pub rx: broadcast::Receiver<Arc<Change>>,
    pub rv: u64,
}

pub fn rv_of(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Inner {
    fn table(&mut self, resource: Resource) -> &mut Table {
        self.tables.entry(resource).or_insert_with(|| Table {
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            complete_after: 0,
            tx: broadcast::channel(4096).0,
        })
    }

    fn record(
        &mut self,
        resource: Resource,
        kind: ChangeType,
        object: Value,
        previous: Option<Value>,
    ) {
        let rv = self.rv;
        let table = self.table(resource);
        let change = Arc::new(Change {
            rv,
            kind,
            object,
            previous,
        });
        if table.history.len() >= HISTORY {
            if let Some(old) = table.history.pop_front() {
                table.complete_after = old.rv;
            }
        }
        table.history.push_back(change.clone());
        // No receivers is fine: nobody is watching.
        let _ = table.tx.send(change);
    }
}

impl Store {
    pub fn new() -> Self {
        Store {
            inner: Mutex::new(Inner {
                rv: 1,
                tables: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every write is one insert).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stamps and inserts a new object; `finish` may still edit it once it has its uid.
    pub fn create(
        &self,
        resource: Resource,
        namespace: &str,
        mut object: Value,
        finish: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let meta = &mut object["metadata"];
        let name = match meta["name"].as_str().filter(|n| !n.is_empty()) {
            Some(name) => name.to_owned(),
            None => match meta["generateName"].as_str().filter(|n| !n.is_empty()) {
                Some(prefix) => format!("{prefix}{}", ids::name_suffix()),
                None => {
                    return Err(ApiError::invalid(
                        resource,
                        "",
                        &[(
                            "metadata.name".into(),
                            "Required value: name or generateName is required".into(),
                        )],
                    ))
                }
            },
        };
        let causes = validate::object_name(resource, &name);
        if !causes.is_empty() {
            return Err(ApiError::invalid(resource, &name, &causes));
        }
        let key = (namespace.to_owned(), name.clone());
        if inner.table(resource).objects.contains_key(&key) {
            return Err(ApiError::already_exists(resource, &name));
        }
        inner.rv += 1;
        let rv = inner.rv;
        object["kind"] = json!(resource.kind());
        object["apiVersion"] = json!(resource.group_version());
        let meta = &mut object["metadata"];
        meta["name"] = json!(name);
        meta["namespace"] = json!(namespace);
        meta["uid"] = json!(ids::uuid());
        meta["resourceVersion"] = json!(rv.to_string());
        meta["creationTimestamp"] = json!(clock::now());
        // Of our resources only pods count generations (the others have no spec the API
        // server tracks, or none at all).
        if resource == Resource::Pods {
            meta["generation"] = json!(1);
        }
        if let Some(m) = meta.as_object_mut() {
            for owned in [
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                m.remove(owned);
            }
        }
        finish(&mut object);
        inner.table(resource).objects.insert(key, object.clone());
        inner.record(resource, ChangeType::Added, object.clone(), None);
        Ok(object)
    }

    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        let mut inner = self.lock();
        inner
            .table(resource)
            .objects
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every object of a resource (in one namespace, or all), sorted by namespace and name,
    /// with the resourceVersion the list is consistent at.
    pub fn list(&self, resource: Resource, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let mut inner = self.lock();
        let rv = inner.rv;
        let items = inner
            .table(resource)
            .objects
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
            .map(|(_, v)| v.clone())
            .collect();
        (items, rv)
    }

    /// Read-modify-write under the lock. `change` edits a copy; an edit that changes nothing
    /// bumps nothing (as on a real server), anything else gets a new resourceVersion and a
    /// MODIFIED event.
    pub fn update(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        let current = inner
            .table(resource)
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        let mut next = current.clone();
        change(&mut next)?;
        next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        if next == current {
            return Ok(current);
        }
        inner.rv += 1;
        next["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        inner.table(resource).objects.insert(key, next.clone());
        inner.record(resource, ChangeType::Modified, next.clone(), Some(current));
        Ok(next)
    }

    /// Removes an object if `check` accepts it; the DELETED event carries a new resourceVersion.
    pub fn remove(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
        check: impl FnOnce(&Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        let table = inner.table(resource);
        let current = table
            .objects
            .get(&key)
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        check(current)?;
        let Some(mut object) = table.objects.remove(&key) else {
            return Err(ApiError::not_found(resource, name));
        };
        inner.rv += 1;
        object["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        inner.record(resource, ChangeType::Deleted, object.clone(), None);
        Ok(object)
    }

    /// Subscribes a watch. `since: None` starts with every current object as ADDED;
    /// `Some(rv)` replays the changes after `rv`, or fails with 410 if they are forgotten.
    pub fn watch(&self, resource: Resource, since: Option<u64>) -> Result<WatchStart, ApiError> {
        let mut inner = self.lock();
        let rv = inner.rv;
        let table = inner.table(resource);
        let rx = table.tx.subscribe();
        let initial = match since {
            None => table
                .objects
                .values()
                .map(|o| {
                    Arc::new(Change {
                        rv: rv_of(o),
                        kind: ChangeType::Added,
                        object: o.clone(),
                        previous: None,
                    })
                })
                .collect(),
            Some(since) if since < table.complete_after => {
                return Err(ApiError::expired(since, table.complete_after + 1))
            }
            Some(since) => table
                .history
                .iter()
                .filter(|c| c.rv > since)
                .cloned()
                .collect(),
        };
        Ok(WatchStart { initial, rx, rv })
    }
}
