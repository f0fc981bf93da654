//! `WorkerPool`: a worker pool shared by every run placing nodes on it.

use std::sync::{Arc, Mutex};

use pyo3::prelude::*;

use super::args::demand;
use super::errors::guard;
use super::placer::explained;
use crate::admission::{lock, Pool, Shared};
use crate::packing::{Placer as CorePlacer, Policy};

/// A worker pool shared by every run placing nodes on it: a placer and the queue of admitted
/// nodes that find no worker with room yet.
///
/// ``WorkerPool(resources, policy="best_fit", max_bypass=32)``. Waiting nodes are placed in
/// arrival order as capacity frees, each one that fits (a big one never blocks small ones); a node
/// passed over by ``max_bypass`` placements blocks the queue behind it until it is placed, so it
/// is never starved.
#[pyclass(module = "taskiq_flow._core", frozen)]
pub struct WorkerPool {
    pub(super) inner: Shared<Pool>,
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
