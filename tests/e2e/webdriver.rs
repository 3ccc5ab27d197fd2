//! A small W3C WebDriver client over awc, driving Debian's headless Chromium through
//! `chromedriver`. Enough for the browser tests: navigate, find, click, type, read, run a
//! script, take a screenshot, read the console log.

use std::io::Write as _;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::process_group::ProcessGroup;
use crate::support::{eventually, poll_until, PATIENCE};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Driver {
    _process: ProcessGroup,
    /// The value of [`MARKER`] in the environment of chromedriver and all it starts.
    marker: String,
    base: String,
    client: awc::Client,
}

/// Set in chromedriver's environment, which Chromium and its helpers inherit.
const MARKER: &str = "CHAMBERLAIN_TEST_BROWSER";

pub struct Browser<'d> {
    driver: &'d Driver,
    session: String,
    _profile: tempfile::TempDir,
}

#[derive(Clone, Debug)]
pub struct Element(String);

/// Debian's packages for the browser tests.
const PACKAGES: [&str; 2] = ["chromium", "chromium-driver"];

/// Chromium and chromedriver, installed now if they are missing and the tests run as root
/// (once per test run; other browser tests wait for it). Without root, the test fails with
/// what to install.
fn ensure_browser() {
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let present = || {
        std::path::Path::new("/usr/bin/chromium").exists()
            && Command::new("chromedriver")
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    };
    let result = INSTALLED.get_or_init(|| {
        if present() {
            return Ok(());
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(format!(
                "the browser tests need Chromium and its driver: install the Debian packages {} \
                 (`sudo apt-get install {}`), or run the tests as root, which installs them",
                PACKAGES.join(" and "),
                PACKAGES.join(" ")
            ));
        }
        // Straight to the terminal: the test harness hides what tests print.
        let _ = writeln!(
            std::io::stderr(),
            "browser tests: installing Chromium and its driver (Debian packages {})",
            PACKAGES.join(", ")
        );
        let apt = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("apt-get: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "apt-get {}: {}\n{}",
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        apt(&["update", "-qq"])?;
        let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
        install.extend(PACKAGES);
        apt(&install)?;
        if present() {
            Ok(())
        } else {
            Err("Chromium or chromedriver still missing after installing them".to_owned())
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

impl Driver {
    /// Starts chromedriver (installing Chromium first when it is missing; see
    /// [`ensure_browser`]). chromedriver, Chromium and everything they start share a process
    /// group and a marker in their environment, so dropping the driver ends them all, even
    /// when a test fails or panics.
    pub async fn start() -> Driver {
        ensure_browser();
        end_browsers_of_ended_runs();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let marker = format!("{}-{port}", std::process::id());
        let process = ProcessGroup::spawn(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .env(MARKER, &marker)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("chromedriver starts");
        let driver = Driver {
            _process: process,
            marker,
            base: format!("http://127.0.0.1:{port}"),
            client: awc::Client::builder()
                .timeout(Duration::from_secs(120))
                .finish(),
        };
        eventually("chromedriver ready", PATIENCE, async || {
            match driver.call("GET", "/status", None).await {
                Ok(v) if v["ready"] == true => Ok(()),
                Ok(v) => Err(v.to_string()),
                Err(e) => Err(e),
            }
        })
        .await;
        driver
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.client.get(url),
            "DELETE" => self.client.delete(url),
            _ => self.client.post(url),
        };
        let mut resp = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        }
        .map_err(|e| format!("{method} {path}: {e}"))?;
        let bytes = resp
            .body()
            .limit(64 << 20)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("{method} {path}: {e}"))?;
        if resp.status().is_success() {
            Ok(v["value"].clone())
        } else {
            Err(format!("{method} {path}: {}", v["value"]))
        }
    }

    /// A fresh browser profile (its own cookies): one per simulated person.
    pub async fn browser(&self) -> Browser<'_> {
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900",
                         format!("--user-data-dir={}", profile.path().display())],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let v = self
            .call("POST", "/session", Some(caps))
            .await
            .unwrap_or_else(|e| panic!("cannot start Chromium: {e}"));
        Browser {
            driver: self,
            session: v["sessionId"].as_str().expect("session id").to_owned(),
            _profile: profile,
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Whatever left the group (a helper that made a session of its own) still carries
        // the marker; the group itself goes when `_process` is dropped, after this.
        kill_marked(|marker| marker == self.marker);
    }
}

/// Ends what a test run that is gone (killed before its drivers were dropped) left running:
/// its marker names its process id.
fn end_browsers_of_ended_runs() {
    kill_marked(|marker| {
        marker
            .split_once('-')
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
            .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    });
}

/// Kills every process whose environment holds [`MARKER`] with a value `chosen` accepts.
fn kill_marked(chosen: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let prefix = format!("{MARKER}=");
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let ours = env.split(|&b| b == 0).any(|var| {
            std::str::from_utf8(var)
                .ok()
                .and_then(|var| var.strip_prefix(&prefix))
                .is_some_and(&chosen)
        });
        if ours {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Browser<'_> {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.driver
            .call(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    pub async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub async fn url(&self) -> String {
        self.call("GET", "/url", None)
            .await
            .unwrap_or_default()
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn find_now(&self, css: &str) -> Option<Element> {
        let v = self
            .call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .ok()?;
        v[ELEMENT].as_str().map(|id| Element(id.to_owned()))
    }

    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.call(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .await
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e[ELEMENT].as_str().map(|id| Element(id.to_owned())))
        .collect()
    }

    /// Waits (up to [`PATIENCE`]) for an element; fails the test otherwise.
    pub async fn find(&self, css: &str) -> Element {
        match poll_until(PATIENCE, async || self.find_now(css).await.ok_or(())).await {
            Ok(e) => e,
            Err(()) => panic!("no element {css:?} on {}", self.url().await),
        }
    }

    /// Waits until the element `css` can take input: there, laid out, visible, and neither
    /// disabled nor read-only.
    pub async fn wait_interactable(&self, css: &str) {
        let script = format!(
            "var e = document.querySelector({css:?}); if (!e) return false; \
             var r = e.getBoundingClientRect(), s = getComputedStyle(e); \
             return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && \
             s.display !== 'none' && !e.disabled && e.getAttribute('aria-disabled') !== 'true' && \
             (e.isContentEditable || ((e.tagName === 'TEXTAREA' || e.tagName === 'INPUT') && !e.readOnly));"
        );
        self.wait_until(&format!("{css} ready for input"), &script)
            .await
    }

    /// Waits (up to [`PATIENCE`]) until `script` (a function body) returns true.
    pub async fn wait_until(&self, what: &str, script: &str) {
        let seen = poll_until(PATIENCE, async || {
            match self.execute(script, json!([])).await {
                Value::Bool(true) => Ok(()),
                other => Err(other),
            }
        })
        .await;
        if let Err(last) = seen {
            panic!(
                "never: {what} (at {}; the script said {last})",
                self.url().await
            );
        }
    }

    pub async fn click(&self, e: &Element) {
        self.call("POST", &format!("/element/{}/click", e.0), Some(json!({})))
            .await
            .unwrap_or_else(|err| panic!("click: {err}"));
    }

    /// Finds `css` and does `action` (`click`, `value`) to it, again if the page re-rendered
    /// it in between (a stale element) or has not made it usable yet (not interactable):
    /// pages built by frameworks replace and enable nodes at will. Up to [`PATIENCE`].
    async fn on_css(&self, css: &str, action: &str, body: Value) {
        eventually(
            &format!("{action} {css}: it kept going stale or was never interactable"),
            PATIENCE,
            async || {
                let e = self.find(css).await;
                let path = format!("/element/{}/{action}", e.0);
                match self.call("POST", &path, Some(body.clone())).await {
                    Ok(_) => Ok(()),
                    Err(err)
                        if err.contains("stale element") || err.contains("not interactable") =>
                    {
                        Err(err)
                    }
                    Err(err) => panic!("{action} {css}: {err}"),
                }
            },
        )
        .await
    }

    pub async fn click_css(&self, css: &str) {
        self.on_css(css, "click", json!({})).await
    }

    pub async fn type_css(&self, css: &str, text: &str) {
        self.on_css(css, "value", json!({ "text": text })).await
    }

    pub async fn clear(&self, e: &Element) {
        self.call("POST", &format!("/element/{}/clear", e.0), Some(json!({})))
            .await
            .unwrap_or_else(|err| panic!("clear: {err}"));
    }

    pub async fn type_text(&self, e: &Element, text: &str) {
        self.call(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        )
        .await
        .unwrap_or_else(|err| panic!("type: {err}"));
    }

    pub async fn text(&self, e: &Element) -> String {
        self.call("GET", &format!("/element/{}/text", e.0), None)
            .await
            .unwrap_or_default()
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn property(&self, e: &Element, name: &str) -> Value {
        self.call("GET", &format!("/element/{}/property/{name}", e.0), None)
            .await
            .unwrap_or_default()
    }

    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
        .unwrap_or_else(|e| panic!("script failed: {e}"))
    }

    /// Runs an async script; `arguments[arguments.length - 1]` is the callback.
    pub async fn execute_async(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/async",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
        .unwrap_or_else(|e| panic!("async script failed: {e}"))
    }

    /// Waits until the page has drawn two more frames: what it was just given (a terminal's
    /// output, an opened tab) is on the screen for a screenshot.
    pub async fn wait_painted(&self) {
        self.execute_async(
            "var done = arguments[arguments.length - 1];
             requestAnimationFrame(function () { requestAnimationFrame(function () { done(true); }); });",
        )
        .await;
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await
        .unwrap_or_else(|e| panic!("resize: {e}"));
    }

    pub async fn screenshot(&self) -> Vec<u8> {
        let v = self
            .call("GET", "/screenshot", None)
            .await
            .expect("screenshot");
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("PNG")
    }

    /// Fails the test if the console holds errors (level SEVERE) since the last look, except
    /// the browser's note of an HTTP status the test expects (`expected`: `(path suffix,
    /// status)`, e.g. a 409 the page shows to its user on purpose). `page` names the page.
    pub async fn assert_clean_console(&self, page: &str, expected: &[(&str, u16)]) {
        let errors = self.console_errors(expected).await;
        assert!(errors.is_empty(), "console errors on {page}: {errors:?}");
    }

    async fn console_errors(&self, expected: &[(&str, u16)]) -> Vec<String> {
        let v = self
            .call("POST", "/se/log", Some(json!({"type": "browser"})))
            .await
            .unwrap_or_else(|e| panic!("reading the console: {e}"));
        v.as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|m| m["level"] == "SEVERE")
            .map(|m| m["message"].as_str().unwrap_or_default().to_owned())
            .filter(|m| {
                !expected.iter().any(|(path, status)| {
                    m.split_whitespace()
                        .next()
                        .is_some_and(|url| url.ends_with(path))
                        && m.contains(&format!("status of {status} "))
                })
            })
            .collect()
    }

    pub async fn quit(self) {
        let _ = self.call("DELETE", "", None).await;
    }
}
