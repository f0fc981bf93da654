//! The scheduling core of taskiq-flow.
//!
//! Pure Rust, no Python types: nodes, workers, keys and tasks are integer ids and names stay with the
//! caller. Three parts:
//!
//! - [`bulk`]: columnar dataflows (many nodes of a few tasks, held as arrays);
//! - [`dag`]: graphs on dense ids, cycle detection with the cycle's path, topological order, levels,
//!   critical path, and the `graphlib`-shaped [`dag::Sorter`];
//! - [`limiter`] and [`scheduler`]: concurrency caps and exact token-bucket rate limits, and the DAG
//!   state machine that hands out nodes that are ready *and* admitted;
//! - [`packing`]: resource placement of tasks onto workers;
//! - [`admission`]: what runs share — the process-wide cap and a worker pool's placement queue,
//!   granted fairly between runs.
//!
//! With the `python` feature, the `python` module (`python.rs` registering one file per exposed type
//! under `python/`) exposes all of it as the `taskiq_flow._core` module.

pub mod admission;
pub mod bulk;
pub mod dag;
pub mod error;
pub mod limiter;
pub mod packing;
pub mod scheduler;

#[cfg(feature = "python")]
mod python;

pub use error::{CoreError, CoreResult};
