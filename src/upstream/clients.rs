//! One HTTP client (and connection pool) per running instance, per worker thread.
//!
//! awc closes idle pooled connections only when the same address is used again. Every start
//! of an instance listens on a new port, so a single shared client would keep connections to
//! the ports of stopped instances open for ever. Here each start of an instance gets its own
//! client, dropped (and its connections closed) as soon as that instance starts stopping.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use actix_web::http::uri::{Authority, PathAndQuery, Scheme};
use actix_web::http::Uri;
use chamberlain_actors::Upstream;

pub struct UpstreamClients {
    timeout: Duration,
    /// Keyed by the instance's per-start credentials, which are unique to one start.
    clients: Rc<RefCell<HashMap<Rc<str>, InstanceClient>>>,
}

/// The client of one start of an instance, and its address as a URI authority (made once:
/// a request's URI is put together from parts, not formatted and parsed again).
#[derive(Clone)]
pub struct InstanceClient {
    pub client: awc::Client,
    authority: Authority,
}

impl InstanceClient {
    /// The instance's URI for a request's path and query.
    pub fn uri(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        let mut parts = actix_web::http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            path_and_query
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        // Scheme, authority and path are all present: this cannot fail.
        Uri::from_parts(parts).unwrap_or_default()
    }
}

impl UpstreamClients {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            clients: Rc::default(),
        }
    }

    /// The client for this start of the instance, created on first use.
    pub fn get(&self, upstream: &Upstream) -> InstanceClient {
        let key: &str = &upstream.authorization;
        if let Some(client) = self.clients.borrow().get(key) {
            return client.clone();
        }
        let client = InstanceClient {
            client: client(self.timeout),
            authority: Authority::try_from(upstream.addr.to_string().as_str())
                .unwrap_or_else(|_| Authority::from_static("127.0.0.1")),
        };
        let key: Rc<str> = Rc::from(key);
        self.clients
            .borrow_mut()
            .insert(Rc::clone(&key), client.clone());
        let clients = Rc::clone(&self.clients);
        let stopping = upstream.stopping.clone();
        actix_web::rt::spawn(async move {
            stopping.cancelled().await;
            clients.borrow_mut().remove(&key);
        });
        client
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.clients.borrow().len()
    }
}

/// The client of one start of one instance in one worker: no redirects,
/// no default headers, idle connections reused only briefly.
fn client(timeout: Duration) -> awc::Client {
    let connector = awc::Connector::new()
        .limit(1024)
        .conn_keep_alive(Duration::from_secs(4));
    awc::Client::builder()
        .connector(connector)
        .timeout(timeout)
        .disable_redirects()
        .no_default_headers()
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    fn upstream(password: &str, token: &CancellationToken) -> Upstream {
        Upstream {
            addr: "127.0.0.1:9".parse().unwrap(),
            authorization: Arc::from(format!("Basic {password}")),
            generation: 1,
            stopping: token.clone(),
        }
    }

    #[actix_web::test]
    async fn one_client_per_start_dropped_when_it_stops() {
        let clients = UpstreamClients::new(Duration::from_secs(5));
        let (first, second) = (CancellationToken::new(), CancellationToken::new());
        clients.get(&upstream("a", &first));
        clients.get(&upstream("a", &first));
        clients.get(&upstream("b", &second));
        assert_eq!(clients.len(), 2);
        first.cancel();
        for _ in 0..100 {
            if clients.len() == 1 {
                break;
            }
            actix_web::rt::task::yield_now().await;
        }
        assert_eq!(clients.len(), 1);
    }

    #[actix_web::test]
    async fn uris_are_the_instances_address_and_the_requests_path() {
        let clients = UpstreamClients::new(Duration::from_secs(5));
        let client = clients.get(&upstream("a", &CancellationToken::new()));
        let pq = PathAndQuery::from_static("/session/x?directory=%2Fh");
        assert_eq!(
            client.uri(Some(&pq)).to_string(),
            "http://127.0.0.1:9/session/x?directory=%2Fh"
        );
        assert_eq!(client.uri(None).to_string(), "http://127.0.0.1:9/");
    }
}
