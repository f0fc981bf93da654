//! The one module that knows about Python: `taskiq_flow._core`.
//!
//! Laid out one file per exposed type, every class a thin shell over a pure core type; this file
//! only registers them. Shared by all of them: [`errors`] (the one mapping of core errors to
//! exception classes, the panic guard, the detached helper) and [`args`] (reading arguments).
//!
//! - the DAG: `DagGraph` ([`graph`]), the columnar `DataflowTable` and its `DataflowCall`
//!   ([`bulk`]), `DagSorter` ([`dag_sorter`]), and the `graphlib` drop-in
//!   `TopologicalSorter` with its `StaticOrder` ([`sorter`]);
//! - admission: `DagScheduler` ([`scheduler`]), `SharedCap` ([`shared_cap`]), `WorkerPool`
//!   ([`worker_pool`]), `PoolPlacements` ([`placements`]);
//! - placement: `Placer` ([`placer`]);
//! - limits: `CapacityLimiter`, `RateLimiter` and their `Ready` awaitable ([`limits`]);
//! - `check_cap` and `check_rate`, the core's rules for options ([`checks`]).

use pyo3::prelude::*;

mod args;
mod bulk;
mod checks;
mod dag_sorter;
mod errors;
mod graph;
mod limits;
mod placements;
mod placer;
mod scheduler;
mod shared_cap;
mod sorter;
mod worker_pool;

/// The scheduling core of taskiq-flow (private: import from ``taskiq_flow``).
#[pymodule(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<graph::DagGraph>()?;
    m.add_class::<bulk::DataflowTable>()?;
    m.add_class::<bulk::DataflowCall>()?;
    m.add_class::<dag_sorter::DagSorter>()?;
    m.add_class::<scheduler::DagScheduler>()?;
    m.add_class::<placer::Placer>()?;
    m.add_class::<shared_cap::SharedCap>()?;
    m.add_class::<worker_pool::WorkerPool>()?;
    m.add_class::<placements::PoolPlacements>()?;
    m.add_class::<sorter::TopologicalSorter>()?;
    m.add_class::<sorter::StaticOrder>()?;
    m.add_class::<limits::CapacityLimiter>()?;
    m.add_class::<limits::RateLimiter>()?;
    m.add_class::<limits::Ready>()?;
    m.add_function(wrap_pyfunction!(checks::check_cap, m)?)?;
    m.add_function(wrap_pyfunction!(checks::check_rate, m)?)?;
    m.add_function(wrap_pyfunction!(errors::_panic_for_test, m)?)?;
    m.add("MAX_IDS", crate::dag::MAX_IDS)?;
    Ok(())
}
