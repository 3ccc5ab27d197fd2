//! Everything the listeners serve, built from the command line in dependency order: the
//! data directory, the cluster (with pods), identity, isolation, homes, the instances'
//! backend, the actors, and the state each listener's handlers share.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use actix_web::web;
use anyhow::Context;
use chamberlain_actors::as_user::Runner;
use chamberlain_actors::instance::Backend;
use chamberlain_actors::isolation::Isolation;
use chamberlain_actors::llm::{GrantLookup, Grants, RelaySettings};
use chamberlain_actors::{
    Homes, InstanceConfig, InstanceMetrics, InstanceShared, LaunchConfig, Launcher, Local,
    LocalBackend, OrgFiles, Registry, RegistryConfig, UsersRoot,
};

use super::opencode;
use crate::admin::repos::Library;
use crate::admin::{Admin, AdminToken};
use crate::cli::ServeArgs;
use crate::connections::UserConnections;
use crate::data_dir::DataDir;
use crate::gateway::{Gateway, GatewayConfig, ShutdownSignal, WsConfig};
use crate::identity::access_tokens::AccessTokens;
use crate::identity::settings::AuthSettings;
use crate::identity::Authenticator;
use crate::kubernetes::Connected;
use crate::metrics::Metrics;
use crate::relay::usage::UsageBook;
use crate::relay::Relay;

/// What the listeners serve, and what start-up and shutdown need besides.
pub struct Assembled {
    /// The public listener's handlers.
    pub gateway: web::Data<Gateway>,
    /// The admin listener's handlers (and the public console's).
    pub admin: web::Data<Admin>,
    pub library: web::Data<Library>,
    /// The model relay's handlers.
    pub relay: web::Data<Relay>,
    pub usage: Arc<UsageBook>,
    pub isolation: Arc<Isolation>,
    pub data_dir: DataDir,
    pub program: PathBuf,
    /// The operator token of the TCP admin listener, when it has one.
    pub token: Option<Arc<AdminToken>>,
}

pub async fn assemble(args: &ServeArgs, relay_addr: SocketAddr) -> anyhow::Result<Assembled> {
    let instance_metrics = InstanceMetrics::new();
    let metrics = Arc::new(Metrics::new(&instance_metrics));
    let program = opencode::resolve(args.opencode_bin.as_deref())?;
    let data_dir = DataDir::create(&args.data_dir)?;
    // With pods, the cluster is reached first: it keeps what replicas share.
    let cluster = crate::kubernetes::connect(args).await?;
    let auth_settings = args.auth.settings();
    let auth = Authenticator::new(
        &auth_settings,
        metrics.auth.clone(),
        access_tokens(&auth_settings, args, &data_dir, cluster.as_ref()).await?,
    )?;
    let users = users(&data_dir);
    let helper = std::env::current_exe()
        .context("cannot find the gateway's own executable (it runs work in homes as the user)")?;
    let isolation = Arc::new(crate::isolation::setup(
        &args.isolation_settings(),
        &data_dir,
        &program,
        &helper,
    )?);
    let homes = Arc::new(Homes::new(
        users,
        Arc::clone(&isolation),
        Runner::new(helper),
        data_dir.org_auth(),
    ));
    let usage = usage_book(&data_dir, cluster.as_ref()).await?;
    let grants = Grants::default();
    let relay = RelaySettings {
        base_url: format!("http://{relay_addr}"),
        upstreams: args.llm_upstreams.iter().cloned().collect(),
        grants: Arc::clone(&grants),
    };
    let health_timeout = args.health_interval.min(Duration::from_secs(5));
    let org = OrgFiles {
        auth: data_dir.org_auth(),
        config: data_dir.org_config(),
    };
    // With pods, a replica relays for pods other replicas started too.
    let (backend, grant_lookup): (Rc<dyn Backend>, Option<Arc<dyn GrantLookup>>) = match cluster {
        None => {
            let local = Local {
                launcher: Launcher::new(LaunchConfig {
                    program: program.clone(),
                    extra_args: args.opencode_args.clone(),
                    env_allow: env_allow(args),
                    gc_ram: args.opencode_gc_ram.0,
                }),
                homes: Arc::clone(&homes),
                account: account_name(),
                isolation: Arc::clone(&isolation),
                org,
                relay,
            };
            (Rc::new(LocalBackend::new(local, health_timeout)), None)
        }
        Some(cluster) => {
            let backend =
                crate::kubernetes::backend(cluster, args, &program, org, relay, health_timeout)
                    .await?;
            let lookup: Arc<dyn GrantLookup> = Arc::new(backend.grants());
            (Rc::new(backend), Some(lookup))
        }
    };
    let registry = registry(args, backend, health_timeout, instance_metrics);
    let routes = registry.routes();
    let registry = registry.start();
    let repos = chamberlain_actors::repos::RepoLibrary::new(
        data_dir.repos(),
        Arc::clone(&homes),
        args.max_concurrent_clones as usize,
    )
    .start();

    let gateway = web::Data::new(Gateway {
        auth,
        registry,
        routes,
        homes,
        cfg: GatewayConfig {
            wait_timeout: args.wait_timeout,
            upstream_timeout: args.upstream_timeout,
            sse_keepalive: args.sse_keepalive,
            site: Arc::new(site(args)),
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
    let token = admin_token(args, &data_dir)?;
    let admin = web::Data::new(Admin {
        metrics: Arc::clone(&metrics),
        gateway: gateway.clone(),
        isolation: Arc::clone(&isolation),
        token: token.clone(),
        usage: Arc::clone(&usage),
        daily_tokens: args.llm_daily_tokens,
        opencode_version: opencode::version(&program),
    });
    let relay = web::Data::new(Relay {
        grants,
        lookup: grant_lookup,
        usage: Arc::clone(&usage),
        daily_tokens: args.llm_daily_tokens,
        metrics: metrics.llm.clone(),
        prices: args.llm_prices.iter().cloned().collect(),
        calls: Default::default(),
        timeout: crate::relay::ANSWER_TIMEOUT,
    });
    Ok(Assembled {
        gateway,
        admin,
        library: web::Data::new(Library(repos)),
        relay,
        usage,
        isolation,
        data_dir,
        program,
        token,
    })
}

/// Personal access tokens: in `state/`, or with pods shared through the cluster.
async fn access_tokens(
    auth: &AuthSettings,
    args: &ServeArgs,
    data_dir: &DataDir,
    cluster: Option<&Connected>,
) -> anyhow::Result<Arc<AccessTokens>> {
    let realm = auth.realm();
    let max_days = u64::from(args.auth.access_token_max_days);
    Ok(match cluster {
        Some(cluster) => crate::kubernetes::access_tokens(cluster, &realm, max_days).await?,
        None => Arc::new(
            AccessTokens::load(&data_dir.access_tokens(), &realm, max_days)
                .context("cannot load the personal access tokens")?,
        ),
    })
}

/// Model use per user per day: in `state/`, or with pods shared through the cluster.
async fn usage_book(
    data_dir: &DataDir,
    cluster: Option<&Connected>,
) -> anyhow::Result<Arc<UsageBook>> {
    let path = data_dir.llm_usage();
    Ok(match cluster {
        Some(cluster) => crate::kubernetes::usage_book(cluster, path).await?,
        None => Arc::new(
            UsageBook::open(path)
                .context("cannot read the model usage book; move it aside to start afresh")?,
        ),
    })
}

/// Users' homes, without the half-created ones an earlier crash left.
fn users(data_dir: &DataDir) -> UsersRoot {
    let users = UsersRoot::new(data_dir.users());
    match users.sweep_partial() {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            removed = n,
            "removed half-created user homes from an earlier crash"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot sweep half-created user homes"),
    }
    users
}

/// The variables a local OpenCode inherits: the defaults and `--pass-env`.
fn env_allow(args: &ServeArgs) -> Vec<String> {
    let mut allow: Vec<String> = chamberlain_actors::launcher::DEFAULT_ENV_ALLOW
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
        allow.push(name.clone());
    }
    allow
}

fn registry(
    args: &ServeArgs,
    backend: Rc<dyn Backend>,
    health_timeout: Duration,
    metrics: InstanceMetrics,
) -> Registry {
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
        metrics,
    };
    Registry::new(
        RegistryConfig {
            max_instances: args.max_instances as usize,
            max_concurrent_starts: args.max_concurrent_starts as usize,
            evict_min_idle: args.evict_min_idle,
            retire_after: args.idle_timeout.max(Duration::from_secs(3600)),
        },
        shared,
    )
}

/// The TCP admin listener's token: the operator's file, or one generated in `state/`
/// (removed when it is not the one in use).
fn admin_token(args: &ServeArgs, data_dir: &DataDir) -> anyhow::Result<Option<Arc<AdminToken>>> {
    let generated: &Path = &data_dir.admin_token();
    Ok(match (args.admin_listen.addr(), &args.admin_token_file) {
        (None, _) => {
            crate::admin::token::remove_generated(generated);
            None
        }
        (Some(_), Some(file)) => {
            crate::admin::token::remove_generated(generated);
            Some(Arc::new(AdminToken::read(file)?))
        }
        (Some(_), None) => Some(Arc::new(AdminToken::generate(generated)?)),
    })
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

fn account_name() -> String {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}
