//! Property tests: the loader never panics, whatever the input, and always
//! answers with a flow or with located diagnostics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use runnel_engine::testing::Collect;
use runnel_engine::{EngineSettings, EngineShared, Loader, Registry};

fn loader() -> Loader {
    let mut registry = Registry::new();
    registry.register::<Collect>();
    Loader::new(
        Arc::new(registry),
        EngineShared::new(EngineSettings::default()),
    )
}

/// Fragments that make structurally interesting YAML when glued together.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("nodes:\n".to_string()),
        Just("  - id: a\n".to_string()),
        Just("    type: test-collect\n".to_string()),
        Just("    channel: x\n".to_string()),
        Just("    wires: [[a]]\n".to_string()),
        Just("    wires: [[b], [c]]\n".to_string()),
        Just("  - {id: b, type: nope}\n".to_string()),
        Just("config:\n  - {id: c, type: test-collect}\n".to_string()),
        Just("settings: {queue_capacity: 0}\n".to_string()),
        Just("    x: ${UNSET_VAR_FOR_PROPTEST}\n".to_string()),
        Just("  - &a {id: z}\n".to_string()),
        Just("[[[\n".to_string()),
        Just("\t\n".to_string()),
        "[ -~]{0,20}\n".prop_map(|s| s),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = loader().load_str(Path::new("fuzz.yaml"), &text);
    }

    #[test]
    fn glued_fragments_never_panic_and_errors_are_located(parts in proptest::collection::vec(fragment(), 0..12)) {
        let text: String = parts.concat();
        match loader().load_str(Path::new("fuzz.yaml"), &text) {
            Ok(flow) => prop_assert!(!flow.nodes.is_empty()),
            Err(diagnostics) => {
                prop_assert!(!diagnostics.0.is_empty());
                for d in &diagnostics.0 {
                    prop_assert!(d.file == Path::new("fuzz.yaml"));
                    prop_assert!(!d.message.is_empty());
                }
            }
        }
    }
}
