//! `chamberlain_llm_requests_total{provider,outcome}` and
//! `chamberlain_llm_tokens_total{provider,model,direction}`. Per-user figures are in
//! `/stats`, not labels.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

type RequestLabel = [(&'static str, String); 2];
type TokenLabel = [(&'static str, String); 3];

/// Longest model name kept as a label value.
const MAX_MODEL_LABEL: usize = 100;

#[derive(Clone, Default)]
pub struct LlmMetrics {
    requests: Family<RequestLabel, Counter>,
    tokens: Family<TokenLabel, Counter>,
}

impl LlmMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "chamberlain_llm_requests",
            "Model calls through the relay, by provider and outcome",
            self.requests.clone(),
        );
        registry.register(
            "chamberlain_llm_tokens",
            "Tokens model calls through the relay used, by provider, model and direction",
            self.tokens.clone(),
        );
    }

    pub fn request(&self, provider: &str, outcome: &str) {
        self.requests
            .get_or_create(&[
                ("provider", provider.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    pub fn tokens(&self, provider: &str, model: &str, input: u64, output: u64) {
        let model: String = model.chars().take(MAX_MODEL_LABEL).collect();
        for (direction, n) in [("input", input), ("output", output)] {
            self.tokens
                .get_or_create(&[
                    ("provider", provider.to_owned()),
                    ("model", model.clone()),
                    ("direction", direction.to_owned()),
                ])
                .inc_by(n);
        }
    }
}
