//! The core's rules for options, exposed as functions, so that the Python layer checks an option
//! once, with the core's message, before anything is built from it.

use pyo3::prelude::*;

use super::args::{cap_arg, rate_args};
use crate::limiter::Cap;

/// Validates a cap the way every scheduler does: ``None``, or an int from 1 to 4294967295.
/// ``what`` names it in the error. This is the one rule for every ``max_parallel``.
#[pyfunction]
#[pyo3(signature = (value, what="max_parallel"))]
pub(super) fn check_cap(value: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<u32>> {
    Ok(Cap::new(what, cap_arg(what, value)?)?.get())
}

/// Validates a rate limit the way every step does: ``rate`` tokens per second, a finite number
/// > 0 (int or float), and bursts of ``burst``, ``None`` (1) or an int from 1 to 4294967295.
/// Returns ``(rate, burst)`` as the core keeps them. This is the one rule for every rate.
#[pyfunction]
#[pyo3(signature = (rate, burst=None))]
pub(super) fn check_rate(
    rate: &Bound<'_, PyAny>,
    burst: Option<&Bound<'_, PyAny>>,
) -> PyResult<(f64, u32)> {
    rate_args(rate, burst)
}
