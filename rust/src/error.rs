//! The core's one error type.
//!
//! Every fallible operation of the pure core returns [`CoreError`]. The bindings map each variant to
//! a Python exception class in exactly one place (`python/errors.rs`); nothing else decides what a user sees.

use thiserror::Error;

/// Everything the scheduling core can refuse.
///
/// Messages name the offending value; the Python layer re-uses them verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CoreError {
    /// The graph has a cycle; `path` lists it with the first node repeated at the end.
    #[error("nodes are in a cycle")]
    Cycle { path: Vec<u32> },

    /// A node id outside `0..node_count`.
    #[error("unknown node id {node} (the graph has {node_count} nodes)")]
    UnknownNode { node: u32, node_count: u32 },

    /// `done`/`complete` on a node that was never handed out as ready.
    #[error("node {node} was not passed out (still not ready)")]
    NotPassedOut { node: u32 },

    /// `done`/`complete` on a node that is already finished.
    #[error("node {node} was already marked done")]
    AlreadyDone { node: u32 },

    /// `complete` or `fail` on a node that is not running (it failed, was skipped or cancelled).
    #[error("node {node} is not running (it failed, was skipped or was cancelled)")]
    NotRunning { node: u32 },

    /// `retry_at` on a running node that cannot wait for a retry now.
    #[error("node {node} cannot wait for a retry: {why}")]
    NoRetry { node: u32, why: &'static str },

    /// `complete`, `fail`, `skip` or `retry_at` on an open node: it finishes with its children.
    #[error("node {node} is open: it finishes when its children have")]
    NodeOpen { node: u32 },

    /// `expand` (or `grow` with it as a parent) on a node that cannot take children now.
    #[error("node {node} cannot take children: {why}")]
    NoChildren { node: u32, why: &'static str },

    /// An edge a growth may not add (it could close a cycle, or names a node in the wrong state).
    #[error("edge {from} -> {to} refused: {why}")]
    BadEdge { from: u32, to: u32, why: &'static str },

    /// The graph is frozen once execution starts.
    #[error("the graph cannot change after execution started")]
    Frozen,

    /// An operation that needs `prepare`/`start` first.
    #[error("prepare() must be called first")]
    NotPrepared,

    /// A release with no slot held: more releases than acquires.
    #[error("{what} must be matched by an earlier acquire; none held")]
    NotHeld { what: &'static str },

    /// `prepare`/`start` called twice.
    #[error("cannot prepare() more than once")]
    AlreadyPrepared,

    /// A graph larger than the id space.
    #[error("too many {what}: {count} (the limit is {limit})")]
    TooLarge { what: &'static str, count: u64, limit: u64 },

    /// A value outside its valid range (caps < 1, rates <= 0, NaN, ...).
    #[error("{what} must be {expected}, got {got}")]
    InvalidValue { what: String, expected: &'static str, got: String },

    /// An id that was never registered (admission key, worker, placed task).
    #[error("unknown {what} {id}")]
    UnknownId { what: &'static str, id: u64 },

    /// An id registered twice.
    #[error("{what} {id} is already registered")]
    DuplicateId { what: &'static str, id: u64 },

    /// A task that no worker could ever take, whatever else is released.
    #[error("{reason}")]
    Unschedulable { reason: String },
}

impl CoreError {
    /// Shorthand for [`CoreError::InvalidValue`].
    pub fn invalid(
        what: impl Into<String>,
        expected: &'static str,
        got: impl std::fmt::Display,
    ) -> Self {
        CoreError::InvalidValue { what: what.into(), expected, got: got.to_string() }
    }
}

/// Result alias of the core.
pub type CoreResult<T> = Result<T, CoreError>;
