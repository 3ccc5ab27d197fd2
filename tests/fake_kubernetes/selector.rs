//! `labelSelector` and `fieldSelector` query parameters: parsing and matching.
//!
//! Label selectors take both syntaxes (`a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`,
//! `a notin (x,y)`); field selectors take `=`, `==` and `!=` on the field labels each resource
//! supports (anything else is a 400, as on a real server).

use serde_json::Value;

use crate::resources::Resource;

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Requirement>);

/// Splits at commas outside parentheses.
fn split_top_level(input: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&input[start..]);
    parts
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn parse_set(rest: &str) -> Option<Vec<String>> {
    let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

fn parse_requirement(text: &str) -> Result<Requirement, String> {
    let text = text.trim();
    let bad = || format!("unable to parse requirement: {text:?}");
    if let Some(key) = text.strip_prefix('!') {
        let key = key.trim();
        return valid_key(key)
            .then(|| Requirement::DoesNotExist(key.to_owned()))
            .ok_or_else(bad);
    }
    for (op, ctor) in [
        (
            "!=",
            Requirement::NotEquals as fn(String, String) -> Requirement,
        ),
        ("==", Requirement::Equals),
        ("=", Requirement::Equals),
    ] {
        if let Some((key, value)) = text.split_once(op) {
            let (key, value) = (key.trim(), value.trim());
            if !valid_key(key) || value.contains(['=', '!', '(', ')', ' ']) {
                return Err(bad());
            }
            return Ok(ctor(key.to_owned(), value.to_owned()));
        }
    }
    if let Some((key, rest)) = text.split_once(char::is_whitespace) {
        let rest = rest.trim_start();
        let key = key.to_owned();
        if let Some(set) = rest.strip_prefix("notin") {
            return parse_set(set)
                .map(|s| Requirement::NotIn(key, s))
                .ok_or_else(bad);
        }
        if let Some(set) = rest.strip_prefix("in") {
            return parse_set(set)
                .map(|s| Requirement::In(key, s))
                .ok_or_else(bad);
        }
        return Err(bad());
    }
    valid_key(text)
        .then(|| Requirement::Exists(text.to_owned()))
        .ok_or_else(bad)
}

impl LabelSelector {
    pub fn parse(input: &str) -> Result<Self, String> {
        if input.trim().is_empty() {
            return Ok(LabelSelector::default());
        }
        split_top_level(input)
            .into_iter()
            .map(parse_requirement)
            .collect::<Result<Vec<_>, _>>()
            .map(LabelSelector)
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, set) => get(k).is_some_and(|x| set.iter().any(|s| s == x)),
            Requirement::NotIn(k, set) => !get(k).is_some_and(|x| set.iter().any(|s| s == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(input: &str, resource: Resource) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in input.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                ));
            };
            let field = field.trim();
            let known = ["metadata.name", "metadata.namespace"].contains(&field)
                || resource.field_labels().contains(&field);
            if !known {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(FieldSelector(terms))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let path = if field == "source" {
                "source.component"
            } else {
                field
            };
            let actual = path
                .split('.')
                .try_fold(object, |v, k| v.get(k))
                .and_then(Value::as_str)
                .unwrap_or("");
            (actual == value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels}, "status": {"phase": "Running"}})
    }

    #[test]
    fn equality_and_existence() {
        let s = LabelSelector::parse("app=opencode,user==alice,tier!=db,managed,!gone").unwrap();
        assert!(s.matches(&obj(
            json!({"app": "opencode", "user": "alice", "managed": ""})
        )));
        assert!(!s.matches(&obj(json!({"app": "opencode", "user": "alice"}))));
        assert!(!s.matches(&obj(
            json!({"app": "opencode", "user": "alice", "managed": "1", "gone": "x"})
        )));
        assert!(!s.matches(&obj(
            json!({"app": "opencode", "user": "alice", "managed": "1", "tier": "db"})
        )));
    }

    #[test]
    fn set_based() {
        let s = LabelSelector::parse("env in (prod, dev),app notin (x),k8s.io/role").unwrap();
        assert_eq!(s.0.len(), 3);
        assert!(s.matches(&obj(json!({"env": "dev", "k8s.io/role": "a"}))));
        assert!(!s.matches(&obj(json!({"env": "qa", "k8s.io/role": "a"}))));
        assert!(!s.matches(&obj(json!({"env": "dev", "app": "x", "k8s.io/role": "a"}))));
    }

    #[test]
    fn rejects_nonsense() {
        assert!(LabelSelector::parse("a=b=c").is_err());
        assert!(LabelSelector::parse("a in x").is_err());
        assert!(LabelSelector::parse("a b").is_err());
        assert_eq!(LabelSelector::parse("").unwrap(), LabelSelector::default());
    }

    #[test]
    fn fields() {
        let s =
            FieldSelector::parse("metadata.name=p,status.phase!=Failed", Resource::Pods).unwrap();
        assert!(s.matches(&obj(json!({}))));
        assert!(FieldSelector::parse("spec.bogus=1", Resource::Pods).is_err());
        assert!(FieldSelector::parse("status.phase=Running", Resource::Secrets).is_err());
        let e = FieldSelector::parse("involvedObject.name=p", Resource::Events).unwrap();
        assert!(e.matches(&json!({"involvedObject": {"name": "p"}})));
    }
}
