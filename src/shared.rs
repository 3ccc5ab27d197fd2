//! What the replicas of a gateway keep in common (personal access tokens, model use): small
//! documents, each written and deleted by the replica that owns the change and watched by
//! all (with the Kubernetes backend, Secrets; see `kubernetes.rs`). The code that keeps such
//! a document knows only these two types.

/// Where shared documents are kept. Blocking calls (made on the blocking pool).
pub trait SharedDocuments: Send + Sync {
    /// Writes document `id` (DNS-label characters only), made or replaced.
    fn put(&self, id: &str, document: Vec<u8>) -> Result<(), String>;
    /// Deletes document `id`; one that is not there is deleted already.
    fn delete(&self, id: &str) -> Result<(), String>;
}

/// A change the watch of the shared documents saw.
pub enum SharedChange {
    /// Every document there is (at the start, and after the watch was lost).
    Reset(Vec<Vec<u8>>),
    Put(Vec<u8>),
    Removed(String),
}
