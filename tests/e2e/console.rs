//! The pages issue 16 added, in a real headless Chromium: the admin console (public, for a
//! signed-in administrator, and on the operator's admin listener with the token), the
//! personal access tokens page, the portal's notice when the organisation has no model
//! keys, and the starting page when a start fails. Screenshots go to the e2e artifacts.

use actix_web::http::{Method, StatusCode};
use bytes::Bytes;
use serde_json::json;

use crate::browser::{add_folder_repo, artifacts, sign_in};
use crate::support::Gateway;
use crate::webdriver::Browser;
use crate::webdriver::Driver;

async fn no_sideways_scroll(browser: &Browser<'_>, page: &str) {
    let overflow = browser
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            json!([]),
        )
        .await;
    assert_eq!(overflow, json!(0), "{page} scrolls sideways on a phone");
}

async fn save(browser: &Browser<'_>, name: &str) {
    std::fs::write(artifacts().join(name), browser.screenshot().await).unwrap();
}

/// Clicks a two-step button (the first click arms it, the second acts).
async fn click_twice(browser: &Browser<'_>, css: &str) {
    browser.click_css(css).await;
    browser
        .wait_until(
            "the button to ask for confirmation",
            &format!(
                "var b = document.querySelector({css:?}); return !!b && b.classList.contains('confirm');"
            ),
        )
        .await;
    browser.click_css(css).await;
}

async fn gone(browser: &Browser<'_>, what: &str, css: &str) {
    browser
        .wait_until(what, &format!("return !document.querySelector({css:?})"))
        .await;
}

async fn bearer(gw: &Gateway, token: &str) -> StatusCode {
    gw.request(
        Method::GET,
        None,
        "/-/api/me",
        &[("authorization", &format!("Bearer {token}"))],
        None,
    )
    .await
    .status
}

async fn new_token(gw: &Gateway, user: &str, name: &str) -> (String, String) {
    let made = gw
        .request(
            Method::POST,
            Some(user),
            "/-/api/tokens",
            &[("content-type", "application/json")],
            Some(Bytes::from(json!({ "name": name }).to_string())),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text());
    let made = made.json();
    (
        made["id"].as_str().unwrap().to_owned(),
        made["token"].as_str().unwrap().to_owned(),
    )
}

#[actix_web::test]
async fn an_administrator_runs_the_gateway_from_the_console() {
    let gw = Gateway::fake(&["--admin-users", "boss"]);
    add_folder_repo(&gw, "alpha-service", "The service template");
    assert_eq!(gw.get("alice", "/anything").await.status, StatusCode::OK);
    gw.wait_state("alice", "ready").await;
    let (token_id, token) = new_token(&gw, "alice", "laptop").await;

    let driver = Driver::start().await;
    let browser = driver.browser().await;
    sign_in(&browser, &gw, "boss", "/-/admin").await;
    let alice = "tr[data-user='alice']";
    browser.find(alice).await;
    browser
        .wait_until(
            "the gateway's figures",
            "var t = document.getElementById('gateway-figures').innerText; return t.indexOf('Instances') >= 0 && t.indexOf('1 / ') >= 0;",
        )
        .await;
    save(&browser, "admin-console.png").await;

    // Stop and restart Alice's OpenCode.
    browser.click_css(&format!("{alice} button.stop")).await;
    gw.wait_state("alice", "stopped").await;
    browser
        .wait_until(
            "the outcome",
            "return document.getElementById('status').textContent.indexOf('alice') >= 0",
        )
        .await;
    browser
        .wait_until(
            "Restart enabled again",
            &format!("var b = document.querySelector(\"{alice} button.restart\"); return !!b && !b.disabled;"),
        )
        .await;
    browser.click_css(&format!("{alice} button.restart")).await;
    gw.wait_state("alice", "ready").await;

    // The repository library: a local path is refused from the public console, with the
    // reason on the page; a repository is deleted in two steps.
    browser.type_css("#repo-name", "etc").await;
    browser.type_css("#repo-url", "/etc").await;
    browser.click_css("#repo-add-submit").await;
    browser
        .wait_until(
            "the refusal",
            "return document.getElementById('status').textContent.indexOf('https://') >= 0",
        )
        .await;
    assert!(!gw.data.path().join("shared/repos/etc").exists());
    click_twice(&browser, "li[data-repo='alpha-service'] button.delete").await;
    gone(
        &browser,
        "the deleted repository",
        "li[data-repo='alpha-service']",
    )
    .await;
    assert!(!gw.data.path().join("shared/repos/alpha-service").exists());

    // Alice's token, revoked from the console.
    let row = format!("tr[data-token='{token_id}']");
    browser.find(&row).await;
    assert_eq!(bearer(&gw, &token).await, StatusCode::OK);
    click_twice(&browser, &format!("{row} button.revoke")).await;
    gone(&browser, "the revoked token", &row).await;
    assert_eq!(bearer(&gw, &token).await, StatusCode::UNAUTHORIZED);

    let log = gw.log();
    for action in [
        "\"stop\"",
        "\"restart\"",
        "\"delete repo\"",
        "\"revoke token\"",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("admin action") && l.contains("boss") && l.contains(action)),
            "no audit line for {action}:\n{log}"
        );
    }
    browser
        .assert_clean_console("the admin console", &[("/-/api/admin/repos", 400)])
        .await;

    browser.resize(390, 844).await;
    browser.find(alice).await;
    no_sideways_scroll(&browser, "the admin console").await;
    save(&browser, "admin-console-phone.png").await;
    browser.quit().await;

    // The operator's console on the admin listener asks for the token, then shows the same.
    let operator = driver.browser().await;
    operator.goto(&format!("{}/console", gw.admin)).await;
    operator.find("#admin-token-form").await;
    operator
        .wait_until(
            "the token form",
            "return !document.getElementById('admin-token-form').hidden",
        )
        .await;
    let secret = gw.admin_token.clone().expect("an operator token");
    operator
        .type_css("#admin-token", &format!("{secret}\n"))
        .await;
    operator.find(alice).await;
    save(&operator, "admin-console-operator.png").await;
    operator.quit().await;
}

#[actix_web::test]
async fn a_person_makes_a_token_sees_it_once_and_revokes_it() {
    let gw = Gateway::fake(&[]);
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    sign_in(&browser, &gw, "alice", "/-/tokens").await;
    browser.find("#tokens-empty").await;
    browser.type_css("#token-name", "laptop").await;
    browser.click_css("#token-submit").await;
    browser
        .wait_until(
            "the new token",
            "return !document.getElementById('new-token').hidden && document.getElementById('new-token-value').textContent.indexOf('chpat_') === 0",
        )
        .await;
    let value = browser.find("#new-token-value").await;
    let token = browser.text(&value).await;
    let usage = browser.text(&browser.find("#usage-attach").await).await;
    assert!(
        usage.starts_with(&format!(
            "OPENCODE_SERVER_PASSWORD={token} opencode attach http"
        )),
        "{usage}"
    );
    assert_eq!(bearer(&gw, &token).await, StatusCode::OK);
    let rows = browser.find_all("#tokens tr[data-token]").await;
    assert_eq!(rows.len(), 1);
    save(&browser, "tokens.png").await;

    // Shown once: a reload lists the token, never its secret.
    browser.goto(&gw.url("/-/tokens")).await;
    browser.find("#tokens tr[data-token]").await;
    let page = browser
        .execute("return document.body.innerText", json!([]))
        .await;
    assert!(!page.as_str().unwrap().contains(&token));

    browser.resize(390, 844).await;
    no_sideways_scroll(&browser, "the tokens page").await;
    save(&browser, "tokens-phone.png").await;
    click_twice(&browser, "#tokens tr[data-token] button.revoke").await;
    gone(&browser, "the revoked token", "#tokens tr[data-token]").await;
    assert_eq!(bearer(&gw, &token).await, StatusCode::UNAUTHORIZED);
    browser.assert_clean_console("the tokens page", &[]).await;
    browser.quit().await;
}

#[actix_web::test]
async fn the_portal_says_when_there_are_no_model_keys_and_links_tokens_and_admin() {
    let gw = Gateway::fake(&["--admin-users", "boss"]);
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    sign_in(&browser, &gw, "alice", "/-/").await;
    browser
        .wait_until(
            "the no-keys notice",
            "return !document.getElementById('no-keys').hidden",
        )
        .await;
    let notice = browser.text(&browser.find("#no-keys").await).await;
    assert!(notice.contains("model keys"), "{notice}");
    let admin_hidden = browser
        .execute(
            "return document.getElementById('admin-link').hidden",
            json!([]),
        )
        .await;
    assert_eq!(admin_hidden, json!(true));
    browser.find("#tokens-link").await;
    save(&browser, "portal-no-keys.png").await;

    // Once the organisation has a key, the notice is gone.
    std::fs::write(
        gw.data.path().join("shared/auth/auth.json"),
        r#"{"openai": {"type": "api", "key": "sk-org"}}"#,
    )
    .unwrap();
    browser.goto(&gw.url("/-/")).await;
    browser
        .wait_until(
            "the portal without the notice",
            "return document.getElementById('user-name').textContent === 'alice' && document.getElementById('no-keys').hidden",
        )
        .await;
    browser.assert_clean_console("the portal", &[]).await;
    browser.quit().await;

    let boss = driver.browser().await;
    sign_in(&boss, &gw, "boss", "/-/").await;
    boss.wait_until(
        "the admin link",
        "return !document.getElementById('admin-link').hidden",
    )
    .await;
    boss.click_css("#admin-link").await;
    boss.wait_until(
        "the console's figures",
        "var f = document.getElementById('gateway-figures'); return !!f && f.innerText.indexOf('Instances') >= 0;",
    )
    .await;
    boss.quit().await;
}

#[actix_web::test]
async fn a_failed_start_says_so_once_and_keeps_its_steps() {
    let gw = Gateway::fake(&["--opencode-arg=--fake-no-listen", "--start-timeout", "2s"]);
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    sign_in(&browser, &gw, "carol", "/work").await;
    browser
        .wait_until(
            "the failure",
            "return document.title.indexOf('Starting failed') === 0",
        )
        .await;
    let heading = browser.text(&browser.find("#heading").await).await;
    assert_eq!(heading, "Starting your workspace failed");
    let class = |id: &str| format!("return document.getElementById('{id}').className");
    assert_eq!(
        browser.execute(&class("step-queued"), json!([])).await,
        json!("done")
    );
    assert_eq!(
        browser.execute(&class("step-starting"), json!([])).await,
        json!("failed")
    );
    assert_eq!(
        browser.execute(&class("step-ready"), json!([])).await,
        json!("")
    );
    let reason = browser.text(&browser.find("#problem-text").await).await;
    assert!(!reason.is_empty());
    let page = browser
        .execute("return document.body.innerText", json!([]))
        .await;
    assert_eq!(
        page.as_str().unwrap().matches(reason.as_str()).count(),
        1,
        "the reason once: {page}"
    );
    save(&browser, "starting-failed.png").await;
    browser.quit().await;
}
