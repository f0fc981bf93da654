//! The uncontended paths of `taskiq_flow.CapacityLimiter` and `taskiq_flow.RateLimiter`.
//!
//! Both classes live here whole. `async with limiter:` costs two method calls and two awaits. When a
//! slot or a token is there, both calls answer from here and return [`Ready`], an awaitable that
//! finishes at once, so no Python coroutine frame is ever created; that is what makes them cheaper
//! than an `asyncio.Semaphore` or a token bucket written in Python. Only when the caller must wait
//! does control go to Python: `taskiq_flow.limits._wait_in_line(limiter)` (a place in line) or
//! `_sleep_until(limiter, due)` (until the reserved token is due), coroutines that do the awaiting,
//! cancellation-safe, with anyio. The counting and the decisions are the pure core's
//! ([`ConcurrencyLimit`], [`RateLimit`]).
//!
//! The core never reads a clock; the rate gate passes it the event loop's time: the running
//! asyncio loop's `time()` (when the loop does not override it, that is `time.monotonic()`, read
//! here from the same system clock; see [`TimeSource`]), or `anyio.current_time()` under any other
//! event loop (trio, and its virtual clocks).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use super::args::{cap_arg, rate_args};
use super::errors::guard;
use crate::limiter::{ConcurrencyLimit, RateLimit};

/// An awaitable that is already done (its result is ``None``); one shared instance.
#[pyclass(module = "taskiq_flow._core", frozen)]
pub struct Ready;

#[pymethods]
impl Ready {
    fn __await__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[allow(clippy::unused_self)] // the iterator protocol's shape
    fn __next__(&self) -> Option<Py<PyAny>> {
        None
    }
}

static READY: PyOnceLock<Py<Ready>> = PyOnceLock::new();

fn ready(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    Ok(READY.get_or_try_init(py, || Py::new(py, Ready))?.bind(py).clone().into_any())
}

// ------------------------------------------------------------------------------------------------
// Concurrency
// ------------------------------------------------------------------------------------------------

static WAIT_IN_LINE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static GRANT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SLEEP_UNTIL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static WOULD_BLOCK: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static STATISTICS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Lets at most ``total_tokens`` holders in at once; the rest wait in FIFO order.
///
/// The shape of ``anyio.CapacityLimiter`` (``acquire``, ``acquire_nowait``, ``release``,
/// ``total_tokens``, ``statistics()``, ``async with``), but it does not track borrowers (a task may
/// hold several tokens), and an uncontended ``acquire`` does not yield to the event loop (as
/// ``asyncio.Semaphore``) nor create a coroutine. Cancellation-safe: a waiter cancelled before it
/// is served leaves no trace; one cancelled after a token was handed to it passes the token on.
///
/// ``CapacityLimiter(total_tokens)``: the cap, an int >= 1 (``InvalidValueError`` otherwise).
#[pyclass(module = "taskiq_flow._core", subclass)]
pub struct CapacityLimiter {
    counter: ConcurrencyLimit,
    /// Waiters in line (asyncio futures or anyio events), first come first served.
    waiters: VecDeque<Py<PyAny>>,
}

impl CapacityLimiter {
    /// Hands `waiter` the slot it waited for.
    fn grant(slf: &Bound<'_, Self>, waiter: Py<PyAny>) -> PyResult<()> {
        GRANT.import(slf.py(), "taskiq_flow.limits", "_grant")?.call1((waiter,)).map(drop)
    }

    /// Takes a slot now if nobody is in line and one is free.
    fn take(&mut self) -> bool {
        self.waiters.is_empty() && self.counter.try_acquire()
    }
}

#[pymethods]
impl CapacityLimiter {
    #[new]
    fn new(total_tokens: &Bound<'_, PyAny>) -> PyResult<Self> {
        let cap = cap_arg("total_tokens", Some(total_tokens))?.unwrap_or(1);
        Ok(Self { counter: guard(|| ConcurrencyLimit::new(cap))?, waiters: VecDeque::new() })
    }

    /// The cap. Raising it admits waiters at once; lowering it lets holders finish.
    #[getter]
    fn get_total_tokens(&self) -> u32 {
        self.counter.cap()
    }

    #[setter]
    fn set_total_tokens(slf: &Bound<'_, Self>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let cap = cap_arg("total_tokens", Some(value))?.unwrap_or(1);
        guard(|| slf.borrow_mut().counter.set_cap(cap))?;
        loop {
            let waiter = {
                let mut this = slf.borrow_mut();
                if this.waiters.is_empty() || !this.counter.try_acquire() {
                    return Ok(());
                }
                this.waiters.pop_front()
            };
            if let Some(waiter) = waiter {
                Self::grant(slf, waiter)?;
            }
        }
    }

    /// Tokens held now.
    #[getter]
    fn borrowed_tokens(&self) -> u32 {
        self.counter.in_use()
    }

    /// Tokens free now.
    #[getter]
    fn available_tokens(&self) -> u32 {
        self.counter.available()
    }

    /// Callers waiting in line.
    #[getter]
    fn tasks_waiting(&self) -> usize {
        self.waiters.len()
    }

    /// Tokens held, the cap and the number of waiters, as ``anyio.CapacityLimiterStatistics``
    /// (``borrowers`` is not tracked: ``()``).
    fn statistics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let fields = PyDict::new(py);
        fields.set_item("borrowed_tokens", self.counter.in_use())?;
        fields.set_item("total_tokens", self.counter.cap())?;
        fields.set_item("borrowers", PyTuple::empty(py))?;
        fields.set_item("tasks_waiting", self.waiters.len())?;
        STATISTICS.import(py, "anyio", "CapacityLimiterStatistics")?.call((), Some(&fields))
    }

    /// Takes a token if one is free and nobody is in line; returns whether it did.
    fn try_acquire(&mut self) -> bool {
        self.take()
    }

    /// Takes a token without waiting; raises ``anyio.WouldBlock`` if none is free or others are
    /// already waiting.
    fn acquire_nowait(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.take() {
            return Ok(());
        }
        Err(PyErr::from_type(WOULD_BLOCK.import(py, "anyio", "WouldBlock")?.clone(), ()))
    }

    /// Takes a token, waiting in line for one if none is free (returns an awaitable).
    fn acquire<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        if slf.borrow_mut().take() {
            return ready(slf.py());
        }
        WAIT_IN_LINE.import(slf.py(), "taskiq_flow.limits", "_wait_in_line")?.call1((slf,))
    }

    /// Returns a token; the first waiter in line, if any, gets it.
    ///
    /// Raises ``StateError`` if no token is held.
    fn release(slf: &Bound<'_, Self>) -> PyResult<()> {
        let waiter = {
            let mut this = slf.borrow_mut();
            let waiting = !this.waiters.is_empty();
            if !guard(|| this.counter.release_or_hand_off(waiting))? {
                return Ok(());
            }
            this.waiters.pop_front()
        };
        match waiter {
            Some(waiter) => Self::grant(slf, waiter),
            None => Ok(()),
        }
    }

    fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Self::acquire(slf)
    }

    fn __aexit__<'py>(
        slf: &Bound<'py, Self>,
        _exc_type: &Bound<'py, PyAny>,
        _exc: &Bound<'py, PyAny>,
        _tb: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::release(slf)?;
        ready(slf.py())
    }

    /// Puts ``waiter`` at the end of the line (``_wait_in_line`` does, before it awaits).
    fn _enqueue(&mut self, waiter: Py<PyAny>) {
        self.waiters.push_back(waiter);
    }

    /// Takes ``waiter`` out of the line (it was cancelled before being served); returns whether
    /// it was there.
    fn _forget(&mut self, py: Python<'_>, waiter: &Bound<'_, PyAny>) -> bool {
        match self.waiters.iter().position(|w| w.bind(py).is(waiter)) {
            Some(at) => {
                self.waiters.remove(at);
                true
            }
            None => false,
        }
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        for waiter in &self.waiters {
            visit.call(waiter)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.waiters.clear();
    }
}

// ------------------------------------------------------------------------------------------------
// Rate
// ------------------------------------------------------------------------------------------------

static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static BASE_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static MONOTONIC: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ANYIO_TIME: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Where a loop's time comes from.
enum TimeSource {
    /// `BaseEventLoop.time()`, i.e. `time.monotonic()`: read as `at` plus the time elapsed since
    /// `anchor` on Rust's monotonic clock, which is the same system clock (`CLOCK_MONOTONIC` on
    /// Linux, the uptime clock on macOS, `QueryPerformanceCounter` on Windows), without a call
    /// into Python.
    Monotonic { anchor: Instant, at: f64 },
    /// A loop that overrides `time()`: called.
    Call(Py<PyAny>),
}

/// The asyncio loop the clock was resolved for: the loop's `__dict__` (where `_thread_id`
/// lives), the `_thread_id` object it held then (the ident of the thread it runs in; asyncio sets
/// a new one each time the loop starts, and this reference keeps the old one from being reused),
/// and that thread's [`thread_token`].
struct Resolved {
    loop_attributes: Py<PyDict>,
    thread_ident: Py<PyAny>,
    thread: u64,
    source: TimeSource,
}

static NEXT_THREAD_TOKEN: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static THREAD_TOKEN: u64 = NEXT_THREAD_TOKEN.fetch_add(1, Ordering::Relaxed);
}

/// A number for the calling thread, never given to another thread (unlike thread idents, which
/// the system reuses).
fn thread_token() -> u64 {
    THREAD_TOKEN.with(|token| *token)
}

/// The clock of the event loop the limiter was last used on.
///
/// Finding the running asyncio loop costs a `getpid()` system call on `CPython` 3.11, more than
/// the rest of an acquisition, so the loop found is remembered with the thread it runs in: it is
/// still the running loop while its `_thread_id` is that thread and the caller is in that thread
/// (one thread runs one loop at a time). Anything else (another loop, another thread, trio, a
/// loop without `_thread_id`) is looked up again, and under trio every read is
/// `anyio.current_time()`, so virtual clocks are honoured.
#[derive(Default)]
struct LoopClock {
    resolved: Option<Resolved>,
}

impl LoopClock {
    #[inline]
    fn now(&mut self, py: Python<'_>) -> PyResult<f64> {
        if let Some(known) = &self.resolved {
            let running_in = known.loop_attributes.bind(py).get_item(intern!(py, "_thread_id"))?;
            if known.thread == thread_token()
                && running_in.is_some_and(|id| id.is(&known.thread_ident))
            {
                return match &known.source {
                    TimeSource::Monotonic { anchor, at } => Ok(at + anchor.elapsed().as_secs_f64()),
                    TimeSource::Call(time) => time.bind(py).call0()?.extract(),
                };
            }
        }
        self.resolve(py)
    }

    #[cold]
    fn resolve(&mut self, py: Python<'_>) -> PyResult<f64> {
        self.resolved = None;
        let running =
            GET_RUNNING_LOOP.import(py, "asyncio.events", "_get_running_loop")?.call0()?;
        if running.is_none() {
            return ANYIO_TIME.import(py, "anyio", "current_time")?.call0()?.extract();
        }
        let time = running.getattr(intern!(py, "time"))?;
        let base_time = BASE_LOOP
            .import(py, "asyncio.base_events", "BaseEventLoop")?
            .getattr(intern!(py, "time"))?;
        let unchanged = time
            .getattr_opt(intern!(py, "__func__"))?
            .is_some_and(|function| function.is(&base_time));
        let (now, source) = if unchanged {
            let monotonic = MONOTONIC.import(py, "time", "monotonic")?;
            let before = Instant::now();
            let at: f64 = monotonic.call0()?.extract()?;
            let after = Instant::now();
            // The Python reading sits between the two Rust ones: anchor it at their midpoint.
            let anchor = before + (after - before) / 2;
            (at, TimeSource::Monotonic { anchor, at })
        } else {
            (time.call0()?.extract()?, TimeSource::Call(time.unbind()))
        };
        let attributes = running
            .getattr_opt(intern!(py, "__dict__"))?
            .and_then(|d| d.cast_into::<PyDict>().ok());
        if let Some(attributes) = attributes {
            let thread_ident =
                attributes.get_item(intern!(py, "_thread_id"))?.filter(|id| !id.is_none());
            if let Some(thread_ident) = thread_ident {
                self.resolved = Some(Resolved {
                    loop_attributes: attributes.unbind(),
                    thread_ident: thread_ident.unbind(),
                    thread: thread_token(),
                    source,
                });
            }
        }
        Ok(now)
    }
}

/// Admits at most ``rate`` acquisitions per second, in bursts of up to ``burst``.
///
/// Exact: over any window of ``t`` seconds at most ``burst + rate * t`` acquisitions complete, and
/// a caller waits no longer than its place in line requires (callers are served in call order).
/// Time is the event loop's: the running asyncio loop's ``time()``, else ``anyio.current_time()``
/// (trio, and its virtual clocks). A waiter cancelled before its token is due gives it back.
///
/// ``RateLimiter(rate, burst=1)``: ``rate`` tokens per second, a finite number > 0; ``burst``, an
/// int >= 1 (``InvalidValueError`` otherwise).
#[pyclass(module = "taskiq_flow._core", subclass)]
pub struct RateLimiter {
    bucket: RateLimit,
    clock: LoopClock,
}

#[pymethods]
impl RateLimiter {
    #[new]
    #[pyo3(signature = (rate, burst=None))]
    fn new(rate: &Bound<'_, PyAny>, burst: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let (rate, burst) = rate_args(rate, burst)?;
        Ok(Self {
            bucket: guard(|| RateLimit::new(rate, burst.into()))?,
            clock: LoopClock::default(),
        })
    }

    /// Tokens per second.
    #[getter]
    fn rate(&self) -> f64 {
        self.bucket.rate()
    }

    /// Bucket size.
    #[getter]
    fn burst(&self) -> u32 {
        self.bucket.burst()
    }

    /// The event loop's time, as this limiter reads it.
    fn _now(&mut self, py: Python<'_>) -> PyResult<f64> {
        self.clock.now(py)
    }

    /// Whole tokens available now.
    fn available_tokens(&mut self, py: Python<'_>) -> PyResult<u32> {
        let now = self.clock.now(py)?;
        guard(|| {
            crate::limiter::check_now(now)?;
            Ok(self.bucket.available(now))
        })
    }

    /// Takes a token if one is available now, without waiting.
    fn try_acquire(&mut self, py: Python<'_>) -> PyResult<bool> {
        let now = self.clock.now(py)?;
        guard(|| Ok(self.bucket.try_acquire(now)?.is_ok()))
    }

    /// Takes the next token, sleeping until it is due (returns an awaitable, done at once when a
    /// token is there).
    fn acquire<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let (now, delay) = {
            let mut this = slf.borrow_mut();
            let now = this.clock.now(py)?;
            (now, guard(|| this.bucket.reserve(now))?)
        };
        if delay <= 0.0 {
            return ready(py);
        }
        SLEEP_UNTIL.import(py, "taskiq_flow.limits", "_sleep_until")?.call1((slf, now + delay))
    }

    /// Gives back the latest reservation's token (its waiter was cancelled).
    fn _refund(&mut self, py: Python<'_>) -> PyResult<()> {
        let now = self.clock.now(py)?;
        guard(|| self.bucket.refund(now))
    }

    fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Self::acquire(slf)
    }

    fn __aexit__<'py>(
        slf: &Bound<'py, Self>,
        _exc_type: &Bound<'py, PyAny>,
        _exc: &Bound<'py, PyAny>,
        _tb: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        ready(slf.py())
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Some(known) = &self.clock.resolved {
            visit.call(&known.loop_attributes)?;
            visit.call(&known.thread_ident)?;
            if let TimeSource::Call(time) = &known.source {
                visit.call(time)?;
            }
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.clock = LoopClock::default();
    }
}
