//! Reading arguments from Python: ints, id lists, amounts, caps, rates and demands, each with a
//! fast path for the common shape and a precise `InvalidValueError` (or `TypeError`) otherwise.
//! What a value must be is the core's rule ([`crate::limiter::check_cap`],
//! [`crate::limiter::check_rate`]); these helpers only turn Python objects into its inputs.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyList, PyString, PyTuple};

use super::errors::guard;
use crate::error::{CoreError, CoreResult};
use crate::limiter::{check_rate, CAP_RANGE};
use crate::packing::Demand;

/// An integer argument: a Python `int` (not `bool`) within `0..=max`.
pub(super) fn int_arg(what: &str, value: &Bound<'_, PyAny>, max: u64) -> PyResult<u64> {
    // The common case, a plain `int` in range, with one call into Python.
    if value.is_exact_instance_of::<PyInt>() {
        if let Ok(v) = value.extract::<i64>() {
            if v >= 0 && v as u64 <= max {
                return Ok(v as u64);
            }
        }
    }
    if value.is_instance_of::<PyInt>() && !value.is_instance_of::<PyBool>() {
        if let Ok(v) = value.extract::<u64>() {
            if v <= max {
                return Ok(v);
            }
        }
        let shown = value.repr()?.to_string();
        return Err(CoreError::invalid(what, range_text(max), shown).into());
    }
    let shown = value.repr()?.to_string();
    Err(CoreError::invalid(what, "an integer", shown).into())
}

fn range_text(max: u64) -> &'static str {
    match max {
        m if m == u64::from(u32::MAX) => "an integer from 0 to 4294967295",
        _ => "an integer >= 0",
    }
}

/// A list of ids: fast path for a list of small ints, precise error otherwise.
pub(super) fn id_list(what: &str, value: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    if let Ok(ids) = value.extract::<Vec<u32>>() {
        return Ok(ids);
    }
    if value.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!("{what} must be a sequence of ints, not str")));
    }
    let mut out = Vec::new();
    for item in value.try_iter()? {
        out.push(int_arg(what, &item?, u64::from(u32::MAX))? as u32);
    }
    Ok(out)
}

/// A list of node ids or `None` (a growth's parents).
pub(super) fn opt_id_list(what: &str, value: &Bound<'_, PyAny>) -> PyResult<Vec<Option<u32>>> {
    if let Ok(ids) = value.extract::<Vec<Option<u32>>>() {
        return Ok(ids);
    }
    if value.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be a sequence of ints or None, not str"
        )));
    }
    let mut out = Vec::new();
    for item in value.try_iter()? {
        let item = item?;
        out.push(if item.is_none() {
            None
        } else {
            Some(int_arg(what, &item, u64::from(u32::MAX))? as u32)
        });
    }
    Ok(out)
}

/// A list of flags: each a `bool`.
pub(super) fn flag_list(what: &str, value: &Bound<'_, PyAny>) -> PyResult<Vec<bool>> {
    if value.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!("{what} must be a sequence of bools, not str")));
    }
    let mut out = Vec::new();
    for item in value.try_iter()? {
        let item = item?;
        if !item.is_instance_of::<PyBool>() {
            let shown = item.repr()?.to_string();
            return Err(CoreError::invalid(what, "a sequence of bools", shown).into());
        }
        out.push(item.is_truthy()?);
    }
    Ok(out)
}

/// A list of amounts (u64 each).
pub(super) fn amount_list(what: &str, value: &Bound<'_, PyAny>) -> PyResult<Vec<u64>> {
    if let Ok(v) = value.extract::<Vec<u64>>() {
        return Ok(v);
    }
    if value.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!("{what} must be a sequence of ints, not str")));
    }
    let mut out = Vec::new();
    for item in value.try_iter()? {
        out.push(int_arg(what, &item?, u64::MAX)?);
    }
    Ok(out)
}

/// An optional cap as the core takes it: `None`, or an int for the core's rule
/// ([`crate::limiter::check_cap`]) to check. An int that is out of any cap's range before the core
/// sees it (negative, or too large for a `u64`) fails that rule here, with its message.
pub(super) fn cap_arg(what: &str, value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
    match value {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => match int_arg(what, v, u64::MAX) {
            Ok(cap) => Ok(Some(cap)),
            Err(err) if v.is_instance_of::<PyInt>() => {
                drop(err);
                Err(CoreError::invalid(what, CAP_RANGE, v.repr()?).into())
            }
            Err(err) => Err(err),
        },
    }
}

/// A float argument: int or float, NaN and infinities refused by the core.
pub(super) fn float_arg(what: &str, value: &Bound<'_, PyAny>) -> PyResult<f64> {
    if (value.is_instance_of::<PyFloat>() || value.is_instance_of::<PyInt>())
        && !value.is_instance_of::<PyBool>()
    {
        return value.extract::<f64>();
    }
    let shown = value.repr()?.to_string();
    Err(CoreError::invalid(what, "a number", shown).into())
}

/// A rate limit's arguments checked by the core's one rule ([`check_rate`]): `rate` tokens per
/// second (int or float), bursts of `burst` (`None`: 1). Returns them as the core keeps them.
pub(super) fn rate_args(
    rate: &Bound<'_, PyAny>,
    burst: Option<&Bound<'_, PyAny>>,
) -> PyResult<(f64, u32)> {
    let rate = float_arg("rate", rate)?;
    let burst = cap_arg("burst", burst)?.unwrap_or(1);
    guard(|| check_rate(rate, burst))
}

/// A tuple of ids; the empty tuple is `CPython`'s shared singleton, so a completion that releases
/// nothing allocates nothing.
pub(super) fn id_tuple<'py>(py: Python<'py>, ids: &[u32]) -> PyResult<Bound<'py, PyTuple>> {
    if ids.is_empty() {
        Ok(PyTuple::empty(py))
    } else {
        PyTuple::new(py, ids.iter().copied())
    }
}

/// A node id: negative or too large ids are unknown ids, not overflow errors.
pub(super) fn node_arg(node: i64) -> CoreResult<u32> {
    u32::try_from(node).map_err(|_| CoreError::UnknownId { what: "node", id: node as u64 })
}

/// Reads a demand's amounts into `out`, reusing its allocation: a list of ints is read item by
/// item, anything else (or a list holding something else) goes through [`amount_list`].
pub(super) fn read_amounts(out: &mut Vec<u64>, value: &Bound<'_, PyAny>) -> PyResult<()> {
    out.clear();
    if let Ok(list) = value.cast_exact::<PyList>() {
        // By index and as `i64` (read by `PyLong_AsLongLong` alone): the list iterator asks the
        // length at every step and `u64` checks the type first, which under the stable ABI are
        // calls each; this is most of a placement's cost.
        let len = list.len();
        for i in 0..len {
            match list.get_item(i).and_then(|item| item.extract::<i64>()) {
                Ok(amount) if amount >= 0 => out.push(amount as u64),
                _ => break,
            }
        }
        if out.len() == len {
            return Ok(());
        }
    }
    *out = amount_list("demand", value)?;
    Ok(())
}

pub(super) fn demand(
    amounts: &Bound<'_, PyAny>,
    labels: Option<&Bound<'_, PyAny>>,
) -> PyResult<Demand> {
    Ok(Demand {
        amounts: amount_list("demand", amounts)?,
        labels: labels.map(|l| id_list("labels", l)).transpose()?.unwrap_or_default(),
    })
}
