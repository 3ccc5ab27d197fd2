//! Which OpenCode the gateway runs: the program, and the version of its package.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// `--opencode-bin`, or `opencode` on PATH, or `./node_modules/.bin/opencode`; always made
/// absolute because children run with their workspace as the working directory.
pub fn resolve(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidate = match configured {
        Some(path) if path.components().count() > 1 => Some(path.to_owned()),
        Some(name) => find_on_path(name),
        None => find_on_path(Path::new("opencode"))
            .or_else(|| Some(PathBuf::from("node_modules/.bin/opencode")).filter(|p| p.exists())),
    };
    let Some(path) = candidate else {
        bail!(
            "OpenCode not found: install it with `npm install` in the repository (see README) or pass \
             --opencode-bin"
        );
    };
    let absolute = std::fs::canonicalize(&path)
        .with_context(|| format!("OpenCode binary {} is not usable", path.display()))?;
    let meta = std::fs::metadata(&absolute)
        .with_context(|| format!("OpenCode binary {} is not usable", absolute.display()))?;
    use std::os::unix::fs::PermissionsExt;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        bail!(
            "OpenCode binary {} is not an executable file",
            absolute.display()
        );
    }
    Ok(absolute)
}

/// The version of the `opencode-ai` package the binary belongs to, from its
/// `package.json` (the launcher lives in `<package>/bin/`); `None` for another layout.
pub fn version(program: &Path) -> Option<String> {
    for dir in program.ancestors().skip(1).take(3) {
        let Ok(text) = std::fs::read_to_string(dir.join("package.json")) else {
            continue;
        };
        let package: serde_json::Value = serde_json::from_str(&text).ok()?;
        if package["name"].as_str()?.starts_with("opencode") {
            return package["version"].as_str().map(str::to_owned);
        }
    }
    None
}

fn find_on_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
