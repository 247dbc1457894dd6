//! The CPU one MQTT message of the seed's pipeline costs outside I/O: the
//! device document parsed into a [`Msg`] (what `mqtt-in` does with
//! `datatype: auto`), `d.location` moved to the payload (the `change` node)
//! and the payload written back as JSON (what `mqtt-out` sends). Each step
//! is measured alone and the three together.
//!
//! Run: `cargo bench -p runnel-engine --bench message`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use runnel_engine::{Msg, PropPath, Value};

/// The allocator the `runnel` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The document `mqtt-bench pipe` publishes (../shared/bench).
const DOC: &[u8] = br#"{"_id":"dev-3","_rev":"1-a9978433f27854654d629cfe6abef6cb","d":{"name":"My Device","location":{"longitude":-87.62,"latitude":41.87,"velocity":4,"type":"GPS","t":12345678901,"s":4000000000,"p":3,"r":48879}}}"#;

fn parse(bytes: &[u8]) -> Msg {
    let payload = Value::from_json_slice(bytes).expect("valid document");
    let mut msg = Msg::new(payload);
    let props = msg.props_mut();
    props.insert("topic".to_string(), Value::from("car-iotp"));
    props.insert("qos".to_string(), Value::from(0_u64));
    props.insert("retain".to_string(), Value::from(false));
    msg
}

fn bench(c: &mut Criterion) {
    let from = PropPath::parse("payload.d.location").unwrap();
    let to = PropPath::parse("payload").unwrap();
    let mut group = c.benchmark_group("message");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse document into msg", |b| {
        b.iter(|| black_box(parse(black_box(DOC))))
    });
    group.bench_function("extract d.location", |b| {
        b.iter_batched(
            || parse(DOC),
            |mut msg| {
                let location = from.get(msg.props()).cloned().unwrap_or_default();
                to.set(msg.props_mut(), location).unwrap();
                msg
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let extracted = {
        let mut msg = parse(DOC);
        let location = from.get(msg.props()).cloned().unwrap();
        to.set(msg.props_mut(), location).unwrap();
        msg
    };
    group.bench_function("payload to json", |b| {
        b.iter(|| black_box(extracted.payload().to_json_string()))
    });
    group.bench_function("whole hop", |b| {
        b.iter(|| {
            let mut msg = parse(black_box(DOC));
            let location = from.get(msg.props()).cloned().unwrap_or_default();
            to.set(msg.props_mut(), location).unwrap();
            black_box(msg.payload().to_json_string())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
