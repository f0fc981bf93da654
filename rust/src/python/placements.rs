//! `ResourceAwareWorkerPool.place` and `release` as one core call each.
//!
//! The pool's own placements (outside any run) are placed by task object and answered with the
//! worker's name. Done in Python, every call re-read the task's declared resources and rebuilt
//! its demand, which cost several times a plain-Python best fit over ten workers; here the demand
//! class is remembered by the task object's identity (asked of Python once per object), the task
//! id is checked by the core's integer rule, and the name comes back without a Python frame.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Mutex, MutexGuard, PoisonError};

use pyo3::prelude::*;
use pyo3::types::PyString;
use pyo3::{PyTraverseError, PyVisit};

use crate::admission::{lock, Pool, RunId, Shared};
use crate::error::CoreError;
use crate::packing::IdHasher;

use super::args::int_arg;
use super::errors::{guard, StateError, UnknownIdError};
use super::worker_pool::WorkerPool;

/// Task objects remembered at most; past this the memory starts again, so that a program making a
/// new profile object per call does not grow it without end.
const REMEMBERED: usize = 4096;

/// Demand class by the address of a task object, which the entry keeps alive (so the address
/// cannot be reused by another object while it is remembered).
type Classes = HashMap<u64, (Py<PyAny>, u32), BuildHasherDefault<IdHasher>>;

fn held<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the placements call back into Python for (bound methods of the pool that owns them, so
/// a reference cycle the garbage collector sees through `__traverse__` and breaks with
/// `__clear__`).
struct Callbacks {
    classify: Py<PyAny>,
    woken: Py<PyAny>,
}

/// Placements of one ``WorkerPool`` outside any run, by task object and worker name.
///
/// ``PoolPlacements(pool, names, classify, woken)``: ``names[w]`` is worker ``w``'s name;
/// ``classify(task)`` returns the pool's demand class for a task object (called once per object,
/// then remembered); ``woken()`` is called after a release placed waiting nodes of some run.
#[pyclass(module = "taskiq_flow._core", frozen)]
pub struct PoolPlacements {
    pool: Shared<Pool>,
    run: RunId,
    names: Mutex<Vec<Py<PyString>>>,
    classes: Mutex<Classes>,
    callbacks: Mutex<Option<Callbacks>>,
}

impl PoolPlacements {
    fn name(&self, py: Python<'_>, worker: u32) -> PyResult<Py<PyString>> {
        let names = held(&self.names);
        let name = names
            .get(worker as usize)
            .ok_or(CoreError::UnknownId { what: "worker name", id: worker.into() })?;
        Ok(name.clone_ref(py))
    }

    fn task_id(task_id: &Bound<'_, PyAny>) -> PyResult<u32> {
        Ok(int_arg("task_id", task_id, u64::from(u32::MAX))? as u32)
    }

    /// One of the callbacks, taken out of the lock to be called.
    fn callback(
        &self,
        py: Python<'_>,
        which: impl FnOnce(&Callbacks) -> &Py<PyAny>,
    ) -> PyResult<Py<PyAny>> {
        match held(&self.callbacks).as_ref() {
            Some(callbacks) => Ok(which(callbacks).clone_ref(py)),
            None => Err(StateError::new_err("the pool these placements belong to is gone")),
        }
    }
}

#[pymethods]
impl PoolPlacements {
    #[new]
    fn new(
        pool: &Bound<'_, WorkerPool>,
        names: Vec<Bound<'_, PyString>>,
        classify: Bound<'_, PyAny>,
        woken: Bound<'_, PyAny>,
    ) -> Self {
        let pool = pool.get().inner.clone();
        let run = lock(&pool).register();
        Self {
            pool,
            run,
            names: Mutex::new(names.into_iter().map(Bound::unbind).collect()),
            classes: Mutex::new(Classes::default()),
            callbacks: Mutex::new(Some(Callbacks {
                classify: classify.unbind(),
                woken: woken.unbind(),
            })),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Never blocks: a lock held elsewhere means its holder is not in a cycle being collected.
        if let Ok(callbacks) = self.callbacks.try_lock() {
            if let Some(callbacks) = callbacks.as_ref() {
                visit.call(&callbacks.classify)?;
                visit.call(&callbacks.woken)?;
            }
        }
        if let Ok(classes) = self.classes.try_lock() {
            for (task, _) in classes.values() {
                visit.call(task)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let callbacks = held(&self.callbacks).take();
        let classes = std::mem::take(&mut *held(&self.classes));
        drop((callbacks, classes)); // with the locks released: finalizers may call back in
    }

    #[getter]
    /// The pool's run id these placements are made under.
    fn run(&self) -> u32 {
        self.run
    }

    /// Names the next worker added to the pool.
    fn add_name(&self, name: Bound<'_, PyString>) {
        held(&self.names).push(name.unbind());
    }

    /// The demand class of a task object: remembered, or asked of ``classify``.
    fn class_of(&self, task: &Bound<'_, PyAny>) -> PyResult<u32> {
        let key = task.as_ptr() as usize as u64;
        if let Some(&(_, class)) = held(&self.classes).get(&key) {
            return Ok(class);
        }
        let classify = self.callback(task.py(), |c| &c.classify)?;
        let class: u32 = classify.bind(task.py()).call1((task,))?.extract()?;
        let forgotten = {
            let mut classes = held(&self.classes);
            let forgotten = if classes.len() >= REMEMBERED {
                std::mem::take(&mut *classes)
            } else {
                Classes::default()
            };
            classes.insert(key, (task.clone().unbind(), class));
            forgotten
        };
        // Dropped with the lock released: a finalizer may run and call back in.
        drop(forgotten);
        Ok(class)
    }

    #[pyo3(signature = (task, task_id, wait=false))]
    /// Places one run of ``task`` as ``task_id``: the worker's name, or ``None`` when no worker
    /// has room now (it then waits in the pool's queue when ``wait``).
    ///
    /// Raises ``UnschedulableError`` if no worker could ever run it, ``InvalidValueError`` for a
    /// ``task_id`` that is not an integer from 0 to 4294967295.
    fn place(
        &self,
        py: Python<'_>,
        task: &Bound<'_, PyAny>,
        task_id: &Bound<'_, PyAny>,
        wait: bool,
    ) -> PyResult<Option<Py<PyString>>> {
        let id = Self::task_id(task_id)?;
        let class = self.class_of(task)?;
        let worker = guard(|| lock(&self.pool).place_or(self.run, id, class, wait))?;
        worker.map(|w| self.name(py, w)).transpose()
    }

    /// Gives back what ``task_id`` holds; returns its worker's name. Waiting nodes that fit now
    /// are placed, and ``woken()`` is called if any were.
    ///
    /// Raises ``UnknownIdError`` if that task holds nothing.
    fn release(&self, py: Python<'_>, task_id: &Bound<'_, PyAny>) -> PyResult<Py<PyString>> {
        let id = Self::task_id(task_id)?;
        let (worker, woke) = {
            let mut pool = lock(&self.pool);
            let Some(worker) = pool.worker_of(self.run, id) else {
                return Err(UnknownIdError::new_err(format!(
                    "task {id} holds nothing in this pool"
                )));
            };
            guard(|| pool.release(self.run, id))?;
            (worker, pool.has_woken())
        };
        if woke {
            self.callback(py, |c| &c.woken)?.call0(py)?;
        }
        self.name(py, worker)
    }
}
