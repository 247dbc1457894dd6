//! Property tests: parsing outside input never panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use runnel_geo::Query;
use runnel_geo::geometry::parse_geometry;
use serde_json::{Value, json};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<f64>().prop_map(|float| json!(float)),
        (-200i64..200).prop_map(|int| json!(int)),
        prop_oneof![
            Just("Point"),
            Just("Polygon"),
            Just("LineString"),
            Just("MultiPolygon"),
            Just("GeometryCollection"),
            Just("x")
        ]
        .prop_map(|text| json!(text)),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("type"),
                    Just("coordinates"),
                    Just("geometries"),
                    Just("latitude"),
                    Just("longitude")
                ]
                .prop_map(str::to_owned),
                inner,
                0..4
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn geometry_parsing_never_panics(value in json_value()) {
        let _ = parse_geometry(&value, "g");
    }

    #[test]
    fn query_string_parsing_never_panics(
        pairs in prop::collection::vec(
            (
                prop_oneof![Just("bbox"), Just("lat"), Just("lon"), Just("radius"), Just("g"), Just("relation"),
                            Just("nearest"), Just("limit"), Just("skip"), Just("include_docs"), Just("other")]
                    .prop_map(str::to_owned),
                prop_oneof![
                    any::<String>(),
                    any::<f64>().prop_map(|float| float.to_string()),
                    "(-?[0-9]{1,3}(\\.[0-9]{1,4})?,){3}-?[0-9]{1,3}",
                    "(POINT|POLYGON|LINESTRING|MULTIPOLYGON)\\s*\\(\\(?[-0-9. ,()]{0,40}\\)?\\)",
                ],
            ),
            0..5,
        )
    ) {
        let _ = Query::from_params(&pairs);
    }

    #[test]
    fn json_query_parsing_never_panics(value in json_value()) {
        let _ = serde_json::from_value::<Query>(value);
    }
}
