//! `delay`: holds each message for a fixed time, or limits the rate.
//!
//! - `mode: delay` holds every message for `delay`, in arrival order.
//! - `mode: rate` lets at most `rate.count` messages through per
//!   `rate.per`, spaced evenly (one every `per / count`, as Node-RED does).
//!   Extra messages wait in order (default) or, with `drop: true`, are
//!   dropped and counted in the node's `dropped` counter.
//!
//! Waiting messages are held in a queue of at most `max_queue` messages.
//! When it is full the node stops taking input, so back-pressure reaches
//! the upstream nodes; nothing is dropped unless `drop: true` says so.
//! Held messages count as in flight: a stopping flow waits for them (up to
//! its drain timeout).

use std::collections::VecDeque;

use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{
    BuildCtx, BuildError, Duration, Msg, NodeCtx, NodeError, NodeSpec, NodeType, TaskNode,
};
use serde::Deserialize;
use tokio::time::Instant;

/// The `delay` node type.
#[derive(Debug)]
pub struct Delay;

/// What the node does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Hold each message for `delay` (default).
    #[default]
    Delay,
    /// Limit the rate to `rate.count` messages per `rate.per`.
    Rate,
}

/// A rate: `count` messages per `per`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    /// How many messages (at least 1).
    pub count: u32,
    /// Per how long (`1s`, `1m`).
    pub per: Duration,
}

/// Config of `delay`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DelayConfig {
    /// `delay` (default) or `rate`.
    #[serde(default)]
    pub mode: Mode,
    /// With `mode: delay`: how long to hold each message (required).
    #[serde(default)]
    pub delay: Option<Duration>,
    /// With `mode: rate`: the most messages let through, `{count, per}`
    /// (required).
    #[serde(default)]
    pub rate: Option<RateConfig>,
    /// With `mode: rate`: drop (and count) messages over the rate instead
    /// of queueing them (default false).
    #[serde(default)]
    pub drop: bool,
    /// How many messages may wait in the node (default 1000). When full,
    /// the node stops reading its input (back-pressure).
    #[serde(default)]
    pub max_queue: Option<usize>,
}

const DEFAULT_MAX_QUEUE: usize = 1000;

#[derive(Debug)]
enum Behaviour {
    /// Hold each message this long.
    Delay(std::time::Duration),
    /// Send one message per interval, queueing the rest.
    RateQueue(std::time::Duration),
    /// Send one message per interval, dropping the rest.
    RateDrop(std::time::Duration),
}

#[derive(Debug)]
struct DelayNode {
    behaviour: Behaviour,
    max_queue: usize,
}

impl NodeType for Delay {
    const TYPE: &'static str = "delay";
    const SUMMARY: &'static str =
        "Holds each message for a fixed time, or limits the message rate.";
    type Config = DelayConfig;

    fn build(config: DelayConfig, _ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        let behaviour = match config.mode {
            Mode::Delay => {
                if config.rate.is_some() {
                    return Err(BuildError::field("rate", "`rate` goes with `mode: rate`"));
                }
                if config.drop {
                    return Err(BuildError::field("drop", "`drop` goes with `mode: rate`"));
                }
                let Some(delay) = config.delay else {
                    return Err(BuildError::field(
                        "delay",
                        "`mode: delay` needs `delay`, how long to hold each message (e.g. 1s)",
                    ));
                };
                Behaviour::Delay(delay.get())
            }
            Mode::Rate => {
                if config.delay.is_some() {
                    return Err(BuildError::field(
                        "delay",
                        "`delay` goes with `mode: delay`",
                    ));
                }
                let Some(rate) = config.rate else {
                    return Err(BuildError::field(
                        "rate",
                        "`mode: rate` needs `rate: {count: N, per: DURATION}`",
                    ));
                };
                if rate.count == 0 {
                    return Err(BuildError::field("rate", "`count` must be at least 1"));
                }
                if rate.per.get().is_zero() {
                    return Err(BuildError::field("rate", "`per` must be above 0s"));
                }
                let interval = rate.per.get() / rate.count;
                if config.drop {
                    if config.max_queue.is_some() {
                        return Err(BuildError::field(
                            "max_queue",
                            "with `drop: true` nothing is queued; remove `max_queue`",
                        ));
                    }
                    Behaviour::RateDrop(interval)
                } else {
                    Behaviour::RateQueue(interval)
                }
            }
        };
        let max_queue = config.max_queue.unwrap_or(DEFAULT_MAX_QUEUE);
        if max_queue == 0 {
            return Err(BuildError::field("max_queue", "expected at least 1"));
        }
        Ok(NodeSpec::task(
            true,
            1,
            DelayNode {
                behaviour,
                max_queue,
            },
        ))
    }
}

/// Sleeps until `due`, or forever without one.
async fn until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[runnel_engine::async_trait]
impl TaskNode for DelayNode {
    async fn run(self: Box<Self>, ctx: &mut NodeCtx) -> Result<(), NodeError> {
        match self.behaviour {
            Behaviour::Delay(delay) => hold_each(ctx, delay, self.max_queue).await,
            Behaviour::RateQueue(interval) => rate_queue(ctx, interval, self.max_queue).await,
            Behaviour::RateDrop(interval) => rate_drop(ctx, interval).await,
        }
        Ok(())
    }
}

/// `mode: delay`: each message goes out `delay` after it arrived. Deadlines
/// grow with arrival, so a FIFO queue keeps them in order.
async fn hold_each(ctx: &mut NodeCtx, delay: std::time::Duration, max_queue: usize) {
    let halt = ctx.halted().clone();
    let mut held: VecDeque<(Instant, Msg)> = VecDeque::new();
    let mut input_open = true;
    while input_open || !held.is_empty() {
        let due = held.front().map(|(at, _)| *at);
        tokio::select! {
            biased;
            () = halt.cancelled() => return,
            () = until(due) => {
                if let Some((_, msg)) = held.pop_front() {
                    ctx.send(0, msg).await;
                }
            }
            msg = ctx.recv(), if input_open && held.len() < max_queue => match msg {
                Some(msg) => held.push_back((Instant::now() + delay, msg)),
                // Upstream gone: send what is held, then finish.
                None => input_open = false,
            },
        }
    }
}

/// `mode: rate` without drop: one message per `interval`, the rest wait.
async fn rate_queue(ctx: &mut NodeCtx, interval: std::time::Duration, max_queue: usize) {
    let halt = ctx.halted().clone();
    let mut held: VecDeque<Msg> = VecDeque::new();
    let mut next_send = Instant::now();
    let mut input_open = true;
    while input_open || !held.is_empty() {
        let due = (!held.is_empty()).then_some(next_send);
        tokio::select! {
            biased;
            () = halt.cancelled() => return,
            () = until(due) => {
                if let Some(msg) = held.pop_front() {
                    next_send = Instant::now() + interval;
                    ctx.send(0, msg).await;
                }
            }
            msg = ctx.recv(), if input_open && held.len() < max_queue => match msg {
                Some(msg) => held.push_back(msg),
                None => input_open = false,
            },
        }
    }
}

/// `mode: rate` with `drop: true`: one message per `interval`, the rest are
/// dropped and counted.
async fn rate_drop(ctx: &mut NodeCtx, interval: std::time::Duration) {
    let mut next_send = Instant::now();
    while let Some(msg) = ctx.recv().await {
        let now = Instant::now();
        if now >= next_send {
            next_send = now + interval;
            ctx.send(0, msg).await;
        } else {
            ctx.monitor().count_dropped(1);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration as StdDuration;

    use super::*;
    use crate::inject::flow_test::{deploy, engine, record};
    use runnel_engine::testing::{build, collect};

    fn ms(n: u64) -> StdDuration {
        StdDuration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn holds_each_message_for_the_delay_in_order() {
        let engine = engine();
        let start = Instant::now();
        let tap = record(collect("delay-tap"), start);
        let out = record(collect("delay-out"), start);
        deploy(
            &engine,
            r#"
nodes:
  - {id: tick, type: inject, once: true, every: 100ms, payload: x, wires: [[hold, tap]]}
  - {id: hold, type: delay, delay: 1s, wires: [out]}
  - {id: tap, type: test-collect, channel: delay-tap}
  - {id: out, type: test-collect, channel: delay-out}
"#,
        )
        .await;
        tokio::time::sleep(ms(2050)).await;
        // Shutdown stops the inject, then drains what the delay holds.
        engine.shutdown().await;
        let (tap, out) = (tap.lock().unwrap(), out.lock().unwrap());
        assert_eq!(tap.len(), 21);
        let tap_ids: Vec<_> = tap.iter().map(|s| s.id).collect();
        let out_ids: Vec<_> = out.iter().map(|s| s.id).collect();
        assert_eq!(out_ids, tap_ids, "every message comes out, in order");
        for (sent, delayed) in tap.iter().zip(out.iter()) {
            assert_eq!(delayed.at - sent.at, ms(1000));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rate_queue_spaces_messages_and_pushes_back() {
        let engine = engine();
        let start = Instant::now();
        let tap = record(collect("rate-tap"), start);
        let out = record(collect("rate-out"), start);
        deploy(
            &engine,
            r#"
settings: {queue_capacity: 4}
nodes:
  - {id: tick, type: inject, once: true, every: 10ms, payload: x, wires: [[slow, tap]]}
  - {id: slow, type: delay, mode: rate, rate: {count: 10, per: 1s}, max_queue: 5, wires: [out]}
  - {id: tap, type: test-collect, channel: rate-tap}
  - {id: out, type: test-collect, channel: rate-out}
"#,
        )
        .await;
        tokio::time::sleep(ms(1005)).await;
        let sent_in_first_second = out.lock().unwrap().len();
        engine.shutdown().await;
        let (tap, out) = (tap.lock().unwrap(), out.lock().unwrap());
        for pair in out.windows(2) {
            assert!(
                pair[1].at - pair[0].at >= ms(100),
                "{:?}",
                (pair[0].at, pair[1].at)
            );
        }
        let tap_ids: Vec<_> = tap.iter().map(|s| s.id).collect();
        let out_ids: Vec<_> = out.iter().map(|s| s.id).collect();
        assert_eq!(out_ids, tap_ids, "nothing is dropped when queueing");
        // Without back-pressure the inject would have sent ~100 messages;
        // with it, at most the input queue (4) and max_queue (5) wait, plus
        // one in hand on each side.
        assert!(
            tap.len() <= sent_in_first_second + 4 + 5 + 2,
            "{} accepted, {} sent",
            tap.len(),
            sent_in_first_second
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rate_drop_drops_and_counts_the_excess() {
        let engine = engine();
        let start = Instant::now();
        let tap = record(collect("drop-tap"), start);
        let out = record(collect("drop-out"), start);
        deploy(
            &engine,
            r#"
nodes:
  - {id: tick, type: inject, once: true, every: 10ms, payload: x, wires: [[slow, tap]]}
  - {id: slow, type: delay, mode: rate, rate: {count: 1, per: 100ms}, drop: true, wires: [out]}
  - {id: tap, type: test-collect, channel: drop-tap}
  - {id: out, type: test-collect, channel: drop-out}
"#,
        )
        .await;
        tokio::time::sleep(ms(1005)).await;
        let info = engine.flow("test").await.expect("flow runs");
        let slow = info.nodes.iter().find(|n| n.id == "slow").expect("node");
        let dropped = usize::try_from(slow.counters.dropped).unwrap();
        let received = usize::try_from(slow.counters.received).unwrap();
        let (tapped, passed) = (tap.lock().unwrap().len(), out.lock().unwrap().len());
        engine.shutdown().await;
        assert_eq!(received, tapped);
        assert_eq!(passed + dropped, received);
        assert!(dropped > passed, "{dropped} dropped, {passed} passed");
        let out = out.lock().unwrap();
        for pair in out.windows(2) {
            assert!(pair[1].at - pair[0].at >= ms(100));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_halted_flow_drops_held_messages_and_stops() {
        let engine = engine();
        deploy(
            &engine,
            r#"
nodes:
  - {id: tick, type: inject, payload: x, wires: [hold]}
  - {id: hold, type: delay, delay: 1h}
"#,
        )
        .await;
        tokio::time::sleep(ms(10)).await;
        let started = Instant::now();
        engine.shutdown().await;
        // The drain gives up after its 10 s timeout; then the node returns
        // at once on halt instead of being aborted 5 s later.
        assert!(
            started.elapsed() < StdDuration::from_secs(12),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let cases = [
            ("{}", "field \"delay\": `mode: delay` needs `delay`"),
            ("mode: rate", "field \"rate\": `mode: rate` needs"),
            (
                "mode: rate\nrate: {count: 0, per: 1s}",
                "`count` must be at least 1",
            ),
            (
                "mode: rate\nrate: {count: 1, per: 0s}",
                "`per` must be above 0s",
            ),
            (
                "mode: rate\nrate: {count: 1, per: 1s, burst: 2}",
                "unknown field \"burst\"",
            ),
            (
                "mode: rate\nrate: {count: 1, per: 1s}\ndelay: 1s",
                "field \"delay\"",
            ),
            ("delay: 1s\ndrop: true", "field \"drop\""),
            ("delay: 1s\nrate: {count: 1, per: 1s}", "field \"rate\""),
            ("delay: 1s\nmax_queue: 0", "field \"max_queue\""),
            (
                "mode: rate\nrate: {count: 1, per: 1s}\ndrop: true\nmax_queue: 5",
                "field \"max_queue\"",
            ),
            ("delay: 1s\nmode: slow", "unknown value \"slow\""),
            (
                "delay: 1s\ntimeout: 1s",
                "unknown field \"timeout\", expected one of: mode, delay, rate, drop, max_queue",
            ),
        ];
        for (config, expected) in cases {
            let error = build::<Delay>(config).unwrap_err();
            assert!(error.contains(expected), "{config}: {error}");
        }
        assert!(build::<Delay>("delay: 250ms").is_ok());
    }
}
