//! `SharedCap`: the process-wide cap, shared by every run attached to it.

use std::sync::{Arc, Mutex};

use pyo3::prelude::*;

use super::args::cap_arg;
use super::errors::guard;
use crate::admission::{lock, Gate, Shared};

/// The cap over the nodes of every run attached to it (``set_max_parallel_tasks``).
///
/// ``SharedCap(max_parallel=None)``. A slot freed by one run goes to the run that has waited
/// longest for one (round-robin between runs); its scheduler takes it at its next ``poll``, and
/// ``take_woken`` names the runs to poll.
#[pyclass(module = "taskiq_flow._core", frozen)]
pub struct SharedCap {
    pub(super) inner: Shared<Gate>,
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
