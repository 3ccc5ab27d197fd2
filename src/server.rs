//! Putting the gateway together: data directory, actors, both listeners, and an orderly
//! shutdown on SIGTERM or SIGINT.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Actor;
use actix_web::dev::{ServerHandle, Service};
use actix_web::{web, App, HttpMessage, HttpServer};
use anyhow::{bail, Context};
use chamberlain_actors::as_user::Runner;
use chamberlain_actors::instance::Backend;
use chamberlain_actors::llm::{GrantLookup, Grants, RelaySettings};
use chamberlain_actors::{
    Homes, InstanceConfig, InstanceMetrics, InstanceShared, LaunchConfig, Launcher, Local,
    LocalBackend, OrgFiles, Registry, RegistryConfig, Shutdown, UsersRoot,
};
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::{self, Admin};
use crate::cli::ServeArgs;
use crate::connections::UserConnections;
use crate::gateway::WsConfig;
use crate::gateway::{Gateway, GatewayConfig, ShutdownSignal};
use crate::identity::{Authenticator, Identity};
use crate::metrics::{HttpMetrics, Metrics};
use crate::relay::usage::UsageBook;
use crate::relay::{Relay, RelayClient};
use crate::upstream::UpstreamClients;
use crate::{api, proxy};
use actix_web::middleware::from_fn;

/// How long in-flight HTTP connections get to finish once every instance has stopped.
const HTTP_DRAIN: u64 = 5;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    args.check().map_err(anyhow::Error::msg)?;
    // Every listener first: a taken port is reported before anything starts (and nothing
    // has to be torn down).
    let public_listener = crate::listeners::bind_tcp(args.listen, "--listen")?;
    let admin_listener = args
        .admin_listen
        .addr()
        .map(|addr| crate::listeners::bind_tcp(addr, "--admin-listen"))
        .transpose()?;
    let relay_listener = crate::listeners::bind_tcp(args.llm_listen, "--llm-listen")?;
    let relay_addr = relay_listener
        .local_addr()
        .context("cannot tell the model relay's address")?;
    let admin_socket = args
        .admin_socket
        .as_deref()
        .map(admin::socket::bind)
        .transpose()?;
    crate::isolation::harden_gateway();
    let instance_metrics = InstanceMetrics::new();
    let metrics = Arc::new(Metrics::new(&instance_metrics));
    let program = resolve_opencode(args.opencode_bin.as_deref())?;
    let data_dir = crate::data_dir::DataDir::create(&args.data_dir)?;
    // With pods, the cluster is reached first: it keeps what replicas share.
    let cluster = crate::kubernetes::connect(&args).await?;
    let realm = crate::identity::realm(&args.auth);
    let max_days = u64::from(args.auth.access_token_max_days);
    let access_tokens = match &cluster {
        Some(cluster) => crate::kubernetes::access_tokens(cluster, &realm, max_days).await?,
        None => Arc::new(
            crate::identity::access_tokens::AccessTokens::load(
                &data_dir.access_tokens(),
                &realm,
                max_days,
            )
            .context("cannot load the personal access tokens")?,
        ),
    };
    let auth = Authenticator::from_args(&args.auth, metrics.auth.clone(), access_tokens)?;
    let users = UsersRoot::new(data_dir.users());
    match users.sweep_partial() {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            removed = n,
            "removed half-created user homes from an earlier crash"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot sweep half-created user homes"),
    }

    let helper = std::env::current_exe()
        .context("cannot find the gateway's own executable (it runs work in homes as the user)")?;
    let isolation = Arc::new(crate::isolation::setup(
        &args, &data_dir, &program, &helper,
    )?);
    let mut env_allow: Vec<String> = chamberlain_actors::launcher::DEFAULT_ENV_ALLOW
        .iter()
        .map(|s| s.to_string())
        .collect();
    for name in &args.pass_env {
        if std::env::var_os(name).is_none() {
            tracing::warn!(
                name,
                "--pass-env names a variable the gateway does not have"
            );
        }
        env_allow.push(name.clone());
    }
    let homes = Arc::new(Homes::new(
        users.clone(),
        Arc::clone(&isolation),
        Runner::new(helper),
        data_dir.org_auth(),
    ));
    let health_timeout = args.health_interval.min(Duration::from_secs(5));
    let grants = Grants::default();
    let usage_path = data_dir.llm_usage();
    let usage = match &cluster {
        Some(cluster) => crate::kubernetes::usage_book(cluster, usage_path).await?,
        None => Arc::new(
            UsageBook::open(usage_path)
                .context("cannot read the model usage book; move it aside to start afresh")?,
        ),
    };
    let org = OrgFiles {
        auth: data_dir.org_auth(),
        config: data_dir.org_config(),
    };
    let relay = RelaySettings {
        base_url: format!("http://{relay_addr}"),
        upstreams: args.llm_upstreams.iter().cloned().collect(),
        grants: Arc::clone(&grants),
    };
    // With pods, a replica relays for pods other replicas started too.
    let mut grant_lookup: Option<Arc<dyn GrantLookup>> = None;
    let backend: std::rc::Rc<dyn Backend> = match cluster {
        None => std::rc::Rc::new(LocalBackend::new(
            Local {
                launcher: Launcher::new(LaunchConfig {
                    program: program.clone(),
                    extra_args: args.opencode_args.clone(),
                    env_allow,
                }),
                homes: Arc::clone(&homes),
                account: account_name(),
                isolation: Arc::clone(&isolation),
                org,
                relay,
            },
            health_timeout,
        )),
        Some(cluster) => {
            let backend =
                crate::kubernetes::backend(cluster, &args, &program, org, relay, health_timeout)
                    .await?;
            grant_lookup = Some(Arc::new(backend.grants()));
            std::rc::Rc::new(backend)
        }
    };
    let shared = InstanceShared {
        cfg: InstanceConfig {
            start_timeout: args.start_timeout,
            health_interval: args.health_interval,
            health_failures: args.health_failures,
            health_timeout,
            stop_grace: args.stop_grace,
            idle_timeout: args.idle_timeout,
            disk_quota: args.disk_quota.map(|q| q as u64),
            disk_check_interval: args.disk_check_interval,
            busy_timeout: args.busy_timeout,
            ..InstanceConfig::default()
        },
        backend,
        start_slots: Arc::new(tokio::sync::Semaphore::new(
            args.max_concurrent_starts as usize,
        )),
        metrics: instance_metrics,
    };
    let registry = Registry::new(
        RegistryConfig {
            max_instances: args.max_instances as usize,
            max_concurrent_starts: args.max_concurrent_starts as usize,
            evict_min_idle: args.evict_min_idle,
            retire_after: args.idle_timeout.max(Duration::from_secs(3600)),
        },
        shared,
    );
    let routes = registry.routes();
    let registry = registry.start();
    let repos = chamberlain_actors::repos::RepoLibrary::new(
        data_dir.repos(),
        Arc::clone(&homes),
        args.max_concurrent_clones as usize,
    )
    .start();

    let site = Arc::new(site(&args));
    let gateway = web::Data::new(Gateway {
        auth,
        registry: registry.clone(),
        routes,
        homes,
        cfg: GatewayConfig {
            wait_timeout: args.wait_timeout,
            upstream_timeout: args.upstream_timeout,
            sse_keepalive: args.sse_keepalive,
            site: Arc::clone(&site),
            ws: WsConfig {
                max_frame: args.ws_max_frame,
                max_buffer: args.ws_max_buffer,
                ping_interval: args.ws_ping_interval,
                client_timeout: args.ws_client_timeout,
                output_limit: args.busy_timeout,
            },
            shared_auth: data_dir.org_auth(),
            llm_usage: Arc::clone(&usage),
            llm_daily_tokens: args.llm_daily_tokens,
        },
        metrics: metrics.http.clone(),
        ws_metrics: metrics.ws.clone(),
        repos: repos.clone(),
        connections: UserConnections::new(args.max_user_connections),
        shutdown: ShutdownSignal::default(),
    });

    let token = match (args.admin_listen.addr(), &args.admin_token_file) {
        (None, _) => {
            admin::token::remove_generated(&data_dir.admin_token());
            None
        }
        (Some(_), Some(file)) => {
            admin::token::remove_generated(&data_dir.admin_token());
            Some(Arc::new(admin::AdminToken::read(file)?))
        }
        (Some(_), None) => Some(Arc::new(admin::AdminToken::generate(
            &data_dir.admin_token(),
        )?)),
    };
    let admin_state = web::Data::new(Admin {
        metrics: Arc::clone(&metrics),
        gateway: gateway.clone(),
        isolation: Arc::clone(&isolation),
        token: token.clone(),
        usage: Arc::clone(&usage),
        daily_tokens: args.llm_daily_tokens,
        opencode_version: opencode_version(&program),
    });
    let admin_library = web::Data::new(crate::repos::Library(repos.clone()));

    let public = {
        let gateway = gateway.clone();
        let (admin_state, admin_library) = (admin_state.clone(), admin_library.clone());
        let site = Arc::clone(&site);
        let upstream_timeout = args.upstream_timeout;
        let workers = args.workers.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |n| n as usize,
        );
        HttpServer::new(move || {
            let http_metrics = gateway.metrics.clone();
            let site = Arc::clone(&site);
            App::new()
                .app_data(gateway.clone())
                .app_data(admin_state.clone())
                .app_data(admin_library.clone())
                .app_data(web::Data::new(UpstreamClients::new(upstream_timeout)))
                .wrap(from_fn(crate::errors::pages_for_browsers))
                .wrap_fn(move |req, srv| crate::site::check_host(&site, req, srv))
                .wrap_fn(crate::limits::limit_headers)
                .wrap_fn(move |req, srv| access_log(req, srv, http_metrics.clone()))
                .service(web::scope("/-").configure(api::configure))
                .default_service(web::to(proxy::handle))
        })
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(HTTP_DRAIN)
        .listen(public_listener)
        .with_context(|| format!("cannot serve on {}", args.listen))?
    };
    let public_addrs = public.addrs();
    let public = public.run();

    let mut admin_servers = Vec::new();
    let mut admin_handles_extra: Vec<ServerHandle> = Vec::new();
    let mut admin_addrs = Vec::new();
    if let Some(listener) = admin_listener {
        let (state, library) = (admin_state.clone(), admin_library.clone());
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
        admin_addrs = server.addrs();
        admin_servers.push(server.run());
    }
    if let (Some(path), Some(listener)) = (&args.admin_socket, admin_socket) {
        if isolation.uid_range().is_none() {
            tracing::warn!(
                socket = %path.display(),
                "without a uid per user the admin socket cannot tell an operator from a user \
                 and refuses every request; use the TCP admin listener and its token"
            );
        }
        let (state, library) = (admin_state.clone(), admin_library.clone());
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
        admin_servers.push(server.run());
    }

    let relay = {
        let state = web::Data::new(Relay {
            grants,
            lookup: grant_lookup,
            usage: Arc::clone(&usage),
            daily_tokens: args.llm_daily_tokens,
            metrics: metrics.llm.clone(),
            prices: args.llm_prices.iter().cloned().collect(),
            calls: Default::default(),
            timeout: crate::relay::ANSWER_TIMEOUT,
        });
        let timeout = crate::relay::ANSWER_TIMEOUT;
        HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::Data::new(RelayClient::new(timeout)))
                .configure(crate::relay::configure)
        })
        .workers(2)
        .max_connections(RELAY_CONNECTIONS)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(relay_listener)
        .context("cannot serve the model relay")?
        .run()
    };
    admin_handles_extra.push(relay.handle());
    let relay_task = actix_web::rt::spawn(relay);
    let flusher = actix_web::rt::spawn(keep_writing(Arc::clone(&usage)));

    let public_handle = public.handle();
    let mut admin_handles: Vec<ServerHandle> = admin_servers.iter().map(|s| s.handle()).collect();
    let has_admin = !admin_handles.is_empty();
    admin_handles.append(&mut admin_handles_extra);
    let public_task = actix_web::rt::spawn(public);
    let admin_task = actix_web::rt::spawn(async move {
        let results = futures_util::future::join_all(admin_servers).await;
        results.into_iter().collect::<std::io::Result<Vec<()>>>()
    });

    tracing::info!(
        public = %format_addrs(&public_addrs),
        admin = %if admin_addrs.is_empty() { "none".to_owned() } else { format_addrs(&admin_addrs) },
        admin_socket = %args.admin_socket.as_deref().map_or_else(|| "none".to_owned(), |p| p.display().to_string()),
        data_dir = %data_dir.path().display(),
        opencode = %program.display(),
        auth = args.auth.mode.as_str(),
        max_instances = args.max_instances,
        "chamberlain listening"
    );
    if let Some(token) = &token {
        tracing::info!(
            path = %token.path.display(),
            "the TCP admin listener needs `Authorization: Bearer <token>`; the token is in this file"
        );
    }

    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let signal_name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        result = public_task => bail!("public listener stopped unexpectedly: {result:?}"),
        result = relay_task => bail!("the model relay stopped unexpectedly: {result:?}"),
        result = admin_task, if has_admin => {
            bail!("admin listener stopped unexpectedly: {result:?}")
        }
    };
    shutdown(
        signal_name,
        &gateway,
        &registry,
        public_handle,
        admin_handles,
        args.stop_grace,
    )
    .await;
    if let Some(path) = &args.admin_socket {
        admin::socket::remove(path);
    }
    flusher.abort();
    write_usage(usage).await;
    Ok(())
}

/// Connections the model relay holds open at once, per worker (calls beyond wait).
const RELAY_CONNECTIONS: usize = 1024;

/// How often the usage book is written when it changed.
const USAGE_WRITE_INTERVAL: Duration = Duration::from_secs(5);

async fn keep_writing(usage: Arc<UsageBook>) {
    let mut tick = tokio::time::interval(USAGE_WRITE_INTERVAL);
    loop {
        tick.tick().await;
        write_usage(Arc::clone(&usage)).await;
    }
}

async fn write_usage(usage: Arc<UsageBook>) {
    match tokio::task::spawn_blocking(move || usage.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot write the model usage book"),
        Err(e) => tracing::error!(error = %e, "writing the model usage book was interrupted"),
    }
}

async fn shutdown(
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

/// Logs each request once it is answered and counts it by status class.
fn access_log<S, B>(
    req: actix_web::dev::ServiceRequest,
    srv: &S,
    metrics: HttpMetrics,
) -> impl std::future::Future<Output = Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>>
where
    S: Service<
        actix_web::dev::ServiceRequest,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
{
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.path().to_owned();
    let response = srv.call(req);
    async move {
        let response = response.await?;
        let status = response.status().as_u16();
        metrics.request(status);
        let user = response
            .request()
            .extensions()
            .get::<Identity>()
            .map(|i| i.user_id.clone())
            .unwrap_or_default();
        // To the microsecond: more digits are noise.
        let elapsed_ms = started.elapsed().as_micros() as f64 / 1000.0;
        if status >= 400 {
            tracing::info!(%method, %path, status, user, elapsed_ms, "request");
        } else {
            tracing::debug!(%method, %path, status, user, elapsed_ms, "request");
        }
        Ok(response)
    }
}

/// The gateway's hosts and origins, with a warning where the Host check is off.
fn site(args: &ServeArgs) -> crate::site::Site {
    let site = crate::site::Site::new(
        args.public_urls.clone(),
        args.listen,
        args.auth.mode,
        args.allowed_origins.clone(),
        args.trusted_proxies(),
    );
    match site.rule() {
        crate::site::HostRule::Listed => tracing::info!(
            public_urls = %site.origins().join(","),
            trusted_proxies = %site.proxies(),
            "serving these hosts only"
        ),
        crate::site::HostRule::Loopback => tracing::info!(
            trusted_proxies = %site.proxies(),
            "serving loopback host names only (localhost, 127.0.0.1, [::1]); set --public-url \
             to be reached by another name"
        ),
        crate::site::HostRule::Any => tracing::warn!(
            trusted_proxies = %site.proxies(),
            "no --public-url: requests for any host name are served (DNS-rebinding protection \
             is off); set --public-url to the address people use"
        ),
    }
    site
}

fn format_addrs(addrs: &[std::net::SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("http://{a}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `--opencode-bin`, or `opencode` on PATH, or `./node_modules/.bin/opencode`; always made
/// absolute because children run with their workspace as the working directory.
fn resolve_opencode(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidate = match configured {
        Some(path) if path.components().count() > 1 => Some(path.to_owned()),
        Some(name) => find_on_path(name),
        None => find_on_path(Path::new("opencode"))
            .or_else(|| Some(PathBuf::from("node_modules/.bin/opencode")).filter(|p| p.exists())),
    };
    let Some(path) = candidate else {
        bail!(
            "OpenCode not found: install it with `npm install` in the repository (see README) or pass \
             --opencode-bin"
        );
    };
    let absolute = std::fs::canonicalize(&path)
        .with_context(|| format!("OpenCode binary {} is not usable", path.display()))?;
    let meta = std::fs::metadata(&absolute)
        .with_context(|| format!("OpenCode binary {} is not usable", absolute.display()))?;
    use std::os::unix::fs::PermissionsExt;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        bail!(
            "OpenCode binary {} is not an executable file",
            absolute.display()
        );
    }
    Ok(absolute)
}

/// The version of the `opencode-ai` package the binary belongs to, from its
/// `package.json` (the launcher lives in `<package>/bin/`); `None` for another layout.
fn opencode_version(program: &Path) -> Option<String> {
    for dir in program.ancestors().skip(1).take(3) {
        let Ok(text) = std::fs::read_to_string(dir.join("package.json")) else {
            continue;
        };
        let package: serde_json::Value = serde_json::from_str(&text).ok()?;
        if package["name"].as_str()?.starts_with("opencode") {
            return package["version"].as_str().map(str::to_owned);
        }
    }
    None
}

fn find_on_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn account_name() -> String {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}
