//! `GET /metrics`: Prometheus text, built at each scrape from the engine's
//! counters (so flows deployed or removed since the last scrape show up or
//! disappear without registration bookkeeping).

use std::sync::atomic::AtomicU64;

use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use runnel_engine::monitor::BUSY_BUCKETS_SECONDS;

use crate::WebState;
use crate::error::ApiError;

type Labels = Vec<(String, String)>;

/// Per-node processing-time histograms, built from the engine's bucket
/// counts (prometheus-client's own histogram can only be observed into).
#[derive(Debug, Default)]
struct BusyHistograms(Vec<(Labels, runnel_engine::monitor::BusyHistogram)>);

impl EncodeMetric for BusyHistograms {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (labels, histogram) in &self.0 {
            // The text encoder sums the buckets up itself: pass raw counts.
            let buckets: Vec<(f64, u64)> = histogram
                .counts
                .iter()
                .enumerate()
                .map(|(i, &count)| {
                    let bound = BUSY_BUCKETS_SECONDS
                        .get(i)
                        .copied()
                        .unwrap_or(f64::INFINITY);
                    (bound, count)
                })
                .collect();
            encoder
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(
                    std::time::Duration::from_nanos(histogram.sum_nanos).as_secs_f64(),
                    histogram.counts.iter().sum(),
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The exposition as text.
pub async fn render(state: &WebState) -> Result<String, std::fmt::Error> {
    let flows = state.engine().flows().await;
    let mut registry = Registry::with_prefix("runnel");

    let received = Family::<Labels, Counter>::default();
    let sent = Family::<Labels, Counter>::default();
    let errors = Family::<Labels, Counter>::default();
    let dropped = Family::<Labels, Counter>::default();
    let busy = Family::<Labels, Counter<f64, AtomicU64>>::default();
    let connected = Family::<Labels, Gauge>::default();
    let in_flight = Family::<Labels, Gauge>::default();
    let node_count = Family::<Labels, Gauge>::default();
    let queue_depth = Family::<Labels, Gauge>::default();
    let mut processing = BusyHistograms::default();

    for flow in &flows {
        let flow_labels = vec![("flow".to_string(), flow.id.to_string())];
        in_flight
            .get_or_create(&flow_labels)
            .set(i64::try_from(flow.in_flight).unwrap_or(i64::MAX));
        node_count
            .get_or_create(&flow_labels)
            .set(i64::try_from(flow.nodes.len()).unwrap_or(i64::MAX));
        let monitors = state.engine().monitors(flow.id.as_str()).await;
        for (i, node) in flow.nodes.iter().enumerate() {
            let labels = vec![
                ("flow".to_string(), flow.id.to_string()),
                ("node".to_string(), node.id.clone()),
                ("type".to_string(), node.type_name.to_string()),
            ];
            let c = &node.counters;
            received.get_or_create(&labels).inc_by(c.received);
            sent.get_or_create(&labels).inc_by(c.sent);
            errors.get_or_create(&labels).inc_by(c.errors);
            dropped.get_or_create(&labels).inc_by(c.dropped);
            busy.get_or_create(&labels)
                .inc_by(std::time::Duration::from_nanos(c.busy_nanos).as_secs_f64());
            if let Some(monitor) = monitors.get(i).filter(|m| m.node().as_str() == node.id) {
                if let Some(depth) = monitor.queue_depth() {
                    queue_depth
                        .get_or_create(&labels)
                        .set(i64::try_from(depth).unwrap_or(i64::MAX));
                }
                let histogram = monitor.busy_histogram();
                if histogram.counts.iter().any(|&c| c > 0) {
                    processing.0.push((labels.clone(), histogram));
                }
            }
            match node.status.fill {
                Some("green") => {
                    connected.get_or_create(&labels).set(1);
                }
                Some("red" | "yellow") => {
                    connected.get_or_create(&labels).set(0);
                }
                _ => {}
            }
        }
    }

    registry.register("node_received", "Messages a node received", received);
    registry.register(
        "node_sent",
        "Messages a node sent (one per port send)",
        sent,
    );
    registry.register("node_errors", "Errors a node reported", errors);
    registry.register(
        "node_dropped",
        "Messages dropped at a node (full queue with drop_newest, or by the node)",
        dropped,
    );
    registry.register(
        "node_busy_seconds",
        "Time a node spent handling messages",
        busy,
    );
    registry.register(
        "node_connected",
        "1 if the node's status is green (connected), 0 if red or yellow; absent without status",
        connected,
    );
    registry.register(
        "flow_in_flight",
        "Messages of a flow not yet finished",
        in_flight,
    );
    registry.register("flow_nodes", "Nodes in a running flow", node_count);
    registry.register(
        "node_queue_depth",
        "Messages waiting in a node's input queue (nodes with a queue of their own)",
        queue_depth,
    );
    registry.register(
        "node_processing_seconds",
        "Time a sync node spent per message",
        processing,
    );
    let trace_len = Gauge::<i64>::default();
    trace_len.set(i64::try_from(state.engine().shared().trace.len()).unwrap_or(i64::MAX));
    registry.register(
        "trace_store_messages",
        "Messages held by the trace store",
        trace_len,
    );

    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

/// The handler.
pub async fn metrics(State(state): State<WebState>) -> Result<Response, ApiError> {
    let text = render(&state).await.map_err(ApiError::internal)?;
    Ok((
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}
