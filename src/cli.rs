//! The command line: `chamberlain serve [flags]`, and `chamberlain prepare-data` for a
//! container's entrypoint. Every flag can also be set with an environment variable
//! `CHAMBERLAIN_<FLAG>`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chamberlain_actors::isolation::Limits;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::identity::settings::{
    AlbSettings, AuthSettings, JwtKeySource, JwtSettings, PolicySettings, Way,
};
pub use crate::identity::AuthMode;
pub use crate::isolation::{IsolationArg, IsolationSettings, SystemAccounts};
pub use crate::logging::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "chamberlain",
    version,
    about = "Multi-user gateway for OpenCode: one OpenCode server per signed-in user behind one proxy"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(Box<ServeArgs>),
    /// Lay out the data directory and, as root, give it the owners and modes a uid per user
    /// needs: what `serve` applies at every start, done beforehand (a container's entrypoint
    /// runs it, so keys and repositories can be put in place before the first start).
    PrepareData(PrepareDataArgs),
}

/// `--data-dir` when none is given.
const DEFAULT_DATA_DIR: &str = "./data";
/// `--uid-range` when none is given.
const DEFAULT_UID_RANGE: &str = "200000-265535";

/// `prepare-data`: the flags of `serve` it shares, under the same names and variables.
#[derive(Debug, Clone, Args)]
pub struct PrepareDataArgs {
    /// Data directory: users/ (homes), shared/ (org keys, repos), state/.
    #[arg(long, env = "CHAMBERLAIN_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// Unix ids for users: the first is the group that reads the repository library.
    #[arg(long, env = "CHAMBERLAIN_UID_RANGE", default_value = DEFAULT_UID_RANGE, value_parser = id_range)]
    pub uid_range: (u32, u32),
}

/// How users are identified, and the settings of each way.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// How users are identified.
    #[arg(help_heading = "Identity and sign-in", long = "auth", env = "CHAMBERLAIN_AUTH", value_enum, default_value_t = AuthMode::Dev)]
    pub mode: AuthMode,

    /// Allow --auth dev on a non-loopback address (anyone who can reach it can be anyone).
    #[arg(
        help_heading = "Identity and sign-in",
        long,
        env = "CHAMBERLAIN_ALLOW_INSECURE_DEV"
    )]
    pub allow_insecure_dev: bool,

    /// --auth alb: the load balancer's ARN; tokens signed by any other are refused.
    #[arg(
        help_heading = "Identity and sign-in",
        long,
        env = "CHAMBERLAIN_ALB_ARN",
        required_if_eq("mode", "alb")
    )]
    pub alb_arn: Option<String>,

    /// --auth alb: the load balancer's region, e.g. eu-west-1.
    #[arg(
        help_heading = "Identity and sign-in",
        long,
        env = "CHAMBERLAIN_ALB_REGION",
        required_if_eq("mode", "alb")
    )]
    pub alb_region: Option<String>,

    /// --auth alb: where the ALB's public keys are; `{region}` and `{kid}` are filled in.
    #[arg(
        help_heading = "Identity and sign-in",
        long,
        env = "CHAMBERLAIN_ALB_KEY_URL",
        default_value = "https://public-keys.auth.elb.{region}.amazonaws.com/{kid}"
    )]
    pub alb_key_url: String,

    /// --auth jwt: JSON Web Key Set URL, e.g.
    /// https://cognito-idp.REGION.amazonaws.com/POOL_ID/.well-known/jwks.json
    #[arg(
        help_heading = "Identity and sign-in",
        long,
        env = "CHAMBERLAIN_JWKS_URL",
        conflicts_with = "jwt_public_key"
    )]
    pub jwks_url: Option<String>,

    /// --auth jwt: a PEM public key file (EC P-256/P-384, RSA or Ed25519) instead of a JWKS.
    #[arg(
        help_heading = "Identity and sign-in",
        long,
        env = "CHAMBERLAIN_JWT_PUBLIC_KEY"
    )]
    pub jwt_public_key: Option<PathBuf>,

    /// --auth jwt with --jwt-public-key: the algorithm, when the key's family has several
    /// (e.g. PS256 for an RSA key; default RS256 for RSA, the curve's ES algorithm for EC).
    #[arg(
        help_heading = "Identity and sign-in",
        long,
        env = "CHAMBERLAIN_JWT_ALGORITHM",
        requires = "jwt_public_key"
    )]
    pub jwt_algorithm: Option<String>,

    /// --auth jwt: required `iss` claim.
    #[arg(
        help_heading = "Identity and sign-in",
        long,
        env = "CHAMBERLAIN_JWT_ISSUER"
    )]
    pub jwt_issuer: Option<String>,

    /// --auth jwt: accepted `aud` values (repeatable; comma-separated in the variable).
    #[arg(
        help_heading = "Identity and sign-in",
        long = "jwt-audience",
        env = "CHAMBERLAIN_JWT_AUDIENCE",
        value_delimiter = ','
    )]
    pub jwt_audiences: Vec<String>,

    /// --auth jwt: accepted app client ids: a token passes if its `client_id` (Cognito access
    /// tokens) or `aud` (ID tokens) is one of them (repeatable; comma-separated).
    #[arg(
        help_heading = "Identity and sign-in",
        long = "jwt-client-id",
        env = "CHAMBERLAIN_JWT_CLIENT_ID",
        value_delimiter = ','
    )]
    pub jwt_client_ids: Vec<String>,

    /// --auth jwt: a cookie that may carry the token when there is no Authorization header.
    #[arg(
        help_heading = "Identity and sign-in",
        long,
        env = "CHAMBERLAIN_JWT_COOKIE"
    )]
    pub jwt_cookie: Option<String>,

    /// --auth jwt: least time between JWKS refreshes caused by unknown key ids.
    #[arg(help_heading = "Identity and sign-in", long, env = "CHAMBERLAIN_JWKS_REFRESH_COOLDOWN", default_value = "30s", value_parser = duration)]
    pub jwks_refresh_cooldown: Duration,

    /// --auth jwt: refetch the JWKS when it is older than this (revoked keys drop out).
    #[arg(help_heading = "Identity and sign-in", long, env = "CHAMBERLAIN_JWKS_MAX_AGE", default_value = "1h", value_parser = duration)]
    pub jwks_max_age: Duration,

    /// Timeout for fetching a signing key or the JWKS.
    #[arg(help_heading = "Identity and sign-in", long, env = "CHAMBERLAIN_AUTH_KEY_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub auth_key_timeout: Duration,

    /// --auth alb: how long a key id the key server did not know is not asked for again.
    #[arg(help_heading = "Identity and sign-in", long, env = "CHAMBERLAIN_AUTH_NEGATIVE_CACHE", default_value = "5m", value_parser = duration)]
    pub auth_negative_cache: Duration,

    /// Clock skew allowed when checking a token's `exp` and `nbf`.
    #[arg(help_heading = "Identity and sign-in", long, env = "CHAMBERLAIN_AUTH_CLOCK_SKEW", default_value = "30s", value_parser = duration)]
    pub auth_clock_skew: Duration,

    /// Most verified tokens remembered (each is checked once, then served from memory
    /// until it expires).
    #[arg(help_heading = "Identity and sign-in", long, env = "CHAMBERLAIN_AUTH_CACHE_ENTRIES", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_cache_entries: u32,

    /// Who may sign in: user ids (the token's `sub`, or the dev name) or email addresses
    /// (repeatable; comma-separated in the variable). With neither this nor
    /// --allowed-groups, anyone the identity provider accepts may. Admins always may.
    #[arg(
        help_heading = "Identity and sign-in",
        long = "allowed-users",
        env = "CHAMBERLAIN_ALLOWED_USERS",
        value_delimiter = ','
    )]
    pub allowed_users: Vec<String>,

    /// Who may sign in: members of these groups (the token's `cognito:groups` or `groups`
    /// claim; repeatable; comma-separated in the variable).
    #[arg(
        help_heading = "Identity and sign-in",
        long = "allowed-groups",
        env = "CHAMBERLAIN_ALLOWED_GROUPS",
        value_delimiter = ','
    )]
    pub allowed_groups: Vec<String>,

    /// Administrators (the console at /-/admin): user ids or email addresses (repeatable;
    /// comma-separated in the variable).
    #[arg(
        help_heading = "Identity and sign-in",
        long = "admin-users",
        env = "CHAMBERLAIN_ADMIN_USERS",
        value_delimiter = ','
    )]
    pub admin_users: Vec<String>,

    /// Administrators: members of these groups (repeatable; comma-separated in the variable).
    #[arg(
        help_heading = "Identity and sign-in",
        long = "admin-groups",
        env = "CHAMBERLAIN_ADMIN_GROUPS",
        value_delimiter = ','
    )]
    pub admin_groups: Vec<String>,

    /// Longest life of a personal access token, in days (a token keeps the groups its owner
    /// had when making it until it expires or is revoked).
    #[arg(help_heading = "Identity and sign-in", long, env = "CHAMBERLAIN_ACCESS_TOKEN_MAX_DAYS", default_value_t = 90,
          value_parser = clap::value_parser!(u16).range(1..=365))]
    pub access_token_max_days: u16,

    /// Where `/-/logout` sends the browser after clearing the session (e.g. the Cognito
    /// logout endpoint with client_id and logout_uri).
    #[arg(
        help_heading = "Identity and sign-in",
        long,
        env = "CHAMBERLAIN_LOGOUT_URL"
    )]
    pub logout_url: Option<String>,
}

impl AuthArgs {
    /// The identity module's settings; what clap already requires is taken as given.
    pub fn settings(&self) -> AuthSettings {
        let way = match self.mode {
            AuthMode::Dev => Way::Dev,
            AuthMode::Alb => Way::Alb(AlbSettings {
                arn: self.alb_arn.clone().unwrap_or_default(),
                region: self.alb_region.clone().unwrap_or_default(),
                key_url: self.alb_key_url.clone(),
                negative_cache: self.auth_negative_cache,
            }),
            AuthMode::Jwt => Way::Jwt(JwtSettings {
                keys: match (&self.jwks_url, &self.jwt_public_key) {
                    (Some(url), _) => JwtKeySource::Jwks {
                        url: url.clone(),
                        refresh_cooldown: self.jwks_refresh_cooldown,
                        max_age: self.jwks_max_age,
                    },
                    (None, Some(path)) => JwtKeySource::Pem {
                        path: path.clone(),
                        algorithm: self.jwt_algorithm.clone(),
                    },
                    (None, None) => JwtKeySource::Missing,
                },
                issuer: self.jwt_issuer.clone(),
                audiences: self.jwt_audiences.clone(),
                client_ids: self.jwt_client_ids.clone(),
                cookie: self.jwt_cookie.clone(),
            }),
        };
        AuthSettings {
            way,
            clock_skew: self.auth_clock_skew,
            key_timeout: self.auth_key_timeout,
            cache_entries: self.auth_cache_entries as usize,
            policy: PolicySettings {
                allowed_users: self.allowed_users.clone(),
                allowed_groups: self.allowed_groups.clone(),
                admin_users: self.admin_users.clone(),
                admin_groups: self.admin_groups.clone(),
            },
            logout_url: self.logout_url.clone(),
        }
    }
}

/// Where users' OpenCode servers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Child processes of the gateway, on this machine.
    Local,
    /// Pods in a Kubernetes namespace, one per user, each with a volume for the home.
    Kubernetes,
}

#[derive(Debug, Clone, Args)]
pub struct KubernetesArgs {
    /// Where users' OpenCode servers run: child processes here, or pods (`kubernetes`: the
    /// gateway uses its service account in a cluster, else KUBECONFIG's current context).
    #[arg(help_heading = "Kubernetes backend", long, env = "CHAMBERLAIN_BACKEND", value_enum, default_value_t = BackendKind::Local)]
    pub backend: BackendKind,

    /// The namespace of users' pods. Default: the gateway's own (in a cluster), else the
    /// kubeconfig context's.
    #[arg(
        help_heading = "Kubernetes backend",
        long,
        env = "CHAMBERLAIN_K8S_NAMESPACE"
    )]
    pub k8s_namespace: Option<String>,

    /// The image of users' pods: the gateway's own image (it holds OpenCode at the same path
    /// as the gateway's --opencode-bin, and the gateway's binary for the readiness probe).
    #[arg(
        help_heading = "Kubernetes backend",
        long,
        env = "CHAMBERLAIN_K8S_IMAGE"
    )]
    pub k8s_image: Option<String>,

    /// The service account of users' pods (its token is never mounted).
    #[arg(
        help_heading = "Kubernetes backend",
        long,
        env = "CHAMBERLAIN_K8S_SERVICE_ACCOUNT",
        default_value = "chamberlain-opencode"
    )]
    pub k8s_service_account: String,

    /// The storage class of users' home volumes. Default: the cluster's default class.
    #[arg(
        help_heading = "Kubernetes backend",
        long,
        env = "CHAMBERLAIN_K8S_STORAGE_CLASS"
    )]
    pub k8s_storage_class: Option<String>,

    /// The size of each user's home volume.
    #[arg(help_heading = "Kubernetes backend", long, env = "CHAMBERLAIN_K8S_HOME_SIZE", default_value = "10Gi", value_parser = chamberlain_kubernetes::quantity)]
    pub k8s_home_size: String,

    /// CPU of each user's pod, as REQUEST[:LIMIT].
    #[arg(help_heading = "Kubernetes backend", long, env = "CHAMBERLAIN_K8S_CPU", default_value = "250m:2", value_parser = chamberlain_kubernetes::Amount::parse)]
    pub k8s_cpu: chamberlain_kubernetes::Amount,

    /// Memory of each user's pod, as REQUEST[:LIMIT] (an idle OpenCode takes about 0.75 GB,
    /// an agent at work up to 1 GB).
    #[arg(help_heading = "Kubernetes backend", long, env = "CHAMBERLAIN_K8S_MEMORY", default_value = "768Mi:2Gi", value_parser = chamberlain_kubernetes::Amount::parse)]
    pub k8s_memory: chamberlain_kubernetes::Amount,

    /// The uid (and gid) users' pods run as; never 0.
    #[arg(help_heading = "Kubernetes backend", long, env = "CHAMBERLAIN_K8S_UID", default_value_t = 1000,
          value_parser = clap::value_parser!(i64).range(1..=2_147_483_647))]
    pub k8s_uid: i64,

    /// The URL users' pods reach the model relay at (a Service in front of the gateways'
    /// --llm-listen). Default: the relay's own address, which only pods on the gateway's
    /// network namespace reach.
    #[arg(
        help_heading = "Kubernetes backend",
        long,
        env = "CHAMBERLAIN_K8S_RELAY_URL"
    )]
    pub k8s_relay_url: Option<String>,
}

impl ServeArgs {
    /// What one flag's parser cannot see: settings that only make sense together.
    /// What the operator chose about isolation, for `isolation::setup`.
    pub fn isolation_settings(&self) -> IsolationSettings {
        IsolationSettings {
            requested: self.isolation,
            system_accounts: self.system_accounts,
            uid_range: self.uid_range,
            limits: Limits {
                nproc: Some(self.limit_nproc),
                fsize: Some(self.limit_fsize as u64),
                nofile: Some(self.limit_nofile),
            },
        }
    }

    pub fn check(&self) -> Result<(), String> {
        if self.auth.mode == AuthMode::Dev
            && !self.listen.ip().is_loopback()
            && !self.auth.allow_insecure_dev
        {
            return Err(format!(
                "refusing to serve dev identity on {}: anyone who can reach it could sign in as \
                 anyone. Listen on a loopback address, choose another --auth, or pass \
                 --allow-insecure-dev",
                self.listen
            ));
        }
        if self.ws_max_buffer < self.ws_max_frame {
            return Err(format!(
                "--ws-max-buffer ({}) must be at least --ws-max-frame ({})",
                self.ws_max_buffer, self.ws_max_frame
            ));
        }
        if self.kubernetes.backend == BackendKind::Local && !self.llm_listen.ip().is_loopback() {
            return Err(format!(
                "--llm-listen {} is not a loopback address: with local instances the relay is \
                 for this machine only",
                self.llm_listen
            ));
        }
        if self.kubernetes.backend == BackendKind::Kubernetes && self.kubernetes.k8s_image.is_none()
        {
            return Err(
                "--backend kubernetes needs --k8s-image: the image of users' pods (the gateway's own)"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Public address (web UI, API, event streams).
    #[arg(help_heading = "Listeners", long, env = "CHAMBERLAIN_LISTEN", default_value = "127.0.0.1:8080", value_parser = crate::listeners::parse_addr)]
    pub listen: SocketAddr,

    /// Admin address (/stats, /metrics, stopping instances), or `none`. Every request but
    /// GET /healthz needs `Authorization: Bearer <token>` (see --admin-token-file). Keep it
    /// off the public network.
    #[arg(help_heading = "Listeners", 
        long,
        env = "CHAMBERLAIN_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090",
        value_parser = admin_listen
    )]
    pub admin_listen: AdminListen,

    /// Also serve the admin API on this Unix socket (mode 0600, the gateway's own uid), to
    /// clients running as root or as the gateway's uid (kernel credentials); no token needed.
    #[arg(help_heading = "Listeners", long, env = "CHAMBERLAIN_ADMIN_SOCKET")]
    pub admin_socket: Option<PathBuf>,

    /// The admin API's operator token, in a file only its owner can read. Default: a new
    /// random token at every start, written to <data-dir>/state/admin-token (mode 0600).
    #[arg(help_heading = "Listeners", long, env = "CHAMBERLAIN_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// The URL people reach the gateway at, e.g. https://chamberlain.example.com
    /// (repeatable; comma-separated in the variable). Requests naming another host are
    /// refused (DNS rebinding) and only these origins may change state. Default: loopback
    /// names only, or any host for --auth alb/jwt on a non-loopback address (warned).
    #[arg(help_heading = "Listeners", 
        long = "public-url",
        env = "CHAMBERLAIN_PUBLIC_URL",
        value_delimiter = ',',
        value_parser = crate::site::PublicUrl::parse
    )]
    pub public_urls: Vec<crate::site::PublicUrl>,

    /// Networks whose X-Forwarded-For/-Proto/-Host are believed (comma-separated CIDRs, or
    /// `none`). Default: the private networks (10/8, 172.16/12, 192.168/16, fc00::/7) with
    /// --auth alb, where the load balancer connects from the VPC; `none` otherwise.
    #[arg(help_heading = "Listeners", 
        long,
        env = "CHAMBERLAIN_TRUSTED_PROXIES",
        value_parser = crate::forwarded::TrustedProxies::parse
    )]
    pub trusted_proxies: Option<crate::forwarded::TrustedProxies>,

    /// Data directory: users/ (homes), shared/ (org keys, repos), state/.
    #[arg(
        help_heading = "OpenCode and data",
        long,
        env = "CHAMBERLAIN_DATA_DIR",
        default_value = DEFAULT_DATA_DIR
    )]
    pub data_dir: PathBuf,

    /// The OpenCode executable. Default: `opencode` on PATH, else ./node_modules/.bin/opencode.
    #[arg(
        help_heading = "OpenCode and data",
        long,
        env = "CHAMBERLAIN_OPENCODE_BIN"
    )]
    pub opencode_bin: Option<PathBuf>,

    /// Extra argument for `opencode serve` (repeatable; e.g. --opencode-arg=--pure). In the
    /// environment variable, arguments are separated by spaces.
    #[arg(
        help_heading = "OpenCode and data",
        long = "opencode-arg",
        env = "CHAMBERLAIN_OPENCODE_ARG",
        value_delimiter = ' ',
        allow_hyphen_values = true
    )]
    pub opencode_args: Vec<String>,

    /// How much memory each OpenCode's garbage collector plans for (Bun's
    /// `BUN_JSC_forceRAMSize`; not a cap), or `off` for the whole machine's. An agent's heap
    /// then peaks lower at no measured cost in time; 768MiB took 5% more off, 512MiB made
    /// agents half again as slow (see bench/RESULTS.md).
    #[arg(help_heading = "OpenCode and data", long, env = "CHAMBERLAIN_OPENCODE_GC_RAM", default_value = "1GiB", value_parser = gc_ram)]
    pub opencode_gc_ram: GcRam,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub kubernetes: KubernetesArgs,

    /// How users' OpenCode processes are walled off from each other.
    #[arg(help_heading = "Isolation", long, env = "CHAMBERLAIN_ISOLATION", value_enum, default_value_t = IsolationArg::Auto)]
    pub isolation: IsolationArg,

    /// Unix ids for users (with uid isolation): the first is the shared read-only group, the
    /// rest are given to users, one each, for good (recorded in state/uids.json).
    #[arg(help_heading = "Isolation", long, env = "CHAMBERLAIN_UID_RANGE", default_value = DEFAULT_UID_RANGE, value_parser = id_range)]
    pub uid_range: (u32, u32),

    /// Add users' uids to /etc/passwd and /etc/group (named after the user where the name
    /// fits, else u<uid>), so their shells show a name and `whoami` works; entries outside
    /// --uid-range are never touched. `auto`: when users have uids and the gateway runs in a
    /// container (whose /etc is its own); a host's /etc is left alone unless `on`.
    #[arg(help_heading = "Isolation", long, env = "CHAMBERLAIN_SYSTEM_ACCOUNTS", value_enum,
          default_value_t = SystemAccounts::Auto, num_args = 0..=1, default_missing_value = "on")]
    pub system_accounts: SystemAccounts,

    /// Most processes (threads) a user may run at once (with uid isolation).
    #[arg(help_heading = "Isolation", long, env = "CHAMBERLAIN_LIMIT_NPROC", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub limit_nproc: u64,

    /// Largest file a user's process may write (e.g. 16GiB).
    #[arg(help_heading = "Isolation", long, env = "CHAMBERLAIN_LIMIT_FSIZE", default_value = "16GiB", value_parser = size)]
    pub limit_fsize: usize,

    /// Most requests and websockets one user may hold open at once (each holds descriptors
    /// of the gateway's); beyond it the user gets 429, nobody else notices.
    #[arg(
        help_heading = "Limits",
        long,
        env = "CHAMBERLAIN_MAX_USER_CONNECTIONS",
        default_value_t = 256
    )]
    pub max_user_connections: u32,

    /// Largest a user's home may grow (e.g. 20GiB), measured as the user every
    /// --disk-check-interval: from 90% the portal and the log warn; at 100% new starts of
    /// that user are refused with a message saying why. Off by default.
    #[arg(help_heading = "Isolation", long, env = "CHAMBERLAIN_DISK_QUOTA", value_parser = size)]
    pub disk_quota: Option<usize>,

    /// How often a running user's home is measured (as the user).
    #[arg(help_heading = "Isolation", long, env = "CHAMBERLAIN_DISK_CHECK_INTERVAL", default_value = "10m", value_parser = duration)]
    pub disk_check_interval: Duration,

    /// Most open files per process of a user (capped at the gateway's own hard limit).
    #[arg(help_heading = "Isolation", long, env = "CHAMBERLAIN_LIMIT_NOFILE", default_value_t = 8192,
          value_parser = clap::value_parser!(u64).range(16..))]
    pub limit_nofile: u64,

    /// A variable of the gateway's environment to pass to every OpenCode, e.g. a provider key
    /// such as ANTHROPIC_API_KEY (repeatable; comma-separated in the variable). Nothing else
    /// of the gateway's environment reaches users.
    #[arg(help_heading = "OpenCode and data", long = "pass-env", env = "CHAMBERLAIN_PASS_ENV", value_delimiter = ',', value_parser = env_name)]
    pub pass_env: Vec<String>,

    /// Most clones of shared repositories running at once.
    #[arg(help_heading = "Repositories", long, env = "CHAMBERLAIN_MAX_CONCURRENT_CLONES", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_concurrent_clones: u32,

    /// Most instances running at once.
    #[arg(help_heading = "Limits", long, env = "CHAMBERLAIN_MAX_INSTANCES", default_value_t = 15,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_instances: u32,

    /// Most instances starting at once; further starts wait in `queued`.
    #[arg(help_heading = "Limits", long, env = "CHAMBERLAIN_MAX_CONCURRENT_STARTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_starts: u32,

    /// Stop an instance after this long without client activity.
    #[arg(help_heading = "Lifecycle", long, env = "CHAMBERLAIN_IDLE_TIMEOUT", default_value = "30m", value_parser = duration)]
    pub idle_timeout: Duration,

    /// A session an agent has worked in this long without a break stops keeping its
    /// instance from the idle timeout and eviction (a stuck agent); the log says so.
    #[arg(help_heading = "Lifecycle", long, env = "CHAMBERLAIN_BUSY_TIMEOUT", default_value = "4h", value_parser = duration)]
    pub busy_timeout: Duration,

    /// Address of the model-API relay, through which instances reach the organisation's
    /// providers (the keys in shared/auth/auth.json stay in the gateway). Port 0 picks a free
    /// one. A loopback address, but with --backend kubernetes, where users' pods reach it
    /// through a Service (--k8s-relay-url).
    #[arg(help_heading = "Model keys and usage", long, env = "CHAMBERLAIN_LLM_LISTEN", default_value = "127.0.0.1:0", value_parser = crate::listeners::parse_addr)]
    pub llm_listen: SocketAddr,

    /// The real address of a relayed provider, as `<provider>=<base URL>` (repeatable); over
    /// the built-in table and the provider's baseURL in shared/config/opencode.json.
    #[arg(help_heading = "Model keys and usage", long = "llm-upstream", env = "CHAMBERLAIN_LLM_UPSTREAM", value_delimiter = ',', value_parser = llm_upstream)]
    pub llm_upstreams: Vec<(String, String)>,

    /// A model's price, as `<model>=<USD per million input tokens>/<USD per million output
    /// tokens>` (repeatable; the model as the provider names it in its answers, e.g.
    /// `gpt-4o=2.5/10`): `/stats` then shows `costUsd` of the day's use.
    #[arg(help_heading = "Model keys and usage", long = "llm-price", env = "CHAMBERLAIN_LLM_PRICE", value_delimiter = ',', value_parser = llm_price)]
    pub llm_prices: Vec<(String, (f64, f64))>,

    /// Tokens (input + output) each user may use through the relay per UTC day; 0: no limit.
    /// A call beyond it is refused with a message OpenCode shows in the session.
    #[arg(
        help_heading = "Model keys and usage",
        long,
        env = "CHAMBERLAIN_LLM_DAILY_TOKENS",
        default_value_t = 0
    )]
    pub llm_daily_tokens: u64,

    /// When full, only instances idle at least this long may be evicted to make room.
    #[arg(help_heading = "Lifecycle", long, env = "CHAMBERLAIN_EVICT_MIN_IDLE", default_value = "1m", value_parser = duration)]
    pub evict_min_idle: Duration,

    /// A start that has not printed its listening line by then has failed.
    #[arg(help_heading = "Lifecycle", long, env = "CHAMBERLAIN_START_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub start_timeout: Duration,

    /// How long a request waits for a starting instance before it gets 503 + Retry-After.
    #[arg(help_heading = "Lifecycle", long, env = "CHAMBERLAIN_WAIT_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub wait_timeout: Duration,

    /// Time allowed for OpenCode to answer with response headers (prompts can take minutes).
    #[arg(help_heading = "Lifecycle", long, env = "CHAMBERLAIN_UPSTREAM_TIMEOUT", default_value = "10m", value_parser = duration)]
    pub upstream_timeout: Duration,

    /// Interval between health checks of a ready instance.
    #[arg(help_heading = "Lifecycle", long, env = "CHAMBERLAIN_HEALTH_INTERVAL", default_value = "15s", value_parser = duration)]
    pub health_interval: Duration,

    /// Consecutive failed health checks before an instance is restarted.
    #[arg(help_heading = "Lifecycle", long, env = "CHAMBERLAIN_HEALTH_FAILURES", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub health_failures: u32,

    /// Time between SIGTERM and SIGKILL when stopping an instance.
    #[arg(help_heading = "Lifecycle", long, env = "CHAMBERLAIN_STOP_GRACE", default_value = "10s", value_parser = duration)]
    pub stop_grace: Duration,

    /// Send a keep-alive comment on an event stream silent for this long.
    #[arg(help_heading = "Lifecycle", long, env = "CHAMBERLAIN_SSE_KEEPALIVE", default_value = "15s", value_parser = duration)]
    pub sse_keepalive: Duration,

    /// Largest websocket frame accepted from a client or from OpenCode (e.g. 16MiB, 1048576).
    #[arg(help_heading = "Limits", long, env = "CHAMBERLAIN_WS_MAX_FRAME", default_value = "16MiB", value_parser = size)]
    pub ws_max_frame: usize,

    /// Bytes a websocket may hold for a reader that does not keep up before it is closed
    /// with 1013 (try again later). At least --ws-max-frame.
    #[arg(help_heading = "Limits", long, env = "CHAMBERLAIN_WS_MAX_BUFFER", default_value = "32MiB", value_parser = size)]
    pub ws_max_buffer: usize,

    /// Ping websocket clients this often (keeps load balancers from dropping idle terminals).
    #[arg(help_heading = "Lifecycle", long, env = "CHAMBERLAIN_WS_PING_INTERVAL", default_value = "30s", value_parser = duration)]
    pub ws_ping_interval: Duration,

    /// Close a websocket whose client has sent nothing (not even a pong) for this long.
    #[arg(help_heading = "Lifecycle", long, env = "CHAMBERLAIN_WS_CLIENT_TIMEOUT", default_value = "90s", value_parser = duration)]
    pub ws_client_timeout: Duration,

    /// An origin besides the gateway's own allowed to open websockets and change state, e.g.
    /// https://ide.example.com (repeatable; in the environment variable, comma-separated).
    #[arg(
        help_heading = "Listeners",
        long = "allowed-origin",
        env = "CHAMBERLAIN_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// HTTP worker threads for the public listener (default: half the CPUs available to the
    /// process, cgroup quotas included, at least one).
    #[arg(help_heading = "Listeners", long, env = "CHAMBERLAIN_WORKERS", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: Option<u32>,

    /// Log format.
    #[arg(help_heading = "Logging", long, env = "CHAMBERLAIN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info` or `info,chamberlain=debug,opencode=debug`.
    #[arg(
        help_heading = "Logging",
        long,
        env = "CHAMBERLAIN_LOG",
        default_value = "info"
    )]
    pub log: String,
}

/// `--admin-listen`: an address, or `none` for no TCP admin listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminListen {
    Off,
    At(SocketAddr),
}

impl AdminListen {
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            AdminListen::Off => None,
            AdminListen::At(addr) => Some(addr),
        }
    }
}

fn llm_upstream(text: &str) -> Result<(String, String), String> {
    let (id, url) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not <provider>=<base URL>"))?;
    let (id, url) = (id.trim(), url.trim());
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!("{id:?} is not a provider id"));
    }
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(format!("{url:?} is not an http(s) URL"));
    }
    Ok((id.to_owned(), url.trim_end_matches('/').to_owned()))
}

fn llm_price(text: &str) -> Result<(String, (f64, f64)), String> {
    let usage = || format!("{text:?} is not <model>=<input USD per Mtok>/<output USD per Mtok>");
    let (model, prices) = text.split_once('=').ok_or_else(usage)?;
    let (input, output) = prices.split_once('/').ok_or_else(usage)?;
    let price = |p: &str| -> Result<f64, String> {
        let value: f64 = p.trim().parse().map_err(|_| usage())?;
        if value.is_finite() && value >= 0.0 {
            Ok(value)
        } else {
            Err(usage())
        }
    };
    let model = model.trim();
    if model.is_empty() {
        return Err(usage());
    }
    Ok((model.to_owned(), (price(input)?, price(output)?)))
}

fn admin_listen(text: &str) -> Result<AdminListen, String> {
    if matches!(text.trim(), "none" | "off") {
        return Ok(AdminListen::Off);
    }
    crate::listeners::parse_addr(text)
        .map(AdminListen::At)
        .map_err(|e| format!("{e}; or `none`"))
}

impl ServeArgs {
    /// `--trusted-proxies`, or its default for the identity mode.
    pub fn trusted_proxies(&self) -> crate::forwarded::TrustedProxies {
        match (&self.trusted_proxies, self.auth.mode) {
            (Some(list), _) => list.clone(),
            (None, AuthMode::Alb) => crate::forwarded::TrustedProxies::private_networks(),
            (None, _) => crate::forwarded::TrustedProxies::none(),
        }
    }
}

/// Parses a byte size: `1048576`, `64KiB`, `16MiB`, `1GiB` (also `KB`/`MB`/`GB`, taken as
/// binary units, and `K`/`M`/`G`).
fn size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 1048576, 64KiB, 16MiB)"))?;
    let factor: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB or GiB)")),
    };
    let bytes = number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes == 0 {
        return Err("must be greater than zero".to_owned());
    }
    Ok(bytes)
}

/// `--opencode-gc-ram`: a size, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcRam(pub Option<u64>);

fn gc_ram(text: &str) -> Result<GcRam, String> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(GcRam(None));
    }
    let bytes = size(text)?;
    if bytes < 64 << 20 {
        return Err(
            "below 64MiB OpenCode spends its time collecting garbage; give more, or off".to_owned(),
        );
    }
    Ok(GcRam(Some(bytes as u64)))
}

/// Parses `FIRST-LAST`, two ids with FIRST < LAST.
fn id_range(text: &str) -> Result<(u32, u32), String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not a range like 200000-265535"))?;
    let parse = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|_| format!("{s:?} is not a Unix id"))
    };
    let (first, last) = (parse(a)?, parse(b)?);
    if first == 0 || last <= first {
        return Err("the range must start above 0 and hold at least two ids".to_owned());
    }
    Ok((first, last))
}

/// An environment variable name: letters, digits and `_`, not starting with a digit.
fn env_name(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && !text.as_bytes()[0].is_ascii_digit()
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?} is not an environment variable name"))
    }
}

/// Parses `90s`, `5m`, `1h`, `1h30m`, `500ms`. Zero is rejected: every duration here is a
/// timeout or an interval.
fn duration(text: &str) -> Result<Duration, String> {
    let parsed = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e} (examples: 90s, 5m, 1h)"))?;
    if parsed.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let mut argv = vec!["chamberlain", "serve"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Serve(args) => *args,
            other => panic!("not serve: {other:?}"),
        })
    }

    #[test]
    fn relay_flags_are_checked() {
        let args = serve(&[
            "--llm-upstream",
            "groq=https://groq.proxy/v1/",
            "--llm-price",
            "gpt-4o=2.5/10",
            "--llm-daily-tokens",
            "100000",
        ])
        .unwrap();
        assert_eq!(
            args.llm_upstreams,
            [("groq".to_owned(), "https://groq.proxy/v1".to_owned())]
        );
        assert_eq!(args.llm_prices, [("gpt-4o".to_owned(), (2.5, 10.0))]);
        assert_eq!(args.llm_daily_tokens, 100_000);
        assert!(args.llm_listen.ip().is_loopback());
        let open_relay = serve(&["--llm-listen", "0.0.0.0:7000"]).unwrap();
        assert!(open_relay
            .check()
            .unwrap_err()
            .contains("not a loopback address"));
        let in_cluster = serve(&[
            "--llm-listen",
            "0.0.0.0:7000",
            "--backend",
            "kubernetes",
            "--k8s-image",
            "chamberlain:1",
        ])
        .unwrap();
        assert_eq!(in_cluster.check(), Ok(()));
        let no_image = serve(&["--backend", "kubernetes"]).unwrap();
        assert!(no_image.check().unwrap_err().contains("--k8s-image"));
        assert!(serve(&["--k8s-cpu", "1GB"]).is_err());
        for bad in [
            &["--llm-upstream", "groq"][..],
            &["--llm-upstream", "groq=ftp://x"],
            &["--llm-upstream", "a b=https://x"],
            &["--llm-price", "gpt-4o=2.5"],
            &["--llm-price", "gpt-4o=-1/2"],
            &["--llm-price", "=1/2"],
        ] {
            assert!(serve(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn isolation_flags() {
        let args = serve(&[]).unwrap();
        assert_eq!(args.isolation, IsolationArg::Auto);
        assert_eq!(args.uid_range, (200_000, 265_535));
        assert_eq!(args.limit_fsize, 16 << 30);
        let args = serve(&["--uid-range", "5000-5100", "--pass-env", "A_KEY,OTHER"]).unwrap();
        assert_eq!(args.uid_range, (5000, 5100));
        assert_eq!(args.pass_env, ["A_KEY", "OTHER"]);
        for bad in ["0-10", "10-10", "x-1", "100"] {
            assert!(serve(&["--uid-range", bad]).is_err(), "{bad}");
        }
        assert!(serve(&["--pass-env", "A=B"]).is_err());
        assert!(serve(&["--pass-env", "1X"]).is_err());
    }

    #[test]
    fn prepare_data_takes_the_data_flags_of_serve() {
        let prepare = |args: &[&str]| {
            let mut argv = vec!["chamberlain", "prepare-data"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).map(|cli| match cli.command {
                Command::PrepareData(args) => args,
                other => panic!("not prepare-data: {other:?}"),
            })
        };
        let (defaults, served) = (prepare(&[]).unwrap(), serve(&[]).unwrap());
        assert_eq!(defaults.data_dir, served.data_dir);
        assert_eq!(defaults.uid_range, served.uid_range);
        let args = prepare(&["--data-dir", "/data", "--uid-range", "5000-5100"]).unwrap();
        assert_eq!(args.data_dir, PathBuf::from("/data"));
        assert_eq!(args.uid_range, (5000, 5100));
        assert!(prepare(&["--uid-range", "10-10"]).is_err());
        assert!(
            prepare(&["--listen", "127.0.0.1:1"]).is_err(),
            "serve's only"
        );
    }

    #[test]
    fn alb_needs_its_load_balancer_and_region() {
        assert!(serve(&["--auth", "alb"]).is_err());
        assert!(serve(&["--auth", "alb", "--alb-arn", "arn:x"]).is_err());
        let args = serve(&[
            "--auth",
            "alb",
            "--alb-arn",
            "arn:x",
            "--alb-region",
            "eu-west-1",
        ])
        .unwrap();
        assert_eq!(args.auth.mode, AuthMode::Alb);
        assert!(args.auth.alb_key_url.contains("{kid}"));
        assert!(serve(&["--auth", "jwt", "--jwks-url", "u", "--jwt-public-key", "k"]).is_err());
        let args = serve(&["--auth", "jwt", "--jwt-audience", "a,b"]).unwrap();
        assert_eq!(args.auth.jwt_audiences, ["a", "b"]);
    }

    #[test]
    fn defaults_match_the_documentation() {
        let args = serve(&[]).unwrap();
        assert_eq!(args.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            args.admin_listen,
            AdminListen::At("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(args.admin_socket, None);
        assert_eq!(args.admin_token_file, None);
        assert!(args.public_urls.is_empty());
        assert!(args.trusted_proxies().is_empty());
        assert_eq!(args.data_dir, PathBuf::from("./data"));
        assert_eq!(args.max_instances, 15);
        assert_eq!(args.max_concurrent_starts, 3);
        assert_eq!(args.idle_timeout, Duration::from_secs(1800));
        assert_eq!(args.start_timeout, Duration::from_secs(60));
        assert_eq!(args.wait_timeout, Duration::from_secs(30));
        assert_eq!(args.health_interval, Duration::from_secs(15));
        assert_eq!(args.health_failures, 3);
        assert_eq!(args.stop_grace, Duration::from_secs(10));
        assert_eq!(args.auth.mode, AuthMode::Dev);
        assert_eq!(args.log_format, LogFormat::Text);
        assert_eq!(args.ws_max_frame, 16 << 20);
        assert_eq!(args.ws_max_buffer, 32 << 20);
        assert_eq!(args.ws_ping_interval, Duration::from_secs(30));
        assert_eq!(args.ws_client_timeout, Duration::from_secs(90));
        assert!(args.allowed_origins.is_empty());
    }

    #[test]
    fn durations_accept_human_units() {
        assert_eq!(duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(duration("0s").is_err());
        assert!(duration("soon").is_err());
        assert!(duration("10").is_err());
    }

    #[test]
    fn sizes_accept_binary_units() {
        assert_eq!(size("1048576").unwrap(), 1 << 20);
        assert_eq!(size("64KiB").unwrap(), 64 << 10);
        assert_eq!(size("16MiB").unwrap(), 16 << 20);
        assert_eq!(size("2m").unwrap(), 2 << 20);
        assert_eq!(size("1GB").unwrap(), 1 << 30);
        assert!(size("0").is_err());
        assert!(size("lots").is_err());
        assert!(size("5 parsecs").is_err());
        assert!(size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn the_gc_ram_is_a_size_or_off() {
        assert_eq!(gc_ram("1GiB"), Ok(GcRam(Some(1 << 30))));
        assert_eq!(gc_ram("off"), Ok(GcRam(None)));
        assert!(gc_ram("1MiB").is_err());
        assert!(gc_ram("lots").is_err());
    }

    #[test]
    fn opencode_args_repeat_and_take_hyphens() {
        let args = serve(&[
            "--opencode-arg=--pure",
            "--opencode-arg",
            "--log-level=WARN",
        ])
        .unwrap();
        assert_eq!(args.opencode_args, ["--pure", "--log-level=WARN"]);
    }

    #[test]
    fn admin_and_site_flags() {
        let args = serve(&["--admin-listen", "none", "--admin-socket", "/run/a.sock"]).unwrap();
        assert_eq!(args.admin_listen, AdminListen::Off);
        assert_eq!(args.admin_socket, Some(PathBuf::from("/run/a.sock")));
        let args = serve(&["--admin-listen", "[::]:9090"]).unwrap();
        assert_eq!(args.admin_listen.addr(), Some("[::]:9090".parse().unwrap()));
        assert!(serve(&["--admin-listen", "nowhere"]).is_err());

        let args = serve(&[
            "--public-url",
            "https://a.example,https://b.example",
            "--public-url",
            "http://localhost:8080",
        ])
        .unwrap();
        assert_eq!(args.public_urls.len(), 3);
        assert!(serve(&["--public-url", "a.example"]).is_err());

        let alb = [
            "--auth",
            "alb",
            "--alb-arn",
            "arn:x",
            "--alb-region",
            "eu-west-1",
        ];
        let args = serve(&alb).unwrap();
        assert!(args.trusted_proxies().trusts("10.0.0.1".parse().unwrap()));
        let mut none = alb.to_vec();
        none.extend(["--trusted-proxies", "none"]);
        assert!(serve(&none).unwrap().trusted_proxies().is_empty());
        let args = serve(&["--trusted-proxies", "192.0.2.0/24"]).unwrap();
        assert!(args.trusted_proxies().trusts("192.0.2.9".parse().unwrap()));
        assert!(serve(&["--trusted-proxies", "10.0.0.0/99"]).is_err());
    }

    #[test]
    fn system_accounts_take_a_mode_or_the_old_switch() {
        assert_eq!(serve(&[]).unwrap().system_accounts, SystemAccounts::Auto);
        let on = serve(&["--system-accounts"]).unwrap();
        assert_eq!(on.system_accounts, SystemAccounts::On, "the switch alone");
        for (value, mode) in [
            ("true", SystemAccounts::On),
            ("false", SystemAccounts::Off),
            ("off", SystemAccounts::Off),
        ] {
            let args = serve(&[&format!("--system-accounts={value}")]).unwrap();
            assert_eq!(args.system_accounts, mode, "{value}");
        }
        assert!(serve(&["--system-accounts=maybe"]).is_err());
    }

    #[test]
    fn serve_help_is_grouped_by_topic() {
        use clap::CommandFactory;
        let help = Cli::command()
            .find_subcommand_mut("serve")
            .unwrap()
            .render_help()
            .to_string();
        for heading in [
            "Listeners:",
            "Identity and sign-in:",
            "Isolation:",
            "Limits:",
            "Lifecycle:",
            "Repositories:",
            "Model keys and usage:",
        ] {
            assert!(help.contains(heading), "{heading} missing from:\n{help}");
        }
    }

    #[test]
    fn limits_reject_zero() {
        assert!(serve(&["--max-instances", "0"]).is_err());
        assert!(serve(&["--health-failures", "0"]).is_err());
        assert!(serve(&["--idle-timeout", "0s"]).is_err());
    }
}
