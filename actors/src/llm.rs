//! The organisation's model keys stay in the gateway: which providers of `shared/auth/auth.json`
//! are relayed, where their calls really go, and the per-start grants the relay accepts in
//! place of a key. No HTTP serving here; the gateway's relay (`src/relay/`) reads the grants.
//!
//! An instance is given, per relayed provider, `options.baseURL` pointing at the relay and
//! `options.apiKey` set to a token of its own start (in `OPENCODE_CONFIG_CONTENT`). The token
//! names the user; it is forgotten when that process is gone.

use std::collections::BTreeMap;
use std::sync::Arc;

use dashmap::DashMap;
use serde_json::{json, Map, Value};

/// How a provider expects its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyHeader {
    /// `Authorization: Bearer <key>` (OpenAI and every OpenAI-compatible API).
    Bearer,
    /// `x-api-key: <key>` (Anthropic).
    XApiKey,
}

/// A provider whose calls go through the relay.
#[derive(Clone)]
pub struct RelayedProvider {
    pub id: String,
    /// The real base URL, without a trailing `/` (e.g. `https://api.openai.com/v1`).
    pub upstream: String,
    pub key: String,
    pub header: KeyHeader,
}

impl std::fmt::Debug for RelayedProvider {
    /// Without the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayedProvider")
            .field("id", &self.id)
            .field("upstream", &self.upstream)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// OpenCode's built-in providers the relay knows the address of (the SDK defaults), and how
/// they take their key. Others need `--llm-upstream id=url` or a `baseURL` in the org config.
const BUILT_IN: &[(&str, &str, KeyHeader)] = &[
    ("openai", "https://api.openai.com/v1", KeyHeader::Bearer),
    (
        "anthropic",
        "https://api.anthropic.com/v1",
        KeyHeader::XApiKey,
    ),
    (
        "openrouter",
        "https://openrouter.ai/api/v1",
        KeyHeader::Bearer,
    ),
    ("groq", "https://api.groq.com/openai/v1", KeyHeader::Bearer),
    ("mistral", "https://api.mistral.ai/v1", KeyHeader::Bearer),
    ("xai", "https://api.x.ai/v1", KeyHeader::Bearer),
    ("deepseek", "https://api.deepseek.com/v1", KeyHeader::Bearer),
];

/// The relay as instances see it.
#[derive(Clone)]
pub struct RelaySettings {
    /// `http://127.0.0.1:<port>`: the relay's loopback listener.
    pub base_url: String,
    /// `--llm-upstream`: provider id → base URL, over the built-in table.
    pub upstreams: BTreeMap<String, String>,
    pub grants: Grants,
}

impl std::fmt::Debug for RelaySettings {
    /// Without the live tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelaySettings")
            .field("base_url", &self.base_url)
            .field("upstreams", &self.upstreams)
            .field("grants", &self.grants.len())
            .finish()
    }
}

/// Which user a token belongs to, and what it may reach.
#[derive(Clone, Debug)]
pub struct Grant {
    pub user_id: String,
    pub providers: Arc<BTreeMap<String, RelayedProvider>>,
}

/// Live tokens; written by instances (a grant per start), read by the relay.
pub type Grants = Arc<DashMap<String, Grant>>;

/// Where a relay looks for a grant it does not hold: a start another gateway made (replicas
/// in front of one cluster). `Ok(None)` for a token nobody granted; `caller` is the
/// address the call came from, which bounds the lookups one caller causes.
pub trait GrantLookup: Send + Sync {
    fn find(
        &self,
        token: &str,
        caller: Option<std::net::IpAddr>,
    ) -> futures_util::future::LocalBoxFuture<'static, Result<Option<Grant>, String>>;
}

/// A token valid for as long as this lives (kept with the process it was made for).
#[derive(Debug)]
pub struct GrantGuard {
    grants: Grants,
    token: String,
}

impl GrantGuard {
    pub fn new(grants: &Grants, token: String, grant: Grant) -> Self {
        grants.insert(token.clone(), grant);
        Self {
            grants: Arc::clone(grants),
            token,
        }
    }
}

impl Drop for GrantGuard {
    fn drop(&mut self) {
        self.grants.remove(&self.token);
    }
}

/// What the organisation's files make of one start.
#[derive(Debug, Default)]
pub struct Plan {
    pub providers: BTreeMap<String, RelayedProvider>,
    /// Providers of the org's `auth.json` that cannot be relayed, and why: their keys are not
    /// handed to anyone.
    pub skipped: Vec<(String, String)>,
}

/// Reads the org's `auth.json` (OpenCode's format: `{"<id>": {"type": "api", "key": "…"}}`)
/// and `opencode.json`, and decides which providers are relayed and where to.
pub fn plan(auth: &Value, config: Option<&Value>, upstreams: &BTreeMap<String, String>) -> Plan {
    let mut plan = Plan::default();
    let Some(entries) = auth.as_object() else {
        return plan;
    };
    for (id, entry) in entries {
        let key = match (
            entry.get("type").and_then(Value::as_str),
            entry.get("key").and_then(Value::as_str),
        ) {
            (Some("api"), Some(key)) if !key.is_empty() => key.to_owned(),
            (Some("api"), _) => {
                plan.skipped
                    .push((id.clone(), "an API key entry without a key".to_owned()));
                continue;
            }
            (kind, _) => {
                plan.skipped.push((
                    id.clone(),
                    format!(
                        "only API keys (\"type\": \"api\") are relayed, not {}",
                        kind.unwrap_or("an entry without a type")
                    ),
                ));
                continue;
            }
        };
        let custom = config
            .and_then(|c| c.get("provider"))
            .and_then(|p| p.get(id));
        let custom_url = custom
            .and_then(|p| p.get("options"))
            .and_then(|o| o.get("baseURL"))
            .and_then(Value::as_str);
        let built_in = BUILT_IN.iter().find(|(name, _, _)| name == id);
        let upstream = upstreams
            .get(id)
            .map(String::as_str)
            .or(custom_url)
            .or(built_in.map(|(_, url, _)| *url));
        let Some(upstream) = upstream else {
            plan.skipped.push((
                id.clone(),
                "no known address: give it a baseURL in shared/config/opencode.json or \
                 --llm-upstream"
                    .to_owned(),
            ));
            continue;
        };
        let anthropic_sdk = custom
            .and_then(|p| p.get("npm"))
            .and_then(Value::as_str)
            .is_some_and(|npm| npm == "@ai-sdk/anthropic");
        let header = match built_in {
            _ if anthropic_sdk => KeyHeader::XApiKey,
            Some((_, _, header)) => *header,
            None => KeyHeader::Bearer,
        };
        plan.providers.insert(
            id.clone(),
            RelayedProvider {
                id: id.clone(),
                upstream: upstream.trim_end_matches('/').to_owned(),
                key,
                header,
            },
        );
    }
    plan
}

/// The org's config as one instance gets it: every relayed provider pointed at the relay,
/// with the start's token as its key.
pub fn instance_config(
    config: Option<&Value>,
    providers: &BTreeMap<String, RelayedProvider>,
    relay_base: &str,
    token: &str,
) -> Value {
    let mut config = match config {
        Some(Value::Object(map)) => Value::Object(map.clone()),
        _ => json!({}),
    };
    if providers.is_empty() {
        return config;
    }
    let Some(root) = config.as_object_mut() else {
        return config;
    };
    let section = root
        .entry("provider")
        .or_insert_with(|| Value::Object(Map::new()));
    if !section.is_object() {
        *section = Value::Object(Map::new());
    }
    let Some(section) = section.as_object_mut() else {
        return config;
    };
    for id in providers.keys() {
        let provider = section
            .entry(id.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !provider.is_object() {
            *provider = Value::Object(Map::new());
        }
        let Some(provider) = provider.as_object_mut() else {
            continue;
        };
        let options = provider
            .entry("options")
            .or_insert_with(|| Value::Object(Map::new()));
        if !options.is_object() {
            *options = Value::Object(Map::new());
        }
        if let Some(options) = options.as_object_mut() {
            options.insert(
                "baseURL".into(),
                Value::String(format!("{relay_base}/{id}")),
            );
            options.insert("apiKey".into(), Value::String(token.to_owned()));
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstreams(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn built_in_custom_and_overridden_providers_are_relayed_to_their_addresses() {
        let auth = json!({
            "openai": {"type": "api", "key": "sk-open"},
            "anthropic": {"type": "api", "key": "sk-ant"},
            "mock": {"type": "api", "key": "sk-mock"},
            "corp": {"type": "api", "key": "sk-corp"},
            "groq": {"type": "api", "key": "sk-groq"},
        });
        let config = json!({"provider": {
            "mock": {"npm": "@ai-sdk/openai-compatible", "options": {"baseURL": "http://127.0.0.1:9/v1/"}},
            "corp": {"npm": "@ai-sdk/anthropic", "options": {"baseURL": "https://llm.corp/v1"}},
        }});
        let plan = plan(
            &auth,
            Some(&config),
            &upstreams(&[("groq", "https://groq.proxy/v1")]),
        );
        let get = |id: &str| {
            let p = &plan.providers[id];
            (p.upstream.as_str(), p.key.as_str(), p.header)
        };
        assert_eq!(
            get("openai"),
            ("https://api.openai.com/v1", "sk-open", KeyHeader::Bearer)
        );
        assert_eq!(
            get("anthropic"),
            ("https://api.anthropic.com/v1", "sk-ant", KeyHeader::XApiKey)
        );
        assert_eq!(
            get("mock"),
            ("http://127.0.0.1:9/v1", "sk-mock", KeyHeader::Bearer)
        );
        assert_eq!(
            get("corp"),
            ("https://llm.corp/v1", "sk-corp", KeyHeader::XApiKey)
        );
        assert_eq!(
            get("groq"),
            ("https://groq.proxy/v1", "sk-groq", KeyHeader::Bearer)
        );
        assert!(plan.skipped.is_empty());
    }

    #[test]
    fn keys_are_not_in_debug_output() {
        let plan = plan(
            &json!({"openai": {"type": "api", "key": "sk-secret"}}),
            None,
            &BTreeMap::new(),
        );
        assert!(!format!("{plan:?}").contains("sk-secret"));
    }

    #[test]
    fn what_cannot_be_relayed_is_skipped_with_a_reason() {
        let auth = json!({
            "bedrock": {"type": "api", "key": "k"},
            "github-copilot": {"type": "oauth", "refresh": "r"},
            "empty": {"type": "api", "key": ""},
        });
        let plan = plan(&auth, None, &BTreeMap::new());
        assert!(plan.providers.is_empty());
        let reasons: BTreeMap<_, _> = plan.skipped.into_iter().collect();
        assert!(reasons["bedrock"].starts_with("no known address"));
        assert!(reasons["github-copilot"].contains("not oauth"));
        assert_eq!(reasons["empty"], "an API key entry without a key");
    }

    #[test]
    fn the_instance_config_points_relayed_providers_at_the_relay() {
        let config = json!({"model": "mock/m1", "provider": {"mock": {
            "npm": "@ai-sdk/openai-compatible",
            "options": {"baseURL": "http://real/v1", "apiKey": "{env:X}", "timeout": 5},
            "models": {"m1": {}}
        }}});
        let auth = json!({"mock": {"type": "api", "key": "sk-mock"}, "openai": {"type": "api", "key": "sk-o"}});
        let plan = plan(&auth, Some(&config), &BTreeMap::new());
        let out = instance_config(Some(&config), &plan.providers, "http://127.0.0.1:5", "tok");
        assert_eq!(out["model"], "mock/m1");
        assert_eq!(
            out["provider"]["mock"]["options"]["baseURL"],
            "http://127.0.0.1:5/mock"
        );
        assert_eq!(out["provider"]["mock"]["options"]["apiKey"], "tok");
        assert_eq!(out["provider"]["mock"]["options"]["timeout"], 5);
        assert_eq!(out["provider"]["mock"]["models"]["m1"], json!({}));
        assert_eq!(
            out["provider"]["openai"]["options"]["baseURL"],
            "http://127.0.0.1:5/openai"
        );
        assert!(!out.to_string().contains("sk-"), "{out}");
    }
}
