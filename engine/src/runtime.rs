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

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde::Serialize;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::completion::FlowHub;
use crate::ctx::NodeCtx;
use crate::dispatch::{Dispatcher, Member, QueueTarget, Target, WhenFull, panic_text};
use crate::ids::FlowId;
use crate::loader::{Flow, FlowNode, Loader, Rebuild};
use crate::monitor::{NodeCounters, NodeMonitor, NodeStatus};
use crate::msg::Msg;
use crate::node::{CatchScope, NodeError, NodeImpl, NodeSpec, Out, TaskNode};
use crate::registry::Registry;
use crate::shared::EngineShared;

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

struct RunningFlow {
    path: PathBuf,
    source: Arc<str>,
    description: Option<String>,
    hub: Arc<FlowHub>,
    stopping: CancellationToken,
    halt: CancellationToken,
    /// Source tasks (task nodes without an input).
    sources: JoinSet<()>,
    tasks: JoinSet<()>,
    nodes: Vec<NodeShape>,
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

    /// Starts `flow`, first stopping (and draining) a running flow of the
    /// same name.
    pub async fn deploy(&self, flow: Flow) {
        let mut flows = self.flows.lock().await;
        if let Some(old) = flows.remove(&flow.id) {
            old.stop(self.shared.settings.drain_timeout).await;
        }
        let id = flow.id.clone();
        let running = spawn_flow(&self.shared, flow);
        tracing::info!(flow = %id, nodes = running.nodes.len(), "flow started");
        flows.insert(id, running);
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

    async fn halt_and_join(mut self) {
        self.halt.cancel();
        let join = async {
            while self.sources.join_next().await.is_some() {}
            while self.tasks.join_next().await.is_some() {}
        };
        if tokio::time::timeout(Duration::from_secs(5), join)
            .await
            .is_err()
        {
            tracing::warn!(flow = %self.hub.flow(), "tasks did not stop in 5s; aborting them");
            self.sources.abort_all();
            self.tasks.abort_all();
        }
        tracing::info!(flow = %self.hub.flow(), "flow stopped");
    }
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

fn spawn_flow(shared: &Arc<EngineShared>, mut flow: Flow) -> RunningFlow {
    let hub = FlowHub::new(flow.id.clone(), shared.trace.clone());
    let capacity = flow
        .settings
        .queue_capacity
        .unwrap_or(shared.settings.queue_capacity)
        .max(1);
    let when_full = flow.settings.when_full.unwrap_or(shared.settings.when_full);
    let fused = crate::graph::fused(&flow);
    let count = flow.nodes.len();

    let mut queues: Vec<Option<mpsc::Sender<Msg>>> = Vec::with_capacity(count);
    let mut inputs: Vec<Option<mpsc::Receiver<Msg>>> = Vec::with_capacity(count);
    for (i, node) in flow.nodes.iter().enumerate() {
        if !fused[i] && (node.has_input || node.catch.is_some()) {
            let (tx, rx) = mpsc::channel(capacity);
            node.monitor.attach_queue(&tx);
            queues.push(Some(tx));
            inputs.push(Some(rx));
        } else {
            queues.push(None);
            inputs.push(None);
        }
    }
    let catch_for: Vec<Arc<[QueueTarget]>> = (0..count)
        .map(|i| {
            flow.nodes
                .iter()
                .enumerate()
                .filter(|(_, c)| match &c.catch {
                    Some(CatchScope::All) => true,
                    Some(CatchScope::Nodes(ids)) => ids.contains(&flow.nodes[i].id),
                    None => false,
                })
                .filter_map(|(c, catcher)| {
                    queues[c].as_ref().map(|tx| QueueTarget {
                        tx: tx.clone(),
                        policy: WhenFull::DropNewest,
                        monitor: catcher.monitor.clone(),
                    })
                })
                .collect::<Vec<_>>()
                .into()
        })
        .collect();

    let mut specs: Vec<Option<NodeSpec>> = flow.nodes.iter_mut().map(|n| n.spec.take()).collect();
    let stopping = CancellationToken::new();
    let halt = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut sources = JoinSet::new();

    for root in (0..count).filter(|&i| !fused[i]) {
        let Some(spec) = specs[root].take() else {
            continue;
        };
        let node = &flow.nodes[root];
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
                let dispatcher =
                    Dispatcher::new(hub.clone(), None, Vec::new(), wiring.members, halt.clone());
                let input = inputs[root].take();
                tasks.spawn(run_sync_root(dispatcher, input, halt.clone()));
            }
            NodeImpl::Task(task) => {
                let routes = wiring.routes(root);
                let dispatcher = Dispatcher::new(
                    hub.clone(),
                    Some(node.monitor.clone()),
                    routes,
                    wiring.members,
                    halt.clone(),
                );
                let input = inputs[root].take();
                let is_source = input.is_none();
                let ctx = NodeCtx {
                    monitor: node.monitor.clone(),
                    hub: hub.clone(),
                    input,
                    dispatcher,
                    outputs: spec.outputs,
                    catch: catch_for[root].clone(),
                    stopping: stopping.clone(),
                    halt: halt.clone(),
                    data_dir: shared.settings.data_dir.clone(),
                    debug: shared.debug.clone(),
                };
                let run = run_task_root(task, ctx, node.rebuild.clone());
                if is_source {
                    sources.spawn(run);
                } else {
                    tasks.spawn(run);
                }
            }
        }
    }

    let index_to_id: Vec<String> = flow
        .nodes
        .iter()
        .map(|n| n.id.as_str().to_string())
        .collect();
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
                .map(|port| port.iter().map(|&t| index_to_id[t].clone()).collect())
                .collect(),
            has_input: n.has_input,
            outputs: n.outputs,
            line: n.line,
            monitor: n.monitor.clone(),
        })
        .collect();
    RunningFlow {
        path: flow.path,
        source: flow.source,
        description: flow.description,
        hub,
        stopping,
        halt,
        sources,
        tasks,
        nodes,
    }
}

/// The task of a sync node with its own queue.
async fn run_sync_root(
    mut dispatcher: Dispatcher,
    input: Option<mpsc::Receiver<Msg>>,
    halt: CancellationToken,
) {
    let Some(mut input) = input else {
        halt.cancelled().await;
        return;
    };
    loop {
        let msg = tokio::select! {
            biased;
            msg = input.recv() => msg,
            () = halt.cancelled() => None,
        };
        match msg {
            Some(msg) => dispatcher.deliver(0, msg).await,
            None => return,
        }
    }
}

const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);

/// The task of a task node: runs it, and rebuilds and restarts it with
/// backoff if it fails or panics.
async fn run_task_root(mut node: Box<dyn TaskNode>, mut ctx: NodeCtx, rebuild: Rebuild) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = AssertUnwindSafe(node.run(&mut ctx)).catch_unwind().await;
        let error = match result {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error,
            Err(panic) => NodeError::new(format!("node panicked: {}", panic_text(&*panic))),
        };
        ctx.report_error(error);
        if ctx.stopping.is_cancelled() || ctx.halt.is_cancelled() {
            return;
        }
        ctx.set_status(NodeStatus::error(format!(
            "failed; restarting in {}ms",
            backoff.as_millis()
        )));
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = ctx.halt.cancelled() => return,
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
