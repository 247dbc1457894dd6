//! `inject`: a source that sends a configured payload at start, at a fixed
//! frequency or on a cron schedule.
//!
//! With none of `once`, `every` and `cron` it fires once at start. Without
//! `payload` it sends the current time in milliseconds since the epoch, as
//! Node-RED's default inject does. Cron patterns have 5 fields (minutes) or
//! 6 (seconds first), are read in the local time zone (`TZ`), and are
//! parsed by `croner`, which follows crontab's fields and weekday numbers
//! (0 or 7 is Sunday) the way Node-RED users write them.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeZone};
use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{
    BuildCtx, BuildError, Duration, NodeCtx, NodeError, NodeSpec, NodeType, TaskNode, Value,
};
use serde::{Deserialize, Deserializer};
use tokio::time::{Instant, MissedTickBehavior};

/// The `inject` node type.
#[derive(Debug)]
pub struct Inject;

/// A computed payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayloadType {
    /// The current time in milliseconds since the Unix epoch (a number).
    Timestamp,
}

/// Config of `inject`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    /// Fire once at start (after `delay`). Default: true when neither
    /// `every` nor `cron` is set, false otherwise.
    #[serde(default)]
    pub once: Option<bool>,
    /// With `once`: wait this long before the first message (default 0s).
    #[serde(default)]
    pub delay: Option<Duration>,
    /// Fire repeatedly at this interval (`500ms`, `1s`, `5m`). With `once`,
    /// the interval starts after the first message.
    #[serde(default)]
    pub every: Option<Duration>,
    /// Fire on this cron schedule, in local time: 5 fields
    /// (`*/15 * * * *`) or 6 with seconds first (`*/5 * * * * *`).
    #[serde(default)]
    pub cron: Option<String>,
    /// The payload: any YAML value (object, list, string, number, boolean,
    /// null). Default: `payload_type: timestamp`.
    #[serde(default, deserialize_with = "explicit_value")]
    #[schemars(with = "Option<Value>")]
    pub payload: Option<Value>,
    /// A computed payload instead of `payload`: `timestamp`.
    #[serde(default)]
    pub payload_type: Option<PayloadType>,
    /// `msg.topic` of each message.
    #[serde(default)]
    pub topic: Option<String>,
}

/// Deserialises a present field as `Some`, even when it is `null`, so
/// `payload: null` sends null instead of a timestamp.
fn explicit_value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

#[derive(Debug)]
enum Payload {
    Fixed(Value),
    Timestamp,
}

impl Payload {
    fn make(&self) -> Value {
        match self {
            Payload::Fixed(value) => value.clone(),
            Payload::Timestamp => {
                let millis = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |since| since.as_millis());
                Value::from(u64::try_from(millis).unwrap_or(u64::MAX))
            }
        }
    }
}

#[derive(Debug)]
enum Repeat {
    Never,
    Every(std::time::Duration),
    Cron(Box<croner::Cron>),
}

#[derive(Debug)]
struct InjectNode {
    payload: Payload,
    topic: Option<String>,
    /// When set, fire once at start after this delay.
    first: Option<std::time::Duration>,
    repeat: Repeat,
}

impl NodeType for Inject {
    const TYPE: &'static str = "inject";
    const SUMMARY: &'static str =
        "Sends a payload at start, at a fixed frequency or on a cron schedule.";
    type Config = InjectConfig;

    fn build(config: InjectConfig, _ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        let repeat = match (config.every, config.cron) {
            (Some(_), Some(_)) => {
                return Err(BuildError::field(
                    "cron",
                    "set either `every` or `cron`, not both",
                ));
            }
            (Some(every), None) if every.get().is_zero() => {
                return Err(BuildError::field("every", "expected a duration above 0s"));
            }
            (Some(every), None) => Repeat::Every(every.get()),
            (None, Some(pattern)) => Repeat::Cron(Box::new(parse_cron(&pattern)?)),
            (None, None) => Repeat::Never,
        };
        let once = config.once.unwrap_or(matches!(repeat, Repeat::Never));
        if !once && matches!(repeat, Repeat::Never) {
            return Err(BuildError::field(
                "once",
                "with `once: false` the node needs `every` or `cron`, or it never fires",
            ));
        }
        if !once && config.delay.is_some() {
            return Err(BuildError::field(
                "delay",
                "`delay` applies to the first message at start: add `once: true`",
            ));
        }
        let payload = match (config.payload, config.payload_type) {
            (Some(_), Some(_)) => {
                return Err(BuildError::field(
                    "payload_type",
                    "set either `payload` or `payload_type`, not both",
                ));
            }
            (Some(value), None) => Payload::Fixed(value),
            (None, _) => Payload::Timestamp,
        };
        let first = once.then(|| {
            config
                .delay
                .map_or(std::time::Duration::ZERO, Duration::get)
        });
        Ok(NodeSpec::task(
            false,
            1,
            InjectNode {
                payload,
                topic: config.topic,
                first,
                repeat,
            },
        ))
    }
}

fn parse_cron(pattern: &str) -> Result<croner::Cron, BuildError> {
    let fields = pattern.split_whitespace().count();
    if !(5..=6).contains(&fields) && !pattern.trim_start().starts_with('@') {
        return Err(BuildError::field(
            "cron",
            format!(
                "invalid cron pattern {pattern:?}: expected 5 fields (minute hour day month weekday) or 6 (second first), got {fields}"
            ),
        ));
    }
    pattern.parse::<croner::Cron>().map_err(|error| {
        BuildError::field("cron", format!("invalid cron pattern {pattern:?}: {error}"))
    })
}

/// How long from `now` until the next occurrence after `not_before` (or
/// `now`, whichever is later). `None` when the pattern never occurs again.
fn next_cron_wait<Tz: TimeZone>(
    cron: &croner::Cron,
    now: &DateTime<Tz>,
    not_before: Option<&DateTime<Tz>>,
) -> Option<(std::time::Duration, DateTime<Tz>)> {
    let from = match not_before {
        Some(last) if last > now => last,
        _ => now,
    };
    let next = cron.find_next_occurrence(from, false).ok()?;
    let wait = next
        .clone()
        .signed_duration_since(now.clone())
        .to_std()
        .unwrap_or_default();
    Some((wait, next))
}

impl InjectNode {
    async fn fire(&self, ctx: &mut NodeCtx) {
        let mut msg = ctx.new_msg(self.payload.make());
        if let Some(topic) = &self.topic {
            msg.set_topic(topic);
        }
        ctx.send(0, msg).await;
    }
}

#[runnel_engine::async_trait]
impl TaskNode for InjectNode {
    async fn run(self: Box<Self>, ctx: &mut NodeCtx) -> Result<(), NodeError> {
        let stopping = ctx.stopping().clone();
        if let Some(delay) = self.first {
            tokio::select! {
                biased;
                () = stopping.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => self.fire(ctx).await,
            }
        }
        match &self.repeat {
            Repeat::Never => stopping.cancelled().await,
            Repeat::Every(period) => {
                let mut ticker = tokio::time::interval_at(Instant::now() + *period, *period);
                ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        biased;
                        () = stopping.cancelled() => break,
                        _ = ticker.tick() => self.fire(ctx).await,
                    }
                }
            }
            Repeat::Cron(cron) => {
                let mut last = None;
                loop {
                    let now = chrono::Local::now();
                    let Some((wait, next)) = next_cron_wait(cron, &now, last.as_ref()) else {
                        tracing::warn!(node = %ctx.node_id(), "cron pattern has no next occurrence; inject stops firing");
                        stopping.cancelled().await;
                        break;
                    };
                    tokio::select! {
                        biased;
                        () = stopping.cancelled() => break,
                        () = tokio::time::sleep(wait) => self.fire(ctx).await,
                    }
                    last = Some(next);
                }
            }
        }
        Ok(())
    }
}

/// Running small flows in tests of this crate's node types.
#[cfg(test)]
pub(crate) mod flow_test {
    #![allow(clippy::expect_used)]

    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use runnel_engine::testing::Collect;
    use runnel_engine::{Engine, EngineSettings, EngineShared, Msg, MsgId, Registry};
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    /// An engine with the core node types and `test-collect`.
    pub(crate) fn engine() -> Arc<Engine> {
        let mut registry = Registry::new();
        registry
            .register::<super::Inject>()
            .register::<crate::debug::Debug>()
            .register::<crate::change::Change>()
            .register::<crate::base64::Base64>()
            .register::<crate::switch::Switch>()
            .register::<crate::delay::Delay>()
            .register::<crate::catch::Catch>()
            .register::<Collect>();
        Engine::new(
            Arc::new(registry),
            EngineShared::new(EngineSettings::default()),
        )
    }

    /// Loads and deploys `yaml` on `engine`, panicking with the diagnostics
    /// when it does not load.
    pub(crate) async fn deploy(engine: &Engine, yaml: &str) {
        let flow = engine
            .loader()
            .load_str(Path::new("test.yaml"), yaml)
            .unwrap_or_else(|errors| panic!("flow does not load:\n{errors}"));
        engine.deploy(flow).await;
    }

    /// What a test saw of one collected message. The message itself is
    /// dropped at once, so it finishes and the flow can drain.
    #[derive(Debug)]
    pub(crate) struct Seen {
        /// When it arrived, from the test's start (virtual time in paused
        /// tests).
        pub(crate) at: std::time::Duration,
        /// Its id.
        pub(crate) id: MsgId,
        /// The whole message as JSON.
        pub(crate) json: serde_json::Value,
    }

    /// Records every message of a collect channel with the time it arrived.
    pub(crate) fn record(
        mut rx: mpsc::UnboundedReceiver<Msg>,
        start: Instant,
    ) -> Arc<Mutex<Vec<Seen>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let entry = Seen {
                    at: start.elapsed(),
                    id: msg.id(),
                    json: msg.to_json(),
                };
                drop(msg);
                sink.lock().expect("lock").push(entry);
            }
        });
        seen
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration as StdDuration;

    use super::flow_test::{deploy, engine, record};
    use super::*;
    use chrono::Utc;
    use runnel_engine::testing::{build, collect};
    use serde_json::json;

    fn secs(s: f64) -> StdDuration {
        StdDuration::from_secs_f64(s)
    }

    #[tokio::test(start_paused = true)]
    async fn fires_once_at_start_by_default() {
        let engine = engine();
        let start = Instant::now();
        let seen = record(collect("inject-once"), start);
        deploy(
            &engine,
            r#"
nodes:
  - {id: tick, type: inject, topic: car-iotp, payload: {name: "aGVsbG8gZnJvbSBtb2JpbGUgdXNlcg=="}, wires: [out]}
  - {id: out, type: test-collect, channel: inject-once}
"#,
        )
        .await;
        tokio::time::sleep(secs(10.0)).await;
        engine.shutdown().await;
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].at, StdDuration::ZERO);
        assert_eq!(seen[0].json["topic"], "car-iotp");
        assert_eq!(
            seen[0].json["payload"],
            json!({"name": "aGVsbG8gZnJvbSBtb2JpbGUgdXNlcg=="})
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fires_every_period_after_a_delayed_first_message() {
        let engine = engine();
        let start = Instant::now();
        let seen = record(collect("inject-every"), start);
        deploy(
            &engine,
            r#"
nodes:
  - {id: tick, type: inject, once: true, delay: 500ms, every: 1s, payload: [1, "two", true], wires: [out]}
  - {id: out, type: test-collect, channel: inject-every}
"#,
        )
        .await;
        tokio::time::sleep(secs(3.7)).await;
        engine.shutdown().await;
        let seen = seen.lock().unwrap();
        let times: Vec<StdDuration> = seen.iter().map(|s| s.at).collect();
        assert_eq!(times, [secs(0.5), secs(1.5), secs(2.5), secs(3.5)]);
        assert_eq!(seen[0].json["payload"], json!([1, "two", true]));
        assert!(seen[0].json.get("topic").is_none());
        // Every message is a new one.
        assert_ne!(seen[0].id, seen[1].id);
    }

    #[tokio::test(start_paused = true)]
    async fn every_without_once_waits_one_period_and_sends_timestamps() {
        let engine = engine();
        let start = Instant::now();
        let seen = record(collect("inject-ts"), start);
        deploy(
            &engine,
            r#"
nodes:
  - {id: tick, type: inject, every: 250ms, wires: [out]}
  - {id: out, type: test-collect, channel: inject-ts}
"#,
        )
        .await;
        tokio::time::sleep(secs(0.6)).await;
        engine.shutdown().await;
        let seen = seen.lock().unwrap();
        let times: Vec<StdDuration> = seen.iter().map(|s| s.at).collect();
        assert_eq!(times, [secs(0.25), secs(0.5)]);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as f64;
        let stamp = seen[0].json["payload"].as_f64().expect("a number");
        // A hang guard against a wrong unit, not a timing assertion: the
        // stamp is a recent time in milliseconds.
        assert!((now_ms - stamp).abs() < 600_000.0, "{stamp} vs {now_ms}");
    }

    #[tokio::test(start_paused = true)]
    async fn fires_on_a_cron_schedule() {
        let engine = engine();
        let seen = record(collect("inject-cron"), Instant::now());
        deploy(
            &engine,
            r#"
nodes:
  - {id: tick, type: inject, cron: "* * * * * *", topic: cron, wires: [out]}
  - {id: out, type: test-collect, channel: inject-cron}
"#,
        )
        .await;
        // Cron waits are computed from the wall clock and slept in (paused)
        // tokio time: about one message per virtual second.
        tokio::time::sleep(secs(3.5)).await;
        engine.shutdown().await;
        let seen = seen.lock().unwrap();
        assert!((2..=4).contains(&seen.len()), "{} messages", seen.len());
        assert_eq!(seen[0].json["topic"], "cron");
        assert!(seen[0].json["payload"].is_u64());
    }

    #[test]
    fn cron_schedules_with_and_without_seconds() {
        let at = |text: &str| text.parse::<DateTime<Utc>>().unwrap();
        let every_5s = parse_cron("*/5 * * * * *").unwrap();
        let now = at("2026-12-01T12:00:03.200Z");
        let (wait, next) = next_cron_wait(&every_5s, &now, None).unwrap();
        assert_eq!(next, at("2026-12-01T12:00:05Z"));
        assert_eq!(wait, StdDuration::from_millis(1800));
        // A wake-up a little early does not fire the same occurrence twice.
        let early = at("2026-12-01T12:00:04.999Z");
        let (_, again) = next_cron_wait(&every_5s, &early, Some(&next)).unwrap();
        assert_eq!(again, at("2026-12-01T12:00:10Z"));

        let quarter_hours = parse_cron("*/15 * * * *").unwrap();
        let (wait, next) =
            next_cron_wait(&quarter_hours, &at("2026-12-01T12:07:00Z"), None).unwrap();
        assert_eq!(next, at("2026-12-01T12:15:00Z"));
        assert_eq!(wait, StdDuration::from_secs(8 * 60));

        let hourly = parse_cron("@hourly").unwrap();
        let (_, next) = next_cron_wait(&hourly, &at("2026-12-01T12:07:00Z"), None).unwrap();
        assert_eq!(next, at("2026-12-01T13:00:00Z"));
        // Crontab weekdays: 0 is Sunday; 2026-12-06 is a Sunday.
        let sundays = parse_cron("0 9 * * 0").unwrap();
        let (_, next) = next_cron_wait(&sundays, &at("2026-12-01T12:07:00Z"), None).unwrap();
        assert_eq!(next, at("2026-12-06T09:00:00Z"));
    }

    #[test]
    fn config_errors_name_the_field() {
        let cases = [
            (
                "cron: \"61 * * * *\"",
                "field \"cron\": invalid cron pattern",
            ),
            ("cron: \"* * *\"", "expected 5 fields"),
            ("every: 1s\ncron: \"* * * * *\"", "not both"),
            ("every: 0s", "field \"every\""),
            ("every: 5", "invalid duration \"5\""),
            ("once: false", "field \"once\""),
            ("every: 1s\ndelay: 1s", "field \"delay\""),
            (
                "payload: 1\npayload_type: timestamp",
                "field \"payload_type\"",
            ),
            ("payload_type: date", "unknown value \"date\""),
            (
                "evry: 1s",
                "unknown field \"evry\", expected one of: once, delay, every, cron, payload, payload_type, topic",
            ),
        ];
        for (config, expected) in cases {
            let error = build::<Inject>(config).unwrap_err();
            assert!(error.contains(expected), "{config}: {error}");
        }
    }

    #[test]
    fn payload_null_is_a_value_and_the_default_is_a_timestamp() {
        let spec = build::<Inject>("payload: null").unwrap();
        assert_eq!(spec.outputs, 1);
        assert!(!spec.has_input);
        let config: InjectConfig =
            runnel_engine::yaml::from_node(&runnel_engine::yaml::parse("payload: null").unwrap())
                .unwrap();
        assert_eq!(config.payload, Some(Value::Null));
        let config: InjectConfig =
            runnel_engine::yaml::from_node(&runnel_engine::yaml::parse("topic: t").unwrap())
                .unwrap();
        assert_eq!(config.payload, None);
    }
}
