//! The flow as a graph: cycles, chain fusion and drawings.
//!
//! A flow compiles to a `petgraph` directed graph whose nodes are the flow's
//! nodes and whose edges are wires labelled with their output port.
//!
//! **Fusion** (Arroyo's chaining rule, adapted): a sync node with exactly one
//! incoming wire, outside any cycle, runs inline in the task of the node that
//! feeds it. Every other node (task nodes, sync nodes with several inputs or
//! in a cycle, catch nodes) gets its own task and a bounded input queue. So a
//! chain `mqtt-in -> change -> change -> mqtt-out` is two tasks and one queue,
//! and fan-out from a sync node to single-input sync nodes costs no queue.

use std::fmt::Write as _;

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::loader::Flow;
use crate::node::NodeImpl;

/// The flow's graph: node weights are indexes into [`Flow::nodes`], edge
/// weights are output ports.
pub fn build(flow: &Flow) -> DiGraph<usize, usize> {
    let mut graph = DiGraph::with_capacity(flow.nodes.len(), flow.nodes.len());
    let indexes: Vec<NodeIndex> = (0..flow.nodes.len()).map(|i| graph.add_node(i)).collect();
    for (from, node) in flow.nodes.iter().enumerate() {
        for (port, targets) in node.wires.iter().enumerate() {
            for &to in targets {
                graph.add_edge(indexes[from], indexes[to], port);
            }
        }
    }
    graph
}

/// Every cycle (strongly connected component with a loop), as node indexes.
pub fn cycles(flow: &Flow) -> Vec<Vec<usize>> {
    let graph = build(flow);
    tarjan_scc(&graph)
        .into_iter()
        .filter(|component| match component.as_slice() {
            [single] => graph.contains_edge(*single, *single),
            _ => true,
        })
        .map(|component| {
            let mut nodes: Vec<usize> = component.into_iter().map(|ix| graph[ix]).collect();
            nodes.sort_unstable();
            nodes
        })
        .collect()
}

/// For each node, whether it runs inline in its upstream's task.
pub fn fused(flow: &Flow) -> Vec<bool> {
    let mut in_cycle = vec![false; flow.nodes.len()];
    for cycle in cycles(flow) {
        for i in cycle {
            in_cycle[i] = true;
        }
    }
    let mut incoming = vec![0usize; flow.nodes.len()];
    for node in &flow.nodes {
        for targets in &node.wires {
            for &t in targets {
                incoming[t] += 1;
            }
        }
    }
    flow.nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let is_sync = matches!(node.spec.as_ref().map(|s| &s.imp), Some(NodeImpl::Sync(_)));
            is_sync && incoming[i] == 1 && !in_cycle[i] && node.catch.is_none()
        })
        .collect()
}

/// A Mermaid flowchart of the flow.
pub fn to_mermaid(flow: &Flow) -> String {
    let mut out = String::from("flowchart LR\n");
    for node in &flow.nodes {
        let _ = writeln!(
            out,
            "    {}[\"{}<br/><small>{}</small>\"]",
            mermaid_id(node.id.as_str()),
            node.id,
            node.type_name
        );
    }
    for node in &flow.nodes {
        for (port, targets) in node.wires.iter().enumerate() {
            for &t in targets {
                let label = if node.outputs > 1 {
                    format!("|{port}|")
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "    {} -->{label} {}",
                    mermaid_id(node.id.as_str()),
                    mermaid_id(flow.nodes[t].id.as_str())
                );
            }
        }
    }
    out
}

fn mermaid_id(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A Graphviz DOT digraph of the flow.
pub fn to_dot(flow: &Flow) -> String {
    let mut out = format!(
        "digraph \"{}\" {{\n    rankdir=LR;\n    node [shape=box];\n",
        flow.id
    );
    for node in &flow.nodes {
        let _ = writeln!(
            out,
            "    \"{}\" [label=\"{}\\n{}\"];",
            node.id, node.id, node.type_name
        );
    }
    for node in &flow.nodes {
        for (port, targets) in node.wires.iter().enumerate() {
            for &t in targets {
                let _ = writeln!(
                    out,
                    "    \"{}\" -> \"{}\" [label=\"{port}\"];",
                    node.id, flow.nodes[t].id
                );
            }
        }
    }
    out.push_str("}\n");
    out
}
