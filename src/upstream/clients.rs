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

use chamberlain_actors::Upstream;

pub struct UpstreamClients {
    timeout: Duration,
    /// Keyed by the instance's per-start credentials, which are unique to one start.
    clients: Rc<RefCell<HashMap<Rc<str>, awc::Client>>>,
}

impl UpstreamClients {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            clients: Rc::default(),
        }
    }

    /// The client for this start of the instance, created on first use.
    pub fn get(&self, upstream: &Upstream) -> awc::Client {
        let key: &str = &upstream.authorization;
        if let Some(client) = self.clients.borrow().get(key) {
            return client.clone();
        }
        let client = client(self.timeout);
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
}
