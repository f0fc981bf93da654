//! `Placer`: online resource placement over registered workers.

use pyo3::prelude::*;
use pyo3::types::{PyList, PyListMethods, PyTuple};

use super::args::{demand, id_list, read_amounts};
use super::errors::{guard, heavy};
use crate::error::CoreResult;
use crate::packing::{Demand, Placer as CorePlacer, Policy, Shortfall};

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
pub(super) fn explained(why: Vec<(u32, Vec<Shortfall>)>) -> CoreResult<Vec<(u32, Vec<String>)>> {
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
