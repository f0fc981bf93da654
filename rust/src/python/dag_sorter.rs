//! `DagSorter`: the `graphlib.TopologicalSorter` protocol on integer node ids (the drop-in on any
//! hashable nodes is `sorter.rs`).

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::args::{id_list, id_tuple, int_arg, node_arg};
use super::errors::{guard, heavy};
use crate::dag::Sorter;
use crate::error::CoreResult;

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
