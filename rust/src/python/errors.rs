//! How the core's refusals and panics reach Python.
//!
//! Errors become the exception classes of `taskiq_flow.exceptions` (imported, never defined here),
//! mapped in exactly one place: `impl From<CoreError> for PyErr`. Every call into the core runs
//! inside [`guard`], so a Rust panic surfaces as `taskiq_flow.exceptions.InternalError` instead of
//! `pyo3_runtime.PanicException` (a `BaseException` that `except Exception` misses); work that is
//! O(n) or more on owned data runs with the interpreter detached ([`heavy`]).

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::prelude::*;

use crate::error::{CoreError, CoreResult};

pub(super) mod exceptions {
    pyo3::import_exception!(taskiq_flow.exceptions, CycleError);
    pyo3::import_exception!(taskiq_flow.exceptions, StateError);
    pyo3::import_exception!(taskiq_flow.exceptions, UnknownIdError);
    pyo3::import_exception!(taskiq_flow.exceptions, InvalidValueError);
    pyo3::import_exception!(taskiq_flow.exceptions, UnschedulableError);
    pyo3::import_exception!(taskiq_flow.exceptions, InternalError);
}
pub(super) use exceptions::{
    CycleError, InternalError, InvalidValueError, StateError, UnknownIdError, UnschedulableError,
};

impl From<CoreError> for PyErr {
    fn from(err: CoreError) -> PyErr {
        let message = err.to_string();
        match err {
            CoreError::Cycle { path } => CycleError::new_err((message, path)),
            CoreError::UnknownNode { node, .. } => UnknownIdError::new_err((message, node)),
            CoreError::NotPassedOut { node }
            | CoreError::AlreadyDone { node }
            | CoreError::NotRunning { node }
            | CoreError::NoRetry { node, .. }
            | CoreError::NodeOpen { node }
            | CoreError::NoChildren { node, .. } => StateError::new_err((message, node)),
            CoreError::Frozen
            | CoreError::NotPrepared
            | CoreError::AlreadyPrepared
            | CoreError::NotHeld { .. } => StateError::new_err(message),
            CoreError::DuplicateId { id, .. } => StateError::new_err((message, id)),
            CoreError::UnknownId { id, .. } => UnknownIdError::new_err((message, id)),
            CoreError::TooLarge { .. }
            | CoreError::InvalidValue { .. }
            | CoreError::BadEdge { .. } => InvalidValueError::new_err(message),
            CoreError::Unschedulable { .. } => UnschedulableError::new_err(message),
        }
    }
}

/// Runs core work and turns a panic into `InternalError`. The core's data is plain arrays, so a
/// caught panic leaves memory safe, though the object may be mid-update; the error says so.
pub(super) fn guard<T>(f: impl FnOnce() -> CoreResult<T>) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(panic_error)?.map_err(PyErr::from)
}

/// [`guard`] with the interpreter detached, for O(n) work on owned data.
pub(super) fn heavy<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> CoreResult<T> + Send,
) -> PyResult<T> {
    py.detach(|| catch_unwind(AssertUnwindSafe(f))).map_err(panic_error)?.map_err(PyErr::from)
}

#[allow(clippy::needless_pass_by_value)] // the shape `map_err` hands us
pub(super) fn panic_error(payload: Box<dyn std::any::Any + Send>) -> PyErr {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    InternalError::new_err(format!(
        "internal error in the scheduling core: {detail}; the object that raised it may be \
         inconsistent and should be discarded"
    ))
}

/// Panics inside the core on purpose; the test suite checks that this surfaces as
/// ``InternalError`` and that the interpreter lives on.
#[pyfunction]
pub(super) fn _panic_for_test(message: &str) -> PyResult<()> {
    guard(|| -> CoreResult<()> { panic!("{message}") })
}
