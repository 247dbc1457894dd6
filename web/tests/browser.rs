//! The editor in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`), against the real router and engine running a flow of
//! the test node types. The full-stack version against the `runnel` binary
//! and the real `debug` node is the root package's `tests/editor_browser.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/browser.rs"]
mod browser;
mod common;

use std::time::Duration;

use browser::{Browser, Scenario, editor_scenario, js_string};
use common::{Server, flows_dir, tick_flow};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_editor_shows_edits_deploys_and_traces_a_flow() {
    let dir = flows_dir(&[
        ("ticker", &tick_flow("\"first\"", 200)),
        ("other", &tick_flow("\"elsewhere\"", 200)),
    ]);
    let server = Server::start(dir.path(), None).await;
    let browser = Browser::start().await;

    // The flows list.
    browser.client.goto(&server.url("/")).await.unwrap();
    browser
        .wait_for(
            "the flows list",
            "const row = document.querySelector('#flows tr[data-flow=\"ticker\"]'); \
             return row && row.textContent.includes('running') && row.querySelector('.rate').textContent !== '';",
            Duration::from_secs(20),
        )
        .await;
    browser.screenshot("web-flows-list").await;

    let latency = editor_scenario(
        &browser,
        &Scenario {
            base: server.url(""),
            flow: "ticker",
            file: dir.path().join("ticker.yaml"),
            path: &["tick", "pass", "show"],
            before: "\"first\"",
            edit_from: "payload: \"first\"",
            edit_to: "payload: \"second\"",
            after: "\"second\"",
            broken_from: "type: test-pass",
            broken_to: "type: test-pas",
            shots: "web-editor",
            other: Some(("other", "elsewhere")),
        },
    )
    .await;
    eprintln!("new payload reached the sidebar {latency:?} after the deploy answered");

    // Clicking a node selects its line in the YAML.
    let selected = browser
        .run(
            "document.querySelector('#graph g.node[data-node=\"pass\"]').dispatchEvent(new MouseEvent('click', {bubbles: true})); \
             const t = document.getElementById('yaml'); \
             return t.value.slice(t.selectionStart, t.selectionEnd);",
        )
        .await;
    assert_eq!(selected, serde_json::json!("  - id: pass"));

    // Pause stops the list; clear empties it; the list stays bounded.
    browser
        .run("document.getElementById('pause-btn').click(); return true;")
        .await;
    browser
        .run("document.getElementById('clear-btn').click(); return true;")
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let while_paused = browser
        .run("return document.querySelectorAll('#debug-list .debug-entry').length")
        .await;
    assert_eq!(while_paused.as_u64(), Some(0), "paused sidebar stays empty");
    browser
        .run("document.getElementById('pause-btn').click(); return true;")
        .await;
    browser
        .wait_for(
            "messages again after resume",
            "return document.querySelectorAll('#debug-list .debug-entry').length > 0",
            Duration::from_secs(20),
        )
        .await;

    // Entering a _msgid by hand works as clicking does.
    let msgid = browser
        .run("return document.querySelector('#debug-list .debug-entry').dataset.msgid")
        .await;
    browser
        .run(&format!(
            "document.getElementById('trace-result').replaceChildren(); \
             document.getElementById('trace-input').value = {}; \
             document.querySelector('#trace-form button').click(); return true;",
            js_string(msgid.as_str().unwrap_or_default())
        ))
        .await;
    browser
        .wait_for(
            "a typed trace",
            "return document.querySelectorAll('#trace-result tr.hop').length === 3",
            Duration::from_secs(20),
        )
        .await;
    browser.screenshot("web-editor").await;
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_editor_asks_for_it_once() {
    let dir = flows_dir(&[("ticker", &tick_flow("\"guarded\"", 100))]);
    let server = Server::start(dir.path(), Some("browser-token")).await;
    let browser = Browser::start().await;
    browser
        .client
        .goto(&server.url("/flows/ticker"))
        .await
        .unwrap();
    browser
        .wait_for(
            "the token prompt",
            "return !document.getElementById('token-box').hidden",
            Duration::from_secs(20),
        )
        .await;
    let leaked = browser
        .run("return document.documentElement.outerHTML.includes('test-tick')")
        .await;
    assert_eq!(
        leaked,
        serde_json::json!(false),
        "nothing shown before the token"
    );
    browser
        .run(
            "document.getElementById('token-input').value = 'browser-token'; \
             document.querySelector('#token-form button').click(); return true;",
        )
        .await;
    browser
        .wait_for(
            "the graph after the token",
            "return document.querySelectorAll('#graph g.node').length === 3",
            Duration::from_secs(20),
        )
        .await;
    browser
        .wait_for(
            "debug messages over the authenticated socket",
            "return [...document.querySelectorAll('#debug-list .debug-entry')].some(e => e.textContent.includes('guarded'))",
            Duration::from_secs(20),
        )
        .await;
    browser.close().await;
    server.stop().await;
}
