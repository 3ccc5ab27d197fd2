//! `RepoLibrary`: the organisation's template repositories under `shared/repos/`.
//!
//! Messages
//! - `ListRepos` → every repository, sizes from the cache (`None` while being computed).
//! - `GetRepo { name }` → one repository.
//! - `CloneRepo { source, target, user }` → copies a repository into the user's workspace.
//! - `AddRepo`, `RefreshRepo`, `DeleteRepo` → the operator's changes.
//!
//! State: a read-write lock per repository (clones share it; refresh and delete take it
//! alone, so a clone always copies a consistent snapshot), a semaphore bounding clones
//! (`--max-concurrent-clones`), and the size cache. Nothing runs on the actor: each message
//! is answered by a future that does its file-system and git work on the blocking pool, so
//! many clones run at once and a huge repository never stalls a listing. Sizes are computed
//! in the background (two at a time) and invalidated by the repository's modification time.

pub mod catalogue;
pub mod copy;
pub mod names;
pub mod operator;
pub mod sizes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::{RwLock, Semaphore};

use crate::provision::{Homes, Profile, ProvisionError};
use crate::workspace::UserKey;
pub use catalogue::{RepoKind, SharedRepository};
use copy::CopyError;
use sizes::SizeCache;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no shared repository named {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Upstream(String),
    /// The user has as many operations in their home running as allowed.
    #[error("{0}")]
    Busy(String),
}

impl From<CopyError> for RepoError {
    fn from(e: CopyError) -> Self {
        match e {
            CopyError::Exists(_) => RepoError::Conflict(e.to_string()),
            CopyError::Failed(m) => RepoError::Failed(m),
            CopyError::Upstream(m) => RepoError::Upstream(m),
        }
    }
}

impl From<ProvisionError> for RepoError {
    fn from(e: ProvisionError) -> Self {
        use crate::as_user::TaskError;
        match e {
            ProvisionError::Task(TaskError::Exists(m)) => RepoError::Conflict(m),
            ProvisionError::Task(TaskError::Upstream(m)) => RepoError::Upstream(m),
            ProvisionError::Task(TaskError::Failed(m)) => RepoError::Failed(m),
            e @ ProvisionError::Busy(_) => RepoError::Busy(e.to_string()),
            e => RepoError::Failed(e.to_string()),
        }
    }
}

pub struct RepoLibrary {
    root: PathBuf,
    homes: Arc<Homes>,
    locks: HashMap<String, Arc<RwLock<()>>>,
    clones: Arc<Semaphore>,
    sizes: SizeCache,
}

impl RepoLibrary {
    pub fn new(root: PathBuf, homes: Arc<Homes>, max_concurrent_clones: usize) -> Self {
        RepoLibrary {
            root,
            homes,
            locks: HashMap::new(),
            clones: Arc::new(Semaphore::new(max_concurrent_clones.max(1))),
            sizes: SizeCache::new(2),
        }
    }

    fn lock(&mut self, name: &str) -> Arc<RwLock<()>> {
        // Names come from clients; forget the locks nobody holds once there are many.
        if self.locks.len() > 256 {
            self.locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        self.locks
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(RwLock::new(())))
            .clone()
    }
}

impl Actor for RepoLibrary {
    type Context = Context<Self>;
}

/// A name that can only be a direct entry of the catalogue.
fn catalogue_name(name: &str) -> Result<&str, RepoError> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\0'])
        && name.len() <= 255;
    if plain {
        Ok(name)
    } else {
        Err(RepoError::NotFound(name.chars().take(100).collect()))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RepoError> + Send + 'static,
) -> Result<T, RepoError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RepoError::Failed(format!("the operation was interrupted: {e}")))?
}

#[derive(Message)]
#[rtype(result = "Vec<SharedRepository>")]
pub struct ListRepos;

impl Handler<ListRepos> for RepoLibrary {
    type Result = ResponseFuture<Vec<SharedRepository>>;

    fn handle(&mut self, _: ListRepos, _: &mut Context<Self>) -> Self::Result {
        let root = self.root.clone();
        let sizes = self.sizes.clone();
        Box::pin(async move {
            let repos = tokio::task::spawn_blocking(move || catalogue::scan(&root))
                .await
                .unwrap_or_default();
            sizes.fill(repos)
        })
    }
}

#[derive(Message)]
#[rtype(result = "Result<SharedRepository, RepoError>")]
pub struct GetRepo {
    pub name: String,
}

impl Handler<GetRepo> for RepoLibrary {
    type Result = ResponseFuture<Result<SharedRepository, RepoError>>;

    fn handle(&mut self, msg: GetRepo, _: &mut Context<Self>) -> Self::Result {
        let root = self.root.clone();
        let sizes = self.sizes.clone();
        Box::pin(async move {
            let name = catalogue_name(&msg.name)?.to_owned();
            let lookup = name.clone();
            let repo = blocking(move || {
                catalogue::read(&root, &lookup).ok_or(RepoError::NotFound(lookup))
            })
            .await?;
            Ok(sizes.fill(vec![repo]).remove(0))
        })
    }
}

/// Who is cloning: where their workspace is and who owns it.
#[derive(Clone, Debug)]
pub struct Cloner {
    pub key: UserKey,
    pub profile: Profile,
}

#[derive(Message)]
#[rtype(result = "Result<PathBuf, RepoError>")]
pub struct CloneRepo {
    pub source: String,
    /// Defaults to the source's name.
    pub target: Option<String>,
    pub user: Cloner,
}

impl Handler<CloneRepo> for RepoLibrary {
    type Result = ResponseFuture<Result<PathBuf, RepoError>>;

    fn handle(&mut self, msg: CloneRepo, _: &mut Context<Self>) -> Self::Result {
        let source = msg.source.clone();
        let lock = self.lock(&source);
        let (root, homes, clones) = (self.root.clone(), self.homes.clone(), self.clones.clone());
        Box::pin(async move {
            catalogue_name(&source)?;
            let target = msg.target.unwrap_or_else(|| names::default_target(&source));
            names::validate(&target).map_err(RepoError::BadRequest)?;
            // Refresh and delete of this repository wait for every clone of it.
            let _snapshot = lock.read_owned().await;
            let _slot = clones
                .acquire_owned()
                .await
                .map_err(|_| RepoError::Failed("the repository library is closing".into()))?;
            blocking(move || {
                let repo = catalogue::read(&root, &source).ok_or(RepoError::NotFound(source))?;
                // As the user: the copy lands where the user could put it, and nowhere else.
                Ok(homes.clone_repo(
                    &msg.user.key,
                    &msg.user.profile,
                    &repo.path,
                    repo.kind,
                    &target,
                )?)
            })
            .await
        })
    }
}

#[derive(Message)]
#[rtype(result = "Result<SharedRepository, RepoError>")]
pub struct AddRepo {
    pub name: String,
    pub url: String,
    pub description: Option<String>,
}

impl Handler<AddRepo> for RepoLibrary {
    type Result = ResponseFuture<Result<SharedRepository, RepoError>>;

    fn handle(&mut self, msg: AddRepo, _: &mut Context<Self>) -> Self::Result {
        let lock = self.lock(&msg.name);
        let root = self.root.clone();
        let gid = self.homes.isolation().shared_gid();
        Box::pin(async move {
            names::validate(&msg.name).map_err(RepoError::BadRequest)?;
            operator::check_url(&msg.url).map_err(RepoError::BadRequest)?;
            let _alone = lock.write_owned().await;
            blocking(move || {
                operator::add(&root, &msg.name, &msg.url, msg.description.as_deref(), gid)?;
                tracing::info!(name = %msg.name, url = %msg.url, "shared repository added");
                catalogue::read(&root, &msg.name)
                    .ok_or_else(|| RepoError::Failed("the new repository vanished".into()))
            })
            .await
        })
    }
}

#[derive(Message)]
#[rtype(result = "Result<String, RepoError>")]
pub struct RefreshRepo {
    pub name: String,
}

impl Handler<RefreshRepo> for RepoLibrary {
    type Result = ResponseFuture<Result<String, RepoError>>;

    fn handle(&mut self, msg: RefreshRepo, _: &mut Context<Self>) -> Self::Result {
        let lock = self.lock(&msg.name);
        let root = self.root.clone();
        let gid = self.homes.isolation().shared_gid();
        Box::pin(async move {
            catalogue_name(&msg.name)?;
            let _alone = lock.write_owned().await;
            blocking(move || {
                let repo =
                    catalogue::read(&root, &msg.name).ok_or(RepoError::NotFound(msg.name))?;
                let upstream = operator::refresh(&repo.path, gid)?;
                tracing::info!(name = %repo.name, upstream, "shared repository refreshed");
                Ok(upstream)
            })
            .await
        })
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), RepoError>")]
pub struct DeleteRepo {
    pub name: String,
}

impl Handler<DeleteRepo> for RepoLibrary {
    type Result = ResponseFuture<Result<(), RepoError>>;

    fn handle(&mut self, msg: DeleteRepo, _: &mut Context<Self>) -> Self::Result {
        let lock = self.lock(&msg.name);
        let root = self.root.clone();
        Box::pin(async move {
            catalogue_name(&msg.name)?;
            let _alone = lock.write_owned().await;
            blocking(move || {
                if catalogue::read(&root, &msg.name).is_none() {
                    return Err(RepoError::NotFound(msg.name));
                }
                operator::delete(&root, &msg.name)?;
                tracing::info!(name = %msg.name, "shared repository deleted");
                Ok(())
            })
            .await
        })
    }
}
