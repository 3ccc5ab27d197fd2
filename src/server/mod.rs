//! Putting the gateway together: listeners bound first (`servers.rs`), everything they
//! serve built from the command line (`assemble.rs`), the servers run until SIGTERM or
//! SIGINT, then an orderly shutdown (`stop.rs`).

mod access_log;
mod assemble;
mod opencode;
mod servers;
mod stop;

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use anyhow::{bail, Context};

use crate::admin;
use crate::cli::ServeArgs;
use assemble::assemble;
pub use servers::default_workers;
use servers::{format_addrs, Bound};

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    args.check().map_err(anyhow::Error::msg)?;
    // Every listener first: a taken port is reported before anything starts (and nothing
    // has to be torn down).
    let bound = Bound::bind(&args)?;
    let relay_addr = bound
        .relay
        .local_addr()
        .context("cannot tell the model relay's address")?;
    crate::isolation::harden_gateway();
    let parts = assemble(&args, relay_addr).await?;

    let public_addr = bound
        .public
        .local_addr()
        .context("cannot tell the public address")?;
    let admin_addr = (bound.admin.as_ref())
        .map(|l| l.local_addr())
        .transpose()
        .context("cannot tell the admin address")?;
    let public = servers::public(&args, &parts, bound.public)?;
    let mut admin_servers = Vec::new();
    if let Some(listener) = bound.admin {
        admin_servers.push(servers::admin_tcp(&parts, listener)?);
    }
    if let (Some(path), Some(listener)) = (&args.admin_socket, bound.admin_socket) {
        admin_servers.push(servers::admin_unix(&parts, path, listener)?);
    }
    let relay = servers::relay(&parts, bound.relay)?;

    let public_handle = public.handle();
    let mut other_handles: Vec<ServerHandle> = admin_servers.iter().map(|s| s.handle()).collect();
    let has_admin = !admin_servers.is_empty();
    other_handles.push(relay.handle());
    let public_task = actix_web::rt::spawn(public);
    let relay_task = actix_web::rt::spawn(relay);
    let admin_task = actix_web::rt::spawn(async move {
        let results = futures_util::future::join_all(admin_servers).await;
        results.into_iter().collect::<std::io::Result<Vec<()>>>()
    });
    let flusher = actix_web::rt::spawn(stop::keep_writing(Arc::clone(&parts.usage)));
    announce(&args, &parts, public_addr, admin_addr);

    let signal_name = tokio::select! {
        signal = stop::signalled() => signal?,
        result = public_task => bail!("public listener stopped unexpectedly: {result:?}"),
        result = relay_task => bail!("the model relay stopped unexpectedly: {result:?}"),
        result = admin_task, if has_admin => {
            bail!("admin listener stopped unexpectedly: {result:?}")
        }
    };
    stop::shutdown(
        signal_name,
        &parts.gateway,
        &parts.gateway.registry,
        public_handle,
        other_handles,
        args.stop_grace,
    )
    .await;
    if let Some(path) = &args.admin_socket {
        admin::socket::remove(path);
    }
    flusher.abort();
    stop::write_usage(Arc::clone(&parts.usage)).await;
    Ok(())
}

/// The start-up line operators and tests wait for, and where the admin token is.
fn announce(
    args: &ServeArgs,
    parts: &assemble::Assembled,
    public: SocketAddr,
    admin: Option<SocketAddr>,
) {
    tracing::info!(
        public = %format_addrs(&[public]),
        admin = %admin.map_or_else(|| "none".to_owned(), |a| format_addrs(&[a])),
        admin_socket = %args.admin_socket.as_deref().map_or_else(|| "none".to_owned(), |p| p.display().to_string()),
        data_dir = %parts.data_dir.path().display(),
        opencode = %parts.program.display(),
        auth = args.auth.mode.as_str(),
        max_instances = args.max_instances,
        "chamberlain listening"
    );
    if let Some(token) = &parts.token {
        tracing::info!(
            path = %token.path.display(),
            "the TCP admin listener needs `Authorization: Bearer <token>`; the token is in this file"
        );
    }
}
