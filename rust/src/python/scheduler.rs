//! `DagScheduler`: one run of an acyclic graph under admission control.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::args::{amount_list, cap_arg, id_list, int_arg, node_arg, rate_args};
use super::errors::{guard, heavy};
use super::shared_cap::SharedCap;
use super::worker_pool::WorkerPool;
use crate::dag::Graph;
use crate::error::CoreError;
use crate::limiter::Cap;
use crate::scheduler::{KeyLimits, NodeState, Reason, Scheduler as CoreScheduler};

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
        Reason::Backoff => "backoff",
    }
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
        d.set_item("retry_at", e.retry_at)?;
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

    /// State of a node: waiting, queued, running, done, failed, skipped or cancelled.
    fn state(&self, node: i64) -> PyResult<&'static str> {
        guard(|| Ok(state_name(self.inner.state(node_arg(node)?)?)))
    }

    /// Number of nodes in each state (``backoff``: running nodes waiting out a retry, also
    /// counted in ``running``).
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
            ("backoff", c.backoff),
        ] {
            d.set_item(name, value)?;
        }
        Ok(d)
    }
}
