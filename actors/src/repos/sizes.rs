//! Repository sizes, computed in the background and cached by modification time, so a
//! listing never waits for a walk of a huge repository.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use super::catalogue::{self, SharedRepository};

/// Cheap to clone: every clone shares the cache, the set of walks under way and the
/// workers bounding them.
#[derive(Clone)]
pub struct SizeCache {
    /// name → (last modified, bytes).
    sizes: Arc<Mutex<HashMap<String, (u64, u64)>>>,
    walking: Arc<Mutex<HashSet<String>>>,
    workers: Arc<Semaphore>,
}

impl SizeCache {
    /// At most `workers` repositories walked at once.
    pub fn new(workers: usize) -> Self {
        SizeCache {
            sizes: Arc::default(),
            walking: Arc::default(),
            workers: Arc::new(Semaphore::new(workers.max(1))),
        }
    }

    /// Fills in the sizes the cache has for the repositories as they are now; stale or
    /// missing ones are left `None` and computed in the background.
    pub fn fill(&self, mut repos: Vec<SharedRepository>) -> Vec<SharedRepository> {
        let mut stale = Vec::new();
        {
            let cache = match self.sizes.lock() {
                Ok(c) => c,
                Err(poisoned) => poisoned.into_inner(),
            };
            for (i, repo) in repos.iter_mut().enumerate() {
                match cache.get(&repo.name) {
                    Some((stamp, bytes)) if *stamp == repo.last_modified => {
                        repo.size_bytes = Some(*bytes)
                    }
                    _ => stale.push(i),
                }
            }
        }
        for i in stale {
            self.compute(&repos[i]);
        }
        repos
    }

    /// Starts a walk of `repo` unless one is under way.
    fn compute(&self, repo: &SharedRepository) {
        let fresh = self
            .walking
            .lock()
            .map(|mut s| s.insert(repo.name.clone()))
            .unwrap_or(false);
        if !fresh {
            return;
        }
        let (name, path, stamp) = (repo.name.clone(), repo.path.clone(), repo.last_modified);
        let this = self.clone();
        actix::spawn(async move {
            let _worker = this.workers.acquire_owned().await;
            let bytes = tokio::task::spawn_blocking(move || catalogue::size_of(&path)).await;
            if let (Ok(bytes), Ok(mut cache)) = (bytes, this.sizes.lock()) {
                cache.insert(name.clone(), (stamp, bytes));
            }
            if let Ok(mut s) = this.walking.lock() {
                s.remove(&name);
            }
        });
    }
}
