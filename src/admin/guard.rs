//! Who may use the admin API. It fails closed: a request it cannot place is refused.
//!
//! - **Unix socket** (`--admin-socket`): the kernel's credentials of the connecting process
//!   (`SO_PEERCRED`, recorded by `socket.rs`) must be root or the gateway's own uid. No token.
//!   Without a uid per user, users' processes run as the gateway's uid (or as root inside
//!   Landlock), so the socket cannot tell them apart and refuses everyone.
//! - **TCP** (`--admin-listen`): every request but `GET /healthz` needs
//!   `Authorization: Bearer <operator token>` (401 otherwise). Before the token, and with
//!   a uid per user, a client socket on this host owned by a user's uid — or whose owner
//!   cannot be told although it is on this host (loopback, or this connection's own
//!   address) — is refused (403): a user who somehow read the token still cannot use it
//!   from their terminal. A remote client has no row in this host's tables; for it the
//!   token is the guard.

use std::any::Any;
use std::net::SocketAddr;

use actix_web::dev::{Extensions, Service, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::{web, HttpMessage, ResponseError};

use super::socket::UnixPeer;
use super::token;
use super::Admin;
use crate::errors::GatewayError;
use crate::forwarded::canonical;
use crate::limits::{answer, pass_on, Answer};

/// The local address of a TCP admin connection (the listener's may be `0.0.0.0`).
#[derive(Clone, Copy, Debug)]
struct TcpLocal(SocketAddr);

/// For `HttpServer::on_connect` of the TCP listener: records the connection's local address.
pub fn record_tcp_local(conn: &dyn Any, ext: &mut Extensions) {
    if let Some(local) = conn
        .downcast_ref::<actix_web::rt::net::TcpStream>()
        .and_then(|s| s.local_addr().ok())
    {
        ext.insert(TcpLocal(local));
    }
}

/// Always JSON: the admin listeners serve no pages but the console's own.
fn refuse<F, B>(req: ServiceRequest, error: GatewayError) -> Answer<F, B> {
    answer(req, error.error_response())
}

fn pass<S, B>(req: ServiceRequest, srv: &S) -> Answer<S::Future, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    pass_on(srv.call(req))
}

/// Middleware of the Unix-socket admin listener.
pub fn unix<S, B>(req: ServiceRequest, srv: &S) -> Answer<S::Future, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    let uid = req.conn_data::<UnixPeer>().and_then(|p| p.0);
    let users_have_uids = req
        .app_data::<web::Data<Admin>>()
        .is_some_and(|admin| admin.isolation.uid_range().is_some());
    let me = nix::unistd::geteuid().as_raw();
    if socket_admits(uid, me, users_have_uids) {
        let who = format!(
            "operator uid {} on the admin socket",
            uid.unwrap_or_default()
        );
        req.extensions_mut().insert(super::actions::Caller(who));
        return pass(req, srv);
    }
    tracing::warn!(
        uid,
        path = req.path(),
        "admin request on the socket refused"
    );
    let why = if users_have_uids {
        "the admin socket serves root and the gateway's own user only"
    } else {
        "users' processes run as the gateway's uid (no uid per user), so the admin socket \
         cannot tell an operator from a user and serves no one: use the TCP listener and its token"
    };
    refuse(req, GatewayError::Forbidden(why.into()))
}

/// Whether a socket peer of `uid` is an operator: root or the gateway's own uid, and only
/// while users have uids of their own (otherwise they run as one of those two).
fn socket_admits(uid: Option<u32>, gateway_uid: u32, users_have_uids: bool) -> bool {
    users_have_uids && uid.is_some_and(|uid| uid == 0 || uid == gateway_uid)
}

/// Middleware of the TCP admin listener.
pub fn tcp<S, B>(req: ServiceRequest, srv: &S) -> Answer<S::Future, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    if req.method() == Method::GET
        && (req.path() == "/healthz" || super::console::is_public_asset(req.path()))
    {
        return pass(req, srv);
    }
    let Some(admin) = req.app_data::<web::Data<Admin>>().cloned() else {
        return refuse(
            req,
            GatewayError::Forbidden("the admin API is not configured".into()),
        );
    };
    let peer = req.peer_addr();
    let shown_peer = peer.map(|p| p.to_string()).unwrap_or_default();
    let local = req.conn_data::<TcpLocal>().map(|l| l.0);
    if let Some(why) = from_users(&admin, peer, local) {
        tracing::warn!(
            peer = shown_peer,
            path = req.path(),
            why,
            "admin request from a user's process refused"
        );
        return refuse(
            req,
            GatewayError::Forbidden("the admin API does not serve users' processes".into()),
        );
    }
    let presented = token::bearer(req.headers());
    let accepted = match (&admin.token, presented) {
        (Some(token), Some(presented)) => token.accepts(presented),
        _ => false,
    };
    if !accepted {
        tracing::warn!(
            peer = shown_peer,
            path = req.path(),
            presented = presented.is_some(),
            "admin request without the operator token refused"
        );
        return refuse(
            req,
            GatewayError::Unauthenticated {
                login: None,
                reason: "the admin API needs the operator token: send Authorization: Bearer <token> (the \
             gateway's start-up log says where the token is)".into(),
            },
        );
    }
    req.extensions_mut().insert(super::actions::Caller(format!(
        "operator token from {shown_peer}"
    )));
    pass(req, srv)
}

/// Why a TCP client must be a user's process, if it may be: with a uid per user, its socket
/// is owned by one of their uids, or it is on this host and its owner cannot be told.
fn from_users(
    admin: &Admin,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
) -> Option<String> {
    let (first, last) = admin.isolation.uid_range()?;
    let Some(peer) = peer else {
        return Some("no peer address".to_owned());
    };
    let here = on_this_host(peer, local);
    match crate::peer::socket_owner(peer, here) {
        Some(uid) if (first..=last).contains(&uid) => Some(format!("its socket is uid {uid}'s")),
        Some(_) => None,
        None if here => Some("its socket's owner cannot be told (closed already?)".to_owned()),
        None => None,
    }
}

/// Whether `peer` is an address of this host as far as the connection shows: loopback, or
/// the very address it connected to.
fn on_this_host(peer: SocketAddr, local: Option<SocketAddr>) -> bool {
    let ip = canonical(peer.ip());
    ip.is_loopback() || local.is_none_or(|l| canonical(l.ip()) == ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_admits_root_and_the_gateway_while_users_have_uids() {
        assert!(socket_admits(Some(0), 0, true));
        assert!(socket_admits(Some(1000), 1000, true));
        assert!(!socket_admits(Some(200_001), 0, true));
        assert!(!socket_admits(None, 0, true), "no credentials");
        assert!(!socket_admits(Some(0), 0, false), "users may be root too");
        assert!(
            !socket_admits(Some(1000), 1000, false),
            "users share the uid"
        );
    }

    #[test]
    fn loopback_and_the_connections_own_address_are_this_host() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let local = Some(at("10.0.0.5:9090"));
        assert!(on_this_host(at("127.0.0.1:5000"), local));
        assert!(on_this_host(at("[::ffff:127.0.0.1]:5000"), local));
        assert!(on_this_host(at("[::1]:5000"), local));
        assert!(on_this_host(at("10.0.0.5:5000"), local));
        assert!(on_this_host(at("[::ffff:10.0.0.5]:5000"), local));
        assert!(!on_this_host(at("10.0.0.6:5000"), local));
        assert!(
            on_this_host(at("10.0.0.6:5000"), None),
            "unknown: assume so"
        );
    }
}
