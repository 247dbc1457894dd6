//! Load: a flow sending about 50,000 messages a second into a debug node,
//! with the editor open in real headless Chromium. The page must stay
//! responsive with a bounded sidebar (the server batches and counts what it
//! skips), and the server's memory must stay flat. A test binary of its own
//! so the load does not disturb the other browser tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/browser.rs"]
mod browser;
mod common;

use std::time::{Duration, Instant};

use browser::Browser;
use common::{Server, burst_flow, flows_dir};

/// Resident memory of this process (engine and web server), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

async fn delivered(server: &Server) -> u64 {
    server
        .engine
        .flow("flood")
        .await
        .and_then(|f| f.nodes.into_iter().find(|n| n.id == "show"))
        .map_or(0, |n| n.counters.received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_flow_keeps_the_editor_responsive_and_memory_flat() {
    // 50 messages every millisecond: 50,000 a second if the machine keeps up.
    let dir = flows_dir(&[("flood", &burst_flow("\"flood\"", 1, 50))]);
    let server = Server::start(dir.path(), None).await;
    let browser = Browser::start().await;
    browser
        .client
        .goto(&server.url("/flows/flood"))
        .await
        .unwrap();
    browser
        .wait_for(
            "debug messages",
            "return document.querySelectorAll('#debug-list .debug-entry').length > 0",
            Duration::from_secs(30),
        )
        .await;
    // Warm up, then measure over 10 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    browser
        .run(
            "window.__lag = {max: 0, last: performance.now()}; \
             setInterval(() => { const now = performance.now(); \
               window.__lag.max = Math.max(window.__lag.max, now - window.__lag.last); \
               window.__lag.last = now; }, 50); return true;",
        )
        .await;
    let rss_start = rss_kib();
    let count_start = delivered(&server).await;
    let started = Instant::now();
    let mut rss_peak = rss_start;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_peak = rss_peak.max(rss_kib());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = (delivered(&server).await - count_start) as f64 / elapsed;
    let rss_end = rss_kib();

    let probe = Instant::now();
    let entries = browser
        .run("return document.querySelectorAll('#debug-list .debug-entry').length")
        .await
        .as_u64()
        .unwrap();
    let probe_ms = probe.elapsed().as_millis();
    let lag_ms = browser
        .run("return window.__lag.max")
        .await
        .as_f64()
        .unwrap();
    let skipped = browser
        .run("return document.getElementById('debug-skipped').textContent")
        .await;
    browser.screenshot("web-load").await;
    eprintln!(
        "load: {rate:.0} msg/s delivered to the debug node; sidebar {entries} entries, \
         skipped shown {skipped}; page timer lag max {lag_ms:.0} ms, script round trip {probe_ms} ms; \
         server RSS {rss_start} KiB -> {rss_end} KiB (peak {rss_peak} KiB)"
    );

    assert!(entries <= 500, "the sidebar is bounded: {entries}");
    assert!(
        skipped.as_str().is_some_and(|s| s != "0"),
        "the skipped count is shown: {skipped}"
    );
    // Generous bounds (the machine may be shared and busy): a flooded page
    // stalls for many seconds, and a leak grows by hundreds of MiB in 10 s
    // at this rate.
    assert!(lag_ms < 5000.0, "the page's timers stalled {lag_ms} ms");
    assert!(
        rss_peak.saturating_sub(rss_start) < 64 * 1024,
        "server memory grew from {rss_start} KiB to {rss_peak} KiB"
    );
    browser.close().await;
    server.stop().await;
}
