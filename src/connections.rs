//! How many requests and websockets each user holds open at once, bounded by
//! `--max-user-connections`: every one holds descriptors of the gateway's, and one user
//! opening hundreds of websockets must not make another user's request fail with "Too many
//! open files". Beyond the limit a user gets `429`; nobody else notices.

use std::sync::Arc;

use dashmap::DashMap;

use crate::errors::GatewayError;

pub struct UserConnections {
    max: u32,
    /// Users with at least one connection open; an entry goes when its count reaches zero.
    /// The guards share the entry's name rather than copy it for every request.
    open: DashMap<Arc<str>, u32>,
}

/// One open request or websocket of a user; the count goes down when it is dropped.
pub struct ConnectionGuard {
    owner: Arc<UserConnections>,
    user: Arc<str>,
}

impl UserConnections {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(UserConnections {
            max: max.max(1),
            open: DashMap::new(),
        })
    }

    /// Counts one more connection of `user`, or refuses it when they hold the maximum.
    pub fn open(self: &Arc<Self>, user: &str) -> Result<ConnectionGuard, GatewayError> {
        let mut count = match self.open.get_mut(user) {
            Some(count) => count,
            None => self.open.entry(Arc::from(user)).or_insert(0),
        };
        if *count >= self.max {
            return Err(GatewayError::TooManyConnections(format!(
                "you have {} requests and websockets open at once, the most this gateway allows \
                 one person; close some (tabs, terminals) and try again",
                self.max
            )));
        }
        *count += 1;
        Ok(ConnectionGuard {
            owner: Arc::clone(self),
            user: Arc::clone(count.key()),
        })
    }

    /// Connections `user` holds now.
    pub fn held(&self, user: &str) -> u32 {
        self.open.get(user).map_or(0, |c| *c)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.owner.open.remove_if_mut(&*self.user, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_held_to_the_limit_and_others_are_not() {
        let conns = UserConnections::new(2);
        let a = conns.open("ana").unwrap();
        let _b = conns.open("ana").unwrap();
        let refused = conns.open("ana").err().expect("over the limit");
        assert_eq!(
            refused.status(),
            actix_web::http::StatusCode::TOO_MANY_REQUESTS
        );
        assert!(
            conns.open("bob").is_ok(),
            "another user is not counted with ana"
        );
        drop(a);
        assert_eq!(conns.held("ana"), 1);
        let _c = conns.open("ana").unwrap();
        drop(_b);
        drop(_c);
        assert_eq!(conns.held("ana"), 0);
        assert!(
            conns.open.is_empty(),
            "no entry is kept for a user with nothing open"
        );
    }
}
