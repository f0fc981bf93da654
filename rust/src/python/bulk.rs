//! `DataflowTable` and `DataflowCall`: a columnar dataflow held in the core, and the call builder
//! that turns one node's inputs into its keyword arguments when the node is sent.

use std::sync::Arc;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use super::args::{id_list, int_arg, node_arg};
use super::errors::{guard, heavy};
use crate::bulk::{Edges, Feeds, Ids, ParamProblem, Source, Table, TaskParams};
use crate::error::CoreError;

/// Ids from Python: ``bytes`` of native-endian ``u32`` (``array('I').tobytes()``: read in place,
/// no Python int per id), or any sequence of ints (copied).
enum IdsArg<'py> {
    Bytes(Bound<'py, PyBytes>),
    Owned(Vec<u32>),
}

impl<'py> IdsArg<'py> {
    fn new(what: &str, value: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(bytes) = value.cast_exact::<PyBytes>() {
            Ids::from_ne_bytes(what, bytes.as_bytes())?;
            return Ok(IdsArg::Bytes(bytes.clone()));
        }
        Ok(IdsArg::Owned(id_list(what, value)?))
    }

    fn ids(&self) -> Ids<'_> {
        match self {
            IdsArg::Bytes(b) => Ids::Bytes(b.as_bytes()),
            IdsArg::Owned(v) => Ids::Slice(v),
        }
    }
}

/// A checked columnar dataflow: per node its task, per input slot the parameter it is passed as
/// and its source (a node, or an external input). Ids only; names stay with the caller.
///
/// ``DataflowTable(task_of, task_count, param_count, input_count, sources, targets, params,
/// input_targets, input_params, inputs)``: node ``v`` runs task ``task_of[v]``; edge ``i`` passes
/// the value of node ``sources[i]`` to node ``targets[i]`` as parameter ``params[i]``; feed ``j``
/// passes external input ``inputs[j]`` to node ``input_targets[j]`` as ``input_params[j]``. Each
/// array is ``bytes`` of native 4-byte ids or a sequence of ints.
///
/// Raises ``InvalidValueError`` for arrays of unequal length or an id out of range,
/// ``UnknownIdError`` for an edge naming a node that does not exist, ``CycleError`` (with the
/// cycle's node ids) for a cycle.
#[pyclass(module = "taskiq_flow._core", frozen)]
pub struct DataflowTable {
    table: Arc<Table>,
}

#[pymethods]
impl DataflowTable {
    #[new]
    #[pyo3(signature = (task_of, task_count, param_count, input_count, sources, targets, params,
                        input_targets, input_params, inputs))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        task_of: &Bound<'_, PyAny>,
        task_count: &Bound<'_, PyAny>,
        param_count: &Bound<'_, PyAny>,
        input_count: &Bound<'_, PyAny>,
        sources: &Bound<'_, PyAny>,
        targets: &Bound<'_, PyAny>,
        params: &Bound<'_, PyAny>,
        input_targets: &Bound<'_, PyAny>,
        input_params: &Bound<'_, PyAny>,
        inputs: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let max = u64::from(u32::MAX);
        let counts = (
            int_arg("task_count", task_count, max)? as u32,
            int_arg("param_count", param_count, max)? as u32,
            int_arg("input_count", input_count, max)? as u32,
        );
        let task_of = IdsArg::new("task_of", task_of)?.ids().to_vec();
        let (src, dst, par) = (
            IdsArg::new("sources", sources)?,
            IdsArg::new("targets", targets)?,
            IdsArg::new("params", params)?,
        );
        let (fdst, fpar, fin) = (
            IdsArg::new("input_targets", input_targets)?,
            IdsArg::new("input_params", input_params)?,
            IdsArg::new("inputs", inputs)?,
        );
        let edges = Edges { sources: src.ids(), targets: dst.ids(), params: par.ids() };
        let feeds = Feeds { targets: fdst.ids(), params: fpar.ids(), inputs: fin.ids() };
        // The bytes are immutable Python objects held above: read in place with the interpreter
        // detached.
        let table = heavy(py, move || Table::new(task_of, counts, edges, feeds))?;
        Ok(Self { table: Arc::new(table) })
    }

    #[getter]
    /// Number of nodes.
    fn node_count(&self) -> u32 {
        self.table.node_count()
    }

    #[getter]
    /// Number of edges between nodes (external inputs not counted).
    fn edge_count(&self) -> usize {
        self.table.edge_count()
    }

    /// The task (index) of ``node``.
    fn task_of(&self, node: i64) -> PyResult<u32> {
        guard(|| {
            let node = node_arg(node)?;
            self.table.check_node(node)?;
            Ok(self.table.task_of()[node as usize])
        })
    }

    /// The inputs of ``node``: ``(param, external, source)`` per input, edges first in the order
    /// declared; ``source`` is a node id, or an input id when ``external``.
    fn inputs(&self, node: i64) -> PyResult<Vec<(u32, bool, u32)>> {
        guard(|| {
            let node = node_arg(node)?;
            self.table.check_node(node)?;
            Ok(self
                .table
                .inputs(node)
                .map(|(p, s)| match s {
                    Source::Node(v) => (p, false, v),
                    Source::Input(i) => (p, true, i),
                })
                .collect())
        })
    }

    /// The first node whose parameters do not fit its task: ``(kind, node, param)`` with
    /// ``kind`` one of ``"twice"``, ``"missing"``, ``"unknown"``; ``None`` when all fit.
    /// ``required[t]`` lists the parameter ids task ``t`` requires, ``known[t]`` every one it
    /// takes (``None``: any keyword).
    fn check_params(
        &self,
        py: Python<'_>,
        required: Vec<Vec<u32>>,
        known: Vec<Option<Vec<u32>>>,
    ) -> PyResult<Option<(&'static str, u32, u32)>> {
        if required.len() != known.len() {
            return Err(PyTypeError::new_err("required and known must have one entry per task"));
        }
        let tasks: Vec<TaskParams> = required
            .into_iter()
            .zip(known)
            .map(|(required, known)| TaskParams { required, known })
            .collect();
        let table = &self.table;
        heavy(py, || {
            Ok(table.check_params(&tasks).map(|problem| match problem {
                ParamProblem::Twice { node, param } => ("twice", node, param),
                ParamProblem::Missing { node, param } => ("missing", node, param),
                ParamProblem::Unknown { node, param } => ("unknown", node, param),
            }))
        })
    }

    /// The call builder of one run: ``call(node, results) -> ((), kwargs)``, the value of each
    /// producer read from ``results`` (by node id) and each external input from ``inputs`` (by
    /// input id; an entry that ``is missing`` is left out, to the parameter's default).
    fn bind(
        &self,
        names: Vec<Bound<'_, PyString>>,
        inputs: Vec<Bound<'_, PyAny>>,
        missing: &Bound<'_, PyAny>,
    ) -> PyResult<DataflowCall> {
        let (_, param_count, input_count) = self.table.counts();
        if names.len() != param_count as usize || inputs.len() != input_count as usize {
            return Err(CoreError::invalid(
                "bind()",
                "given one name per parameter and one value per input",
                format!(
                    "{} names for {param_count} parameters, {} values for {input_count} inputs",
                    names.len(),
                    inputs.len()
                ),
            )
            .into());
        }
        let py = missing.py();
        Ok(DataflowCall {
            table: Arc::clone(&self.table),
            names: names.into_iter().map(Bound::unbind).collect(),
            inputs: inputs.into_iter().map(|v| (!v.is(missing)).then(|| v.unbind())).collect(),
            no_args: PyTuple::empty(py).unbind(),
        })
    }
}

/// Builds a node's arguments from the results so far: ``call(node, results) -> ((), kwargs)``
/// (made by ``DataflowTable.bind``).
#[pyclass(module = "taskiq_flow._core", frozen)]
pub struct DataflowCall {
    table: Arc<Table>,
    names: Vec<Py<PyString>>,
    inputs: Vec<Option<Py<PyAny>>>,
    no_args: Py<PyTuple>,
}

#[pymethods]
impl DataflowCall {
    fn __call__<'py>(
        &self,
        node: i64,
        results: &Bound<'py, PyAny>,
    ) -> PyResult<(Py<PyTuple>, Bound<'py, PyDict>)> {
        let py = results.py();
        let node = guard(|| {
            let node = node_arg(node)?;
            self.table.check_node(node)?;
            Ok(node)
        })?;
        let kwargs = PyDict::new(py);
        let list = results.cast_exact::<PyList>().ok();
        for (param, source) in self.table.inputs(node) {
            let name = self.names[param as usize].bind(py);
            match source {
                Source::Node(v) => {
                    let value = match list {
                        Some(list) => list.get_item(v as usize)?,
                        None => results.get_item(v)?,
                    };
                    kwargs.set_item(name, value)?;
                }
                Source::Input(i) => {
                    if let Some(value) = &self.inputs[i as usize] {
                        kwargs.set_item(name, value.bind(py))?;
                    }
                }
            }
        }
        Ok((self.no_args.clone_ref(py), kwargs))
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        for value in self.inputs.iter().flatten() {
            visit.call(value)?;
        }
        Ok(())
    }
}
