//! `DagScheduler`: one run of an acyclic graph under admission control.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::args::{
    amount_list, cap_arg, flag_list, id_list, int_arg, node_arg, opt_id_list, rate_args,
};
use super::errors::{guard, heavy};
use super::shared_cap::SharedCap;
use super::worker_pool::WorkerPool;
use crate::dag::Graph;
use crate::error::CoreError;
use crate::limiter::Cap;
use crate::scheduler::{Growth, KeyLimits, NodeState, Outcome, Reason, Scheduler as CoreScheduler};

fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Waiting => "waiting",
        NodeState::Queued => "queued",
        NodeState::Running => "running",
        NodeState::Done => "done",
        NodeState::Failed => "failed",
        NodeState::Skipped => "skipped",
        NodeState::Cancelled => "cancelled",
        NodeState::Open => "open",
    }
}

fn reason_name(reason: Reason) -> &'static str {
    match reason {
        Reason::Inputs => "inputs",
        Reason::Ready => "ready",
        Reason::StepCap => "step_cap",
        Reason::Rate => "rate",
        Reason::SharedCap => "shared_cap",
        Reason::Placement => "placement",
        Reason::Running => "running",
        Reason::Finished => "finished",
        Reason::RunCap => "run_cap",
        Reason::Backoff => "backoff",
        Reason::Children => "children",
        Reason::Skipped => "skipped",
    }
}

/// An optional argument given and not ``None``.
fn present<'a, 'py>(v: Option<&'a Bound<'py, PyAny>>) -> Option<&'a Bound<'py, PyAny>> {
    v.filter(|v| !v.is_none())
}

/// A growth's arguments read from Python (`parents` only for `grow`).
#[allow(clippy::too_many_arguments)]
fn growth_args(
    count: &Bound<'_, PyAny>,
    parents: Option<&Bound<'_, PyAny>>,
    sources: Option<&Bound<'_, PyAny>>,
    targets: Option<&Bound<'_, PyAny>>,
    optional: Option<&Bound<'_, PyAny>>,
    keys: Option<&Bound<'_, PyAny>>,
    priorities: Option<Vec<i32>>,
    weights: Option<&Bound<'_, PyAny>>,
    classes: Option<&Bound<'_, PyAny>>,
) -> PyResult<Growth> {
    Ok(Growth {
        count: int_arg("count", count, crate::dag::MAX_IDS)? as u32,
        parents: present(parents)
            .map(|p| opt_id_list("parents", p))
            .transpose()?
            .unwrap_or_default(),
        sources: present(sources).map(|v| id_list("sources", v)).transpose()?.unwrap_or_default(),
        targets: present(targets).map(|v| id_list("targets", v)).transpose()?.unwrap_or_default(),
        optional: present(optional)
            .map(|v| flag_list("optional", v))
            .transpose()?
            .unwrap_or_default(),
        keys: present(keys).map(|v| id_list("keys", v)).transpose()?.unwrap_or_default(),
        priorities: priorities.unwrap_or_default(),
        weights: present(weights)
            .map(|v| amount_list("weights", v))
            .transpose()?
            .unwrap_or_default(),
        classes: present(classes).map(|v| id_list("classes", v)).transpose()?.unwrap_or_default(),
    })
}

/// An outcome as Python sees it: ``(admitted, skipped, skipped_by, failed)``.
type OutcomeTuple = (Vec<u32>, Vec<u32>, Vec<u32>, Vec<u32>);

fn outcome_tuple(o: Outcome) -> OutcomeTuple {
    (o.admitted, o.skipped, o.skipped_by, o.failed)
}

fn key_limits(
    max_parallel: Option<&Bound<'_, PyAny>>,
    rate: Option<&Bound<'_, PyAny>>,
    burst: Option<&Bound<'_, PyAny>>,
) -> PyResult<KeyLimits> {
    let max_parallel = cap_arg("max_parallel", max_parallel)?;
    // The cap's rule before the rate's, so a call with both wrong names the cap.
    Cap::new("max_parallel", max_parallel)?;
    let rate = match rate {
        Some(r) if !r.is_none() => {
            let (r, b) = rate_args(r, burst)?;
            Some((r, u64::from(b)))
        }
        _ => None,
    };
    Ok(KeyLimits { max_parallel, rate })
}

/// A run of an acyclic graph under admission control.
///
/// ``DagScheduler(node_count, sources, targets, *, keys, priorities, weights, max_parallel)``:
/// ``keys[v]`` is node ``v``'s admission key (limits per key via ``set_key_limits``),
/// ``priorities`` rank ready nodes (higher first), then the heaviest remaining path by
/// ``weights``; ``max_parallel`` caps the whole run; ``optional[i]`` marks edge ``i`` optional
/// (its consumer has a default: a skipped source lets it run). Times (``now``) are seconds on
/// any clock.
///
/// A live run grows (``grow``, ``expand``) in O(added), whatever its size: see the Rust
/// documentation of ``Scheduler::grow`` for which edges may be added.
#[pyclass(module = "taskiq_flow._core")]
pub struct DagScheduler {
    inner: CoreScheduler,
}

#[pymethods]
impl DagScheduler {
    #[new]
    #[pyo3(signature = (node_count, sources, targets, *, keys=None, priorities=None, weights=None, max_parallel=None, optional=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        node_count: &Bound<'_, PyAny>,
        sources: &Bound<'_, PyAny>,
        targets: &Bound<'_, PyAny>,
        keys: Option<&Bound<'_, PyAny>>,
        priorities: Option<Vec<i32>>,
        weights: Option<&Bound<'_, PyAny>>,
        max_parallel: Option<&Bound<'_, PyAny>>,
        optional: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let n = int_arg("node_count", node_count, crate::dag::MAX_IDS)? as u32;
        let src = id_list("sources", sources)?;
        let dst = id_list("targets", targets)?;
        let keys = keys.map(|k| id_list("keys", k)).transpose()?;
        let weights = weights.map(|w| amount_list("weights", w)).transpose()?;
        let global = cap_arg("max_parallel", max_parallel)?;
        let optional =
            optional.filter(|o| !o.is_none()).map(|o| flag_list("optional", o)).transpose()?;
        let mut inner = heavy(py, || {
            let graph = Graph::from_edges(n, &src, &dst)?;
            let mut inner = CoreScheduler::new(graph, keys, &[], priorities, weights.as_deref())?;
            if let Some(flags) = &optional {
                inner.set_optional_flags(&src, &dst, flags)?;
            }
            Ok(inner)
        })?;
        guard(|| inner.set_global_cap(global, 0.0))?;
        Ok(Self { inner })
    }

    #[getter]
    /// Number of nodes.
    fn node_count(&self) -> u32 {
        self.inner.node_count()
    }

    #[getter]
    /// Whether every node is done, failed, skipped or cancelled.
    fn is_finished(&self) -> bool {
        self.inner.is_finished()
    }

    #[pyo3(signature = (key, *, max_parallel=None, rate=None, burst=None, now=0.0))]
    /// Sets a key's ``max_parallel`` and/or rate limit (``rate`` per second, ``burst``);
    /// returns the nodes that the new limits admit now.
    fn set_key_limits(
        &mut self,
        key: u32,
        max_parallel: Option<&Bound<'_, PyAny>>,
        rate: Option<&Bound<'_, PyAny>>,
        burst: Option<&Bound<'_, PyAny>>,
        now: f64,
    ) -> PyResult<Vec<u32>> {
        let limits = key_limits(max_parallel, rate, burst)?;
        guard(|| self.inner.set_key_limits(key, limits, now))
    }

    #[pyo3(signature = (max_parallel, now=0.0))]
    /// Sets the global cap (``None`` lifts it); returns the nodes a raised cap admits now.
    fn set_max_parallel(
        &mut self,
        max_parallel: Option<&Bound<'_, PyAny>>,
        now: f64,
    ) -> PyResult<Vec<u32>> {
        let cap = cap_arg("max_parallel", max_parallel)?;
        guard(|| self.inner.set_global_cap(cap, now))
    }

    #[pyo3(signature = (*, shared_cap=None, pool=None, classes=None))]
    /// Before ``start``: every node admitted from now on also takes a slot of ``shared_cap``
    /// (shared with other runs), and is placed on a worker of ``pool``, needing demand class
    /// ``classes[node]`` (``WorkerPool.add_class``).
    fn attach(
        &mut self,
        shared_cap: Option<&SharedCap>,
        pool: Option<&WorkerPool>,
        classes: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if let Some(cap) = shared_cap {
            guard(|| self.inner.attach_gate(cap.inner.clone()))?;
        }
        if let Some(pool) = pool {
            let classes = match classes {
                Some(c) => id_list("classes", c)?,
                None => {
                    return Err(CoreError::invalid("classes", "one per node", "none").into());
                }
            };
            guard(|| self.inner.attach_pool(pool.inner.clone(), classes))?;
        }
        Ok(())
    }

    /// Why a node is where it is: a dict with ``state``, ``reason`` (``inputs``, ``ready``,
    /// ``step_cap``, ``rate``, ``shared_cap``, ``placement``, ``running``, ``finished``,
    /// ``run_cap``, ``backoff``, ``children``: open, waiting for its children; ``skipped``: no
    /// output, it or a required input skipped), ``since`` (when it entered that reason),
    /// ``pending_inputs`` (an open node's children not counted), ``key``, ``limit_key`` (the key
    /// of its chain that holds it back: its own, or one above it), ``key_running`` and
    /// ``key_cap`` of ``limit_key`` (``None``: no cap), ``next_token_at``, ``run_running``,
    /// ``run_cap`` (``None``: no cap), ``shared_in_use``, ``shared_cap`` (``None`` without a
    /// shared cap), ``worker``, ``retry_at``, ``parent`` (the open node it is a child of, or
    /// ``None``) and ``open_children`` (an open node's unfinished children, else ``None``).
    fn explain<'py>(&self, py: Python<'py>, node: i64) -> PyResult<Bound<'py, PyDict>> {
        let e = guard(|| self.inner.explain(node_arg(node)?))?;
        let d = PyDict::new(py);
        d.set_item("state", state_name(e.state))?;
        d.set_item("reason", reason_name(e.reason))?;
        d.set_item("since", e.since)?;
        d.set_item("pending_inputs", e.pending_inputs)?;
        d.set_item("key", e.key)?;
        d.set_item("key_running", e.key_running)?;
        d.set_item("key_cap", e.key_cap.get())?;
        d.set_item("next_token_at", e.next_token_at)?;
        d.set_item("run_running", e.run_running)?;
        d.set_item("run_cap", e.run_cap.get())?;
        d.set_item("shared_in_use", e.shared.map(|(used, _)| used))?;
        d.set_item("shared_cap", e.shared.and_then(|(_, c)| c.get()))?;
        d.set_item("worker", e.worker)?;
        d.set_item("retry_at", e.retry_at)?;
        d.set_item("limit_key", e.limit_key)?;
        d.set_item("parent", e.parent)?;
        d.set_item("open_children", e.open_children)?;
        Ok(d)
    }

    #[pyo3(signature = (on=true))]
    /// Records every change of reason from now on (``take_history`` returns them).
    fn record_history(&mut self, on: bool) {
        self.inner.record_history(on);
    }

    #[pyo3(signature = (on=true))]
    /// Records how long each node waited between becoming ready and running, and for what last
    /// (``wait_of`` returns it).
    fn record_waits(&mut self, on: bool) {
        self.inner.record_waits(on);
    }

    /// For a node that runs, when waits are recorded: ``(reason, seconds)``, the last reason it
    /// waited for and how long it waited since it became ready; ``None`` when not recorded.
    fn wait_of(&self, node: i64) -> PyResult<Option<(&'static str, f64)>> {
        let wait = guard(|| self.inner.wait_of(node_arg(node)?))?;
        Ok(wait.map(|(r, t)| (reason_name(r), t)))
    }

    /// The changes of reason recorded since the last call: ``(node, reason, time)``.
    fn take_history(&mut self) -> Vec<(u32, &'static str, f64)> {
        self.inner.take_history().into_iter().map(|(v, r, t)| (v, reason_name(r), t)).collect()
    }

    /// Leaves the shared cap and pool: every slot and worker the run still holds goes to whoever
    /// waits for one (also done when the scheduler is garbage-collected). Admission stops.
    fn detach(&mut self) {
        self.inner.detach();
    }

    #[getter]
    /// This run's id in its ``SharedCap`` (``None`` when it has none).
    fn gate_run(&self) -> Option<u32> {
        self.inner.gate_run()
    }

    #[getter]
    /// This run's id in its ``WorkerPool`` (``None`` when it has none).
    fn pool_run(&self) -> Option<u32> {
        self.inner.pool_run()
    }

    #[getter]
    /// Admitted nodes waiting in the pool's queue for a worker.
    fn placing(&self) -> u32 {
        self.inner.placing()
    }

    /// The worker a running node is placed on, or ``None``.
    fn worker_of(&self, node: i64) -> PyResult<Option<u32>> {
        let node = node_arg(node)?;
        Ok(self.inner.worker_of(node))
    }

    /// Places a running node again after its worker went away (it keeps its slots): ``True`` if
    /// it has a worker now, ``False`` if it waits (it then comes out of ``poll``).
    fn replace(&mut self, node: i64) -> PyResult<bool> {
        guard(|| self.inner.replace(node_arg(node)?))
    }

    /// Before ``start``: marks nodes finished by an earlier run as done (their predecessors
    /// must be among them); all or nothing.
    fn restore_done(&mut self, nodes: &Bound<'_, PyAny>) -> PyResult<()> {
        let ids = id_list("nodes", nodes)?;
        guard(|| self.inner.restore_done(&ids))
    }

    #[pyo3(signature = (now=0.0))]
    /// Starts the run; returns the nodes to dispatch now.
    fn start(&mut self, now: f64) -> PyResult<Vec<u32>> {
        guard(|| self.inner.start(now))
    }

    #[pyo3(signature = (node, now=0.0))]
    /// Marks a running node done; returns the nodes to dispatch now.
    fn complete(&mut self, node: i64, now: f64) -> PyResult<Vec<u32>> {
        guard(|| self.inner.complete(node_arg(node)?, now))
    }

    #[pyo3(signature = (nodes, now=0.0))]
    /// Marks running nodes done (all or nothing); returns the nodes to dispatch now.
    fn complete_many(&mut self, nodes: &Bound<'_, PyAny>, now: f64) -> PyResult<Vec<u32>> {
        let ids = id_list("nodes", nodes)?;
        guard(|| self.inner.complete_many(&ids, now))
    }

    #[pyo3(signature = (nodes, now=0.0))]
    /// For a stream over a window of nodes: done nodes without successors run again as new work
    /// (all or nothing); returns the nodes to dispatch now.
    fn recycle(&mut self, nodes: &Bound<'_, PyAny>, now: f64) -> PyResult<Vec<u32>> {
        let ids = id_list("nodes", nodes)?;
        guard(|| self.inner.recycle(&ids, now))
    }

    #[pyo3(signature = (node, now=0.0, *, detail=false))]
    /// Marks a running node failed: returns ``(admitted, skipped)``, the nodes to dispatch now
    /// and the downstream nodes that will never run. An open node it is a child of fails too,
    /// and so on up; with ``detail=True`` the result is ``(admitted, skipped, skipped_by,
    /// failed)``: for each skipped node the failed node that caused it, and the open nodes
    /// that failed with it (nearest first).
    fn fail<'py>(
        &mut self,
        py: Python<'py>,
        node: i64,
        now: f64,
        detail: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let o = guard(|| self.inner.fail(node_arg(node)?, now))?;
        if detail {
            outcome_tuple(o).into_pyobject(py).map(Bound::into_any)
        } else {
            (o.admitted, o.skipped).into_pyobject(py).map(Bound::into_any)
        }
    }

    #[pyo3(signature = (node, now=0.0))]
    /// A running node finished without an output (its task skipped). Returns ``(admitted,
    /// skipped, skipped_by)``: the nodes to dispatch now, the nodes skipped with it (over
    /// required edges, recursively) and for each the node whose skip caused it (``node``).
    /// Successors over optional edges, and its open parent (which leaves it out), go on as if
    /// it were done.
    fn skip(&mut self, node: i64, now: f64) -> PyResult<(Vec<u32>, Vec<u32>, Vec<u32>)> {
        let o = guard(|| self.inner.skip(node_arg(node)?, now))?;
        Ok((o.admitted, o.skipped, o.skipped_by))
    }

    #[pyo3(signature = (*, max_parallel=None, rate=None, burst=None, parent=None))]
    /// Adds an admission key (returns its id) with a cap and/or rate, under ``parent`` (a key):
    /// a node of the new key counts against it and every key above it.
    fn add_key(
        &mut self,
        max_parallel: Option<&Bound<'_, PyAny>>,
        rate: Option<&Bound<'_, PyAny>>,
        burst: Option<&Bound<'_, PyAny>>,
        parent: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u32> {
        let limits = key_limits(max_parallel, rate, burst)?;
        let parent = match parent {
            Some(p) if !p.is_none() => Some(int_arg("parent", p, u64::from(u32::MAX))? as u32),
            _ => None,
        };
        guard(|| self.inner.add_key(limits, parent))
    }

    #[getter]
    /// Number of admission keys.
    fn key_count(&self) -> u32 {
        self.inner.key_count()
    }

    #[pyo3(signature = (count, *, parents=None, sources=None, targets=None, optional=None, keys=None, priorities=None, weights=None, classes=None, now=0.0))]
    #[allow(clippy::too_many_arguments)]
    /// Adds ``count`` nodes (ids from ``node_count`` on) and the edges ``sources[i] ->
    /// targets[i]`` to the live run, in O(added). ``parents[i]`` (or ``None``) makes new node
    /// ``i`` a child of an existing node, which becomes open (see ``expand``). Per new node,
    /// ``keys``, ``priorities``, ``weights`` and ``classes`` default to its parent's (key 0,
    /// priority 0 without one; weight 1). Each edge has a new node at one end; a new node's
    /// existing predecessor must be running or finished, an existing target waiting or open.
    /// Returns ``(admitted, skipped, skipped_by, failed)``: the nodes to dispatch now, new
    /// nodes skipped at once (a predecessor failed or skipped) with what caused each, and open
    /// nodes failed at once. Raises ``InvalidValueError`` (a bad edge or list) or
    /// ``StateError`` (a parent that cannot take children), changing nothing.
    fn grow(
        &mut self,
        count: &Bound<'_, PyAny>,
        parents: Option<&Bound<'_, PyAny>>,
        sources: Option<&Bound<'_, PyAny>>,
        targets: Option<&Bound<'_, PyAny>>,
        optional: Option<&Bound<'_, PyAny>>,
        keys: Option<&Bound<'_, PyAny>>,
        priorities: Option<Vec<i32>>,
        weights: Option<&Bound<'_, PyAny>>,
        classes: Option<&Bound<'_, PyAny>>,
        now: f64,
    ) -> PyResult<OutcomeTuple> {
        let g = growth_args(
            count, parents, sources, targets, optional, keys, priorities, weights, classes,
        )?;
        guard(|| self.inner.grow(&g, now)).map(outcome_tuple)
    }

    #[pyo3(signature = (node, count, *, sources=None, targets=None, optional=None, keys=None, priorities=None, weights=None, classes=None, now=0.0))]
    #[allow(clippy::too_many_arguments)]
    /// ``grow`` with every new node a child of ``node``, which becomes open: done (in
    /// ``take_closed``) once its children have all finished (a skipped child is left out) and
    /// its own inputs are done; a child that fails fails it. A running ``node`` (its task
    /// returned children) gives up its slots and worker at once; a waiting or queued one (a
    /// step mapped over items) is never handed out. Same result as ``grow``.
    fn expand(
        &mut self,
        node: i64,
        count: &Bound<'_, PyAny>,
        sources: Option<&Bound<'_, PyAny>>,
        targets: Option<&Bound<'_, PyAny>>,
        optional: Option<&Bound<'_, PyAny>>,
        keys: Option<&Bound<'_, PyAny>>,
        priorities: Option<Vec<i32>>,
        weights: Option<&Bound<'_, PyAny>>,
        classes: Option<&Bound<'_, PyAny>>,
        now: f64,
    ) -> PyResult<OutcomeTuple> {
        let g = growth_args(
            count, None, sources, targets, optional, keys, priorities, weights, classes,
        )?;
        guard(|| self.inner.expand(node_arg(node)?, &g, now)).map(outcome_tuple)
    }

    /// Open nodes that closed (became done) since the last call, children before parents.
    fn take_closed(&mut self) -> Vec<u32> {
        self.inner.take_closed()
    }

    /// The open node ``node`` is a child of, or ``None``.
    fn parent_of(&self, node: i64) -> PyResult<Option<u32>> {
        guard(|| {
            let node = node_arg(node)?;
            self.inner.graph().check_node(node)?;
            Ok(self.inner.parent_of(node))
        })
    }

    /// Successors of ``node``: its own edges, then those added out of it as the run grew.
    fn successors(&self, node: i64) -> PyResult<Vec<u32>> {
        guard(|| self.inner.successors(node_arg(node)?))
    }

    /// Stops admitting; returns every node that had not started, and every open node (now
    /// cancelled; their running children finish normally).
    fn cancel(&mut self) -> PyResult<Vec<u32>> {
        guard(|| Ok(self.inner.cancel()))
    }

    /// Admits what rate limits allow at ``now``, and returns with them the nodes whose retry is
    /// due (to send again); call it at ``next_wakeup()``.
    fn poll(&mut self, now: f64) -> PyResult<Vec<u32>> {
        guard(|| self.inner.poll(now))
    }

    #[pyo3(signature = (node, due, now=0.0))]
    /// A running node's attempt failed and it is tried again at ``due``: it keeps its slots and
    /// its worker, waits with reason ``backoff`` (``explain`` gives ``retry_at``), and comes out
    /// of ``poll`` once ``due`` has come. ``cancel`` fails it.
    fn retry_at(&mut self, node: i64, due: f64, now: f64) -> PyResult<()> {
        guard(|| self.inner.retry_at(node_arg(node)?, due, now))
    }

    /// When a node waiting for a rate-limit token can go or a retry is due, or ``None``.
    fn next_wakeup(&self) -> Option<f64> {
        self.inner.next_wakeup()
    }

    /// State of a node: waiting, queued, running, done, failed, skipped, cancelled or open.
    fn state(&self, node: i64) -> PyResult<&'static str> {
        guard(|| Ok(state_name(self.inner.state(node_arg(node)?)?)))
    }

    /// Number of nodes in each state (``backoff``: running nodes waiting out a retry, also
    /// counted in ``running``; the others add up to ``node_count``).
    fn counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.inner.counts();
        let d = PyDict::new(py);
        for (name, value) in [
            ("waiting", c.waiting),
            ("queued", c.queued),
            ("running", c.running),
            ("done", c.done),
            ("failed", c.failed),
            ("skipped", c.skipped),
            ("cancelled", c.cancelled),
            ("open", c.open),
            ("backoff", c.backoff),
        ] {
            d.set_item(name, value)?;
        }
        Ok(d)
    }
}
