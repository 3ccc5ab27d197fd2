//! PATCH bodies: JSON merge patch (RFC 7386, also used for strategic merge patch) and JSON
//! patch (RFC 6902).
//!
//! Strategic merge patch is applied as a merge patch: right for maps (labels, annotations,
//! status fields), wrong for lists the real server merges by key (containers, env,
//! conditions), which are replaced whole here.

use serde_json::Value;

/// RFC 7386: objects merge recursively, `null` removes a member, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(map) = target else { return };
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            merge(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// The reference tokens of a JSON pointer (`/a/b~1c` → `a`, `b/c`).
fn tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer {pointer:?}"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn parent<'a>(doc: &'a mut Value, path: &[String]) -> Result<&'a mut Value, String> {
    let mut at = doc;
    for token in path {
        at = match at {
            Value::Object(map) => map.get_mut(token),
            Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("path element {token:?} does not exist"))?;
    }
    Ok(at)
}

fn add(doc: &mut Value, pointer: &str, value: Value) -> Result<(), String> {
    let path = tokens(pointer)?;
    let Some((last, init)) = path.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent(doc, init)? {
        Value::Object(map) => {
            map.insert(last.clone(), value);
        }
        Value::Array(items) => {
            let index = if last == "-" {
                items.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= items.len())
                    .ok_or_else(|| format!("array index {last:?} out of range"))?
            };
            items.insert(index, value);
        }
        _ => return Err(format!("cannot add at {pointer:?}")),
    }
    Ok(())
}

fn remove(doc: &mut Value, pointer: &str) -> Result<Value, String> {
    let path = tokens(pointer)?;
    let (last, init) = path
        .split_last()
        .ok_or_else(|| "cannot remove the whole document".to_owned())?;
    let missing = || format!("unable to remove nonexistent key {last:?}");
    match parent(doc, init)? {
        Value::Object(map) => map.remove(last).ok_or_else(missing),
        Value::Array(items) => last
            .parse::<usize>()
            .ok()
            .filter(|i| *i < items.len())
            .map(|i| items.remove(i))
            .ok_or_else(missing),
        _ => Err(missing()),
    }
}

fn get(doc: &Value, pointer: &str) -> Result<Value, String> {
    doc.pointer(pointer)
        .cloned()
        .ok_or_else(|| format!("path {pointer:?} does not exist"))
}

/// RFC 6902, all six operations; the first failing operation fails the whole patch.
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or_else(|| "a JSON patch must be an array of operations".to_owned())?;
    let mut work = doc.clone();
    for op in ops {
        let path = op["path"]
            .as_str()
            .ok_or_else(|| "operation has no path".to_owned())?;
        let from = || {
            op["from"]
                .as_str()
                .ok_or_else(|| "operation has no from".to_owned())
        };
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| "operation has no value".to_owned())
        };
        match op["op"].as_str().unwrap_or("") {
            "add" => add(&mut work, path, value()?)?,
            "remove" => {
                remove(&mut work, path)?;
            }
            "replace" => {
                remove(&mut work, path)?;
                add(&mut work, path, value()?)?;
            }
            "move" => {
                let moved = remove(&mut work, from()?)?;
                add(&mut work, path, moved)?;
            }
            "copy" => {
                let copied = get(&work, from()?)?;
                add(&mut work, path, copied)?;
            }
            "test" => {
                if get(&work, path)? != value()? {
                    return Err(format!("testing value {path} failed"));
                }
            }
            other => return Err(format!("unexpected operation {other:?}")),
        }
    }
    *doc = work;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386_examples() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));

        let mut doc = json!({"a": ["b"]});
        merge(&mut doc, &json!({"a": "c"}));
        assert_eq!(doc, json!({"a": "c"}));

        let mut doc = json!({"a": "foo"});
        merge(&mut doc, &json!({"b": {"c": null, "d": 1}}));
        assert_eq!(doc, json!({"a": "foo", "b": {"d": 1}}));

        let mut doc = json!({"metadata": {"annotations": {"x": "1"}}});
        merge(&mut doc, &json!({"metadata": {"annotations": {"y": "2"}}}));
        assert_eq!(
            doc,
            json!({"metadata": {"annotations": {"x": "1", "y": "2"}}})
        );
    }

    #[test]
    fn json_patch_ops() {
        let mut doc = json!({"metadata": {"labels": {"a/b": "1"}}, "l": [1, 2]});
        json_patch(
            &mut doc,
            &json!([
                {"op": "test", "path": "/metadata/labels/a~1b", "value": "1"},
                {"op": "replace", "path": "/metadata/labels/a~1b", "value": "2"},
                {"op": "add", "path": "/l/-", "value": 3},
                {"op": "remove", "path": "/l/0"},
                {"op": "copy", "from": "/l", "path": "/m"}
            ]),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"labels": {"a/b": "2"}}, "l": [2, 3], "m": [2, 3]})
        );
        let before = doc.clone();
        assert!(json_patch(
            &mut doc,
            &json!([{"op": "add", "path": "/x", "value": 1}, {"op": "remove", "path": "/nope"}])
        )
        .is_err());
        assert_eq!(doc, before);
    }
}
