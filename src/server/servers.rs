//! The gateway's HTTP servers, one per listener: public, admin over TCP, admin on the Unix
//! socket, and the model relay. Each is built on a listener bound earlier, so a taken port
//! was reported before anything started.

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::Path;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context;

use super::access_log::access_log;
use super::assemble::Assembled;
use crate::admin;
use crate::cli::ServeArgs;
use crate::relay::RelayClient;
use crate::upstream::UpstreamClients;

/// How long in-flight HTTP connections get to finish once every instance has stopped.
const HTTP_DRAIN: u64 = 5;

/// Connections the model relay holds open at once, per worker (calls beyond wait).
const RELAY_CONNECTIONS: usize = 1024;

/// The listeners, bound before anything else starts.
pub struct Bound {
    pub public: TcpListener,
    pub admin: Option<TcpListener>,
    pub admin_socket: Option<UnixListener>,
    pub relay: TcpListener,
}

impl Bound {
    pub fn bind(args: &ServeArgs) -> anyhow::Result<Bound> {
        Ok(Bound {
            public: crate::listeners::bind_tcp(args.listen, "--listen")?,
            admin: args
                .admin_listen
                .addr()
                .map(|addr| crate::listeners::bind_tcp(addr, "--admin-listen"))
                .transpose()?,
            relay: crate::listeners::bind_tcp(args.llm_listen, "--llm-listen")?,
            admin_socket: args
                .admin_socket
                .as_deref()
                .map(admin::socket::bind)
                .transpose()?,
        })
    }
}

/// The public listener: the gateway's own `/-/` endpoints, and everything else proxied to
/// the caller's OpenCode. Middleware, outermost first: access log, header limits, the Host
/// rule, pages for browsers.
pub fn public(
    args: &ServeArgs,
    parts: &Assembled,
    listener: TcpListener,
) -> anyhow::Result<Server> {
    let gateway = parts.gateway.clone();
    let (admin_state, library) = (parts.admin.clone(), parts.library.clone());
    let upstream_timeout = args.upstream_timeout;
    let workers = args.workers.map_or_else(default_workers, |n| n as usize);
    let server = HttpServer::new(move || {
        let http_metrics = gateway.metrics.clone();
        let site = std::sync::Arc::clone(&gateway.cfg.site);
        App::new()
            .app_data(gateway.clone())
            .app_data(admin_state.clone())
            .app_data(library.clone())
            .app_data(web::Data::new(UpstreamClients::new(upstream_timeout)))
            .wrap(from_fn(crate::errors::pages_for_browsers))
            .wrap_fn(move |req, srv| crate::site::check_host(&site, req, srv))
            .wrap_fn(crate::limits::limit_headers)
            .wrap_fn(move |req, srv| access_log(req, srv, http_metrics.clone()))
            .service(web::scope("/-").configure(crate::api::configure))
            .default_service(web::to(crate::proxy::handle))
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(HTTP_DRAIN)
    .listen(listener)
    .with_context(|| format!("cannot serve on {}", args.listen))?;
    Ok(server.run())
}

/// The public listener's worker threads without `--workers`: half the CPUs available to the
/// process (cgroup quotas included), at least one. The gateway shares the machine with its
/// users' OpenCodes; on 2 cores one worker proxied as many requests as two, with a third of
/// the p99 (a second busy thread waits a scheduler tick whenever the cores are taken; see
/// bench/RESULTS.md). One worker proxies tens of thousands of requests a second.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// The admin API over TCP (the operator token; never users' processes).
pub fn admin_tcp(parts: &Assembled, listener: TcpListener) -> anyhow::Result<Server> {
    let (state, library) = (parts.admin.clone(), parts.library.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(library.clone())
            .wrap_fn(admin::guard::tcp)
            .configure(admin::configure)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .on_connect(admin::guard::record_tcp_local)
    .listen(listener)
    .context("cannot serve the admin API")?;
    Ok(server.run())
}

/// The admin API on the Unix socket (kernel credentials: root or the gateway's uid).
pub fn admin_unix(
    parts: &Assembled,
    path: &Path,
    listener: UnixListener,
) -> anyhow::Result<Server> {
    if parts.isolation.uid_range().is_none() {
        tracing::warn!(
            socket = %path.display(),
            "without a uid per user the admin socket cannot tell an operator from a user \
             and refuses every request; use the TCP admin listener and its token"
        );
    }
    let (state, library) = (parts.admin.clone(), parts.library.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(library.clone())
            .wrap_fn(admin::guard::unix)
            .configure(admin::configure)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .on_connect(admin::socket::record_peer)
    .listen_uds(listener)
    .with_context(|| format!("cannot serve the admin API on {}", path.display()))?;
    Ok(server.run())
}

/// The model relay (loopback, or the pods' network with `--backend kubernetes`).
pub fn relay(parts: &Assembled, listener: TcpListener) -> anyhow::Result<Server> {
    let state = parts.relay.clone();
    let timeout = crate::relay::ANSWER_TIMEOUT;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::Data::new(RelayClient::new(timeout)))
            .configure(crate::relay::configure)
    })
    .workers(2)
    .max_connections(RELAY_CONNECTIONS)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)
    .context("cannot serve the model relay")?;
    Ok(server.run())
}

pub fn format_addrs(addrs: &[std::net::SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("http://{a}"))
        .collect::<Vec<_>>()
        .join(",")
}
