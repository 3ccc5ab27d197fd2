//! What the relay lets through: which calls are model calls, which provider names and
//! which request headers are accepted. The org key opens much more at a provider (files,
//! batches, fine-tuning, an organisation's admin endpoints, what other users stored there);
//! it is lent for model calls only.

use actix_web::http::header::HeaderName;
use actix_web::http::Method;

/// Whether `tail` (the path under the provider's base URL) is a model call.
pub fn is_model_call(method: &Method, tail: &str) -> bool {
    if *method == Method::GET {
        return tail == "models" || tail.strip_prefix("models/").is_some_and(is_model_id);
    }
    *method == Method::POST
        && matches!(
            tail,
            "chat/completions"
                | "completions"
                | "responses"
                | "embeddings"
                | "messages"
                | "messages/count_tokens"
        )
}

/// A model id in a path: letters, digits and `._:-`, in `/`-separated segments none of which
/// is empty, `.` or `..`. Nothing encoded: a `%` could be decoded again further on.
fn is_model_id(id: &str) -> bool {
    !id.is_empty()
        && id.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
        })
}

/// A provider id as OpenCode names providers (also what may reach the log and a metric).
pub fn is_provider_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Request headers passed to the provider: what SDKs send to describe the call. Everything
/// else stays (connection headers, the caller's key, and headers that would pick what the
/// org pays for, such as `OpenAI-Organization` or `OpenAI-Project`).
pub fn crosses(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "content-type"
            | "accept"
            | "user-agent"
            | "anthropic-version"
            | "anthropic-beta"
            | "openai-beta"
            | "x-session-id"
            | "x-session-affinity"
            | "session-id"
            | "originator"
    ) || name.starts_with("x-stainless-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_model_calls_are_relayed() {
        for (method, tail) in [
            (Method::POST, "chat/completions"),
            (Method::POST, "responses"),
            (Method::POST, "messages"),
            (Method::POST, "messages/count_tokens"),
            (Method::POST, "embeddings"),
            (Method::GET, "models"),
            (Method::GET, "models/gpt-4o"),
            (Method::GET, "models/meta-llama/llama-3.1:8b"),
        ] {
            assert!(is_model_call(&method, tail), "{method} {tail}");
        }
        for (method, tail) in [
            (Method::GET, "files"),
            (Method::POST, "files"),
            (Method::POST, "batches"),
            (Method::POST, "fine_tuning/jobs"),
            (Method::GET, "organization/users"),
            (Method::DELETE, "models/ft-x"),
            (Method::GET, "chat/completions"),
            (Method::GET, "models/../files"),
            (Method::GET, "models/%2E%2E/files"),
            (Method::GET, "models/a//b"),
            (Method::GET, "models/"),
            (Method::POST, "chat/completions/../../files"),
            (Method::POST, "chat/completions/"),
        ] {
            assert!(!is_model_call(&method, tail), "{method} {tail}");
        }
    }

    #[test]
    fn provider_ids_and_headers() {
        assert!(is_provider_id("openai") && is_provider_id("my-corp.llm_2"));
        for bad in ["", "a b", "a\nb", "a%0Ab", &"x".repeat(65)] {
            assert!(!is_provider_id(bad), "{bad:?}");
        }
        for (name, passes) in [
            ("content-type", true),
            ("anthropic-version", true),
            ("x-stainless-os", true),
            ("authorization", false),
            ("x-api-key", false),
            ("openai-organization", false),
            ("openai-project", false),
            ("host", false),
            ("connection", false),
        ] {
            assert_eq!(crosses(&HeaderName::from_static(name)), passes, "{name}");
        }
    }
}
