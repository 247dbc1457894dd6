//! A layered drawing of a flow, computed on the server from the petgraph
//! graph so the browser only draws boxes and curves.
//!
//! The layout is the usual Sugiyama-style sketch, kept small:
//! 1. back edges found by a depth-first search from the sources are set
//!    aside, so cycles (allowed in flows) do not break layering;
//! 2. each node's layer is its longest path from a source: sources on the
//!    left, sinks to the right of everything that feeds them;
//! 3. nodes within a layer are ordered by the barycentre of their
//!    neighbours, sweeping right then left a few times, to cut crossings;
//! 4. coordinates: fixed column width, rows stacked, layers centred.

use std::collections::HashMap;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Control, DfsEvent, depth_first_search};
use runnel_engine::NodeInfo;
use serde::Serialize;

const NODE_WIDTH: f64 = 180.0;
const MIN_NODE_HEIGHT: f64 = 58.0;
const PORT_SPACING: f64 = 18.0;
const COLUMN_GAP: f64 = 90.0;
const ROW_GAP: f64 = 28.0;
const MARGIN: f64 = 24.0;
const SWEEPS: usize = 4;

/// A point.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Point {
    /// X.
    pub x: f64,
    /// Y.
    pub y: f64,
}

/// A node's box and its ports.
#[derive(Clone, Debug, Serialize)]
pub struct NodeBox {
    /// The node id.
    pub id: String,
    /// Its type.
    #[serde(rename = "type")]
    pub type_name: &'static str,
    /// Its label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its layer, from 0 (sources).
    pub layer: usize,
    /// Top-left corner.
    pub x: f64,
    /// Top-left corner.
    pub y: f64,
    /// Width.
    pub width: f64,
    /// Height.
    pub height: f64,
    /// The input port, if the node takes input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Point>,
    /// The output ports, port 0 first.
    pub outputs: Vec<Point>,
}

/// A wire.
#[derive(Clone, Debug, Serialize)]
pub struct Edge {
    /// The sending node.
    pub from: String,
    /// Its output port.
    pub port: usize,
    /// The receiving node.
    pub to: String,
    /// Where the wire starts (the output port).
    pub start: Point,
    /// Where it ends (the input port).
    pub end: Point,
    /// Whether this wire closes a cycle (drawn differently).
    pub back: bool,
}

/// The whole drawing.
#[derive(Clone, Debug, Serialize)]
pub struct Layout {
    /// Total width.
    pub width: f64,
    /// Total height.
    pub height: f64,
    /// Node boxes, in file order.
    pub nodes: Vec<NodeBox>,
    /// Wires.
    pub edges: Vec<Edge>,
}

/// The flow's graph, as [`runnel_engine::graph::build`] makes it but from the
/// running flow's [`NodeInfo`]s: node weights are indexes into `nodes`, edge
/// weights are output ports. Wires to unknown ids are skipped.
pub fn graph_of(nodes: &[NodeInfo]) -> DiGraph<usize, usize> {
    let mut graph = DiGraph::with_capacity(nodes.len(), nodes.len());
    let indexes: Vec<NodeIndex> = (0..nodes.len()).map(|i| graph.add_node(i)).collect();
    let by_id: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    for (from, node) in nodes.iter().enumerate() {
        for (port, targets) in node.wires.iter().enumerate() {
            for target in targets {
                if let Some(&to) = by_id.get(target.as_str()) {
                    graph.add_edge(indexes[from], indexes[to], port);
                }
            }
        }
    }
    graph
}

/// Lays out the nodes of one flow.
pub fn layout(nodes: &[NodeInfo]) -> Layout {
    let graph = graph_of(nodes);
    let count = nodes.len();

    // 1. Back edges, from a DFS that starts at the sources (in file order),
    // then at whatever is left (pure cycles).
    let has_incoming: Vec<bool> = graph
        .node_indices()
        .map(|ix| {
            graph
                .neighbors_directed(ix, petgraph::Direction::Incoming)
                .next()
                .is_some()
        })
        .collect();
    let starts: Vec<NodeIndex> = graph
        .node_indices()
        .filter(|ix| !has_incoming[ix.index()])
        .chain(graph.node_indices().filter(|ix| has_incoming[ix.index()]))
        .collect();
    let mut back = std::collections::HashSet::new();
    depth_first_search(&graph, starts, |event| {
        if let DfsEvent::BackEdge(u, v) = event {
            back.insert((u.index(), v.index()));
        }
        Control::<()>::Continue
    });
    let forward: Vec<(usize, usize)> = graph
        .raw_edges()
        .iter()
        .map(|e| (e.source().index(), e.target().index()))
        .filter(|pair| !back.contains(pair))
        .collect();

    // 2. Longest-path layers (Kahn's order over the forward edges).
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); count];
    let mut succs: Vec<Vec<usize>> = vec![Vec::new(); count];
    let mut indegree = vec![0usize; count];
    for &(u, v) in &forward {
        if u == v {
            continue;
        }
        succs[u].push(v);
        preds[v].push(u);
        indegree[v] += 1;
    }
    let mut layer = vec![0usize; count];
    let mut ready: Vec<usize> = (0..count).filter(|&i| indegree[i] == 0).rev().collect();
    while let Some(u) = ready.pop() {
        for &v in &succs[u] {
            layer[v] = layer[v].max(layer[u] + 1);
            indegree[v] -= 1;
            if indegree[v] == 0 {
                ready.push(v);
            }
        }
    }
    let layer_count = layer.iter().copied().max().map_or(0, |m| m + 1);

    // 3. Order within layers by barycentre.
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); layer_count];
    for (i, &l) in layer.iter().enumerate() {
        rows[l].push(i);
    }
    let mut position = vec![0f64; count];
    let reindex = |rows: &Vec<Vec<usize>>, position: &mut Vec<f64>| {
        for row in rows {
            for (p, &i) in row.iter().enumerate() {
                position[i] = p as f64;
            }
        }
    };
    reindex(&rows, &mut position);
    for sweep in 0..SWEEPS {
        let downward = sweep % 2 == 0;
        let order: Vec<usize> = if downward {
            (1..layer_count).collect()
        } else {
            (0..layer_count.saturating_sub(1)).rev().collect()
        };
        for l in order {
            let neighbours = if downward { &preds } else { &succs };
            let mut keyed: Vec<(f64, usize)> = rows[l]
                .iter()
                .map(|&i| {
                    let near: Vec<f64> = neighbours[i].iter().map(|&n| position[n]).collect();
                    let key = if near.is_empty() {
                        position[i]
                    } else {
                        near.iter().sum::<f64>() / near.len() as f64
                    };
                    (key, i)
                })
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            rows[l] = keyed.into_iter().map(|(_, i)| i).collect();
            for (p, &i) in rows[l].iter().enumerate() {
                position[i] = p as f64;
            }
        }
    }

    // 4. Coordinates.
    let height_of =
        |i: usize| MIN_NODE_HEIGHT.max(nodes[i].outputs as f64 * PORT_SPACING + PORT_SPACING);
    let column_heights: Vec<f64> = rows
        .iter()
        .map(|row| {
            row.iter().map(|&i| height_of(i)).sum::<f64>()
                + ROW_GAP * row.len().saturating_sub(1) as f64
        })
        .collect();
    let tallest = column_heights.iter().copied().fold(0.0, f64::max);
    let mut boxes: Vec<Option<NodeBox>> = vec![None; count];
    for (l, row) in rows.iter().enumerate() {
        let x = MARGIN + l as f64 * (NODE_WIDTH + COLUMN_GAP);
        let mut y = MARGIN + (tallest - column_heights[l]) / 2.0;
        for &i in row {
            let node = &nodes[i];
            let height = height_of(i);
            let outputs = (0..node.outputs)
                .map(|p| Point {
                    x: x + NODE_WIDTH,
                    y: y + height * (p as f64 + 1.0) / (node.outputs as f64 + 1.0),
                })
                .collect();
            boxes[i] = Some(NodeBox {
                id: node.id.clone(),
                type_name: node.type_name,
                name: node.name.clone(),
                layer: l,
                x,
                y,
                width: NODE_WIDTH,
                height,
                input: node.has_input.then_some(Point {
                    x,
                    y: y + height / 2.0,
                }),
                outputs,
            });
            y += height + ROW_GAP;
        }
    }
    let boxes: Vec<NodeBox> = boxes.into_iter().flatten().collect();
    debug_assert_eq!(boxes.len(), count);

    let mut edges = Vec::new();
    for edge in graph.raw_edges() {
        let (u, v) = (edge.source().index(), edge.target().index());
        let (Some(from), Some(to)) = (boxes.get(u), boxes.get(v)) else {
            continue;
        };
        let start = from.outputs.get(edge.weight).copied().unwrap_or(Point {
            x: from.x + from.width,
            y: from.y + from.height / 2.0,
        });
        let end = to.input.unwrap_or(Point {
            x: to.x,
            y: to.y + to.height / 2.0,
        });
        edges.push(Edge {
            from: from.id.clone(),
            port: edge.weight,
            to: to.id.clone(),
            start,
            end,
            back: back.contains(&(u, v)) || u == v,
        });
    }

    Layout {
        width: MARGIN * 2.0
            + layer_count as f64 * NODE_WIDTH
            + layer_count.saturating_sub(1) as f64 * COLUMN_GAP,
        height: MARGIN * 2.0 + tallest,
        nodes: boxes,
        edges,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_engine::NodeStatus;
    use runnel_engine::monitor::NodeCounters;

    fn node(id: &str, wires: &[&[&str]], has_input: bool) -> NodeInfo {
        NodeInfo {
            id: id.to_string(),
            type_name: "t",
            name: None,
            wires: wires
                .iter()
                .map(|p| p.iter().map(|s| s.to_string()).collect())
                .collect(),
            has_input,
            outputs: wires.len(),
            line: 1,
            counters: NodeCounters::default(),
            status: NodeStatus::default(),
        }
    }

    fn find<'a>(layout: &'a Layout, id: &str) -> &'a NodeBox {
        layout
            .nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    #[test]
    fn sources_left_sinks_right_in_a_chain_with_fan_out() {
        let nodes = vec![
            node("show", &[], true),
            node("tick", &[&["change"]], false),
            node("change", &[&["show", "log"], &["log"]], true),
            node("log", &[], true),
        ];
        let layout = layout(&nodes);
        assert_eq!(find(&layout, "tick").layer, 0);
        assert_eq!(find(&layout, "change").layer, 1);
        assert_eq!(find(&layout, "show").layer, 2);
        assert_eq!(find(&layout, "log").layer, 2);
        assert!(find(&layout, "tick").x < find(&layout, "change").x);
        assert_eq!(find(&layout, "change").outputs.len(), 2);
        assert!(find(&layout, "tick").input.is_none());
        assert_eq!(layout.edges.len(), 4);
        assert!(layout.edges.iter().all(|e| !e.back));
        // Nodes of one layer do not overlap.
        let (a, b) = (find(&layout, "show"), find(&layout, "log"));
        assert!(a.y + a.height <= b.y || b.y + b.height <= a.y);
    }

    #[test]
    fn cycles_are_laid_out_with_a_back_edge() {
        let nodes = vec![
            node("src", &[&["a"]], false),
            node("a", &[&["b"]], true),
            node("b", &[&["a"]], true),
        ];
        let layout = layout(&nodes);
        assert_eq!(find(&layout, "a").layer, 1);
        assert_eq!(find(&layout, "b").layer, 2);
        assert_eq!(layout.edges.iter().filter(|e| e.back).count(), 1);
    }

    proptest::proptest! {
        /// Any wiring (cycles, self-loops, fan-in, dangling ids) lays out:
        /// every node once, wires go from an output port to an input,
        /// forward wires go left to right, and boxes of a layer never
        /// overlap.
        #[test]
        fn any_graph_lays_out_sanely(
            edges in proptest::collection::vec((0usize..8, 0usize..3, 0usize..9), 0..24),
            count in 1usize..8,
        ) {
            let ids: Vec<String> = (0..count).map(|i| format!("n{i}")).collect();
            let mut nodes: Vec<NodeInfo> = ids
                .iter()
                .map(|id| node(id, &[&[], &[], &[]], true))
                .collect();
            for (from, port, to) in edges {
                let target = if to < count { ids[to].clone() } else { "missing".to_string() };
                nodes[from % count].wires[port].push(target);
            }
            let layout = layout(&nodes);
            proptest::prop_assert_eq!(layout.nodes.len(), count);
            for edge in &layout.edges {
                let from = find(&layout, &edge.from);
                let to = find(&layout, &edge.to);
                proptest::prop_assert_eq!(edge.start, from.outputs[edge.port]);
                proptest::prop_assert_eq!(Some(edge.end), to.input);
                if !edge.back {
                    proptest::prop_assert!(from.layer < to.layer);
                }
            }
            for a in &layout.nodes {
                for b in &layout.nodes {
                    if a.id != b.id && a.layer == b.layer {
                        proptest::prop_assert!(a.y + a.height <= b.y || b.y + b.height <= a.y);
                    }
                }
                proptest::prop_assert!(a.x + a.width <= layout.width);
                proptest::prop_assert!(a.y + a.height <= layout.height);
            }
        }
    }
}
