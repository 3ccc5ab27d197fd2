//! `chamberlain-bench`: what the gateway costs compared with talking to OpenCode directly.
//!
//! 1. Small GETs: requests/s and p50/p99 latency, direct vs through the gateway, and through
//!    nginx `proxy_pass` in the same run when nginx is installed (`nginx.rs`), and through
//!    the least proxy actix-web and awc make (`floor.rs`), the stack's own cost.
//! 2. Event-stream delivery latency (upstream timestamp → client), direct vs gateway.
//! 3. Start overhead: time from a user's first request to its answer, minus the upstream's
//!    own start time as it reports it.
//! 4. Websockets: echo round trip of small messages, and throughput of 1 MiB messages echoed,
//!    direct vs gateway.
//!
//! 5. Identity: cost per request of a verified token on a cache hit and a miss
//!    (`chamberlain-bench identity`, in process; see `identity.rs`).
//!
//! 6. Repository library: listing 301 repositories while a huge one is being sized
//!    (`chamberlain-bench repos`, in process; see `repos.rs`).
//!
//! 7. Model relay: time to the first streamed token, direct vs through the relay
//!    (`chamberlain-bench relay`, in process; see `relay.rs`).
//!
//! `chamberlain-bench floor UPSTREAM AUTHORIZATION` serves the floor proxy alone until it is
//! killed, for measuring it as a process of its own (`bench/proxy-cost/run.sh`).
//!
//! Build first: `cargo build --release --bins` (the gateway and the fake OpenCode), then
//! `cargo run --release -p chamberlain-bench -- [--upstream fake|opencode] [--seconds N]
//! [--connections N]`. With `--upstream opencode` the real OpenCode from
//! `node_modules/.bin/opencode` is the upstream for the throughput test.
//! The load generator is a minimal HTTP/1.1 keep-alive client on one thread so that it costs
//! as little CPU as possible on small machines.

mod floor;
mod http;
mod identity;
mod nginx;
mod procs;
mod relay;
mod repos;
mod ws;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use procs::{upstream, Gateway, Upstream};

struct Options {
    upstream: String,
    seconds: u64,
    connections: usize,
    starts: usize,
    events: usize,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut opts = Options {
        upstream: "fake".to_owned(),
        seconds: 10,
        connections: 32,
        starts: 20,
        events: 400,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().context("missing value");
        match arg.as_str() {
            "--upstream" => opts.upstream = value()?,
            "--seconds" => opts.seconds = value()?.parse()?,
            "--connections" => opts.connections = value()?.parse()?,
            "--starts" => opts.starts = value()?.parse()?,
            "--events" => opts.events = value()?.parse()?,
            "-h" | "--help" => {
                println!(
                    "chamberlain-bench [--upstream fake|opencode] [--seconds N] [--connections N] \
                     [--starts N] [--events N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if !matches!(opts.upstream.as_str(), "fake" | "opencode") {
        bail!("--upstream is fake or opencode");
    }
    Ok(opts)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

struct Load {
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    requests: usize,
}

async fn load(addr: SocketAddr, request: &[u8], opts: &Options) -> anyhow::Result<Load> {
    // Warm the connection pools on both sides first.
    http::hammer(addr, request, 4, Duration::from_millis(500)).await?;
    let started = Instant::now();
    let mut latencies = http::hammer(
        addr,
        request,
        opts.connections,
        Duration::from_secs(opts.seconds),
    )
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Ok(Load {
        rps: latencies.len() as f64 / elapsed,
        p50_us: percentile(&latencies, 50.0),
        p99_us: percentile(&latencies, 99.0),
        requests: latencies.len(),
    })
}

fn get(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    // A loopback name: the gateway serves no other host without --public-url.
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

async fn sse_latency(
    addr: SocketAddr,
    request: Vec<u8>,
    events: usize,
) -> anyhow::Result<(u64, u64)> {
    let mut lat = http::event_latencies(addr, &request, events, now_us).await?;
    lat.sort_unstable();
    Ok((percentile(&lat, 50.0), percentile(&lat, 99.0)))
}

async fn start_overhead(gw: &Gateway, starts: usize) -> anyhow::Result<Value> {
    let mut overheads = Vec::new();
    let mut totals = Vec::new();
    for i in 0..starts {
        let user = format!("start{i}");
        let req = get(
            "/env",
            &[("X-Chamberlain-Dev-User", &user), ("Connection", "close")],
        );
        let t0 = Instant::now();
        let body = http::fetch(gw.public, &req).await?;
        let total = t0.elapsed().as_micros() as u64;
        let env: Value = serde_json::from_slice(&body).context("env JSON")?;
        let own =
            env["listeningAtUs"].as_u64().unwrap_or(0) - env["startedAtUs"].as_u64().unwrap_or(0);
        overheads.push(total.saturating_sub(own));
        totals.push(total);
    }
    overheads.sort_unstable();
    totals.sort_unstable();
    Ok(json!({
        "starts": starts,
        "totalP50Us": percentile(&totals, 50.0),
        "overheadP50Us": percentile(&overheads, 50.0),
        "overheadP99Us": percentile(&overheads, 99.0),
        "overheadMaxUs": overheads.last(),
    }))
}

/// `starts` first requests through the gateway, each for a new user of the real OpenCode,
/// split by the gateway's log (its "OpenCode is listening" line: when, and `spawn_ms` since
/// the spawn) into the gateway's part before the spawn (preparing the home as the user,
/// isolation, the spawn itself), OpenCode's own start, and the first answer after it listens
/// (OpenCode answering its first request, plus the proxying).
async fn real_starts(gw: &Gateway, starts: usize) -> anyhow::Result<Value> {
    let (mut totals, mut before, mut own, mut after) = (vec![], vec![], vec![], vec![]);
    for i in 0..starts {
        let user = format!("opencode-start{i}");
        let req = get(
            "/global/health",
            &[("X-Chamberlain-Dev-User", &user), ("Connection", "close")],
        );
        let sent = now_us();
        http::fetch(gw.public, &req).await?;
        let answered = now_us();
        let needle = format!("user={user} ");
        let log = gw.log();
        let line = log
            .lines()
            .find(|l| l.contains("OpenCode is listening") && l.contains(&needle))
            .with_context(|| format!("no start line for {user} in the gateway's log"))?;
        let listening = line
            .split_whitespace()
            .next()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_micros() as u64)
            .with_context(|| format!("no time on {line:?}"))?;
        let spawn_us = line
            .split("spawn_ms=")
            .nth(1)
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .with_context(|| format!("no spawn_ms on {line:?}"))?
            * 1000;
        totals.push(answered.saturating_sub(sent));
        before.push(listening.saturating_sub(spawn_us).saturating_sub(sent));
        own.push(spawn_us);
        after.push(answered.saturating_sub(listening));
    }
    for v in [&mut totals, &mut before, &mut own, &mut after] {
        v.sort_unstable();
    }
    let ms = |v: &[u64], p| percentile(v, p) as f64 / 1000.0;
    println!(
        "{:<28} first answer p50 {:.0} ms: the gateway before the spawn p50 {:.1} ms, p99 {:.1} ms; OpenCode's own start p50 {:.0} ms; its first answer after it listens p50 {:.1} ms, p99 {:.1} ms",
        "start, real OpenCode",
        ms(&totals, 50.0),
        ms(&before, 50.0),
        ms(&before, 99.0),
        ms(&own, 50.0),
        ms(&after, 50.0),
        ms(&after, 99.0)
    );
    Ok(json!({
        "starts": starts,
        "totalP50Ms": ms(&totals, 50.0),
        "gatewayBeforeSpawnP50Ms": ms(&before, 50.0),
        "gatewayBeforeSpawnP99Ms": ms(&before, 99.0),
        "opencodeStartP50Ms": ms(&own, 50.0),
        "firstAnswerAfterListeningP50Ms": ms(&after, 50.0),
        "firstAnswerAfterListeningP99Ms": ms(&after, 99.0),
    }))
}

async fn websocket(direct: &Upstream, gw: &Gateway, count: usize) -> anyhow::Result<Value> {
    let auth = direct.authorization();
    let mut d = ws::connect(direct.addr, "/ws", &[("Authorization", &auth)]).await?;
    let mut g = ws::connect(gw.public, "/ws", &[("X-Chamberlain-Dev-User", "bench")]).await?;
    // Warm up both paths.
    ws::echo_rtt(&mut d, 100).await?;
    ws::echo_rtt(&mut g, 100).await?;
    let mut direct_rtt = ws::echo_rtt(&mut d, count).await?;
    let mut gateway_rtt = ws::echo_rtt(&mut g, count).await?;
    direct_rtt.sort_unstable();
    gateway_rtt.sort_unstable();
    let (d50, d99) = (percentile(&direct_rtt, 50.0), percentile(&direct_rtt, 99.0));
    let (g50, g99) = (
        percentile(&gateway_rtt, 50.0),
        percentile(&gateway_rtt, 99.0),
    );
    let direct_mibs = ws::echo_throughput(&mut d, 128).await?;
    let gateway_mibs = ws::echo_throughput(&mut g, 128).await?;
    println!(
        "{:<28} direct p50 {d50:>6} µs  p99 {d99:>6} µs | gateway p50 {g50:>6} µs  p99 {g99:>6} µs  (added p50 {} µs)",
        "websocket echo round trip",
        g50 as i64 - d50 as i64
    );
    println!(
        "{:<28} direct {direct_mibs:>7.0} MiB/s | gateway {gateway_mibs:>7.0} MiB/s ({:.0}% of direct)",
        "websocket 1 MiB echo",
        gateway_mibs / direct_mibs * 100.0
    );
    Ok(json!({
        "echo": {"messages": count, "direct": {"p50Us": d50, "p99Us": d99}, "gateway": {"p50Us": g50, "p99Us": g99}, "addedP50Us": g50 as i64 - d50 as i64},
        "oneMiBEcho": {"directMiBps": direct_mibs, "gatewayMiBps": gateway_mibs},
    }))
}

fn report_load(name: &str, direct: &Load, gateway: &Load) -> Value {
    let ratio = gateway.rps / direct.rps;
    println!(
        "{name:<28} direct {:>9.0} req/s  p50 {:>6} µs  p99 {:>6} µs",
        direct.rps, direct.p50_us, direct.p99_us
    );
    println!(
        "{:<28} gateway {:>8.0} req/s  p50 {:>6} µs  p99 {:>6} µs  ({:.0}% of direct)",
        "",
        gateway.rps,
        gateway.p50_us,
        gateway.p99_us,
        ratio * 100.0
    );
    json!({
        "direct": {"rps": direct.rps, "p50Us": direct.p50_us, "p99Us": direct.p99_us, "requests": direct.requests},
        "gateway": {"rps": gateway.rps, "p50Us": gateway.p50_us, "p99Us": gateway.p99_us, "requests": gateway.requests},
        "throughputRatio": ratio,
    })
}

fn compare_nginx(direct: &Load, nginx: &Load, gateway: &Load) -> Value {
    let ratio = gateway.rps / nginx.rps;
    println!(
        "{:<28} nginx {:>10.0} req/s  p50 {:>6} µs  p99 {:>6} µs  ({:.0}% of direct; the gateway serves {:.2}× nginx)",
        "",
        nginx.rps,
        nginx.p50_us,
        nginx.p99_us,
        nginx.rps / direct.rps * 100.0,
        ratio
    );
    json!({
        "rps": nginx.rps,
        "p50Us": nginx.p50_us,
        "p99Us": nginx.p99_us,
        "requests": nginx.requests,
        "gatewayOverNginx": ratio,
        "addedP99Us": {
            "nginx": nginx.p99_us as i64 - direct.p99_us as i64,
            "gateway": gateway.p99_us as i64 - direct.p99_us as i64,
        },
    })
}

/// The one option of an in-process bench: `flag N`, or `default`.
fn count_option(
    mut argv: impl Iterator<Item = String>,
    flag: &str,
    default: usize,
) -> anyhow::Result<usize> {
    let mut value = default;
    while let Some(arg) = argv.next() {
        if arg != flag {
            bail!("unknown argument {arg}");
        }
        value = argv.next().context("missing value")?.parse()?;
    }
    Ok(value)
}

fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    let first = argv.next();
    if first.as_deref() == Some("repos") {
        return repos::run();
    }
    if first.as_deref() == Some("relay") {
        return relay::run(count_option(argv, "--requests", 1000)?);
    }
    if first.as_deref() == Some("floor") {
        let (Some(upstream), Some(authorization), None) = (argv.next(), argv.next(), argv.next())
        else {
            bail!("usage: chamberlain-bench floor UPSTREAM-ADDRESS AUTHORIZATION");
        };
        let upstream = upstream.parse().context("UPSTREAM-ADDRESS")?;
        let floor = floor::Floor::start(
            upstream,
            &authorization,
            chamberlain::server::default_workers(),
        )?;
        println!("floor listening on {}", floor.addr);
        loop {
            std::thread::park();
        }
    }
    if first.as_deref() == Some("identity") {
        return identity::run(count_option(argv, "--iterations", 200_000)?);
    }
    let opts = parse_options()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(opts))
}

async fn run(opts: Options) -> anyhow::Result<()> {
    let bins = procs::Binaries::locate()?;
    println!(
        "chamberlain-bench: {} connections, {}s per run, upstream {} ({} cores)",
        opts.connections,
        opts.seconds,
        opts.upstream,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let mut results = json!({});

    // 1. Small GETs.
    let (upstream_bin, upstream_args, path): (_, &[&str], _) = if opts.upstream == "fake" {
        (bins.fake.clone(), &[][..], "/small")
    } else {
        (bins.opencode()?, &["--pure"][..], "/global/health")
    };
    let direct = upstream(&upstream_bin, upstream_args, "bench")?;
    let gw = Gateway::start(&bins.gateway, &upstream_bin, upstream_args)?;
    let auth = direct.authorization();
    // The same request through every path: with the upstream's credentials, as the user
    // (dev identity), and bare (nginx and the floor add the credentials themselves).
    let direct_get = get(path, &[("Authorization", &auth)]);
    let gateway_get = get(path, &[("X-Chamberlain-Dev-User", "bench")]);
    let proxy_get = get(path, &[]);
    http::fetch(
        gw.public,
        &get(
            path,
            &[("X-Chamberlain-Dev-User", "bench"), ("Connection", "close")],
        ),
    )
    .await
    .context("first request through the gateway")?;
    if opts.upstream != "fake" {
        // OpenCode's JIT serves a third more once warm: warm the directly started instance
        // and the user's own one alike, or whichever is measured first pays for it.
        let warm = Duration::from_secs(opts.seconds);
        http::hammer(direct.addr, &direct_get, opts.connections, warm).await?;
        http::hammer(gw.public, &gateway_get, opts.connections, warm).await?;
    }
    let direct_load = load(direct.addr, &direct_get, &opts).await?;
    let nginx_load = match nginx::find() {
        Some(program) => {
            let nginx = nginx::Nginx::start(&program, direct.addr, &auth)?;
            println!("nginx: {} in front of the same upstream", nginx.version);
            Some(load(nginx.addr, &proxy_get, &opts).await?)
        }
        None => {
            println!("nginx: not installed (apt-get install nginx-light, or set NGINX_BIN); no comparison");
            None
        }
    };
    let floor_load = {
        let floor =
            floor::Floor::start(direct.addr, &auth, chamberlain::server::default_workers())?;
        load(floor.addr, &proxy_get, &opts).await?
    };
    let gateway_load = load(gw.public, &gateway_get, &opts).await?;
    results["smallGet"] = report_load(&format!("GET {path}"), &direct_load, &gateway_load);

    if let Some(nginx) = nginx_load {
        results["smallGet"]["nginx"] = compare_nginx(&direct_load, &nginx, &gateway_load);
    }
    println!(
        "{:<28} floor {:>10.0} req/s  p50 {:>6} µs  p99 {:>6} µs  (actix-web + awc alone; the gateway serves {:.2}× it)",
        "",
        floor_load.rps,
        floor_load.p50_us,
        floor_load.p99_us,
        gateway_load.rps / floor_load.rps
    );
    results["smallGet"]["floor"] = json!({
        "rps": floor_load.rps,
        "p50Us": floor_load.p50_us,
        "p99Us": floor_load.p99_us,
        "gatewayOverFloor": gateway_load.rps / floor_load.rps,
    });
    // Last with this gateway: the new instances keep working for a while after they start.
    if opts.upstream == "opencode" {
        results["realStarts"] = real_starts(&gw, opts.starts.min(10)).await?;
    }
    drop(gw);
    drop(direct);

    // 2 and 3 use the fake: it timestamps its events and reports its own start time.
    let direct = upstream(&bins.fake, &[], "bench")?;
    let gw = Gateway::start(&bins.gateway, &bins.fake, &[])?;
    http::fetch(
        gw.public,
        &get(
            "/small",
            &[("X-Chamberlain-Dev-User", "bench"), ("Connection", "close")],
        ),
    )
    .await?;
    let auth = direct.authorization();
    let (d50, d99) = sse_latency(
        direct.addr,
        get("/event?tick_ms=5", &[("Authorization", &auth)]),
        opts.events,
    )
    .await?;
    let (g50, g99) = sse_latency(
        gw.public,
        get("/event?tick_ms=5", &[("X-Chamberlain-Dev-User", "bench")]),
        opts.events,
    )
    .await?;
    println!(
        "{:<28} direct p50 {d50:>6} µs  p99 {d99:>6} µs | gateway p50 {g50:>6} µs  p99 {g99:>6} µs  (added p99 {} µs)",
        "SSE delivery",
        g99 as i64 - d99 as i64
    );
    results["sse"] = json!({
        "events": opts.events,
        "direct": {"p50Us": d50, "p99Us": d99},
        "gateway": {"p50Us": g50, "p99Us": g99},
        "addedP50Us": g50 as i64 - d50 as i64,
        "addedP99Us": g99 as i64 - d99 as i64,
    });

    results["websocket"] = websocket(&direct, &gw, opts.events.max(200) * 5).await?;

    let starts = start_overhead(&gw, opts.starts).await?;
    println!(
        "{:<28} p50 {} µs  p99 {} µs  (first request answered after p50 {} µs)",
        "start overhead", starts["overheadP50Us"], starts["overheadP99Us"], starts["totalP50Us"]
    );
    results["startOverhead"] = starts;
    println!("{}", serde_json::to_string_pretty(&results)?);
    Ok(())
}
