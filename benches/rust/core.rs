//! Per-operation cost of the pure core, without Python: `cargo bench`.
//!
//! The Python-level comparisons against peers live in `taskiq-flow bench`; this measures how much of
//! a completion's cost is the core itself (the rest is the interpreter crossing and the caller's loop).

use std::hint::black_box;
use std::time::Instant;

use taskiq_flow_core::bulk::{Edges, Feeds, Table, TaskParams};
use taskiq_flow_core::dag::{Graph, Sorter};
use taskiq_flow_core::packing::{Demand, Placer, Policy};
use taskiq_flow_core::scheduler::{Growth, KeyLimits, Scheduler};

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

/// A layered random DAG of `layers` layers (the first ones one node wider when `layers` does not
/// divide `n`): every node past the first layer has 1-4 distinct predecessors in the layer before.
fn layered_1_to_4(n: u32, layers: u32) -> (Vec<u32>, Vec<u32>) {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut src, mut dst) = (Vec::with_capacity(n as usize * 5 / 2), Vec::new());
    dst.reserve(n as usize * 5 / 2);
    let (mut start, mut previous) = (0u32, 0u32..0u32);
    for layer in 0..layers {
        let width = n / layers + u32::from(layer < n % layers);
        for v in start..start + width {
            let span = previous.end - previous.start;
            if span == 0 {
                continue;
            }
            let k = (1 + next() % 4).min(u64::from(span));
            let mut picked = [u32::MAX; 4];
            let mut i = 0;
            while i < k as usize {
                let p = previous.start + (next() % u64::from(span)) as u32;
                if !picked[..i].contains(&p) {
                    picked[i] = p;
                    src.push(p);
                    dst.push(v);
                    i += 1;
                }
            }
        }
        previous = start..start + width;
        start += width;
    }
    (src, dst)
}

/// A field of this process's `/proc/self/status` in KiB (`VmRSS`, `VmHWM`: its peak), Linux only.
fn status_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// How the scale row feeds completions back.
#[derive(Clone, Copy, Debug)]
enum Walk {
    /// `complete(node)` for one node at a time, the last admitted first.
    OneByOne,
    /// `complete_many` of everything admitted so far, in one call.
    Batched,
}

/// Nanoseconds this process has run on a CPU (`/proc/self/schedstat`), Linux only: beside the
/// wall clock, the time a loaded machine does not inflate.
fn cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// The core alone at scale: a layered DAG of `n` nodes (32 layers, 1-4 parents) built into a
/// graph and a scheduler (topological order, remaining-path lengths), then walked: `start`, and
/// every node completed. Reports the time of each part and the process's peak resident memory
/// (`VmHWM`).
fn core_at_scale(n: u32, walk: Walk) {
    let before = status_kib("VmRSS:");
    let t = Instant::now();
    let (src, dst) = layered_1_to_4(n, 32);
    let generated = t.elapsed();
    let edges = src.len();
    let (t, cpu) = (Instant::now(), cpu_ns());
    let graph = Graph::from_edges(n, &src, &dst).unwrap();
    drop((src, dst));
    let mut run = Scheduler::new(graph, None, &[], None, None).unwrap();
    let built = t.elapsed();
    let held = status_kib("VmRSS:");
    let t = Instant::now();
    let mut ready = run.start(0.0).unwrap();
    let mut done = 0u32;
    match walk {
        Walk::OneByOne => {
            while let Some(node) = ready.pop() {
                ready.extend(run.complete(node, 0.0).unwrap());
                done += 1;
            }
        }
        Walk::Batched => {
            while !ready.is_empty() {
                done += ready.len() as u32;
                ready = run.complete_many(&ready, 0.0).unwrap();
            }
        }
    }
    let walked = t.elapsed();
    let on_cpu = cpu.zip(cpu_ns()).map(|(a, b)| (b - a) as f64 / 1e9);
    assert_eq!(done, n, "every node completed once");
    assert!(run.is_finished());
    let peak = status_kib("VmHWM:");
    drop(run);
    let mib = |kib: Option<u64>| kib.map_or_else(|| "?".into(), |k| format!("{} MiB", k / 1024));
    if matches!(walk, Walk::OneByOne) {
        println!("core alone, layered DAG of {n} nodes (32 layers, 1-4 parents, {edges} edges):");
    }
    let what = match walk {
        Walk::OneByOne => "one completion at a time",
        Walk::Batched => "complete_many of each batch",
    };
    println!(
        "  {what:<28} build {:.2} s + walk {:.2} s = {:.2} s ({:.0} ns/node), on CPU {}",
        built.as_secs_f64(),
        walked.as_secs_f64(),
        (built + walked).as_secs_f64(),
        (built + walked).as_nanos() as f64 / f64::from(n),
        on_cpu.map_or_else(|| "?".into(), |s| format!("{s:.2} s")),
    );
    println!(
        "  {:<28} peak RSS {} (VmHWM), {} once built, {} before; edges made in {:.2} s",
        "",
        mib(peak),
        mib(held),
        mib(before),
        generated.as_secs_f64(),
    );
}

/// A columnar dataflow at scale, as `BulkDataflow` hands it to the core: the layered DAG of
/// [`core_at_scale`] with each edge's parameter (its place among its target's parents) and an
/// external input feeding the first layer, built into a checked [`Table`] (ids in range, no
/// cycle), its parameters checked against the task's, then the scheduler built and walked
/// (`complete_many` of each batch) while every node's inputs are read as the call builder reads
/// them when the node is sent. The peak is this row's own when the kernel lets the process reset
/// it (`/proc/self/clear_refs`), and counts the bench's own edge lists.
fn bulk_at_scale(n: u32) {
    let own_peak = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = status_kib("VmRSS:");
    let (src, dst) = layered_1_to_4(n, 32);
    let mut params = Vec::with_capacity(src.len());
    let (mut last, mut k) = (u32::MAX, 0u32);
    for &t in &dst {
        (k, last) = if t == last { (k + 1, t) } else { (0, t) };
        params.push(k);
    }
    let first_layer: Vec<u32> = (0..dst.first().copied().unwrap_or(n)).collect();
    let (seed_param, seed_input) = (vec![4u32; first_layer.len()], vec![0u32; first_layer.len()]);
    let (t, cpu) = (Instant::now(), cpu_ns());
    let edges = Edges { sources: (&src).into(), targets: (&dst).into(), params: (&params).into() };
    let feeds = Feeds {
        targets: (&first_layer).into(),
        params: (&seed_param).into(),
        inputs: (&seed_input).into(),
    };
    let table = Table::new(vec![0; n as usize], (1, 5, 1), edges, feeds).unwrap();
    let built = t.elapsed();
    let t = Instant::now();
    let task = TaskParams { required: vec![], known: Some(vec![0, 1, 2, 3, 4]) };
    let fits = table.check_params(std::slice::from_ref(&task));
    let checked = t.elapsed();
    assert_eq!(fits, None, "every node's parameters fit");
    let held = status_kib("VmRSS:");
    let t = Instant::now();
    let graph = Graph::from_edges(n, &src, &dst).unwrap();
    drop((src, dst, params, first_layer, seed_param, seed_input));
    let mut run = Scheduler::new(graph, None, &[], None, None).unwrap();
    let (mut ready, mut done, mut inputs) = (run.start(0.0).unwrap(), 0u32, 0usize);
    while !ready.is_empty() {
        done += ready.len() as u32;
        inputs += ready.iter().map(|&v| black_box(table.inputs(v)).len()).sum::<usize>();
        ready = run.complete_many(&ready, 0.0).unwrap();
    }
    let walked = t.elapsed();
    let on_cpu = cpu.zip(cpu_ns()).map(|(a, b)| (b - a) as f64 / 1e9);
    assert_eq!((done, inputs), (n, table.slot_count()));
    let peak = status_kib("VmHWM:");
    let mib = |kib: Option<u64>| kib.map_or_else(|| "?".into(), |k| format!("{} MiB", k / 1024));
    println!("bulk dataflow of {n} nodes ({} edges, 1 input):", table.edge_count());
    println!(
        "  table {:.2} s + params {:.2} s + scheduler built and walked, every node's inputs read \
         {:.2} s = {:.2} s, on CPU {}",
        built.as_secs_f64(),
        checked.as_secs_f64(),
        walked.as_secs_f64(),
        (built + checked + walked).as_secs_f64(),
        on_cpu.map_or_else(|| "?".into(), |s| format!("{s:.2} s")),
    );
    println!(
        "  peak RSS {}{} (VmHWM), {} once the table was built, {} before",
        mib(peak),
        if own_peak { "" } else { " (the process's: not resettable here)" },
        mib(held),
        mib(before),
    );
}

fn report(what: &str, units: u64, started: Instant) {
    let ns = started.elapsed().as_nanos() as f64 / units as f64;
    println!("{what:<52} {ns:>8.1} ns");
}

fn main() {
    // First, while the process's peak memory is still its own: `VmHWM` is then the first row's
    // peak (the second builds the same structures again, so its peak is the same or below).
    core_at_scale(10_000_000, Walk::OneByOne);
    core_at_scale(10_000_000, Walk::Batched);
    bulk_at_scale(10_000_000);

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

    for n in [1_000u32, 1_000_000] {
        grow_live_run(n, Shape::Expand);
    }
    for n in [1_000u32, 1_000_000] {
        grow_live_run(n, Shape::Items);
    }

    for workers in [10u64, 1000] {
        place_and_release(Policy::BestFit, workers, 1, &format!("best-fit over {workers} workers"));
    }
    for policy in [Policy::FirstFit, Policy::BestFit] {
        // Room for every task: each is placed, every third released again.
        place_and_release(policy, 10, 10_000, &format!("{policy:?} over 10 roomy workers"));
    }
}

/// How [`grow_live_run`] adds its nodes.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// A running node expands into 100 children (a task that adds tasks).
    Expand,
    /// 100 new nodes, each with an edge from one running node (a step's items, made when its
    /// input's output arrives), as children of a waiting placeholder.
    Items,
}

/// Adds 10^5 nodes in 1,000 batches of 100 to a running scheduler of `n` nodes (the layered DAG,
/// 4 keys capped at 16, run cap 48, started): the cost per added node, admission of the new
/// nodes included, which must not depend on `n`. The best of three runs, by the wall clock and
/// by time on a CPU (a loaded machine inflates the first).
fn grow_live_run(n: u32, shape: Shape) {
    let (mut wall, mut cpu) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..3 {
        let (w, c) = grow_once(n, shape);
        wall = wall.min(w);
        cpu = cpu.min(c.unwrap_or(f64::NAN));
    }
    let what = match shape {
        Shape::Expand => "expansions of a running node",
        Shape::Items => "items after a running node",
    };
    println!(
        "grow 10^5 nodes (1000 {what} x 100) into a run of {n:>7}: {wall:>6.1} ns/node, on CPU {cpu:>6.1} ns"
    );
}

/// One run of [`grow_live_run`]: nanoseconds per added node, by the wall clock and on a CPU.
fn grow_once(n: u32, shape: Shape) -> (f64, Option<f64>) {
    let (src, dst) = layered(n);
    let g = Graph::from_edges(n, &src, &dst).unwrap();
    let keys: Vec<u32> = (0..n).map(|v| v % 4).collect();
    let limits = [KeyLimits { max_parallel: Some(16), rate: None }; 4];
    let mut run = Scheduler::new(g, Some(keys), &limits, None, None).unwrap();
    run.set_global_cap(Some(48), 0.0).unwrap();
    let mut running = run.start(0.0).unwrap();
    let batches = 1_000u32;
    let per = 100u32;
    // Ten waiting nodes of the last layer stand for steps mapped over items (each expanded
    // again and again: an open node takes more children).
    let placeholders: Vec<u32> = (0..n)
        .rev()
        .filter(|&v| run.state(v).unwrap() == taskiq_flow_core::scheduler::NodeState::Waiting)
        .take(10)
        .collect();
    let (t, cpu) = (Instant::now(), cpu_ns());
    for b in 0..batches {
        let out = match shape {
            Shape::Expand => {
                // The newest running node expands (a child, after the first batches).
                let parent = running.pop().expect("a running node");
                run.expand(parent, &Growth { count: per, ..Growth::default() }, 0.0).unwrap()
            }
            Shape::Items => {
                let first = run.node_count();
                let input = running[b as usize % running.len()];
                let g = Growth {
                    count: per,
                    sources: vec![input; per as usize],
                    targets: (first..first + per).collect(),
                    ..Growth::default()
                };
                run.expand(placeholders[b as usize % placeholders.len()], &g, 0.0).unwrap()
            }
        };
        running.extend(out.admitted);
    }
    let elapsed = t.elapsed();
    let on_cpu = cpu.zip(cpu_ns()).map(|(a, b)| (b - a) as f64);
    assert_eq!(run.node_count(), n + batches * per);
    let added = f64::from(batches * per);
    (elapsed.as_nanos() as f64 / added, on_cpu.map(|c| c / added))
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
