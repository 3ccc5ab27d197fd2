//! The gateway's Prometheus registry: HTTP metrics recorded here plus the actors' lifecycle
//! metrics, served as text by the admin listener.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use chamberlain_actors::InstanceMetrics;

type Label = [(&'static str, &'static str); 1];
type CloseLabel = [(&'static str, String); 2];

/// Websocket bridge metrics.
#[derive(Clone)]
pub struct WsMetrics {
    open: Gauge,
    bytes: Family<Label, Counter>,
    /// The two directions' counters, looked up once (every message counts its bytes).
    to_upstream: Counter,
    to_client: Counter,
    closes: Family<CloseLabel, Counter>,
}

/// A websocket message's direction, for [`WsMetrics::bytes`].
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    ClientToUpstream,
    UpstreamToClient,
}

impl WsMetrics {
    /// Counts an open socket until the returned guard is dropped.
    pub fn open_socket(&self) -> SocketGauge {
        self.open.inc();
        SocketGauge(self.open.clone())
    }

    fn new() -> Self {
        let bytes = Family::<Label, Counter>::default();
        let counter = |direction| bytes.get_or_create(&[("direction", direction)]).clone();
        let (to_upstream, to_client) =
            (counter("client_to_upstream"), counter("upstream_to_client"));
        WsMetrics {
            open: Gauge::default(),
            to_upstream,
            to_client,
            bytes,
            closes: Family::default(),
        }
    }

    /// Data bytes relayed.
    pub fn bytes(&self, direction: Direction, n: usize) {
        let counter = match direction {
            Direction::ClientToUpstream => &self.to_upstream,
            Direction::UpstreamToClient => &self.to_client,
        };
        counter.inc_by(n as u64);
    }

    /// A close frame sent to a client: its code, and who ended the socket.
    pub fn close(&self, code: &str, by: &str) {
        self.closes
            .get_or_create(&[("code", code.to_owned()), ("by", by.to_owned())])
            .inc();
    }
}

pub struct SocketGauge(Gauge);

impl Drop for SocketGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The status classes, in the order of [`HttpMetrics::by_class`].
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<Label, Counter>,
    /// The family's counters, looked up once: a request only increments an atomic.
    by_class: [Counter; 5],
    upstream_seconds: Histogram,
    open_streams: Gauge,
}

impl HttpMetrics {
    fn new() -> Self {
        let requests = Family::<Label, Counter>::default();
        let by_class = CLASSES.map(|class| requests.get_or_create(&[("class", class)]).clone());
        HttpMetrics {
            requests,
            by_class,
            // 0.5 ms … ~16 s
            upstream_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            open_streams: Gauge::default(),
        }
    }

    pub fn request(&self, status: u16) {
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        self.by_class[class].inc();
    }

    /// Time until OpenCode's response headers arrived.
    pub fn upstream_latency(&self, seconds: f64) {
        self.upstream_seconds.observe(seconds);
    }

    /// Counts an open server-push stream until the returned guard is dropped.
    pub fn open_stream(&self) -> StreamGauge {
        self.open_streams.inc();
        StreamGauge(self.open_streams.clone())
    }
}

pub struct StreamGauge(Gauge);

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Identity metrics: how requests were identified, and signing-key fetches.
#[derive(Clone)]
pub struct AuthMetrics {
    outcomes: Family<Label, Counter>,
    /// The outcome of nearly every request with a token, looked up once.
    cache_hits: Counter,
    key_fetches: Family<Label, Counter>,
}

impl Default for AuthMetrics {
    fn default() -> Self {
        let outcomes = Family::<Label, Counter>::default();
        let cache_hits = outcomes.get_or_create(&[("outcome", "cache_hit")]).clone();
        AuthMetrics {
            outcomes,
            cache_hits,
            key_fetches: Family::default(),
        }
    }
}

impl AuthMetrics {
    /// `cache_hit`, `verified`, `missing`, `rejected` or `unavailable`.
    pub fn outcome(&self, outcome: &'static str) {
        if outcome == "cache_hit" {
            self.cache_hits.inc();
            return;
        }
        self.outcomes.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// `ok`, `not_found`, `error` or `busy`.
    pub fn key_fetch(&self, result: &'static str) {
        self.key_fetches.get_or_create(&[("result", result)]).inc();
    }
}

pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
    pub ws: WsMetrics,
    pub auth: AuthMetrics,
    pub llm: crate::relay::metrics::LlmMetrics,
}

impl Metrics {
    pub fn new(instances: &InstanceMetrics) -> Self {
        let http = HttpMetrics::new();
        let mut registry = Registry::default();
        registry.register(
            "chamberlain_http_requests",
            "Requests on the public listener by status class",
            http.requests.clone(),
        );
        registry.register(
            "chamberlain_upstream_latency_seconds",
            "Time from forwarding a request to OpenCode until its response headers",
            http.upstream_seconds.clone(),
        );
        registry.register(
            "chamberlain_open_streams",
            "Event streams currently open through the gateway",
            http.open_streams.clone(),
        );
        let ws = WsMetrics::new();
        registry.register(
            "chamberlain_websockets_open",
            "Websockets currently bridged to OpenCode",
            ws.open.clone(),
        );
        registry.register(
            "chamberlain_websocket_bytes",
            "Websocket data bytes relayed, by direction",
            ws.bytes.clone(),
        );
        registry.register(
            "chamberlain_websocket_closes",
            "Websocket close frames sent to clients, by code and by who ended the socket",
            ws.closes.clone(),
        );
        let auth = AuthMetrics::default();
        registry.register(
            "chamberlain_auth_requests",
            "Requests by how their identity was settled",
            auth.outcomes.clone(),
        );
        registry.register(
            "chamberlain_auth_key_fetches",
            "Signing-key and JWKS fetches, by result",
            auth.key_fetches.clone(),
        );
        instances.register(&mut registry);
        let llm = crate::relay::metrics::LlmMetrics::default();
        llm.register(&mut registry);
        Self {
            llm,
            registry,
            http,
            ws,
            auth,
        }
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_every_metric_family() {
        let instances = InstanceMetrics::new();
        let metrics = Metrics::new(&instances);
        metrics.http.request(204);
        metrics.http.request(503);
        metrics.http.upstream_latency(0.002);
        let guard = metrics.http.open_stream();
        let socket = metrics.ws.open_socket();
        metrics.ws.bytes(Direction::UpstreamToClient, 10);
        metrics.ws.close("1013", "gateway");
        metrics.auth.outcome("cache_hit");
        metrics.auth.key_fetch("not_found");
        instances.set_states(|_| 0);
        let text = metrics.encode().unwrap();
        for name in [
            "chamberlain_http_requests_total{class=\"2xx\"} 1",
            "chamberlain_http_requests_total{class=\"5xx\"} 1",
            "chamberlain_upstream_latency_seconds_bucket",
            "chamberlain_open_streams 1",
            "chamberlain_instances{state=\"ready\"} 0",
            "chamberlain_websockets_open 1",
            "chamberlain_websocket_bytes_total{direction=\"upstream_to_client\"} 10",
            "chamberlain_websocket_closes_total{code=\"1013\",by=\"gateway\"} 1",
            "chamberlain_auth_requests_total{outcome=\"cache_hit\"} 1",
            "chamberlain_auth_key_fetches_total{result=\"not_found\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
        drop(guard);
        drop(socket);
        assert!(metrics
            .encode()
            .unwrap()
            .contains("chamberlain_open_streams 0"));
    }
}
