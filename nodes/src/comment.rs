//! `comment`: a note in a flow. It has no wires and does nothing; the
//! editor shows its text.

use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{BuildCtx, BuildError, NodeCtx, NodeError, NodeSpec, NodeType, TaskNode};
use serde::Deserialize;

/// The `comment` node type.
#[derive(Debug)]
pub struct Comment;

/// Config of `comment`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentConfig {
    /// A short note, shown on the node.
    #[serde(default)]
    pub text: Option<String>,
    /// Longer documentation (Markdown), shown in the editor's info panel.
    #[serde(default)]
    pub info: Option<String>,
}

struct CommentNode;

#[runnel_engine::async_trait]
impl TaskNode for CommentNode {
    async fn run(self: Box<Self>, _ctx: &mut NodeCtx) -> Result<(), NodeError> {
        Ok(())
    }
}

impl NodeType for Comment {
    const TYPE: &'static str = "comment";
    const SUMMARY: &'static str = "A note in a flow; does nothing.";
    type Config = CommentConfig;

    fn build(_config: CommentConfig, _ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        Ok(NodeSpec::task(false, 0, CommentNode))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use runnel_engine::testing::build;

    #[test]
    fn has_no_ports() {
        let spec =
            build::<Comment>("text: Seed flow\ninfo: |\n  # Notes\n  Decodes the name.\n").unwrap();
        assert!(!spec.has_input);
        assert_eq!(spec.outputs, 0);
        assert!(build::<Comment>("{}").is_ok());
    }

    #[test]
    fn unknown_fields_are_errors() {
        let error = build::<Comment>("txt: hi").unwrap_err();
        assert_eq!(
            error,
            "unknown field \"txt\", expected one of: text or info"
        );
    }
}
