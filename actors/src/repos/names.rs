//! The names a client may give: a clone's target name, a new shared repo's name.

pub const MAX_NAME: usize = 100;

/// Letters, digits, `.`, `_`, `-`; not starting with `.` (hidden, and the gateway's own
/// temporary names start with `.`); at most 100 characters.
pub fn validate(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "the name is {} characters long; at most {MAX_NAME} are allowed",
            name.len()
        ));
    }
    if name.starts_with('.') {
        return Err("the name must not start with '.'".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "the name contains {bad:?}; only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// The folder a clone of shared repository `source` gets unless the person names one: its
/// name without a `.git` ending (the bare repository's convention, not the project's name).
pub fn default_target(source: &str) -> String {
    match source.strip_suffix(".git") {
        Some(stem) if validate(stem).is_ok() => stem.to_owned(),
        _ => source.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_of_name_git_is_name() {
        assert_eq!(default_target("service.git"), "service");
        assert_eq!(default_target("service"), "service");
        assert_eq!(default_target("v1.2"), "v1.2");
        assert_eq!(
            default_target(".git"),
            ".git",
            "nothing left: keep the name"
        );
        assert_eq!(default_target("a.git.git"), "a.git");
    }

    #[test]
    fn names() {
        for ok in ["repo", "my-repo_2", "v1.2", &"a".repeat(100)] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "..",
            "a\0b",
            "a b",
            &"a".repeat(300),
            "ü",
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }
}
