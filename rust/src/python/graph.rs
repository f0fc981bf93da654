//! `DagGraph`: static analysis of an immutable graph.

use pyo3::prelude::*;

use super::args::{amount_list, id_list, int_arg, node_arg};
use super::errors::{guard, heavy};
use crate::dag::Graph;

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
