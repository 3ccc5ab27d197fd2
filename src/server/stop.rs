//! Ending in order on SIGTERM or SIGINT (no new starts, every instance stopped, then the
//! listeners), and the usage book written meanwhile and at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use anyhow::Context;
use chamberlain_actors::{Registry, Shutdown};
use tokio::signal::unix::{signal, SignalKind};

use crate::gateway::Gateway;
use crate::relay::usage::UsageBook;

/// Which signal asked the gateway to stop.
pub async fn signalled() -> anyhow::Result<&'static str> {
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// How often the usage book is written when it changed.
const USAGE_WRITE_INTERVAL: Duration = Duration::from_secs(5);

pub async fn keep_writing(usage: Arc<UsageBook>) {
    let mut tick = tokio::time::interval(USAGE_WRITE_INTERVAL);
    loop {
        tick.tick().await;
        write_usage(Arc::clone(&usage)).await;
    }
}

pub async fn write_usage(usage: Arc<UsageBook>) {
    match tokio::task::spawn_blocking(move || usage.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot write the model usage book"),
        Err(e) => tracing::error!(error = %e, "writing the model usage book was interrupted"),
    }
}

pub async fn shutdown(
    signal_name: &str,
    gateway: &Gateway,
    registry: &actix::Addr<Registry>,
    public: ServerHandle,
    admin: Vec<ServerHandle>,
    stop_grace: Duration,
) {
    let started = Instant::now();
    tracing::info!(
        signal = signal_name,
        "shutting down: no new starts, stopping every instance"
    );
    gateway.begin_shutdown();
    public.pause().await;
    // Each instance gets SIGTERM, then SIGKILL after the grace; allow a margin on top.
    let deadline = stop_grace + Duration::from_secs(5);
    if tokio::time::timeout(deadline, registry.send(Shutdown))
        .await
        .is_err()
    {
        tracing::error!("instances did not all stop within {}s", deadline.as_secs());
    }
    public.stop(true).await;
    for handle in admin {
        handle.stop(true).await;
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shutdown complete"
    );
}
