//! The one module that knows about Python: `taskiq_flow._core`.
//!
//! Every class here is a thin shell over a pure core type. Three rules hold throughout:
//! - errors become the exception classes of `taskiq_flow.exceptions`, mapped in exactly one place
//!   (`impl From<CoreError> for PyErr`);
//! - every call runs inside [`guard`], so a Rust panic surfaces as `taskiq_flow.exceptions.InternalError`
//!   instead of `pyo3_runtime.PanicException` (a `BaseException` that `except Exception` misses);
//! - work that is O(n) or more on owned data runs with the interpreter detached ([`heavy`]).

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyList, PyListMethods, PyTuple};

use std::sync::{Arc, Mutex};

use crate::admission::{lock, Gate, Pool, Shared};
use crate::dag::{Graph, Sorter};
use crate::error::{CoreError, CoreResult};
use crate::limiter::{ConcurrencyLimit, RateLimit};
use crate::packing::{Demand, Placer as CorePlacer, Policy, Shortfall};
use crate::scheduler::{KeyLimits, NodeState, Reason, Scheduler as CoreScheduler};

mod limits;
mod placements;
mod sorter;

mod exceptions {
    pyo3::import_exception!(taskiq_flow.exceptions, CycleError);
    pyo3::import_exception!(taskiq_flow.exceptions, StateError);
    pyo3::import_exception!(taskiq_flow.exceptions, UnknownIdError);
    pyo3::import_exception!(taskiq_flow.exceptions, InvalidValueError);
    pyo3::import_exception!(taskiq_flow.exceptions, UnschedulableError);
    pyo3::import_exception!(taskiq_flow.exceptions, InternalError);
}
use exceptions::{
    CycleError, InternalError, InvalidValueError, StateError, UnknownIdError, UnschedulableError,
};

impl From<CoreError> for PyErr {
    fn from(err: CoreError) -> PyErr {
        let message = err.to_string();
        match err {
            CoreError::Cycle { path } => CycleError::new_err((message, path)),
            CoreError::UnknownNode { node, .. } => UnknownIdError::new_err((message, node)),
            CoreError::NotPassedOut { node }
            | CoreError::AlreadyDone { node }
            | CoreError::NotRunning { node } => StateError::new_err((message, node)),
            CoreError::Frozen
            | CoreError::NotPrepared
            | CoreError::AlreadyPrepared
            | CoreError::NotHeld { .. } => StateError::new_err(message),
            CoreError::DuplicateId { id, .. } => StateError::new_err((message, id)),
            CoreError::UnknownId { id, .. } => UnknownIdError::new_err((message, id)),
            CoreError::TooLarge { .. } | CoreError::InvalidValue { .. } => {
                InvalidValueError::new_err(message)
            }
            CoreError::Unschedulable { .. } => UnschedulableError::new_err(message),
        }
    }
}

/// Runs core work and turns a panic into `InternalError`. The core's data is plain arrays, so a
/// caught panic leaves memory safe, though the object may be mid-update; the error says so.
fn guard<T>(f: impl FnOnce() -> CoreResult<T>) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(panic_error)?.map_err(PyErr::from)
}

/// [`guard`] with the interpreter detached, for O(n) work on owned data.
fn heavy<T: Send>(py: Python<'_>, f: impl FnOnce() -> CoreResult<T> + Send) -> PyResult<T> {
    py.detach(|| catch_unwind(AssertUnwindSafe(f))).map_err(panic_error)?.map_err(PyErr::from)
}

#[allow(clippy::needless_pass_by_value)] // the shape `map_err` hands us
fn panic_error(payload: Box<dyn std::any::Any + Send>) -> PyErr {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    InternalError::new_err(format!(
        "internal error in the scheduling core: {detail}; the object that raised it may be \
         inconsistent and should be discarded"
    ))
}

/// An integer argument: a Python `int` (not `bool`) within `0..=max`.
fn int_arg(what: &str, value: &Bound<'_, PyAny>, max: u64) -> PyResult<u64> {
    // The common case, a plain `int` in range, with one call into Python.
    if value.is_exact_instance_of::<PyInt>() {
        if let Ok(v) = value.extract::<i64>() {
            if v >= 0 && v as u64 <= max {
                return Ok(v as u64);
            }
        }
    }
    if value.is_instance_of::<PyInt>() && !value.is_instance_of::<pyo3::types::PyBool>() {
        if let Ok(v) = value.extract::<u64>() {
            if v <= max {
                return Ok(v);
            }
        }
        let shown = value.repr()?.to_string();
        return Err(CoreError::invalid(what, range_text(max), shown).into());
    }
    let shown = value.repr()?.to_string();
    Err(CoreError::invalid(what, "an integer", shown).into())
}

fn range_text(max: u64) -> &'static str {
    match max {
        m if m == u64::from(u32::MAX) => "an integer from 0 to 4294967295",
        _ => "an integer >= 0",
    }
}

/// A list of ids: fast path for a list of small ints, precise error otherwise.
fn id_list(what: &str, value: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    if let Ok(ids) = value.extract::<Vec<u32>>() {
        return Ok(ids);
    }
    if value.is_instance_of::<pyo3::types::PyString>() {
        return Err(PyTypeError::new_err(format!("{what} must be a sequence of ints, not str")));
    }
    let mut out = Vec::new();
    for item in value.try_iter()? {
        out.push(int_arg(what, &item?, u64::from(u32::MAX))? as u32);
    }
    Ok(out)
}

/// A list of amounts (u64 each).
fn amount_list(what: &str, value: &Bound<'_, PyAny>) -> PyResult<Vec<u64>> {
    if let Ok(v) = value.extract::<Vec<u64>>() {
        return Ok(v);
    }
    if value.is_instance_of::<pyo3::types::PyString>() {
        return Err(PyTypeError::new_err(format!("{what} must be a sequence of ints, not str")));
    }
    let mut out = Vec::new();
    for item in value.try_iter()? {
        out.push(int_arg(what, &item?, u64::MAX)?);
    }
    Ok(out)
}

/// An optional cap: `None` or an int from 1 to `u32::MAX`.
fn cap_arg(what: &str, value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
    const EXPECTED: &str = "an integer from 1 to 4294967295";
    match value {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => match int_arg(what, v, u64::from(u32::MAX)) {
            Ok(cap) if cap >= 1 => Ok(Some(cap)),
            Ok(_) => Err(CoreError::invalid(what, EXPECTED, 0).into()),
            Err(err) if v.is_instance_of::<PyInt>() => {
                drop(err);
                Err(CoreError::invalid(what, EXPECTED, v.repr()?).into())
            }
            Err(err) => Err(err),
        },
    }
}

/// A float argument: int or float, NaN and infinities refused by the core.
fn float_arg(what: &str, value: &Bound<'_, PyAny>) -> PyResult<f64> {
    if (value.is_instance_of::<PyFloat>() || value.is_instance_of::<PyInt>())
        && !value.is_instance_of::<pyo3::types::PyBool>()
    {
        return value.extract::<f64>();
    }
    let shown = value.repr()?.to_string();
    Err(CoreError::invalid(what, "a number", shown).into())
}

/// A tuple of ids; the empty tuple is `CPython`'s shared singleton, so a completion that releases
/// nothing allocates nothing.
fn id_tuple<'py>(py: Python<'py>, ids: &[u32]) -> PyResult<Bound<'py, PyTuple>> {
    if ids.is_empty() {
        Ok(PyTuple::empty(py))
    } else {
        PyTuple::new(py, ids.iter().copied())
    }
}

/// A node id: negative or too large ids are unknown ids, not overflow errors.
fn node_arg(node: i64) -> CoreResult<u32> {
    u32::try_from(node).map_err(|_| CoreError::UnknownId { what: "node", id: node as u64 })
}

// ------------------------------------------------------------------------------------------------
// DAG
// ------------------------------------------------------------------------------------------------

/// An immutable graph on node ids ``0..node_count`` for static analysis.
///
/// ``DagGraph(node_count, sources, targets)`` has the edges ``sources[i] -> targets[i]``.
#[pyclass(module = "taskiq_flow._core", frozen)]
pub struct DagGraph {
    graph: Graph,
}

#[pymethods]
impl DagGraph {
    #[new]
    #[pyo3(signature = (node_count, sources, targets))]
    fn new(
        py: Python<'_>,
        node_count: &Bound<'_, PyAny>,
        sources: &Bound<'_, PyAny>,
        targets: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let n = int_arg("node_count", node_count, crate::dag::MAX_IDS)? as u32;
        let src = id_list("sources", sources)?;
        let dst = id_list("targets", targets)?;
        let graph = heavy(py, || Graph::from_edges(n, &src, &dst))?;
        Ok(Self { graph })
    }

    #[getter]
    /// Number of nodes.
    fn node_count(&self) -> u32 {
        self.graph.node_count()
    }

    #[getter]
    /// Number of edges (parallel edges count separately).
    fn edge_count(&self) -> usize {
        self.graph.edge_count()
    }

    /// Successors of ``node``, in insertion order.
    fn successors(&self, node: i64) -> PyResult<Vec<u32>> {
        guard(|| {
            let node = node_arg(node)?;
            self.graph.check_node(node)?;
            Ok(self.graph.successors(node).to_vec())
        })
    }

    /// A topological order (sources by id, then first come first served).
    ///
    /// Raises ``CycleError`` (with the cycle) if the graph has one.
    fn topological_order(&self, py: Python<'_>) -> PyResult<Vec<u32>> {
        heavy(py, || self.graph.topological_order())
    }

    /// One cycle ``[a, b, ..., a]`` if the graph has any, else ``None``.
    fn find_cycle(&self, py: Python<'_>) -> PyResult<Option<Vec<u32>>> {
        heavy(py, || Ok(self.graph.find_cycle()))
    }

    /// Level of each node: 0 without predecessors, else one more than its deepest predecessor.
    fn levels(&self, py: Python<'_>) -> PyResult<Vec<u32>> {
        heavy(py, || self.graph.levels())
    }

    #[pyo3(signature = (weights=None))]
    /// For each node, the weight of the heaviest path starting at it (weights default to 1).
    fn bottom_levels(
        &self,
        py: Python<'_>,
        weights: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<u64>> {
        let weights = weights.map(|w| amount_list("weights", w)).transpose()?;
        heavy(py, || self.graph.bottom_levels(weights.as_deref()))
    }

    #[pyo3(signature = (weights=None))]
    /// The heaviest path: ``(total weight, [nodes first to last])`` (weights default to 1).
    fn critical_path(
        &self,
        py: Python<'_>,
        weights: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(u64, Vec<u32>)> {
        let weights = weights.map(|w| amount_list("weights", w)).transpose()?;
        heavy(py, || self.graph.critical_path(weights.as_deref()))
    }
}

/// The ``graphlib.TopologicalSorter`` protocol on integer node ids.
///
/// ``DagSorter(node_count)``, then ``add_edges(sources, targets)`` and ``prepare()``. Ready nodes
/// come out in graphlib's order; ``complete(node)`` is ``done`` and ``get_ready`` in one call.
#[pyclass(module = "taskiq_flow._core")]
pub struct DagSorter {
    sorter: Sorter,
}

#[pymethods]
impl DagSorter {
    #[new]
    #[pyo3(signature = (node_count=None))]
    fn new(node_count: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let n = match node_count {
            Some(count) => int_arg("node_count", count, crate::dag::MAX_IDS)? as u32,
            None => 0,
        };
        let mut sorter = Sorter::new();
        guard(|| sorter.add_nodes(n))?;
        Ok(Self { sorter })
    }

    #[getter]
    /// Number of nodes.
    fn node_count(&self) -> u32 {
        self.sorter.node_count()
    }

    #[getter]
    /// Nodes handed out and not done yet.
    fn in_flight(&self) -> u32 {
        self.sorter.in_flight()
    }

    #[getter]
    /// Nodes marked done.
    fn finished(&self) -> u32 {
        self.sorter.finished()
    }

    #[getter]
    /// Whether ``prepare()`` has run.
    fn is_prepared(&self) -> bool {
        self.sorter.is_prepared()
    }

    /// Adds ``count`` nodes; returns the first new id.
    fn add_nodes(&mut self, count: &Bound<'_, PyAny>) -> PyResult<u32> {
        let count = int_arg("count", count, crate::dag::MAX_IDS)? as u32;
        guard(|| self.sorter.add_nodes(count))
    }

    /// Adds edges ``sources[i] -> targets[i]``; all or nothing.
    fn add_edges(
        &mut self,
        sources: &Bound<'_, PyAny>,
        targets: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let src = id_list("sources", sources)?;
        let dst = id_list("targets", targets)?;
        guard(|| self.sorter.add_edges(&src, &dst))
    }

    /// Freezes the graph and releases the nodes without predecessors.
    ///
    /// Raises ``CycleError`` on a cycle, but the acyclic part can still be run (as in graphlib).
    fn prepare(&mut self, py: Python<'_>) -> PyResult<()> {
        let sorter = &mut self.sorter;
        heavy(py, || sorter.prepare())
    }

    /// Whether nodes are ready or handed out and not done.
    fn is_active(&self) -> PyResult<bool> {
        guard(|| self.sorter.is_active())
    }

    fn __bool__(&self) -> PyResult<bool> {
        self.is_active()
    }

    /// Every node released since the last call; they are now out.
    fn get_ready<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        id_tuple(py, guard(|| self.sorter.take_ready())?)
    }

    #[pyo3(signature = (*nodes))]
    /// Marks handed-out nodes done; all or nothing.
    fn done(&mut self, nodes: Vec<i64>) -> PyResult<()> {
        guard(|| {
            let ids = nodes.into_iter().map(node_arg).collect::<CoreResult<Vec<u32>>>()?;
            self.sorter.done(&ids)
        })
    }

    /// ``done`` over a sequence of ids.
    fn done_many(&mut self, nodes: &Bound<'_, PyAny>) -> PyResult<()> {
        let ids = id_list("nodes", nodes)?;
        guard(|| self.sorter.done(&ids))
    }

    /// Marks ``node`` done and returns the nodes now ready (one crossing per completion).
    fn complete<'py>(&mut self, py: Python<'py>, node: i64) -> PyResult<Bound<'py, PyTuple>> {
        id_tuple(py, guard(|| self.sorter.complete(node_arg(node)?))?)
    }

    /// Prepares and runs the whole graph; every node in graphlib's static order.
    fn static_order(&mut self, py: Python<'_>) -> PyResult<Vec<u32>> {
        let sorter = &mut self.sorter;
        heavy(py, || sorter.static_order())
    }
}

// ------------------------------------------------------------------------------------------------
// Admission
// ------------------------------------------------------------------------------------------------

fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Waiting => "waiting",
        NodeState::Queued => "queued",
        NodeState::Running => "running",
        NodeState::Done => "done",
        NodeState::Failed => "failed",
        NodeState::Skipped => "skipped",
        NodeState::Cancelled => "cancelled",
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
    }
}

fn key_limits(
    max_parallel: Option<&Bound<'_, PyAny>>,
    rate: Option<&Bound<'_, PyAny>>,
    burst: Option<&Bound<'_, PyAny>>,
) -> PyResult<KeyLimits> {
    let max_parallel = cap_arg("max_parallel", max_parallel)?;
    let rate = match rate {
        Some(r) if !r.is_none() => {
            let r = float_arg("rate", r)?;
            let b = cap_arg("burst", burst)?.unwrap_or(1);
            Some((r, b))
        }
        _ => None,
    };
    let limits = KeyLimits { max_parallel, rate };
    if let Some((r, b)) = limits.rate {
        RateLimit::new(r, b)?;
    }
    Ok(limits)
}

/// A run of an acyclic graph under admission control.
///
/// ``DagScheduler(node_count, sources, targets, *, keys, priorities, weights, max_parallel)``:
/// ``keys[v]`` is node ``v``'s admission key (limits per key via ``set_key_limits``),
/// ``priorities`` rank ready nodes (higher first), then the heaviest remaining path by
/// ``weights``; ``max_parallel`` caps the whole run. Times (``now``) are seconds on any clock.
#[pyclass(module = "taskiq_flow._core")]
pub struct DagScheduler {
    inner: CoreScheduler,
}

#[pymethods]
impl DagScheduler {
    #[new]
    #[pyo3(signature = (node_count, sources, targets, *, keys=None, priorities=None, weights=None, max_parallel=None))]
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
    ) -> PyResult<Self> {
        let n = int_arg("node_count", node_count, crate::dag::MAX_IDS)? as u32;
        let src = id_list("sources", sources)?;
        let dst = id_list("targets", targets)?;
        let keys = keys.map(|k| id_list("keys", k)).transpose()?;
        let weights = weights.map(|w| amount_list("weights", w)).transpose()?;
        let global = cap_arg("max_parallel", max_parallel)?;
        let mut inner = heavy(py, || {
            let graph = Graph::from_edges(n, &src, &dst)?;
            CoreScheduler::new(graph, keys, &[], priorities, weights.as_deref())
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
    /// ``step_cap``, ``rate``, ``shared_cap``, ``placement``, ``running``, ``finished``), ``since``
    /// (when it entered that reason), ``pending_inputs``, ``key``, ``key_running``, ``key_cap`` (``None``: no cap),
    /// ``next_token_at``, ``run_running``, ``run_cap`` (``None``: no cap), ``shared_in_use``,
    /// ``shared_cap`` (``None`` without a shared cap) and ``worker``.
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

    #[pyo3(signature = (node, now=0.0))]
    /// Marks a running node failed: returns ``(admitted, skipped)``, the nodes to dispatch now
    /// and the downstream nodes that will never run.
    fn fail(&mut self, node: i64, now: f64) -> PyResult<(Vec<u32>, Vec<u32>)> {
        guard(|| {
            let outcome = self.inner.fail(node_arg(node)?, now)?;
            Ok((outcome.admitted, outcome.skipped))
        })
    }

    /// Stops admitting; returns every node that had not started (now cancelled).
    fn cancel(&mut self) -> PyResult<Vec<u32>> {
        guard(|| Ok(self.inner.cancel()))
    }

    /// Admits what rate limits allow at ``now``; call it at ``next_wakeup()``.
    fn poll(&mut self, now: f64) -> PyResult<Vec<u32>> {
        guard(|| self.inner.poll(now))
    }

    /// When a node waiting for a rate-limit token can go, or ``None``.
    fn next_wakeup(&self) -> Option<f64> {
        self.inner.next_wakeup()
    }

    /// State of a node: waiting, queued, running, done, failed, skipped or cancelled.
    fn state(&self, node: i64) -> PyResult<&'static str> {
        guard(|| Ok(state_name(self.inner.state(node_arg(node)?)?)))
    }

    /// Number of nodes in each state.
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
        ] {
            d.set_item(name, value)?;
        }
        Ok(d)
    }
}

/// A counted concurrency cap; the async waiting lives in ``taskiq_flow.limits``.
#[pyclass(module = "taskiq_flow._core")]
pub struct ConcurrencyCounter {
    inner: ConcurrencyLimit,
}

#[pymethods]
impl ConcurrencyCounter {
    #[new]
    fn new(cap: &Bound<'_, PyAny>) -> PyResult<Self> {
        let cap = cap_arg("total_tokens", Some(cap))?.unwrap_or(1);
        Ok(Self { inner: guard(|| ConcurrencyLimit::new(cap))? })
    }

    #[getter]
    /// The cap.
    fn get_cap(&self) -> u32 {
        self.inner.cap()
    }

    #[setter]
    /// Changes the cap; holders above a lowered cap keep their slots.
    fn set_cap(&mut self, cap: &Bound<'_, PyAny>) -> PyResult<()> {
        let cap = cap_arg("total_tokens", Some(cap))?.unwrap_or(1);
        guard(|| self.inner.set_cap(cap))
    }

    #[getter]
    /// Slots held.
    fn in_use(&self) -> u32 {
        self.inner.in_use()
    }

    #[getter]
    /// Slots free.
    fn available(&self) -> u32 {
        self.inner.available()
    }

    /// Takes a slot if one is free.
    fn try_acquire(&mut self) -> bool {
        self.inner.try_acquire()
    }

    /// Returns a slot; with ``waiter=True`` hands it to a waiter instead when the cap allows.
    /// Returns whether the slot was handed off.
    #[pyo3(signature = (waiter=false))]
    fn release(&mut self, waiter: bool) -> PyResult<bool> {
        guard(|| self.inner.release_or_hand_off(waiter))
    }
}

/// An exact token bucket; time is passed in.
///
/// ``TokenBucket(rate, burst=1)``: ``rate`` tokens per second, up to ``burst`` at once.
#[pyclass(module = "taskiq_flow._core")]
pub struct TokenBucket {
    inner: RateLimit,
}

#[pymethods]
impl TokenBucket {
    #[new]
    #[pyo3(signature = (rate, burst=None))]
    fn new(rate: &Bound<'_, PyAny>, burst: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let rate = float_arg("rate", rate)?;
        let burst = cap_arg("burst", burst)?.unwrap_or(1);
        Ok(Self { inner: guard(|| RateLimit::new(rate, burst))? })
    }

    #[getter]
    /// Tokens per second.
    fn rate(&self) -> f64 {
        self.inner.rate()
    }

    #[getter]
    /// Bucket size.
    fn burst(&self) -> u32 {
        self.inner.burst()
    }

    /// ``None`` when a token was taken, else the time at which one will be there.
    fn try_acquire(&mut self, now: f64) -> PyResult<Option<f64>> {
        guard(|| Ok(self.inner.try_acquire(now)?.err()))
    }

    /// Reserves the next token; returns how long to wait before using it.
    fn reserve(&mut self, now: f64) -> PyResult<f64> {
        guard(|| self.inner.reserve(now))
    }

    /// Gives back the latest reservation's token (a cancelled waiter).
    fn refund(&mut self, now: f64) -> PyResult<()> {
        guard(|| self.inner.refund(now))
    }

    /// Whole tokens available at ``now``.
    fn available(&self, now: f64) -> PyResult<u32> {
        guard(|| {
            crate::limiter::check_now(now)?;
            Ok(self.inner.available(now))
        })
    }
}

// ------------------------------------------------------------------------------------------------
// Placement
// ------------------------------------------------------------------------------------------------

/// Online resource placement over registered workers.
///
/// ``Placer(resources, policy="best_fit")``: ``resources`` names the entries of every capacity and
/// demand vector; ``policy`` is ``best_fit`` (bin packing), ``spread`` or ``first_fit``.
#[pyclass(module = "taskiq_flow._core")]
pub struct Placer {
    inner: CorePlacer,
    /// The demand of the last `place` call, kept for its allocation.
    scratch: Demand,
}

/// Reads a demand's amounts into `out`, reusing its allocation: a list of ints is read item by
/// item, anything else (or a list holding something else) goes through [`amount_list`].
fn read_amounts(out: &mut Vec<u64>, value: &Bound<'_, PyAny>) -> PyResult<()> {
    out.clear();
    if let Ok(list) = value.cast_exact::<PyList>() {
        // By index and as `i64` (read by `PyLong_AsLongLong` alone): the list iterator asks the
        // length at every step and `u64` checks the type first, which under the stable ABI are
        // calls each; this is most of a placement's cost.
        let len = list.len();
        for i in 0..len {
            match list.get_item(i).and_then(|item| item.extract::<i64>()) {
                Ok(amount) if amount >= 0 => out.push(amount as u64),
                _ => break,
            }
        }
        if out.len() == len {
            return Ok(());
        }
    }
    *out = amount_list("demand", value)?;
    Ok(())
}

fn demand(amounts: &Bound<'_, PyAny>, labels: Option<&Bound<'_, PyAny>>) -> PyResult<Demand> {
    Ok(Demand {
        amounts: amount_list("demand", amounts)?,
        labels: labels.map(|l| id_list("labels", l)).transpose()?.unwrap_or_default(),
    })
}

#[pymethods]
impl Placer {
    #[new]
    #[pyo3(signature = (resources, policy="best_fit"))]
    fn new(resources: Vec<String>, policy: &str) -> PyResult<Self> {
        guard(|| {
            let inner = CorePlacer::new(resources, Policy::parse(policy)?)?;
            Ok(Self { inner, scratch: Demand::default() })
        })
    }

    #[getter]
    /// The resource names, in demand-vector order.
    fn resources(&self) -> Vec<String> {
        self.inner.resources().to_vec()
    }

    #[getter]
    /// The placement policy.
    fn policy(&self) -> &'static str {
        match self.inner.policy() {
            Policy::BestFit => "best_fit",
            Policy::Spread => "spread",
            Policy::FirstFit => "first_fit",
        }
    }

    #[getter]
    /// Workers registered (removed ones included; ids are never reused).
    fn worker_count(&self) -> u32 {
        self.inner.worker_count()
    }

    #[getter]
    /// Tasks holding capacity.
    fn placed_count(&self) -> usize {
        self.inner.placed_count()
    }

    /// The id of a label such as ``"gpu=true"``, interned on first use.
    fn label(&mut self, name: &str) -> u32 {
        self.inner.label(name)
    }

    #[pyo3(signature = (capacity, labels=None))]
    /// Registers a worker with a capacity per resource and label ids; returns its id.
    fn add_worker(
        &mut self,
        capacity: &Bound<'_, PyAny>,
        labels: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u32> {
        let d = demand(capacity, labels)?;
        guard(|| self.inner.add_worker(&d.amounts, &d.labels))
    }

    /// Removes a worker; returns the tasks it held, which are released.
    fn remove_worker(&mut self, worker: u32) -> PyResult<Vec<u64>> {
        guard(|| self.inner.remove_worker(worker))
    }

    /// Free capacity of a worker.
    fn free(&self, worker: u32) -> PyResult<Vec<u64>> {
        guard(|| self.inner.free(worker))
    }

    /// Tasks placed on a worker.
    fn task_count(&self, worker: u32) -> PyResult<u32> {
        guard(|| self.inner.task_count(worker))
    }

    /// The worker a placed task holds capacity on, or ``None``.
    fn worker_of(&self, task: u64) -> Option<u32> {
        self.inner.worker_of(task)
    }

    #[pyo3(signature = (demand, labels=None))]
    /// Raises ``UnschedulableError`` if no worker could ever take the demand.
    fn check(&self, demand: &Bound<'_, PyAny>, labels: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let d = self::demand(demand, labels)?;
        guard(|| self.inner.check_schedulable(&d))
    }

    #[pyo3(signature = (task, demand, labels=None))]
    /// Places a task: its worker id, or ``None`` if it must wait for a release.
    ///
    /// Raises ``UnschedulableError`` (naming the resource or label) if no worker ever could.
    fn place(
        &mut self,
        task: u64,
        demand: &Bound<'_, PyAny>,
        labels: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<u32>> {
        let mut d = std::mem::take(&mut self.scratch);
        read_amounts(&mut d.amounts, demand)?;
        match labels {
            Some(l) => d.labels = id_list("labels", l)?,
            None => d.labels.clear(),
        }
        let placed = guard(|| self.inner.place(task, &d));
        self.scratch = d;
        placed
    }

    /// ``tasks``: a sequence of ``(task_id, demand, labels)``.
    fn place_many(
        &mut self,
        py: Python<'_>,
        tasks: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<Option<u32>>> {
        let batch = task_batch(tasks)?;
        let inner = &mut self.inner;
        heavy(py, || inner.place_many(&batch))
    }

    /// Returns a task's capacity to its worker; returns the worker.
    fn release(&mut self, task: u64) -> PyResult<u32> {
        guard(|| self.inner.release(task))
    }

    #[pyo3(signature = (demand, labels=None))]
    /// For each worker the demand does not fit on now: ``(worker, [reasons])``.
    fn explain(
        &self,
        demand: &Bound<'_, PyAny>,
        labels: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<(u32, Vec<String>)>> {
        let d = self::demand(demand, labels)?;
        guard(|| explained(self.inner.explain(&d)?))
    }

    /// ``tasks``: a sequence of ``(demand, labels)``. Returns ``(assignment, placed,
    /// workers_used, heuristic)``.
    fn plan(
        &self,
        py: Python<'_>,
        tasks: &Bound<'_, PyAny>,
    ) -> PyResult<(Vec<Option<u32>>, usize, usize, &'static str)> {
        let mut batch = Vec::new();
        for item in tasks.try_iter()? {
            let item = item?;
            let pair = item.cast_exact::<PyTuple>().ok().filter(|pair| pair.len() == 2);
            let Some(pair) = pair else {
                let (amounts, labels): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract()?;
                batch.push(demand(&amounts, Some(&labels))?);
                continue;
            };
            // The common shape, `([amounts], [])`, read without a detour.
            let mut task = Demand::default();
            read_amounts(&mut task.amounts, &pair.get_item(0)?)?;
            let labels = pair.get_item(1)?;
            if !labels.cast_exact::<PyList>().is_ok_and(PyListMethods::is_empty) {
                task.labels = id_list("labels", &labels)?;
            }
            batch.push(task);
        }
        let inner = &self.inner;
        let plan = heavy(py, || inner.plan(&batch))?;
        Ok((plan.assignment, plan.placed, plan.workers_used, plan.heuristic))
    }
}

/// A placer's reasons per worker, as text.
#[allow(clippy::unnecessary_wraps)] // shaped for `guard`
fn explained(why: Vec<(u32, Vec<Shortfall>)>) -> CoreResult<Vec<(u32, Vec<String>)>> {
    Ok(why
        .into_iter()
        .map(|(w, reasons)| (w, reasons.iter().map(ToString::to_string).collect()))
        .collect())
}

fn task_batch(tasks: &Bound<'_, PyAny>) -> PyResult<Vec<(u64, Demand)>> {
    let mut batch = Vec::new();
    for item in tasks.try_iter()? {
        let item = item?;
        let (task, amounts, labels): (u64, Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract()?;
        batch.push((task, demand(&amounts, Some(&labels))?));
    }
    Ok(batch)
}

// ------------------------------------------------------------------------------------------------
// What runs share: the process-wide cap and worker pools
// ------------------------------------------------------------------------------------------------

/// Validates a cap the way every scheduler does: ``None``, or an int from 1 to 4294967295.
/// ``what`` names it in the error. This is the one rule for every ``max_parallel``.
#[pyfunction]
#[pyo3(signature = (value, what="max_parallel"))]
fn check_cap(value: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<u64>> {
    cap_arg(what, value)
}

/// The cap over the nodes of every run attached to it (``set_max_parallel_tasks``).
///
/// ``SharedCap(max_parallel=None)``. A slot freed by one run goes to the run that has waited
/// longest for one (round-robin between runs); its scheduler takes it at its next ``poll``, and
/// ``take_woken`` names the runs to poll.
#[pyclass(module = "taskiq_flow._core", frozen)]
pub struct SharedCap {
    inner: Shared<Gate>,
}

#[pymethods]
impl SharedCap {
    #[new]
    #[pyo3(signature = (max_parallel=None))]
    fn new(max_parallel: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let cap = cap_arg("max_parallel", max_parallel)?;
        guard(|| Ok(Self { inner: Arc::new(Mutex::new(Gate::new(cap)?)) }))
    }

    #[getter]
    /// The cap, or ``None`` when unbounded.
    fn max_parallel(&self) -> Option<u32> {
        lock(&self.inner).cap().get()
    }

    /// Changes the cap (``None`` lifts it): lowering it lets what runs finish; raising it grants
    /// the new slots to waiting runs at once.
    fn set_max_parallel(&self, max_parallel: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let cap = cap_arg("max_parallel", max_parallel)?;
        guard(|| lock(&self.inner).set_cap(cap))
    }

    /// Sets the number of slots to the leases held elsewhere (zero allowed): for a cap shared
    /// through Redis, whose leases a feeder takes and gives back.
    fn set_leased(&self, slots: u32) {
        lock(&self.inner).set_leased(slots);
    }

    #[getter]
    /// Slots held (or granted and not yet taken).
    fn in_use(&self) -> u32 {
        lock(&self.inner).in_use()
    }

    #[getter]
    /// Runs waiting for a slot.
    fn waiting_runs(&self) -> usize {
        lock(&self.inner).waiting_runs()
    }

    /// Ids (``DagScheduler.gate_run``) of runs granted a slot since the last call.
    fn take_woken(&self) -> Vec<u32> {
        lock(&self.inner).take_woken()
    }
}

/// A worker pool shared by every run placing nodes on it: a placer and the queue of admitted
/// nodes that find no worker with room yet.
///
/// ``WorkerPool(resources, policy="best_fit", max_bypass=32)``. Waiting nodes are placed in
/// arrival order as capacity frees, each one that fits (a big one never blocks small ones); a node
/// passed over by ``max_bypass`` placements blocks the queue behind it until it is placed, so it
/// is never starved.
#[pyclass(module = "taskiq_flow._core", frozen)]
pub struct WorkerPool {
    inner: Shared<Pool>,
}

#[pymethods]
impl WorkerPool {
    #[new]
    #[pyo3(signature = (resources, policy="best_fit", max_bypass=32))]
    fn new(resources: Vec<String>, policy: &str, max_bypass: u32) -> PyResult<Self> {
        guard(|| {
            let placer = CorePlacer::new(resources, Policy::parse(policy)?)?;
            Ok(Self { inner: Arc::new(Mutex::new(Pool::new(placer, max_bypass))) })
        })
    }

    #[getter]
    /// Workers registered (removed ones included; ids are never reused).
    fn worker_count(&self) -> u32 {
        lock(&self.inner).placer().worker_count()
    }

    #[getter]
    /// Nodes holding capacity.
    fn placed_count(&self) -> usize {
        lock(&self.inner).placer().placed_count()
    }

    #[getter]
    /// Admitted nodes waiting for a worker.
    fn waiting_count(&self) -> usize {
        lock(&self.inner).waiting_count()
    }

    /// The id of a label such as ``"gpu=true"``, interned on first use.
    fn label(&self, name: &str) -> u32 {
        lock(&self.inner).placer_mut().label(name)
    }

    #[pyo3(signature = (capacity, labels=None))]
    /// Registers a worker (capacity per resource, label ids); waiting nodes that fit on it are
    /// placed. Returns its id.
    fn add_worker(
        &self,
        capacity: &Bound<'_, PyAny>,
        labels: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u32> {
        let d = demand(capacity, labels)?;
        guard(|| lock(&self.inner).add_worker(&d.amounts, &d.labels))
    }

    /// Removes a worker; returns the ``(run, node)`` placed on it, which hold nothing any more.
    fn remove_worker(&self, worker: u32) -> PyResult<Vec<(u32, u32)>> {
        guard(|| lock(&self.inner).remove_worker(worker))
    }

    #[pyo3(signature = (demand, labels=None))]
    /// Registers what one node needs; returns its class id for ``DagScheduler.attach``.
    ///
    /// Raises ``UnschedulableError`` (naming the resource or label) if no worker ever could.
    fn add_class(
        &self,
        demand: &Bound<'_, PyAny>,
        labels: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u32> {
        let d = self::demand(demand, labels)?;
        guard(|| lock(&self.inner).add_class(d))
    }

    #[pyo3(signature = (demand, labels=None))]
    /// Raises ``UnschedulableError`` if no worker could ever take the demand.
    fn check(&self, demand: &Bound<'_, PyAny>, labels: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let d = self::demand(demand, labels)?;
        guard(|| lock(&self.inner).placer().check_schedulable(&d))
    }

    #[pyo3(signature = (demand, labels=None))]
    /// For each worker the demand does not fit on now: ``(worker, [reasons])``.
    fn explain(
        &self,
        demand: &Bound<'_, PyAny>,
        labels: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<(u32, Vec<String>)>> {
        let d = self::demand(demand, labels)?;
        guard(|| explained(lock(&self.inner).placer().explain(&d)?))
    }

    /// Free capacity of a worker.
    fn free(&self, worker: u32) -> PyResult<Vec<u64>> {
        guard(|| lock(&self.inner).placer().free(worker))
    }

    /// Nodes placed on a worker.
    fn task_count(&self, worker: u32) -> PyResult<u32> {
        guard(|| lock(&self.inner).placer().task_count(worker))
    }

    /// The worker node ``node`` of run ``run`` (``DagScheduler.pool_run``) is placed on.
    fn worker_of(&self, run: u32, node: u32) -> Option<u32> {
        lock(&self.inner).worker_of(run, node)
    }

    /// A new run of placements outside any scheduler (``ResourceAwareWorkerPool.place``).
    fn register(&self) -> u32 {
        lock(&self.inner).register()
    }

    /// Forgets a run: its waiting nodes leave the queue and what it holds is released.
    fn unregister(&self, run: u32) {
        lock(&self.inner).unregister(run);
    }

    #[pyo3(signature = (run, node, class_id, wait=true))]
    /// Places node ``node`` of ``run`` needing ``class_id``: its worker, or ``None`` when no
    /// worker has room now (it then waits in the queue when ``wait``, and comes out of
    /// ``take_placed``).
    fn place(&self, run: u32, node: u32, class_id: u32, wait: bool) -> PyResult<Option<u32>> {
        guard(|| lock(&self.inner).place_or(run, node, class_id, wait))
    }

    /// Gives back what node ``node`` of ``run`` holds (or takes it out of the queue); waiting
    /// nodes that fit now are placed.
    fn release(&self, run: u32, node: u32) -> PyResult<()> {
        guard(|| lock(&self.inner).release(run, node))
    }

    /// Nodes of ``run`` placed from the queue since the last call.
    fn take_placed(&self, run: u32) -> Vec<u32> {
        lock(&self.inner).take_placed(run)
    }

    /// Ids (``DagScheduler.pool_run``) of runs that had nodes placed from the queue since the
    /// last call.
    fn take_woken(&self) -> Vec<u32> {
        lock(&self.inner).take_woken()
    }
}

/// Panics inside the core on purpose; the test suite checks that this surfaces as
/// ``InternalError`` and that the interpreter lives on.
#[pyfunction]
fn _panic_for_test(message: &str) -> PyResult<()> {
    guard(|| -> CoreResult<()> { panic!("{message}") })
}

/// The scheduling core of taskiq-flow (private: import from ``taskiq_flow``).
#[pymodule(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<DagGraph>()?;
    m.add_class::<DagSorter>()?;
    m.add_class::<DagScheduler>()?;
    m.add_class::<ConcurrencyCounter>()?;
    m.add_class::<TokenBucket>()?;
    m.add_class::<Placer>()?;
    m.add_class::<SharedCap>()?;
    m.add_class::<WorkerPool>()?;
    m.add_class::<placements::PoolPlacements>()?;
    m.add_function(wrap_pyfunction!(check_cap, m)?)?;
    m.add_class::<sorter::TopologicalSorter>()?;
    m.add_class::<sorter::StaticOrder>()?;
    m.add_class::<limits::CapacityLimiter>()?;
    m.add_class::<limits::RateLimiter>()?;
    m.add_class::<limits::Ready>()?;
    m.add_function(wrap_pyfunction!(_panic_for_test, m)?)?;
    m.add("MAX_IDS", crate::dag::MAX_IDS)?;
    Ok(())
}
