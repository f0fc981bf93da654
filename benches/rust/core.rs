//! Per-operation cost of the pure core, without Python: `cargo bench`.
//!
//! The Python-level comparisons against peers live in `taskiq-flow bench`; this measures how much of
//! a completion's cost is the core itself (the rest is the interpreter crossing and the caller's loop).

use std::hint::black_box;
use std::time::Instant;

use taskiq_flow_core::dag::{Graph, Sorter};
use taskiq_flow_core::packing::{Demand, Placer, Policy};
use taskiq_flow_core::scheduler::{KeyLimits, Scheduler};

/// A layered random DAG: every node past the first layer has 4 predecessors in the layer before.
fn layered(n: u32) -> (Vec<u32>, Vec<u32>) {
    let width = (f64::from(n).sqrt() as u32).max(8);
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut src, mut dst) = (Vec::new(), Vec::new());
    for v in width..n {
        let start = (v / width - 1) * width;
        for _ in 0..4 {
            src.push(start + (next() % u64::from(width)) as u32);
            dst.push(v);
        }
    }
    (src, dst)
}

fn report(what: &str, units: u64, started: Instant) {
    let ns = started.elapsed().as_nanos() as f64 / units as f64;
    println!("{what:<52} {ns:>8.1} ns");
}

fn main() {
    let n = 1_000_000u32;
    let (src, dst) = layered(n);

    let t = Instant::now();
    let g = Graph::from_edges(n, &src, &dst).unwrap();
    report("build layered 10^6 (per node)", n.into(), t);

    let t = Instant::now();
    black_box(g.topological_order().unwrap());
    report("topological order (per node)", n.into(), t);

    let mut sorter = Sorter::from_edges(n, &src, &dst).unwrap();
    sorter.prepare().unwrap();
    let t = Instant::now();
    let mut stack: Vec<u32> = sorter.get_ready().unwrap();
    while let Some(node) = stack.pop() {
        stack.extend_from_slice(sorter.complete(node).unwrap());
    }
    report("sorter event loop, one completion at a time", n.into(), t);

    let g = Graph::from_edges(n, &src, &dst).unwrap();
    let keys: Vec<u32> = (0..n).map(|v| v % 4).collect();
    let limits = [KeyLimits { max_parallel: Some(16), rate: None }; 4];
    let mut run = Scheduler::new(g, Some(keys), &limits, None, None).unwrap();
    run.set_global_cap(Some(48), 0.0).unwrap();
    let t = Instant::now();
    let mut running = run.start(0.0).unwrap();
    while let Some(node) = running.pop() {
        running.extend(run.complete(node, 0.0).unwrap());
    }
    report("scheduler event loop, 4 keys capped at 16, global 48", n.into(), t);

    for workers in [10u64, 1000] {
        place_and_release(Policy::BestFit, workers, 1, &format!("best-fit over {workers} workers"));
    }
    for policy in [Policy::FirstFit, Policy::BestFit] {
        // Room for every task: each is placed, every third released again.
        place_and_release(policy, 10, 10_000, &format!("{policy:?} over 10 roomy workers"));
    }
}

/// 10^5 tasks placed one by one on `workers` workers (capacities times `scale`), every third
/// placed one released again.
fn place_and_release(policy: Policy, workers: u64, scale: u64, what: &str) {
    let mut p = Placer::new(vec!["cpu".into(), "ram".into()], policy).unwrap();
    for w in 0..workers {
        p.add_worker(&[(2000 + (w % 8) * 1000) * scale, 8192 * scale], &[]).unwrap();
    }
    let tasks = 100_000u64;
    let t = Instant::now();
    for task in 0..tasks {
        let demand = Demand { amounts: vec![100 + task % 900, 256], labels: vec![] };
        if p.place(task, &demand).unwrap().is_some() && task % 3 == 0 {
            p.release(task).unwrap();
        }
    }
    report(&format!("{what}, placement"), tasks, t);
}
