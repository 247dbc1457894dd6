//! [`Engine`]: running flows.
//!
//! Starting a flow turns its graph into tokio tasks (see [`crate::graph`] for
//! which nodes share a task) joined by bounded queues, one per task that
//! takes input. Stopping is ordered, as in mini-redis and Vector:
//!
//! 1. sources stop producing ([`crate::NodeCtx::stopping`]);
//! 2. messages in flight drain: the engine waits until every message and
//!    everything derived from it has finished, up to the drain timeout;
//! 3. every task is told to halt and is awaited (then aborted, after 5 s).
//!
//! A failing node never takes the engine down: errors go to `catch` nodes, a
//! panic in a sync node is caught at the node boundary, and a task node that
//! fails or panics is rebuilt from its config and restarted with backoff.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde::Serialize;
use tokio::sync::{Mutex, OwnedMutexGuard, mpsc};
use tokio::task::JoinHandle;

use crate::completion::{FlowHub, InFlight};
use crate::ctx::NodeCtx;
use crate::dispatch::{
    CatchTargets, Dispatcher, Member, QueueTarget, Target, WhenFull, panic_text,
};
use crate::ids::FlowId;
use crate::loader::{Flow, FlowNode, FlowSettings, Loader, Rebuild};
use crate::monitor::{DebugBus, NodeCounters, NodeMonitor, NodeStatus};
use crate::msg::Msg;
use crate::node::{CatchScope, ConfigInstance, NodeError, NodeImpl, NodeSpec, Out, TaskNode};
use crate::registry::Registry;
use crate::shared::EngineShared;
use crate::signal::Signal;

/// The engine: a registry, shared state and the running flows.
#[derive(Debug)]
pub struct Engine {
    registry: Arc<Registry>,
    shared: Arc<EngineShared>,
    flows: Mutex<BTreeMap<FlowId, RunningFlow>>,
}

/// A node as the editor and the API see it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeInfo {
    /// Id.
    pub id: String,
    /// Type.
    #[serde(rename = "type")]
    pub type_name: &'static str,
    /// Label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Per output port, the ids wired.
    pub wires: Vec<Vec<String>>,
    /// Whether it takes input.
    pub has_input: bool,
    /// Output ports.
    pub outputs: usize,
    /// Line in the flow file.
    pub line: usize,
    /// Counters.
    pub counters: NodeCounters,
    /// Status.
    pub status: NodeStatus,
}

/// A running flow as the editor and the API see it.
#[derive(Clone, Debug, Serialize)]
pub struct FlowInfo {
    /// Name.
    pub id: FlowId,
    /// File.
    pub path: PathBuf,
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Unfinished messages.
    pub in_flight: usize,
    /// Nodes, in file order.
    pub nodes: Vec<NodeInfo>,
}

/// What a deploy did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DeployReport {
    /// Whether the whole flow was (re)started: a new flow, or changed flow
    /// settings.
    pub full: bool,
    /// Nodes started: new ones, and those whose config, wiring, config
    /// nodes or catch nodes changed, with the nodes sharing their task.
    pub started: Vec<String>,
    /// Nodes that kept running untouched.
    pub kept: Vec<String>,
    /// Nodes that were stopped for good.
    pub removed: Vec<String>,
}

struct NodeShape {
    id: String,
    type_name: &'static str,
    name: Option<String>,
    wires: Vec<Vec<String>>,
    has_input: bool,
    outputs: usize,
    line: usize,
    monitor: Arc<NodeMonitor>,
}

/// A node's input queue. The receiver sits behind a lock that the running
/// instance holds: on a partial redeploy the replacement takes the same
/// queue over, with what is still in it, so upstream tasks keep sending.
struct QueueSlot {
    tx: mpsc::Sender<Msg>,
    rx: Arc<Mutex<mpsc::Receiver<Msg>>>,
}

/// One task of a running flow: a root node and the sync nodes fused into
/// it. A partial redeploy keeps or replaces whole units.
struct Unit {
    head: UnitHead,
    handle: JoinHandle<()>,
}

/// What a unit is, apart from its running task.
struct UnitHead {
    /// The root node's id.
    root: String,
    /// Every node this task runs, root first, with their keys.
    members: Vec<(String, u64)>,
    /// A task node without input: it creates messages.
    source: bool,
    /// Fires to replace this instance: input ends, what it holds finishes.
    retire: Signal,
    stopping: Signal,
    halt: Signal,
    /// Messages this task created that have not finished.
    origin: Arc<InFlight>,
}

impl UnitHead {
    fn spawn(self, run: impl std::future::Future<Output = ()> + Send + 'static) -> Unit {
        Unit {
            head: self,
            handle: tokio::spawn(run),
        }
    }
}

impl Unit {
    /// Stops a unit that is not part of the new flow, while the rest of the
    /// flow keeps running: a source stops producing and waits for what it
    /// created; a task with input stops taking it (or, if its queue is gone,
    /// finishes the queue once its upstream has stopped) and returns. Then
    /// it is halted (and aborted after 5 s).
    async fn finish(self, queue_kept: bool, drain: Duration) {
        let Unit {
            head:
                UnitHead {
                    root,
                    source,
                    retire,
                    stopping,
                    halt,
                    origin,
                    ..
                },
            mut handle,
        } = self;
        stopping.cancel();
        let drained = if source {
            tokio::time::timeout(drain, origin.wait_idle())
                .await
                .is_ok()
        } else {
            if queue_kept {
                retire.cancel();
            }
            tokio::time::timeout(drain, &mut handle).await.is_ok()
        };
        if !drained {
            tracing::warn!(node = %root, in_flight = origin.count(), "drain timed out; halting the node with messages in flight");
        }
        if drained && !source {
            return;
        }
        halt.cancel();
        if tokio::time::timeout(Duration::from_secs(5), &mut handle)
            .await
            .is_err()
        {
            tracing::warn!(node = %root, "node did not stop in 5s; aborting it");
            handle.abort();
        }
    }
}

struct RunningFlow {
    path: PathBuf,
    source: Arc<str>,
    description: Option<String>,
    settings: FlowSettings,
    hub: Arc<FlowHub>,
    stopping: Signal,
    halt: Signal,
    units: Vec<Unit>,
    queues: HashMap<String, QueueSlot>,
    nodes: Vec<NodeShape>,
    configs: Arc<HashMap<String, ConfigInstance>>,
    config_prints: HashMap<String, u64>,
}

impl std::fmt::Debug for RunningFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningFlow")
            .field("flow", self.hub.flow())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine with no flows.
    pub fn new(registry: Arc<Registry>, shared: Arc<EngineShared>) -> Arc<Self> {
        Arc::new(Engine {
            registry,
            shared,
            flows: Mutex::new(BTreeMap::new()),
        })
    }

    /// A loader for this engine's registry and shared state.
    pub fn loader(&self) -> Loader {
        Loader::new(self.registry.clone(), self.shared.clone())
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Shared state: traces, buses, settings.
    pub fn shared(&self) -> &Arc<EngineShared> {
        &self.shared
    }

    /// Starts `flow`. If a flow of that name runs, only what changed is
    /// replaced: nodes whose config or wiring changed, nodes using a changed
    /// config node or catch node, and the nodes sharing a task with them.
    /// Unchanged nodes keep running; a replaced node first finishes what it
    /// holds and its replacement takes over its input queue, so nothing is
    /// lost. Changed flow settings restart the whole flow (after a drain).
    pub async fn deploy(&self, flow: Flow) -> DeployReport {
        let mut flows = self.flows.lock().await;
        let id = flow.id.clone();
        let (running, report) = match flows.remove(&flow.id) {
            Some(old) if same_settings(&old.settings, &flow.settings) => {
                old.update(&self.shared, flow).await
            }
            old => {
                if let Some(old) = old {
                    old.stop(self.shared.settings.drain_timeout).await;
                }
                let running = start(&self.shared, flow, Carry::fresh());
                let report = DeployReport {
                    full: true,
                    started: running.nodes.iter().map(|n| n.id.clone()).collect(),
                    ..DeployReport::default()
                };
                (running, report)
            }
        };
        tracing::info!(
            flow = %id,
            full = report.full,
            started = report.started.len(),
            kept = report.kept.len(),
            removed = report.removed.len(),
            "flow deployed"
        );
        flows.insert(id, running);
        report
    }

    /// Stops one flow (sources, drain, halt). Returns whether it was running.
    pub async fn remove(&self, id: &FlowId) -> bool {
        let old = self.flows.lock().await.remove(id);
        match old {
            Some(old) => {
                old.stop(self.shared.settings.drain_timeout).await;
                true
            }
            None => false,
        }
    }

    /// Stops every flow: all sources first, then one shared drain, then halt.
    pub async fn shutdown(&self) {
        let mut flows: Vec<RunningFlow> = std::mem::take(&mut *self.flows.lock().await)
            .into_values()
            .collect();
        for flow in &flows {
            flow.stopping.cancel();
        }
        let drain = async {
            for flow in &mut flows {
                flow.drain().await;
            }
        };
        if tokio::time::timeout(self.shared.settings.drain_timeout, drain)
            .await
            .is_err()
        {
            let left: usize = flows.iter().map(|f| f.hub.in_flight().count()).sum();
            tracing::warn!(
                in_flight = left,
                "drain timed out; stopping with messages in flight"
            );
        }
        for flow in flows {
            flow.halt_and_join().await;
        }
    }

    /// The running flows' names.
    pub async fn flow_ids(&self) -> Vec<FlowId> {
        self.flows.lock().await.keys().cloned().collect()
    }

    /// What the editor shows of each running flow.
    pub async fn flows(&self) -> Vec<FlowInfo> {
        self.flows
            .lock()
            .await
            .iter()
            .map(|(id, flow)| flow.info(id))
            .collect()
    }

    /// One running flow's info.
    pub async fn flow(&self, id: &str) -> Option<FlowInfo> {
        let flows = self.flows.lock().await;
        flows
            .iter()
            .find(|(k, _)| k.as_str() == id)
            .map(|(k, flow)| flow.info(k))
    }

    /// The monitors (counters, status, queue depth, busy-time histogram) of
    /// a running flow's nodes, in file order.
    pub async fn monitors(&self, id: &str) -> Vec<Arc<NodeMonitor>> {
        let flows = self.flows.lock().await;
        flows
            .iter()
            .find(|(k, _)| k.as_str() == id)
            .map(|(_, flow)| flow.nodes.iter().map(|n| n.monitor.clone()).collect())
            .unwrap_or_default()
    }

    /// A running flow's file and source text.
    pub async fn flow_source(&self, id: &str) -> Option<(PathBuf, Arc<str>)> {
        let flows = self.flows.lock().await;
        flows
            .iter()
            .find(|(k, _)| k.as_str() == id)
            .map(|(_, flow)| (flow.path.clone(), flow.source.clone()))
    }
}

fn same_settings(a: &FlowSettings, b: &FlowSettings) -> bool {
    a.queue_capacity == b.queue_capacity && a.when_full == b.when_full
}

impl RunningFlow {
    fn info(&self, id: &FlowId) -> FlowInfo {
        FlowInfo {
            id: id.clone(),
            path: self.path.clone(),
            description: self.description.clone(),
            in_flight: self.hub.in_flight().count(),
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeInfo {
                    id: n.id.clone(),
                    type_name: n.type_name,
                    name: n.name.clone(),
                    wires: n.wires.clone(),
                    has_input: n.has_input,
                    outputs: n.outputs,
                    line: n.line,
                    counters: n.monitor.counters(),
                    status: n.monitor.status(),
                })
                .collect(),
        }
    }

    /// Waits until every message has finished. Sources stop creating
    /// messages once `stopping` fires: [`NodeCtx::send`] drops what a source
    /// sends after that, so nothing it creates later can be cut off by the
    /// halt. (A source may keep running until the halt, e.g. to send the
    /// acknowledgements of messages finishing during the drain.)
    async fn drain(&mut self) {
        self.hub.in_flight().wait_idle().await;
    }

    async fn stop(mut self, drain: Duration) {
        self.stopping.cancel();
        if tokio::time::timeout(drain, self.drain()).await.is_err() {
            tracing::warn!(
                flow = %self.hub.flow(),
                in_flight = self.hub.in_flight().count(),
                "drain timed out; stopping with messages in flight"
            );
        }
        self.halt_and_join().await;
    }

    async fn halt_and_join(self) {
        self.halt.cancel();
        let mut handles: Vec<JoinHandle<()>> =
            self.units.into_iter().map(|unit| unit.handle).collect();
        let join = async {
            for handle in &mut handles {
                let _ = handle.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), join)
            .await
            .is_err()
        {
            tracing::warn!(flow = %self.hub.flow(), "tasks did not stop in 5s; aborting them");
            for handle in &handles {
                handle.abort();
            }
        }
        tracing::info!(flow = %self.hub.flow(), "flow stopped");
    }

    /// Replaces what changed between this running flow and `flow` (same
    /// settings), keeping every unchanged unit running.
    async fn update(
        self,
        shared: &Arc<EngineShared>,
        mut flow: Flow,
    ) -> (RunningFlow, DeployReport) {
        let RunningFlow {
            hub,
            stopping,
            halt,
            units,
            mut queues,
            nodes: old_nodes,
            configs: old_configs,
            config_prints: old_prints,
            ..
        } = self;
        let keys = node_keys(&flow);
        let layout = layout(&flow);
        let mut old_units: HashMap<String, Unit> = units
            .into_iter()
            .map(|u| (u.head.root.clone(), u))
            .collect();
        let mut kept = Vec::new();
        for (root, members) in &layout {
            let root_id = flow.nodes[*root].id.as_str();
            let same =
                old_units.get(root_id).is_some_and(|old| {
                    old.head.members.len() == members.len()
                        && old.head.members.iter().zip(members).all(|((id, key), &m)| {
                            id == flow.nodes[m].id.as_str() && *key == keys[m]
                        })
                });
            if same && let Some(unit) = old_units.remove(root_id) {
                kept.push(unit);
            }
        }
        let kept_ids: HashSet<String> = kept
            .iter()
            .flat_map(|u| u.head.members.iter().map(|(id, _)| id.clone()))
            .collect();

        // Unchanged config nodes keep their running instance (one broker
        // connection for old and new nodes alike); changed ones are new. The
        // nodes that start now are built again against that set; kept
        // nodes' load-time builds are dropped unused.
        let merged: HashMap<String, ConfigInstance> = flow
            .configs
            .iter()
            .map(|(id, fresh)| {
                let same = old_prints.get(id) == flow.config_prints.get(id);
                let instance = match old_configs.get(id) {
                    Some(old) if same && old.type_name == fresh.type_name => old.clone(),
                    _ => fresh.clone(),
                };
                (id.clone(), instance)
            })
            .collect();
        let merged = Arc::new(merged);
        for node in &mut flow.nodes {
            if node.config_refs.is_empty() || kept_ids.contains(node.id.as_str()) {
                continue;
            }
            node.rebuild = node.rebuild.with_configs(merged.clone());
            match node.rebuild.build() {
                Ok(spec) => node.spec = Some(spec),
                Err(error) => {
                    tracing::warn!(node = %node.id, %error, "cannot rebuild node against the running config nodes; it gets new ones");
                }
            }
        }
        flow.configs = merged;
        // Kept nodes keep their monitors: the running instance holds them.
        let old_monitors: HashMap<&str, &Arc<NodeMonitor>> = old_nodes
            .iter()
            .filter(|n| kept_ids.contains(n.id.as_str()))
            .map(|n| (n.id.as_str(), &n.monitor))
            .collect();
        for node in &mut flow.nodes {
            if let Some(monitor) = old_monitors.get(node.id.as_str()) {
                node.monitor = Arc::clone(monitor);
            }
        }

        // Queues of nodes that still need one carry over (with what is in
        // them); the others close once their upstream stops, and their old
        // readers finish them first.
        let queued: HashSet<&str> = (0..flow.nodes.len())
            .filter(|&i| needs_queue(&flow, &layout, i))
            .map(|i| flow.nodes[i].id.as_str())
            .collect();
        queues.retain(|id, _| queued.contains(id.as_str()));

        let new_ids: HashSet<&str> = flow.nodes.iter().map(|n| n.id.as_str()).collect();
        let removed: Vec<String> = old_nodes
            .iter()
            .filter(|n| !new_ids.contains(n.id.as_str()))
            .map(|n| n.id.clone())
            .collect();
        let retiring: Vec<(Unit, bool)> = old_units
            .into_values()
            .map(|unit| {
                let queue_kept = queues.contains_key(&unit.head.root);
                (unit, queue_kept)
            })
            .collect();
        let (started, kept_nodes): (Vec<String>, Vec<String>) = flow
            .nodes
            .iter()
            .map(|n| n.id.as_str().to_string())
            .partition(|id| !kept_ids.contains(id));

        let carry = Carry {
            hub: Some(hub),
            stopping,
            halt,
            queues,
            kept,
        };
        let (mut running, pending) = build_units(shared, flow, carry);
        // Tasks with input started at once and wait for their queue, which
        // their predecessor releases when done; new sources start once the
        // old ones are gone (a route, a client id).
        let drain = shared.settings.drain_timeout;
        futures::future::join_all(
            retiring
                .into_iter()
                .map(|(unit, queue_kept)| unit.finish(queue_kept, drain)),
        )
        .await;
        for source in pending {
            running.units.push(source.spawn());
        }
        let report = DeployReport {
            full: false,
            started,
            kept: kept_nodes,
            removed,
        };
        (running, report)
    }
}

/// What a start inherits from the running flow on a partial redeploy.
struct Carry {
    hub: Option<Arc<FlowHub>>,
    stopping: Signal,
    halt: Signal,
    /// Queues by node id that the new flow's nodes take over.
    queues: HashMap<String, QueueSlot>,
    /// Units that keep running.
    kept: Vec<Unit>,
}

impl Carry {
    fn fresh() -> Self {
        Carry {
            hub: None,
            stopping: Signal::new(),
            halt: Signal::new(),
            queues: HashMap::new(),
            kept: Vec::new(),
        }
    }
}

/// Whether node `i` gets an input queue of its own.
fn needs_queue(flow: &Flow, layout: &[(usize, Vec<usize>)], i: usize) -> bool {
    let node = &flow.nodes[i];
    (node.has_input || node.catch.is_some()) && layout.iter().any(|(root, _)| *root == i)
}

fn queue_capacity(shared: &EngineShared, flow: &Flow) -> usize {
    flow.settings
        .queue_capacity
        .unwrap_or(shared.settings.queue_capacity)
        .max(1)
}

/// The flow's tasks: each root (a node not fused into its upstream) with
/// every node it runs, root first, in the order [`Wiring`] inlines them.
fn layout(flow: &Flow) -> Vec<(usize, Vec<usize>)> {
    fn inline(flow: &Flow, fused: &[bool], from: usize, taken: &mut [bool], out: &mut Vec<usize>) {
        for targets in &flow.nodes[from].wires {
            for &t in targets {
                if fused[t] && !taken[t] {
                    taken[t] = true;
                    out.push(t);
                    inline(flow, fused, t, taken, out);
                }
            }
        }
    }
    let fused = crate::graph::fused(flow);
    let mut taken = vec![false; flow.nodes.len()];
    (0..flow.nodes.len())
        .filter(|&i| !fused[i])
        .map(|root| {
            let mut members = vec![root];
            inline(flow, &fused, root, &mut taken, &mut members);
            (root, members)
        })
        .collect()
}

/// For each node, the catch nodes that receive its errors.
fn catchers(flow: &Flow) -> Vec<Vec<usize>> {
    (0..flow.nodes.len())
        .map(|i| {
            flow.nodes
                .iter()
                .enumerate()
                .filter(|(_, c)| match &c.catch {
                    Some(CatchScope::All) => true,
                    Some(CatchScope::Nodes(ids)) => ids.contains(&flow.nodes[i].id),
                    None => false,
                })
                .map(|(c, _)| c)
                .collect()
        })
        .collect()
}

/// A key per node that changes when anything the running node depends on
/// changes: its type, its YAML (config and wires), the YAML of the config
/// nodes it names, and which catch nodes receive its errors.
fn node_keys(flow: &Flow) -> Vec<u64> {
    use std::hash::{Hash, Hasher};
    let catchers = catchers(flow);
    flow.nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            node.type_name.hash(&mut hasher);
            node.fingerprint.hash(&mut hasher);
            for id in &node.config_refs {
                id.hash(&mut hasher);
                flow.config_prints.get(id).hash(&mut hasher);
            }
            for &c in &catchers[i] {
                flow.nodes[c].id.as_str().hash(&mut hasher);
            }
            hasher.finish()
        })
        .collect()
}

/// What building one task's dispatcher needs.
struct Wiring<'a> {
    nodes: &'a [FlowNode],
    fused: &'a [bool],
    specs: &'a mut [Option<NodeSpec>],
    queues: &'a [Option<mpsc::Sender<Msg>>],
    catch_for: &'a [Arc<[QueueTarget]>],
    when_full: WhenFull,
    members: Vec<Member>,
}

impl Wiring<'_> {
    fn routes(&mut self, from: usize) -> Vec<Vec<Target>> {
        let wires = self.nodes[from].wires.clone();
        wires
            .iter()
            .map(|targets| targets.iter().filter_map(|&t| self.target(t)).collect())
            .collect()
    }

    fn target(&mut self, to: usize) -> Option<Target> {
        if !self.fused[to] {
            return self.queues[to].as_ref().map(|tx| {
                Target::Queue(QueueTarget {
                    tx: tx.clone(),
                    policy: self.when_full,
                    monitor: self.nodes[to].monitor.clone(),
                })
            });
        }
        let spec = self.specs[to].take()?;
        let NodeImpl::Sync(node) = spec.imp else {
            return None;
        };
        let index = self.members.len();
        // Reserve the slot before recursing so indexes stay stable.
        self.members.push(Member {
            tick: 0,
            monitor: self.nodes[to].monitor.clone(),
            node,
            out: Out::new(spec.outputs),
            routes: Vec::new(),
            catch: self.catch_for[to].clone(),
        });
        let routes = self.routes(to);
        self.members[index].routes = routes;
        Some(Target::Inline(index))
    }
}

/// Starts a whole new flow.
fn start(shared: &Arc<EngineShared>, flow: Flow, carry: Carry) -> RunningFlow {
    let (mut running, pending) = build_units(shared, flow, carry);
    for source in pending {
        running.units.push(source.spawn());
    }
    running
}

/// A source task built but not spawned yet.
struct PendingSource {
    head: UnitHead,
    run: futures::future::BoxFuture<'static, ()>,
}

impl PendingSource {
    fn spawn(self) -> Unit {
        self.head.spawn(self.run)
    }
}

/// Builds and spawns every unit of `flow` but those `carry` keeps, and
/// returns the running flow plus the sources, built but not yet spawned.
fn build_units(
    shared: &Arc<EngineShared>,
    mut flow: Flow,
    carry: Carry,
) -> (RunningFlow, Vec<PendingSource>) {
    let hub = carry
        .hub
        .unwrap_or_else(|| FlowHub::new(flow.id.clone(), shared.trace.clone()));
    let capacity = queue_capacity(shared, &flow);
    let when_full = flow.settings.when_full.unwrap_or(shared.settings.when_full);
    let fused = crate::graph::fused(&flow);
    let layout = layout(&flow);
    let keys = node_keys(&flow);

    let mut slots = carry.queues;
    for (i, node) in flow.nodes.iter().enumerate() {
        let id = node.id.as_str();
        if !needs_queue(&flow, &layout, i) {
            continue;
        }
        if let Some(slot) = slots.get(id) {
            // Carried over: a restarted node's new monitor shows its depth.
            node.monitor.attach_queue(&slot.tx);
        } else {
            let (tx, rx) = mpsc::channel(capacity);
            node.monitor.attach_queue(&tx);
            slots.insert(
                id.to_string(),
                QueueSlot {
                    tx,
                    rx: Arc::new(Mutex::new(rx)),
                },
            );
        }
    }
    let queues: Vec<Option<mpsc::Sender<Msg>>> = flow
        .nodes
        .iter()
        .map(|n| slots.get(n.id.as_str()).map(|slot| slot.tx.clone()))
        .collect();
    let catch_for: Vec<Arc<[QueueTarget]>> = catchers(&flow)
        .into_iter()
        .map(|list| {
            list.into_iter()
                .filter_map(|c| {
                    queues[c].as_ref().map(|tx| QueueTarget {
                        tx: tx.clone(),
                        policy: WhenFull::DropNewest,
                        monitor: flow.nodes[c].monitor.clone(),
                    })
                })
                .collect::<Vec<_>>()
                .into()
        })
        .collect();

    let kept_roots: Vec<String> = carry.kept.iter().map(|u| u.head.root.clone()).collect();
    let mut units = carry.kept;
    let mut pending = Vec::new();
    let mut specs: Vec<Option<NodeSpec>> = flow.nodes.iter_mut().map(|n| n.spec.take()).collect();
    let (stopping, halt) = (carry.stopping, carry.halt);

    for (root, members) in &layout {
        let root = *root;
        let node = &flow.nodes[root];
        if kept_roots.iter().any(|k| k == node.id.as_str()) {
            continue;
        }
        let Some(spec) = specs[root].take() else {
            continue;
        };
        let head = UnitHead {
            root: node.id.as_str().to_string(),
            members: members
                .iter()
                .map(|&m| (flow.nodes[m].id.as_str().to_string(), keys[m]))
                .collect(),
            source: false,
            retire: Signal::new(),
            stopping: stopping.child_token(),
            halt: halt.child_token(),
            origin: Arc::new(InFlight::default()),
        };
        let input = slots.get(node.id.as_str()).map(|slot| slot.rx.clone());
        let mut wiring = Wiring {
            nodes: &flow.nodes,
            fused: &fused,
            specs: &mut specs,
            queues: &queues,
            catch_for: &catch_for,
            when_full,
            members: Vec::new(),
        };
        match spec.imp {
            NodeImpl::Sync(sync) => {
                wiring.members.push(Member {
                    tick: 0,
                    monitor: node.monitor.clone(),
                    node: sync,
                    out: Out::new(spec.outputs),
                    routes: Vec::new(),
                    catch: catch_for[root].clone(),
                });
                let routes = wiring.routes(root);
                wiring.members[0].routes = routes;
                let dispatcher = Dispatcher::new(
                    hub.clone(),
                    None,
                    Vec::new(),
                    wiring.members,
                    head.halt.clone(),
                );
                let run = run_sync_root(dispatcher, input, head.retire.clone(), head.halt.clone());
                units.push(head.spawn(run));
            }
            NodeImpl::Task(task) => {
                let routes = wiring.routes(root);
                let dispatcher = Dispatcher::new(
                    hub.clone(),
                    Some(node.monitor.clone()),
                    routes,
                    wiring.members,
                    head.halt.clone(),
                );
                let is_source = input.is_none();
                let parts = TaskParts {
                    monitor: node.monitor.clone(),
                    hub: hub.clone(),
                    input,
                    dispatcher,
                    outputs: spec.outputs,
                    catch: catch_for[root].clone(),
                    stopping: head.stopping.clone(),
                    retire: head.retire.clone(),
                    halt: head.halt.clone(),
                    origin: head.origin.clone(),
                    data_dir: shared.settings.data_dir.clone(),
                    debug: shared.debug.clone(),
                };
                let run = run_task_root(task, parts, node.rebuild.clone());
                if is_source {
                    pending.push(PendingSource {
                        head: UnitHead {
                            source: true,
                            ..head
                        },
                        run: Box::pin(run),
                    });
                } else {
                    units.push(head.spawn(run));
                }
            }
        }
    }

    let nodes = flow
        .nodes
        .iter()
        .map(|n| NodeShape {
            id: n.id.as_str().to_string(),
            type_name: n.type_name,
            name: n.name.clone(),
            wires: n
                .wires
                .iter()
                .map(|port| {
                    port.iter()
                        .map(|&t| flow.nodes[t].id.as_str().to_string())
                        .collect()
                })
                .collect(),
            has_input: n.has_input,
            outputs: n.outputs,
            line: n.line,
            monitor: n.monitor.clone(),
        })
        .collect();
    let running = RunningFlow {
        path: flow.path,
        source: flow.source,
        description: flow.description,
        settings: flow.settings,
        hub,
        stopping,
        halt,
        units,
        queues: slots,
        nodes,
        configs: flow.configs,
        config_prints: flow.config_prints,
    };
    (running, pending)
}

/// Takes the input queue (waiting while a predecessor still holds it);
/// `None` if the flow halts first.
async fn take_input(
    input: Arc<Mutex<mpsc::Receiver<Msg>>>,
    halt: &Signal,
) -> Option<OwnedMutexGuard<mpsc::Receiver<Msg>>> {
    tokio::select! {
        guard = input.lock_owned() => Some(guard),
        () = halt.cancelled() => None,
    }
}

/// The task of a sync node with its own queue.
async fn run_sync_root(
    mut dispatcher: Dispatcher,
    input: Option<Arc<Mutex<mpsc::Receiver<Msg>>>>,
    retire: Signal,
    halt: Signal,
) {
    let Some(input) = input else {
        halt.cancelled().await;
        return;
    };
    let Some(mut input) = take_input(input, &halt).await else {
        return;
    };
    // One waiter each for the whole loop, not one per wait.
    let retired = retire.cancelled_owned();
    let halted = halt.cancelled_owned();
    tokio::pin!(retired, halted);
    loop {
        let msg = tokio::select! {
            biased;
            () = &mut retired => None,
            msg = input.recv() => msg,
            () = &mut halted => None,
        };
        match msg {
            Some(msg) => dispatcher.deliver(0, msg).await,
            None => return,
        }
    }
}

/// What a task node's [`NodeCtx`] is made of, before its queue is taken.
struct TaskParts {
    monitor: Arc<NodeMonitor>,
    hub: Arc<FlowHub>,
    input: Option<Arc<Mutex<mpsc::Receiver<Msg>>>>,
    dispatcher: Dispatcher,
    outputs: usize,
    catch: CatchTargets,
    stopping: Signal,
    retire: Signal,
    halt: Signal,
    origin: Arc<InFlight>,
    data_dir: PathBuf,
    debug: DebugBus,
}

const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);

/// The task of a task node: takes its queue, runs it, and rebuilds and
/// restarts it with backoff if it fails or panics.
async fn run_task_root(mut node: Box<dyn TaskNode>, parts: TaskParts, rebuild: Rebuild) {
    let input = match parts.input {
        Some(input) => match take_input(input, &parts.halt).await {
            Some(guard) => Some(guard),
            None => return,
        },
        None => None,
    };
    let mut ctx = NodeCtx {
        monitor: parts.monitor,
        hub: parts.hub,
        input,
        dispatcher: parts.dispatcher,
        outputs: parts.outputs,
        catch: parts.catch,
        stopping: parts.stopping,
        retire: parts.retire,
        halt: parts.halt,
        waits: None,
        origin: parts.origin,
        data_dir: parts.data_dir,
        debug: parts.debug,
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = AssertUnwindSafe(node.run(&mut ctx)).catch_unwind().await;
        let error = match result {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error,
            Err(panic) => NodeError::new(format!("node panicked: {}", panic_text(&*panic))),
        };
        ctx.report_error(error);
        if ctx.stopping.is_cancelled() || ctx.halt.is_cancelled() || ctx.retire.is_cancelled() {
            return;
        }
        ctx.set_status(NodeStatus::error(format!(
            "failed; restarting in {}ms",
            backoff.as_millis()
        )));
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = ctx.halt.cancelled() => return,
            () = ctx.retire.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_RESTART_BACKOFF);
        match rebuild.build().map(|spec| spec.imp) {
            Ok(NodeImpl::Task(fresh)) => node = fresh,
            Ok(NodeImpl::Sync(_)) => return,
            Err(message) => {
                tracing::error!(node = %ctx.node_id(), error = %message, "cannot rebuild node; it stays stopped");
                return;
            }
        }
    }
}

/// Index of node ids, for tools.
pub fn index_by_id(flow: &Flow) -> HashMap<&str, usize> {
    flow.nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect()
}
