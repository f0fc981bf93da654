//! `taskiq_flow.TopologicalSorter`: the `graphlib.TopologicalSorter` drop-in, whole in the core.
//!
//! The pure [`Sorter`](crate::dag::Sorter) runs the graph on dense ids; this file keeps the one
//! part that needs Python: the map from hashable node objects to ids, with `dict` semantics (an
//! object is found by identity, or by an equal hash and `==`). Exact `int`s that fit in an `i64`
//! never call into Python: their hash is computed here, as `CPython` computes it, and they compare
//! by value. Exact `str`s use their cached hash and compare by identity first. Everything else
//! hashes and compares through Python, so `1`, `1.0` and `True` are one node, as in a `dict`.
//!
//! Every `graphlib` behaviour is kept: the order of ready nodes, the messages, the exception
//! types (`CycleError` is a `graphlib.CycleError`, the rest are `ValueError`s, unhashable nodes
//! raise `TypeError`) and the cycle reported (`CPython`'s depth-first search, see
//! [`Graph::graphlib_cycle`](crate::dag::Graph::graphlib_cycle)). Two differences, on paths where
//! `graphlib` leaves half-done work behind: a failing `add` or `done` changes nothing, and
//! `static_order()` runs the whole graph on its first `next()`.

use hashbrown::hash_table::{Entry, HashTable};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyList, PyString, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};

use super::errors::{panic_error, CycleError, StateError, UnknownIdError};
use crate::dag::Sorter;
use crate::error::CoreError;

/// Runs a method body and turns a Rust panic into `InternalError` (as `guard` does for core calls).
fn guarded<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(panic_error)?
}

// ------------------------------------------------------------------------------------------------
// The node map
// ------------------------------------------------------------------------------------------------

/// How a node was hashed: an exact `int` (its value), an exact `str` or anything else (the table
/// hash of its Python hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Int(i64),
    Str(u64),
    Other(u64),
}

/// `CPython`'s `hash()` of an `int`: the value modulo the Mersenne prime 2^61 - 1, sign kept,
/// and -1 (an error code in C) replaced by -2.
#[allow(clippy::cast_possible_wrap)] // the remainder is below 2^61
fn int_hash(value: i64) -> i64 {
    const MODULUS: u64 = (1 << 61) - 1;
    let magnitude = value.unsigned_abs();
    // Nearly every node is below the modulus: no division (tens of cycles) for it.
    let rest = if magnitude < MODULUS { magnitude } else { magnitude % MODULUS } as i64;
    let hash = if value < 0 { -rest } else { rest };
    if hash == -1 {
        -2
    } else {
        hash
    }
}

/// The table hash of a Python hash. The low bits pick the bucket and stay close to the Python
/// hash, so that consecutive `int` nodes sit in neighbouring buckets (as in a `dict`, and kind to
/// the cache at 10^6 nodes); folding in the higher bits keeps multiples of a power of two apart.
/// The top 7 bits, which the table compares before any key, are a multiplicative hash of it all.
fn spread(py_hash: i64) -> u64 {
    const TAG: u64 = 0x7F << 57;
    let h = py_hash as u64;
    let low = h ^ (h >> 24) ^ (h >> 48);
    (low & !TAG) | (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) & TAG)
}

impl Key {
    /// Hashes `obj` (the only step that can fail: `TypeError` for an unhashable object).
    #[inline]
    fn of(obj: &Bound<'_, PyAny>) -> PyResult<Key> {
        if obj.is_exact_instance_of::<PyInt>() {
            if let Ok(value) = obj.extract::<i64>() {
                return Ok(Key::Int(value));
            }
        }
        let hash = spread(obj.hash()? as i64);
        Ok(if obj.is_exact_instance_of::<PyString>() { Key::Str(hash) } else { Key::Other(hash) })
    }

    #[inline]
    fn table_hash(self) -> u64 {
        match self {
            Key::Int(value) => spread(int_hash(value)),
            Key::Str(hash) | Key::Other(hash) => hash,
        }
    }
}

/// Whether node `id` is `obj` (hashed as `key`): by identity, by value for two `int`s, or by an
/// equal hash and `==` (which may raise).
#[inline]
fn same_node(
    keys: &[Key],
    objects: &[Py<PyAny>],
    id: u32,
    obj: &Bound<'_, PyAny>,
    key: Key,
) -> PyResult<bool> {
    // Identity first, as a dict does: the common case (the same object passed again) then reads
    // one array, which matters when a million nodes no longer fit in the cache.
    let other = objects[id as usize].bind(obj.py());
    if other.is(obj) {
        return Ok(true);
    }
    let stored = keys[id as usize];
    if let (Key::Int(a), Key::Int(b)) = (key, stored) {
        return Ok(a == b);
    }
    if stored.table_hash() != key.table_hash() {
        return Ok(false);
    }
    other.eq(obj)
}

/// Node objects to dense ids, with `dict` semantics; ids are handed out in insertion order.
#[derive(Default)]
struct NodeMap {
    table: HashTable<u32>,
    keys: Vec<Key>,
    /// The object each node was first added as (what `get_ready` hands out).
    objects: Vec<Py<PyAny>>,
}

impl NodeMap {
    fn len(&self) -> usize {
        self.keys.len()
    }

    /// The id of `obj`, if it is a node.
    fn find(&self, obj: &Bound<'_, PyAny>) -> PyResult<Option<u32>> {
        let key = Key::of(obj)?;
        let mut failure = None;
        let found = self.table.find(key.table_hash(), |&id| {
            failure.is_none()
                && same_node(&self.keys, &self.objects, id, obj, key).unwrap_or_else(|err| {
                    failure = Some(err);
                    false
                })
        });
        match failure {
            Some(err) => Err(err),
            None => Ok(found.copied()),
        }
    }

    /// The id of `obj`, added as a new node if it is not one yet.
    fn intern(&mut self, obj: &Bound<'_, PyAny>) -> PyResult<u32> {
        let key = Key::of(obj)?;
        let mut failure = None;
        let Self { table, keys, objects } = self;
        let entry = table.entry(
            key.table_hash(),
            |&id| {
                failure.is_none()
                    && same_node(keys, objects, id, obj, key).unwrap_or_else(|err| {
                        failure = Some(err);
                        false
                    })
            },
            |&id| keys[id as usize].table_hash(),
        );
        if let Some(err) = failure {
            return Err(err);
        }
        match entry {
            Entry::Occupied(found) => Ok(*found.get()),
            Entry::Vacant(slot) => {
                let id = keys.len() as u32;
                slot.insert(id);
                keys.push(key);
                objects.push(obj.clone().unbind());
                Ok(id)
            }
        }
    }

    /// Forgets every node from `len` on (undoes a failed `add`).
    fn truncate(&mut self, len: usize) {
        while self.keys.len() > len {
            let id = (self.keys.len() - 1) as u32;
            if let Ok(entry) =
                self.table.find_entry(self.keys[id as usize].table_hash(), |&x| x == id)
            {
                entry.remove();
            }
            self.keys.pop();
            self.objects.pop();
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The sorter
// ------------------------------------------------------------------------------------------------

/// An optional argument that tells "not given" from any object given, `None` included (`PyO3` reads
/// a given `None` as a missing `Option`).
pub struct Given<'py>(Option<Bound<'py, PyAny>>);

impl<'a, 'py> FromPyObject<'a, 'py> for Given<'py> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(Given(Some(obj.to_owned())))
    }
}

/// Provides functionality to topologically sort a graph of hashable nodes.
///
/// A drop-in ``graphlib.TopologicalSorter`` run by the Rust core: same methods, same order of
/// ready nodes, same exceptions and messages. A failing ``add`` or ``done`` changes nothing.
#[pyclass(module = "taskiq_flow._core", name = "TopologicalSorter", subclass, weakref)]
pub struct TopologicalSorter {
    nodes: NodeMap,
    sorter: Sorter,
    /// Predecessor ids of the `add` call in progress (reused).
    preds: Vec<u32>,
}

fn not_prepared() -> PyErr {
    StateError::new_err(CoreError::NotPrepared.to_string())
}

/// `graphlib`'s message for a node passed to `done` in the wrong state, with the caller's object.
fn done_error(err: CoreError, node: &Bound<'_, PyAny>) -> PyErr {
    match err {
        CoreError::NotPassedOut { .. } | CoreError::AlreadyDone { .. } => match node.repr() {
            Ok(shown) => {
                let what = if matches!(err, CoreError::AlreadyDone { .. }) {
                    "was already marked done"
                } else {
                    "was not passed out (still not ready)"
                };
                StateError::new_err(format!("node {shown} {what}"))
            }
            Err(repr_failed) => repr_failed,
        },
        other => PyErr::from(other),
    }
}

fn not_added(node: &Bound<'_, PyAny>) -> PyErr {
    match node.repr() {
        Ok(shown) => UnknownIdError::new_err(format!("node {shown} was not added using add()")),
        Err(err) => err,
    }
}

impl TopologicalSorter {
    fn empty() -> Self {
        Self { nodes: NodeMap::default(), sorter: Sorter::new(), preds: Vec::new() }
    }

    /// `add(node, *predecessors)`, the predecessors interned by `intern_preds`; all or nothing.
    fn add_one(
        &mut self,
        node: &Bound<'_, PyAny>,
        intern_preds: impl FnOnce(&mut NodeMap, &mut Vec<u32>) -> PyResult<()>,
    ) -> PyResult<()> {
        if self.sorter.is_prepared() {
            return Err(StateError::new_err("Nodes cannot be added after a call to prepare()"));
        }
        let before = self.nodes.len();
        let mut preds = std::mem::take(&mut self.preds);
        preds.clear();
        let result = self.nodes.intern(node).and_then(|target| {
            intern_preds(&mut self.nodes, &mut preds)?;
            let added = (self.nodes.len() - before) as u32;
            if added > 0 {
                self.sorter.add_nodes(added)?;
            }
            self.sorter.add_edges_to(target, &preds).map_err(PyErr::from)
        });
        if result.is_err() {
            self.nodes.truncate(before);
        }
        self.preds = preds;
        result
    }

    fn cycle_error(&self, py: Python<'_>, path: &[u32]) -> PyResult<PyErr> {
        let nodes =
            PyList::new(py, path.iter().map(|&id| self.nodes.objects[id as usize].bind(py)))?;
        Ok(CycleError::new_err(("nodes are in a cycle", nodes.unbind())))
    }

    fn prepare_error(&self, py: Python<'_>, err: CoreError) -> PyErr {
        match err {
            CoreError::Cycle { path } => self.cycle_error(py, &path).unwrap_or_else(|e| e),
            other => StateError::new_err(other.to_string()),
        }
    }

    /// `done(*nodes)` for a batch of more than one: looks every node up, in order, and raises the
    /// error `graphlib` would raise first.
    fn done_many(&mut self, nodes: &Bound<'_, PyTuple>) -> PyResult<()> {
        let mut ids = Vec::with_capacity(nodes.len());
        for node in nodes.iter_borrowed() {
            match self.nodes.find(&node) {
                Ok(Some(id)) => ids.push(id),
                lookup => {
                    // An earlier node in a bad state is what graphlib trips over first.
                    if let Err((at, err)) = self.sorter.check_done(&ids) {
                        return Err(done_error(err, &nodes.get_item(at)?));
                    }
                    return Err(lookup.err().unwrap_or_else(|| not_added(&node)));
                }
            }
        }
        if let Err((at, err)) = self.sorter.check_done(&ids) {
            return Err(done_error(err, &nodes.get_item(at)?));
        }
        self.sorter.done(&ids).map_err(PyErr::from)
    }
}

#[pymethods]
impl TopologicalSorter {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        // The arguments are `__init__`'s (as for a Python class, so that subclasses may take
        // their own and call `super().__init__(graph)`).
        Self::empty()
    }

    /// ``TopologicalSorter(graph=None)``: ``graph`` maps each node to an iterable of its
    /// predecessors; each entry goes through ``add`` (a subclass's own ``add``, if it has one).
    #[pyo3(signature = (graph=None))]
    fn __init__(slf: &Bound<'_, Self>, graph: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        guarded(|| {
            *slf.try_borrow_mut()? = Self::empty();
            let Some(graph) = graph.filter(|g| !g.is_none()) else { return Ok(()) };
            let exact = slf.is_exact_instance_of::<Self>();
            for item in graph.call_method0(intern!(slf.py(), "items"))?.try_iter()? {
                let (node, predecessors): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract()?;
                if exact {
                    slf.try_borrow_mut()?.add_one(&node, |nodes, ids| {
                        for pred in predecessors.try_iter()? {
                            ids.push(nodes.intern(&pred?)?);
                        }
                        Ok(())
                    })?;
                } else {
                    let mut args = vec![node];
                    for pred in predecessors.try_iter()? {
                        args.push(pred?);
                    }
                    slf.call_method1(intern!(slf.py(), "add"), PyTuple::new(slf.py(), args)?)?;
                }
            }
            Ok(())
        })
    }

    /// Adds ``node`` and an edge from each of ``predecessors`` to it.
    ///
    /// Calling it again for the same node adds to its predecessors; a predecessor seen for the
    /// first time becomes a node. Raises ``ValueError`` after ``prepare()`` and ``TypeError`` for
    /// an unhashable node; either way nothing is added.
    #[pyo3(signature = (node, *predecessors))]
    fn add(&mut self, node: &Bound<'_, PyAny>, predecessors: &Bound<'_, PyTuple>) -> PyResult<()> {
        guarded(|| {
            self.add_one(node, |nodes, ids| {
                for pred in predecessors.iter_borrowed() {
                    ids.push(nodes.intern(&pred)?);
                }
                Ok(())
            })
        })
    }

    /// Marks the graph as finished and checks it for cycles.
    ///
    /// On a cycle ``CycleError`` is raised (``args[1]`` is the cycle graphlib reports), but
    /// ``get_ready`` still hands out every node the cycle does not block.
    fn prepare(&mut self, py: Python<'_>) -> PyResult<()> {
        guarded(|| {
            let sorter = &mut self.sorter;
            let outcome = py.detach(|| sorter.prepare());
            outcome.map_err(|err| self.prepare_error(py, err))
        })
    }

    /// Returns a tuple of every node that became ready since the last call, and marks them out.
    fn get_ready<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        guarded(|| {
            let ready = self.sorter.take_ready().map_err(|_| not_prepared())?;
            if ready.is_empty() {
                return Ok(PyTuple::empty(py));
            }
            let objects = &self.nodes.objects;
            PyTuple::new(py, ready.iter().map(|&id| objects[id as usize].bind(py)))
        })
    }

    /// Whether progress can still be made: nodes are ready, or out and not done.
    fn is_active(&self) -> PyResult<bool> {
        self.sorter.is_active().map_err(|_| not_prepared())
    }

    fn __bool__(&self) -> PyResult<bool> {
        self.is_active()
    }

    /// Marks nodes returned by ``get_ready`` as processed, releasing their successors.
    ///
    /// Raises ``ValueError`` for a node never added, not handed out yet, or already done, or
    /// before ``prepare()``; then no node of the call is marked.
    ///
    /// The first node is a parameter of its own, so that the common call, ``done(node)``, builds
    /// no tuple of arguments (``done()`` and ``done(a, b, ...)`` still take every form graphlib
    /// does).
    #[pyo3(signature = (node = Given(None), /, *more), text_signature = "($self, *nodes)")]
    fn done(&mut self, node: Given<'_>, more: &Bound<'_, PyTuple>) -> PyResult<()> {
        guarded(|| {
            if !self.sorter.is_prepared() {
                return Err(not_prepared());
            }
            let Given(Some(node)) = node else { return Ok(()) }; // `done()`: nothing to mark
            if !more.is_empty() {
                let mut nodes = vec![node];
                nodes.extend(more.iter());
                return self.done_many(&PyTuple::new(more.py(), nodes)?);
            }
            let id = self.nodes.find(&node)?.ok_or_else(|| not_added(&node))?;
            self.sorter.done(&[id]).map_err(|err| done_error(err, &node))
        })
    }

    /// Returns an iterator over every node in a topological order (prepares the graph; a cycle
    /// raises ``CycleError`` on the first ``next()``).
    fn static_order(slf: Bound<'_, Self>) -> StaticOrder {
        StaticOrder { sorter: Some(slf.unbind()), order: Vec::new(), next: 0 }
    }

    /// ``TopologicalSorter[T]``, as for ``graphlib.TopologicalSorter``.
    #[classmethod]
    fn __class_getitem__<'py>(
        cls: &Bound<'py, PyType>,
        item: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = cls.py();
        py.import("types")?.getattr("GenericAlias")?.call1((cls, item))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for obj in &self.nodes.objects {
            visit.call(obj)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        *self = Self::empty();
    }
}

/// The iterator ``TopologicalSorter.static_order()`` returns.
#[pyclass(module = "taskiq_flow._core")]
pub struct StaticOrder {
    sorter: Option<Py<TopologicalSorter>>,
    order: Vec<u32>,
    next: usize,
}

#[pymethods]
impl StaticOrder {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        guarded(|| {
            let Some(sorter) = &self.sorter else { return Ok(None) };
            let mut sorter = sorter.bind(py).try_borrow_mut()?;
            if self.next == 0 && self.order.is_empty() {
                let core = &mut sorter.sorter;
                match py.detach(|| core.static_order()) {
                    Ok(order) => self.order = order,
                    Err(err) => {
                        let err = sorter.prepare_error(py, err);
                        drop(sorter);
                        self.sorter = None;
                        return Err(err);
                    }
                }
            }
            let Some(&id) = self.order.get(self.next) else {
                drop(sorter);
                self.sorter = None;
                self.order = Vec::new();
                return Ok(None);
            };
            self.next += 1;
            Ok(Some(sorter.nodes.objects[id as usize].clone_ref(py)))
        })
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(sorter) = &self.sorter {
            visit.call(sorter)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.sorter = None;
    }
}
