//! Kubernetes `Status` errors: every failure the API answers is one of these, with the code,
//! reason and message wording of the real API server (clients match on reason and code).

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde_json::{json, Value};

use crate::resources::Resource;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String, details: Option<Value>) -> Self {
        ApiError {
            code,
            reason,
            message,
            details,
        }
    }

    pub fn not_found(resource: Resource, name: &str) -> Self {
        let plural = resource.plural();
        ApiError::new(
            404,
            "NotFound",
            format!("{plural} \"{name}\" not found"),
            Some(json!({"name": name, "kind": plural})),
        )
    }

    /// A path the server has no handler for.
    pub fn no_such_path() -> Self {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            Some(json!({})),
        )
    }

    pub fn already_exists(resource: Resource, name: &str) -> Self {
        let plural = resource.plural();
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{plural} \"{name}\" already exists"),
            Some(json!({"name": name, "kind": plural})),
        )
    }

    /// Optimistic concurrency or a delete precondition failed.
    pub fn conflict(resource: Resource, name: &str, why: &str) -> Self {
        let plural = resource.plural();
        ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {plural} \"{name}\": {why}"),
            Some(json!({"name": name, "kind": plural})),
        )
    }

    pub fn modified(resource: Resource, name: &str) -> Self {
        ApiError::conflict(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// A validation failure (422), one cause per bad field.
    pub fn invalid(resource: Resource, name: &str, causes: &[(String, String)]) -> Self {
        let kind = resource.kind();
        let list: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let message = match list.len() {
            1 => format!("{kind} \"{name}\" is invalid: {}", list[0]),
            _ => format!("{kind} \"{name}\" is invalid: [{}]", list.join(", ")),
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|(field, msg)| json!({"reason": "FieldValueInvalid", "message": msg, "field": field}))
            .collect();
        ApiError::new(
            422,
            "Invalid",
            message,
            Some(json!({"name": name, "kind": kind, "causes": causes})),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message.into(), None)
    }

    pub fn unauthorized() -> Self {
        ApiError::new(401, "Unauthorized", "Unauthorized".into(), None)
    }

    pub fn method_not_allowed() -> Self {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".into(),
            Some(json!({})),
        )
    }

    pub fn unsupported_media_type(got: &str) -> Self {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, \
                 application/strategic-merge-patch+json (got {got:?})"
            ),
            None,
        )
    }

    /// A watch asked for history this server no longer keeps.
    pub fn expired(asked: u64, oldest: u64) -> Self {
        ApiError::new(
            410,
            "Expired",
            format!("too old resource version: {asked} ({oldest})"),
            None,
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(500, "InternalError", message.into(), None)
    }

    pub fn to_json(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }

    pub fn response(&self) -> HttpResponse {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        HttpResponse::build(code).json(self.to_json())
    }
}
