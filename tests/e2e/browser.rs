//! The pages a person sees, in a real headless Chromium (Debian `chromium` and
//! `chromium-driver`, installed by `.ci/run`): the portal, the starting page, OpenCode's
//! own web UI through the gateway, and two people side by side.

use std::time::Duration;

use serde_json::json;

use crate::support::{poll_until, Gateway};
use crate::webdriver::{Browser, Driver};

/// Signs `user` in with the dev login form's cookie and lands on `next`.
pub(crate) async fn sign_in(browser: &Browser<'_>, gw: &Gateway, user: &str, next: &str) {
    browser
        .goto(&gw.url(&format!("/-/login?user={user}&next={next}")))
        .await;
}

pub(crate) fn add_folder_repo(gw: &Gateway, name: &str, description: &str) {
    let dir = gw.data.path().join("shared/repos").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("README.md"), format!("# {name}\n")).unwrap();
    std::fs::write(dir.join(".description"), description).unwrap();
}

/// Where screenshots are kept for a person to look at after a run.
pub(crate) fn artifacts() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn visible_repos(browser: &Browser<'_>) -> Vec<String> {
    let mut names = Vec::new();
    for e in browser.find_all("#repos li.repo .repo-name").await {
        names.push(browser.text(&e).await);
    }
    names
}

#[actix_web::test]
async fn the_portal_lists_searches_and_clones() {
    let gw = Gateway::fake(&[]);
    add_folder_repo(&gw, "alpha-service", "The service template");
    add_folder_repo(&gw, "beta-web", "A web front end");
    add_folder_repo(&gw, "gamma-tools", "Handy scripts");
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    sign_in(&browser, &gw, "alice", "/-/").await;

    let name = browser.find("#user-name").await;
    browser
        .wait_until(
            "the user is shown",
            "return document.getElementById('user-name').textContent === 'alice'",
        )
        .await;
    assert_eq!(browser.text(&name).await, "alice");
    assert_eq!(
        browser.text(&browser.find("#user-email").await).await,
        "alice@localhost"
    );
    browser
        .wait_until(
            "three repositories",
            "return document.querySelectorAll('#repos li.repo').length === 3",
        )
        .await;
    assert_eq!(
        visible_repos(&browser).await,
        ["alpha-service", "beta-web", "gamma-tools"]
    );

    // Search filters by name and description.
    let search = browser.find("#repo-search").await;
    browser.type_text(&search, "front").await;
    browser
        .wait_until(
            "filtered",
            "return document.querySelectorAll('#repos li.repo').length === 1",
        )
        .await;
    assert_eq!(visible_repos(&browser).await, ["beta-web"]);
    browser.clear(&search).await;
    browser.type_text(&search, "a").await;
    browser.execute("document.getElementById('repo-search').value=''; document.getElementById('repo-search').dispatchEvent(new Event('input')); return null;", json!([])).await;
    assert_eq!(visible_repos(&browser).await.len(), 3);

    // The dialog refuses a bad name before anything is sent.
    browser
        .click_css("#repos li.repo[data-name='alpha-service'] button.clone")
        .await;
    let target = browser.find("#clone-target").await;
    assert_eq!(
        browser.property(&target, "value").await,
        "alpha-service",
        "pre-filled"
    );
    browser.clear(&target).await;
    browser.type_text(&target, "../x").await;
    let error = browser.find("#clone-error").await;
    assert!(
        !browser.text(&error).await.is_empty(),
        "no validation message"
    );
    let submit = browser.find("#clone-submit").await;
    assert_eq!(browser.property(&submit, "disabled").await, true);
    assert_eq!(gw.get("alice", "/-/api/workspace").await.json(), json!([]));

    // A good name clones, and the project appears under "My workspace".
    browser.clear(&target).await;
    browser.type_text(&target, "alpha").await;
    assert_eq!(browser.text(&error).await, "");
    browser.click(&submit).await;
    browser
        .wait_until(
            "the clone succeeded",
            "return !document.getElementById('clone-done').hidden",
        )
        .await;
    browser
        .wait_until(
            "the project is listed",
            "return !!document.querySelector(\"#workspace li.project[data-name='alpha']\")",
        )
        .await;
    browser.click_css("#clone-cancel").await;

    // The same name again: the server's 409 is shown in the dialog.
    browser
        .click_css("#repos li.repo[data-name='alpha-service'] button.clone")
        .await;
    let target = browser.find("#clone-target").await;
    browser.clear(&target).await;
    browser.type_text(&target, "alpha").await;
    browser.click_css("#clone-submit").await;
    browser
        .wait_until(
            "the conflict is shown",
            "return document.getElementById('clone-error').textContent.indexOf('already exists') >= 0",
        )
        .await;

    // The instance card reacts: start, then ready.
    browser.click_css("#clone-cancel").await;
    browser.click_css("#start").await;
    browser
        .wait_until(
            "the instance is ready",
            "return document.getElementById('state').textContent === 'Ready'",
        )
        .await;

    browser
        .assert_clean_console("the portal", &[("/clone", 409)])
        .await;

    // At phone width: one column, nothing wider than the screen.
    browser.resize(390, 844).await;
    browser
        .wait_until(
            "a single column",
            "var a = document.querySelector('.card').getBoundingClientRect();
             var b = document.querySelector('.card.wide').getBoundingClientRect();
             return Math.abs(a.left - b.left) < 2 && b.top > a.top;",
        )
        .await;
    let overflow = browser
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            json!([]),
        )
        .await;
    assert_eq!(overflow, json!(0), "the portal scrolls sideways on a phone");
    let dir = artifacts();
    std::fs::write(dir.join("portal-phone.png"), browser.screenshot().await).unwrap();
    browser.quit().await;
}

#[actix_web::test]
async fn a_slow_start_shows_the_starting_page_then_the_app() {
    let gw = Gateway::fake(&["--opencode-arg=--fake-start-delay-ms=2500"]);
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    sign_in(&browser, &gw, "carol", "/work").await;
    browser
        .wait_until(
            "the starting page",
            "return document.title.indexOf('Starting your workspace') === 0",
        )
        .await;
    let steps = browser.find_all("ol li").await;
    assert_eq!(steps.len(), 3);
    // No manual reload: the page follows the progress stream and reloads itself.
    browser
        .wait_until(
            "the app (the fake's answer at /)",
            "return document.body.innerText.indexOf('\"path\"') >= 0",
        )
        .await;
    // The starting page is itself a 503 (not ready yet); nothing else may fail.
    browser
        .assert_clean_console("the starting page", &[("/work", 503)])
        .await;
    browser.quit().await;
}

#[actix_web::test]
async fn the_sign_in_and_error_pages_are_clean() {
    let gw = Gateway::fake(&[]);
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    browser.goto(&gw.url("/-/")).await;
    browser
        .wait_until(
            "the 401 page",
            "return document.body.innerText.indexOf('Please sign in') >= 0",
        )
        .await;
    browser.click_css("a[href^='/-/login']").await;
    let user = browser.find("input[name='user']").await;
    browser.type_text(&user, "dave\n").await;
    browser
        .wait_until("the portal after signing in", "return document.getElementById('user-name') && document.getElementById('user-name').textContent === 'dave'")
        .await;
    browser
        .assert_clean_console("the sign-in pages", &[("/-/", 401)])
        .await;
    browser.quit().await;
}

#[actix_web::test]
async fn two_people_in_two_browsers_see_their_own_sessions() {
    let gw = Gateway::real(&[]);
    let driver = Driver::start().await;
    let alice = driver.browser().await;
    let bob = driver.browser().await;
    sign_in(&alice, &gw, "alice", "/-/").await;
    sign_in(&bob, &gw, "bob", "/-/").await;
    let create = "var done = arguments[arguments.length - 1];
        fetch('/session', {method: 'POST', headers: {'content-type': 'application/json'}, body: '{}'})
          .then(function (r) { return r.json(); }).then(function (s) { done(s.id); })
          .catch(function (e) { done('error: ' + e); });";
    let list = "var done = arguments[arguments.length - 1];
        fetch('/session').then(function (r) { return r.json(); })
          .then(function (l) { done(l.map(function (s) { return s.id; })); })
          .catch(function (e) { done('error: ' + e); });";
    let id = alice.execute_async(create).await;
    let id = id.as_str().expect("session id").to_owned();
    assert!(id.starts_with("ses"), "{id}");
    let mine = alice.execute_async(list).await;
    assert!(
        mine.as_array().unwrap().iter().any(|s| s == &json!(id)),
        "{mine}"
    );
    let theirs = bob.execute_async(list).await;
    assert!(
        !theirs.as_array().unwrap().iter().any(|s| s == &json!(id)),
        "bob sees {theirs}"
    );
    alice.quit().await;
    bob.quit().await;
}

/// Records every text a websocket of the page receives (terminal output is drawn on a
/// canvas, so the page's DOM never holds it).
const RECORD_WEBSOCKETS: &str = "
    if (window.__wsText !== undefined) { return null; }
    window.__wsText = '';
    var Original = window.WebSocket;
    function Recording(url, protocols) {
        var ws = protocols === undefined ? new Original(url) : new Original(url, protocols);
        ws.addEventListener('message', function (e) {
            if (typeof e.data === 'string') { window.__wsText += e.data; }
            else if (e.data instanceof ArrayBuffer) { window.__wsText += new TextDecoder().decode(e.data); }
            else if (e.data && e.data.text) { e.data.text().then(function (t) { window.__wsText += t; }); }
        });
        return ws;
    }
    Recording.prototype = Original.prototype;
    ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED'].forEach(function (k) { Recording[k] = Original[k]; });
    window.WebSocket = Recording;
    return null;";

/// OpenCode's own UI through the gateway: it renders, a session is created from it, and a
/// terminal opened from it runs a typed command and shows its output.
#[actix_web::test]
async fn opencodes_own_web_ui_works_through_the_gateway() {
    let gw = Gateway::real(&[]);
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    // The gateway's address lands on the portal (OpenCode starting meanwhile); its Open
    // OpenCode opens the workspace as a project, in a session named after it.
    sign_in(&browser, &gw, "alice", "/").await;
    browser
        .wait_until(
            "the portal",
            "return location.pathname === '/-/' && document.getElementById('user-name').textContent === 'alice'",
        )
        .await;
    browser.click_css("#open-opencode").await;
    const PROMPT: &str = "[aria-label='Prompt']";
    browser
        .wait_until(
            "the workspace's session in OpenCode",
            "return /\\/session\\/ses_[A-Za-z0-9]+$/.test(location.pathname) && !!document.querySelector(\"[aria-label='Prompt']\")",
        )
        .await;
    let url = browser.url().await;
    let id = url.rsplit('/').next().unwrap().to_owned();
    let session = gw.get("alice", &format!("/session/{id}")).await.json();
    let workspace = gw.data.path().join("users/alice/workspace");
    assert_eq!(
        session["directory"],
        workspace.to_str().unwrap(),
        "{session}"
    );
    assert_eq!(session["title"], "Workspace", "{session}");
    // OpenCode renders the prompt, then enables it.
    browser.wait_interactable(PROMPT).await;
    browser.wait_painted().await;
    let dir = artifacts();
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    std::fs::write(dir.join("opencode-ui.png"), &png).unwrap();

    // A prompt typed into OpenCode's UI reaches the session (no model is reachable here;
    // the message exists as soon as it is sent).
    browser.click_css(PROMPT).await;
    browser
        .type_css(PROMPT, "hello from the browser test")
        .await;
    browser
        .wait_until("the typed prompt", "return document.querySelector(\"[aria-label='Prompt']\").textContent.indexOf('hello from the browser test') >= 0")
        .await;
    // The UI may still be loading its providers when Enter first arrives; press it again
    // until the message is in the session (Enter on the emptied prompt does nothing).
    let path = format!("/session/{id}/message");
    let sent = poll_until(Duration::from_secs(90), async || {
        browser.type_css(PROMPT, "\u{E007}").await;
        poll_until(Duration::from_secs(3), async || {
            let messages = gw.get("alice", &path).await.text();
            if messages.contains("hello from the browser test") {
                Ok(())
            } else {
                Err(())
            }
        })
        .await
    })
    .await;
    if sent.is_err() {
        std::fs::write(
            dir.join("opencode-no-session.png"),
            browser.screenshot().await,
        )
        .unwrap();
        panic!("the prompt never reached the session (screenshot saved)");
    }

    browser
        .execute("var s = document.querySelector(\"[aria-label='Stop']\"); if (s) { s.click(); } return null;", json!([]))
        .await;

    // A terminal from the UI (the /terminal command): a typed command's output reaches the
    // page through the gateway's websocket bridge, and the command really ran.
    // Enter only once the command list offers the terminal first: an Enter that comes
    // before the list has caught up with the typing (a loaded machine) picks another
    // command or none, and no terminal opens.
    browser.execute(RECORD_WEBSOCKETS, json!([])).await;
    browser.click_css(PROMPT).await;
    browser.type_css(PROMPT, "/terminal").await;
    browser
        .wait_until(
            "the terminal first in the command list",
            "var o = document.querySelector('[data-suggestion-id], [data-slash-id]');
             return !!o && (o.getAttribute('data-suggestion-id') || o.getAttribute('data-slash-id')) === 'terminal.toggle';",
        )
        .await;
    browser.type_css(PROMPT, "\u{E007}").await;
    browser.find("[aria-label='Terminal input']").await;
    browser
        .wait_until("the terminal's prompt", "return window.__wsText.length > 0")
        .await;
    browser.click_css("[aria-label='Terminal input']").await;
    browser
        .type_css(
            "[aria-label='Terminal input']",
            "echo chamberlain-ui-$((6*7)) | tee ~/ui-proof.txt\n",
        )
        .await;
    browser
        .wait_until(
            "the command's output on the page",
            "return window.__wsText.indexOf('chamberlain-ui-42') >= 0",
        )
        .await;
    let proof = gw.data.path().join("users/alice/ui-proof.txt");
    assert_eq!(
        std::fs::read_to_string(proof).unwrap().trim(),
        "chamberlain-ui-42"
    );
    browser.wait_painted().await;
    std::fs::write(
        dir.join("opencode-terminal.png"),
        browser.screenshot().await,
    )
    .unwrap();
    browser.quit().await;
}

/// A clone opens in OpenCode from the portal (the dialog's button and My workspace's), as a
/// project whose file tree lists the clone's files and opens one of them.
#[actix_web::test]
async fn a_clone_opens_in_opencode_with_its_file_tree() {
    let gw = Gateway::real(&[]);
    add_folder_repo(&gw, "alpha-service", "The service template");
    let src = gw.data.path().join("shared/repos/alpha-service/src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("lib.rs"), "pub fn alpha() {}\n").unwrap();
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    sign_in(&browser, &gw, "alice", "/-/").await;

    browser
        .click_css("#repos li.repo[data-name='alpha-service'] button.clone")
        .await;
    browser.click_css("#clone-submit").await;
    browser
        .wait_until(
            "the clone succeeded",
            "return !document.getElementById('clone-done').hidden",
        )
        .await;
    browser.click_css("#clone-open").await;

    // A session in the clone's folder (OpenCode's UI turns the folder's address into its
    // own tab address, `/server/…/session/<id>`).
    let clone = gw.data.path().join("users/alice/workspace/alpha-service");
    browser
        .wait_until(
            "the clone's session in OpenCode",
            "return /\\/session\\/ses_[A-Za-z0-9]+$/.test(location.pathname)",
        )
        .await;
    let url = browser.url().await;
    let id = url.rsplit('/').next().unwrap().to_owned();
    let session = gw.get("alice", &format!("/session/{id}")).await.json();
    assert_eq!(session["directory"], clone.to_str().unwrap(), "{session}");

    // The workspace's file tree: the side panel's "Open file" tab lists the clone.
    browser.click_css("[aria-label='Toggle review']").await;
    browser.click_css("[aria-label='Open file']").await;
    browser
        .wait_until(
            "the clone's files in the tree",
            "return !!document.querySelector(\"[data-slot='file-tree-v2-row'][data-path='README.md']\") && !!document.querySelector(\"[data-slot='file-tree-v2-row'][data-path='src']\")",
        )
        .await;
    browser
        .click_css("[data-slot='file-tree-v2-row'][data-path='README.md']")
        .await;
    browser
        .wait_until(
            "README.md opened in a tab",
            "return Array.from(document.querySelectorAll('[role=tab]')).some(function (t) { return t.textContent.trim() === 'README.md'; })",
        )
        .await;
    browser.wait_painted().await;
    std::fs::write(
        artifacts().join("opencode-file-tree.png"),
        browser.screenshot().await,
    )
    .unwrap();

    // My workspace's Open button goes to a new session in the same folder.
    browser.goto(&gw.url("/-/")).await;
    browser
        .find("#workspace li.project[data-name='alpha-service'] button.open")
        .await;
    browser.assert_clean_console("the portal", &[]).await;
    browser
        .click_css("#workspace li.project[data-name='alpha-service'] button.open")
        .await;
    browser
        .wait_until(
            "another session in the clone",
            &format!("return /\\/session\\/ses_[A-Za-z0-9]+$/.test(location.pathname) && location.pathname.indexOf('{id}') < 0"),
        )
        .await;
    let url = browser.url().await;
    let second = url.rsplit('/').next().unwrap().to_owned();
    let session = gw.get("alice", &format!("/session/{second}")).await.json();
    assert_eq!(session["directory"], clone.to_str().unwrap(), "{session}");
    browser.quit().await;
}
