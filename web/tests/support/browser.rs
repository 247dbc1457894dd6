//! A real headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver` packages), for the editor's browser tests. Shared by
//! `web/tests/browser.rs` and the root package's `tests/editor_browser.rs`
//! (included there with `#[path]`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::{Value as Json, json};

/// Where Debian installs the browser and its driver.
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process and a browser session; both end on drop.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Browser {
    /// Starts chromedriver on a free port and a fresh headless Chromium.
    pub async fn start() -> Browser {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: install it with `apt-get install -y chromium chromium-driver`"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut capabilities = serde_json::Map::default();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1440,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => panic!("cannot start a Chromium session: {error}"),
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Runs `script` (a function body) until it returns something truthy,
    /// and returns that; panics after `guard` (a hang guard, not a timing
    /// assertion) with `what` and the last value.
    pub async fn wait_for(&self, what: &str, script: &str, guard: Duration) -> Json {
        let deadline = Instant::now() + guard;
        loop {
            let value = self
                .client
                .execute(script, vec![])
                .await
                .unwrap_or_else(|e| panic!("script for {what:?} failed: {e}"));
            let truthy = match &value {
                Json::Null | Json::Bool(false) => false,
                Json::Number(n) => n.as_f64() != Some(0.0),
                Json::String(s) => !s.is_empty(),
                Json::Array(a) => !a.is_empty(),
                Json::Object(_) => true,
                Json::Bool(true) => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                let _ = self.screenshot(&format!("timeout-{}", slug(what))).await;
                panic!("gave up waiting for {what} (last value {value})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a script once.
    pub async fn run(&self, script: &str) -> Json {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Saves a screenshot as `target/test-artifacts/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = artifacts_dir();
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{name}.png"));
        match self.client.screenshot().await {
            Ok(png) => {
                let _ = std::fs::write(&path, png);
            }
            Err(error) => eprintln!("screenshot {name} failed: {error}"),
        }
        path
    }

    /// Ends the session and the driver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends chromedriver (our child, by its handle) if close() was not
        // reached; chromium exits with it.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `target/test-artifacts` of the workspace.
pub fn artifacts_dir() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // web/ -> workspace root; the root package is the root already.
    if !dir.join("Cargo.lock").exists() {
        dir.pop();
    }
    dir.join("target").join("test-artifacts")
}

fn slug(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// A JS string literal for `text`.
pub fn js_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// What the editor scenario does and expects, so the same steps run against
/// the web crate's test server and against the real `runnel` binary.
pub struct Scenario<'a> {
    /// `http://host:port`.
    pub base: String,
    /// The flow's name.
    pub flow: &'a str,
    /// Its flow file, to check what deploys write.
    pub file: PathBuf,
    /// Node ids in the order a message passes them.
    pub path: &'a [&'a str],
    /// Text seen in a debug message before the edit.
    pub before: &'a str,
    /// The edit: replace this in the YAML...
    pub edit_from: &'a str,
    /// ...with this.
    pub edit_to: &'a str,
    /// Text seen in a debug message after the deploy.
    pub after: &'a str,
    /// An edit that breaks validation: replace this...
    pub broken_from: &'a str,
    /// ...with this; the error must be shown at the line containing it.
    pub broken_to: &'a str,
    /// Prefix for screenshot names.
    pub shots: &'a str,
    /// Another running flow and a text its debug messages carry: shown
    /// only when the debug sidebar is set to all flows.
    pub other: Option<(&'a str, &'a str)>,
}

const GUARD: Duration = Duration::from_secs(20);

/// Sets the editor's text as typing would (an `input` event follows).
async fn set_yaml(browser: &Browser, text: &str) {
    browser
        .run(&format!(
            "const t = document.getElementById('yaml'); t.value = {}; \
             t.dispatchEvent(new Event('input', {{bubbles: true}})); return true;",
            js_string(text)
        ))
        .await;
}

/// The newest debug entry containing `text`, as `[msgid, index]`, or null.
fn find_debug(text: &str) -> String {
    format!(
        "const list = [...document.querySelectorAll('#debug-list .debug-entry')]; \
         const i = list.findIndex(e => e.textContent.includes({})); \
         return i < 0 ? null : [list[i].dataset.msgid, i];",
        js_string(text)
    )
}

/// Opens the editor on the flow and checks graph, debug, deploy, trace and
/// validation, saving screenshots along the way. Returns how long the new
/// payload took to reach the sidebar after the deploy answered.
pub async fn editor_scenario(browser: &Browser, s: &Scenario<'_>) -> Duration {
    let client = &browser.client;
    client
        .goto(&format!("{}/flows/{}", s.base, s.flow))
        .await
        .expect("editor page loads");

    // 1. The graph: every node drawn, sources left of sinks.
    let drawn = browser
        .wait_for(
            "the nodes drawn",
            &format!(
                "const ids = [...document.querySelectorAll('#graph g.node')].map(g => g.dataset.node); \
                 return ids.length === {} ? ids : null;",
                s.path.len()
            ),
            GUARD,
        )
        .await;
    for id in s.path {
        assert!(
            drawn
                .as_array()
                .is_some_and(|ids| ids.iter().any(|v| v == id)),
            "node {id} not drawn: {drawn}"
        );
    }
    let xs = browser
        .run(&format!(
            "return {}.map(id => document.querySelector(`#graph g.node[data-node=\"${{id}}\"]`).transform.baseVal[0].matrix.e);",
            serde_json::to_string(s.path).unwrap_or_default()
        ))
        .await;
    let xs: Vec<f64> = xs
        .as_array()
        .map(|a| a.iter().filter_map(Json::as_f64).collect())
        .unwrap_or_default();
    assert!(
        xs.windows(2).all(|w| w[0] < w[1]),
        "nodes along the path go left to right: {xs:?}"
    );
    browser
        .wait_for(
            "ports and wires drawn",
            "return document.querySelectorAll('#graph path.edge').length > 0 \
             && document.querySelectorAll('#graph rect.port').length > 0",
            GUARD,
        )
        .await;
    browser
        .wait_for(
            "live counters",
            "return [...document.querySelectorAll('#graph .counters')].some(t => /in [1-9]/.test(t.textContent))",
            GUARD,
        )
        .await;

    // 2. Debug messages arrive, in the seed's {time, node, msg} shape.
    browser
        .wait_for("a debug message", &find_debug(s.before), GUARD)
        .await;
    let shape = browser
        .run(
            "const pre = document.querySelector('#debug-list .debug-entry pre'); \
             return Object.keys(JSON.parse(pre.textContent));",
        )
        .await;
    assert_eq!(shape, json!(["time", "node", "msg"]));
    browser.screenshot(&format!("{}-debug", s.shots)).await;

    // 3. Edit the YAML, deploy, see the new payload.
    let original = browser
        .wait_for(
            "the YAML loaded",
            "return document.getElementById('yaml').value",
            GUARD,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        original,
        std::fs::read_to_string(&s.file).unwrap_or_default(),
        "the editor shows the file as written"
    );
    assert!(
        original.contains(s.edit_from),
        "{:?} not in the YAML",
        s.edit_from
    );
    let edited = original.replacen(s.edit_from, s.edit_to, 1);
    set_yaml(browser, &edited).await;
    client
        .find(fantoccini::Locator::Id("deploy-btn"))
        .await
        .expect("deploy button")
        .click()
        .await
        .expect("click deploy");
    browser
        .wait_for(
            "the deploy answer",
            "const s = document.getElementById('editor-status').textContent; \
             return s.startsWith('deployed: ') ? s : (s.startsWith('not deployed') ? 'FAILED: ' + s : null);",
            GUARD,
        )
        .await
        .as_str()
        .filter(|s| s.starts_with("deployed: ") && s.contains(" restarted"))
        .unwrap_or_else(|| panic!("deploy failed"));
    let deployed_at = Instant::now();
    assert_eq!(
        std::fs::read_to_string(&s.file).unwrap_or_default(),
        edited,
        "the file holds exactly the edited text"
    );
    let found = browser
        .wait_for(
            "the new payload in the sidebar",
            &find_debug(s.after),
            GUARD,
        )
        .await;
    let latency = deployed_at.elapsed();
    browser.screenshot(&format!("{}-deployed", s.shots)).await;

    // 4. Open that message's trace: each node on its path, highlighted.
    // By id: newer entries may have been added above it meanwhile.
    let msgid = found[0].as_str().unwrap_or_default().to_string();
    browser
        .run(&format!(
            "document.querySelector(`#debug-list .debug-entry[data-msgid=\"${{{}}}\"]`).click(); return true;",
            js_string(&msgid)
        ))
        .await;
    let hops = browser
        .wait_for(
            "the trace",
            &format!(
                "if (document.getElementById('trace-input').value !== {}) return null; \
                 const rows = [...document.querySelectorAll('#trace-result tr.hop')].map(r => r.dataset.node); \
                 return rows.length >= {} ? rows : null;",
                js_string(&msgid),
                s.path.len()
            ),
            GUARD,
        )
        .await;
    assert_eq!(hops, json!(s.path), "the trace lists each node in order");
    let highlighted = browser
        .run("return [...document.querySelectorAll('#graph g.node.on-path')].map(g => g.dataset.node)")
        .await;
    assert_eq!(
        highlighted.as_array().map(Vec::len),
        Some(s.path.len()),
        "path highlighted: {highlighted}"
    );
    let lit_edges = browser
        .run("return document.querySelectorAll('#graph path.edge.on-path').length")
        .await;
    assert_eq!(lit_edges.as_u64(), Some(s.path.len() as u64 - 1));
    let times = browser
        .run("return [...document.querySelectorAll('#trace-result tr.hop td:nth-child(5)')].map(td => td.textContent)")
        .await;
    assert!(
        times.as_array().is_some_and(|t| t
            .iter()
            .skip(1)
            .all(|v| v.as_str().is_some_and(|s| s.ends_with('s')))),
        "time per node shown: {times}"
    );
    browser.screenshot(&format!("{}-trace", s.shots)).await;

    // 5. A validation error, shown at its line; deploying it changes nothing.
    let broken = edited.replacen(s.broken_from, s.broken_to, 1);
    let line = broken
        .lines()
        .position(|l| l.contains(s.broken_to))
        .map(|i| i + 1)
        .expect("the broken text is in the YAML");
    set_yaml(browser, &broken).await;
    client
        .find(fantoccini::Locator::Id("validate-btn"))
        .await
        .expect("validate button")
        .click()
        .await
        .expect("click validate");
    let marked = browser
        .wait_for(
            "the error at its line",
            "const lines = [...document.querySelectorAll('#gutter .ln.err')].map(e => Number(e.dataset.line)); \
             return lines.length ? lines : null;",
            GUARD,
        )
        .await;
    assert!(
        marked
            .as_array()
            .is_some_and(|l| l.iter().any(|v| v.as_u64() == Some(line as u64))),
        "line {line} marked, got {marked}"
    );
    let listed = browser
        .run(&format!(
            "return [...document.querySelectorAll('#diagnostics li.diag.error')].some(li => li.dataset.line === '{line}' && li.textContent.includes('line {line}:'))"
        ))
        .await;
    assert_eq!(listed, json!(true), "diagnostic listed with its line");
    client
        .find(fantoccini::Locator::Id("deploy-btn"))
        .await
        .expect("deploy button")
        .click()
        .await
        .expect("click deploy");
    browser
        .wait_for(
            "the refused deploy",
            "return document.getElementById('editor-status').textContent.startsWith('not deployed')",
            GUARD,
        )
        .await;
    assert_eq!(
        std::fs::read_to_string(&s.file).unwrap_or_default(),
        edited,
        "a flow that does not validate changes nothing"
    );
    browser.screenshot(&format!("{}-validation", s.shots)).await;

    // Put the good text back, so the last screenshot shows a healthy editor.
    set_yaml(browser, &edited).await;
    browser
        .wait_for(
            "errors cleared",
            "return document.querySelectorAll('#gutter .ln.err').length === 0",
            GUARD,
        )
        .await;

    // 6. The debug sidebar by flow: this flow's messages only, or all.
    if let Some((other_flow, other_text)) = s.other {
        let shown = browser.run(&find_debug(other_text)).await;
        assert_eq!(
            shown,
            Json::Null,
            "another flow's message shown for this flow"
        );
        set_scope(browser, "all").await;
        let found = browser
            .wait_for(
                "another flow's debug message",
                &format!(
                    "const e = [...document.querySelectorAll('#debug-list .debug-entry')]\
                     .find(e => e.textContent.includes({})); \
                     return e ? e.querySelector('.flow').textContent : null;",
                    js_string(other_text)
                ),
                GUARD,
            )
            .await;
        assert_eq!(found, json!(other_flow));
        browser
            .wait_for("this flow's debug message", &find_debug(s.after), GUARD)
            .await;
        browser.screenshot(&format!("{}-all-flows", s.shots)).await;
        set_scope(browser, "flow").await;
        browser
            .wait_for("this flow again", &find_debug(s.after), GUARD)
            .await;
        let shown = browser.run(&find_debug(other_text)).await;
        assert_eq!(shown, Json::Null, "the list was not cleared on the switch");
    }
    latency
}

/// Sets the debug sidebar's flow filter (`flow` or `all`).
async fn set_scope(browser: &Browser, scope: &str) {
    browser
        .run(&format!(
            "const s = document.getElementById('debug-scope'); s.value = {}; \
             s.dispatchEvent(new Event('change')); return true;",
            js_string(scope)
        ))
        .await;
}
