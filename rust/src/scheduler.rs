//! The DAG state machine with admission control: one call says what is ready *and* admitted.
//!
//! Every node belongs to one admission key (a pipeline step; key 0 by default). A key may carry a
//! concurrency cap (`max_parallel`) and a token-bucket rate limit; one global cap covers the whole
//! run. Events go in — [`Scheduler::start`], [`Scheduler::complete`], [`Scheduler::fail`],
//! [`Scheduler::poll`] when a rate limit's wake-up time has come — and each returns the nodes that may
//! start now, which then hold their key's and the global slot until they complete or fail.
//!
//! Ready nodes are admitted best first: higher priority, then longer remaining path (its weight
//! included), then the order in which they became ready. A node that its key cannot admit waits in
//! that key's queue, in the same order, and the next slot the key frees goes to the best of them.
//!
//! # Runs that grow
//!
//! A live run takes new nodes and edges ([`Scheduler::grow`], [`Scheduler::expand`]) in
//! O(added), with no re-plan: the graph is a [`LiveGraph`] (the start's compressed adjacency with
//! nodes appended in place, plus lists of edges added later out of existing nodes), every
//! per-node array grows by push (reserved with room for as many nodes again as the run started
//! with), and a new node's remaining path is computed over the added part alone. Which edges a
//! growth may add keeps the run acyclic where it matters (no unfinished node ever waits on
//! itself) with a check per added edge; see [`Scheduler::grow`].
//!
//! A node may be *open* ([`NodeState::Open`]): it was given children ([`Scheduler::expand`]) and
//! is done once every child has finished and its own inputs are done; it holds no slot
//! meanwhile. Children are nodes like any other: admitted by the same rounds, under every cap of
//! their key's chain ([`Scheduler::add_key`] makes a key with a parent key: a node counts against
//! its key and every key above it). A child that fails for good fails its open parent (and so on
//! up); a child that skips is left out.
//!
//! A node may also finish without an output ([`Scheduler::skip`]): successors over *optional*
//! edges (the consumer has a default) go on as if it were done; successors over required edges
//! are skipped, and so on down.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use crate::admission::{lock, Gate, Pool, RunId, Shared};
use crate::dag::{Graph, IdMap, LiveGraph, MAX_IDS};
use crate::error::{CoreError, CoreResult};
use crate::limiter::{check_now, Cap, RateLimit};

/// Lifecycle of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum NodeState {
    /// Some predecessor has not completed.
    Waiting = 0,
    /// Ready, waiting for admission.
    Queued = 1,
    /// Admitted and not finished.
    Running = 2,
    /// Completed.
    Done = 3,
    /// Failed.
    Failed = 4,
    /// Can never run: a predecessor failed or was skipped.
    Skipped = 5,
    /// Never started because the run was cancelled, or open when it was.
    Cancelled = 6,
    /// Expanded: done once its children have finished and its own inputs are done; it holds no
    /// slot meanwhile ([`Scheduler::expand`]).
    Open = 7,
}

/// Why a node is where it is: the core records it at every change, with the time, so that a
/// wait can be explained exactly (which cap, which rate, which placement).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    /// Some input has not finished.
    Inputs = 0,
    /// Ready: admitted at the next admission round (nothing holds it back).
    Ready = 1,
    /// Its step's (key's) `max_parallel` is reached.
    StepCap = 2,
    /// Its step's rate limit: it waits for the next token.
    Rate = 3,
    /// The cap shared with other runs (the process-wide cap) is full.
    SharedCap = 4,
    /// Admitted, holding its slots; no worker of the pool has room for it yet.
    Placement = 5,
    /// Handed out to be sent.
    Running = 6,
    /// Done, failed, skipped or cancelled.
    Finished = 7,
    /// Ready, held back by the run's own cap (its `max_parallel`): as many of the run's nodes as
    /// it allows are in flight.
    RunCap = 8,
    /// Its last attempt failed and it is retried at a due time ([`Scheduler::retry_at`]); it keeps
    /// its slots and its worker meanwhile.
    Backoff = 9,
    /// Open: it waits for its children ([`Explanation::open_children`] of them unfinished) and
    /// for its own inputs ([`Explanation::pending_inputs`]).
    Children = 10,
    /// Finished without an output: it skipped ([`Scheduler::skip`]), or a required input of it
    /// did. (A node skipped because an upstream node failed has reason `Finished`.)
    Skipped = 11,
}

/// No key, no node: the end of a key's chain of parents, a node without a parent.
const NONE: u32 = u32::MAX;

/// Everything the core knows about why one node is where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub state: NodeState,
    pub reason: Reason,
    /// When the node entered that reason (the caller's clock).
    pub since: f64,
    /// Inputs not finished yet (an open node's children are not counted here).
    pub pending_inputs: u32,
    /// The node's admission key.
    pub key: u32,
    /// The key whose limit holds the node back: its own key, or a key above it in its chain
    /// when that one is full or out of tokens (reasons `StepCap`, `Rate`); else its own key.
    pub limit_key: u32,
    /// That key's nodes in flight and its cap.
    pub key_running: u32,
    pub key_cap: Cap,
    /// When that key's next rate token is due, if the node waits for one.
    pub next_token_at: Option<f64>,
    /// The run's nodes in flight and its cap.
    pub run_running: u32,
    pub run_cap: Cap,
    /// The shared cap's slots in use and its size, if the run has one.
    pub shared: Option<(u32, Cap)>,
    /// The worker the node is placed on.
    pub worker: Option<u32>,
    /// When its next attempt is due, while it waits out a retry's backoff.
    pub retry_at: Option<f64>,
    /// The open node this node is a child of, if it is one.
    pub parent: Option<u32>,
    /// For an open node: its children not finished yet.
    pub open_children: Option<u32>,
}

/// One change of reason: `(node, reason, time)`.
pub type Change = (u32, Reason, f64);

/// What is recorded beyond each node's current reason, when asked for.
#[derive(Debug, Default)]
struct Record {
    /// Every change of reason.
    history: Option<Vec<Change>>,
    /// Per node: when it last became ready, and the last reason it waited for before it ran.
    waits: Option<(Vec<f64>, Vec<Reason>)>,
}

/// Records that `node` now waits (or runs) for `reason`, on the scheduler's parts (so that it can
/// be called while other parts are borrowed).
fn mark_in(
    reasons: &mut [Reason],
    since: &mut [f64],
    record: &mut Record,
    node: u32,
    reason: Reason,
    now: f64,
) {
    let i = node as usize;
    let before = reasons[i];
    if before != reason {
        reasons[i] = reason;
        since[i] = now;
        if let Some(history) = &mut record.history {
            history.push((node, reason, now));
        }
        if let Some((ready_at, last)) = &mut record.waits {
            if reason == Reason::Ready && matches!(before, Reason::Inputs | Reason::Finished) {
                ready_at[i] = now; // a new wait starts
                last[i] = Reason::Ready;
            } else if matches!(
                before,
                Reason::StepCap
                    | Reason::Rate
                    | Reason::SharedCap
                    | Reason::Placement
                    | Reason::RunCap
            ) {
                last[i] = before; // what held it last
            }
        }
    }
}

/// Admission settings of one key.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KeyLimits {
    /// Most nodes of the key running at once; `None` is unbounded.
    pub max_parallel: Option<u64>,
    /// `(rate per second, burst)`; `None` is unthrottled.
    pub rate: Option<(f64, u64)>,
}

/// The heap entry of a queued node; the max-heap pops the best entry first.
type Entry = (i32, u64, Reverse<u64>, u32);

#[derive(Debug)]
struct Key {
    cap: Cap,
    /// Nodes in flight under this key: its own and those of every key below it.
    running: u32,
    /// The key above it ([`NONE`]: none): a node of this key counts against both.
    parent: u32,
    /// In the scheduler's `recheck` list.
    rechecking: bool,
    rate: Option<RateLimit>,
    /// Nodes this key could not admit yet.
    parked: BinaryHeap<Entry>,
    /// Set while parked nodes wait for a token: the time the next one comes.
    wake_at: Option<f64>,
}

impl Key {
    fn new(limits: KeyLimits) -> CoreResult<Self> {
        let cap = Cap::new("max_parallel", limits.max_parallel)?;
        let rate = limits.rate.map(|(rate, burst)| RateLimit::new(rate, burst)).transpose()?;
        Ok(Self {
            cap,
            running: 0,
            parent: NONE,
            rechecking: false,
            rate,
            parked: BinaryHeap::new(),
            wake_at: None,
        })
    }
}

/// Takes a rate token from every key of `key`'s chain that has a rate, or none: the first key
/// without one and when it will have one.
#[cold]
fn take_tokens(keys: &mut [Key], key: u32, now: f64) -> CoreResult<Result<(), (u32, f64)>> {
    let mut k = key;
    loop {
        let ks = &mut keys[k as usize];
        if let Some(rate) = &mut ks.rate {
            if let Err(at) = rate.try_acquire(now)? {
                // Give back the tokens the keys below it took.
                let mut j = key;
                while j != k {
                    let js = &mut keys[j as usize];
                    if let Some(r) = &mut js.rate {
                        r.refund(now)?;
                    }
                    j = js.parent;
                }
                return Ok(Err((k, at)));
            }
        }
        if ks.parent == NONE {
            return Ok(Ok(()));
        }
        k = ks.parent;
    }
}

/// Adds the keys above `key` to `out`.
#[cold]
fn recheck_above(keys: &mut [Key], key: u32, out: &mut Vec<u32>) {
    let mut k = keys[key as usize].parent;
    while k != NONE {
        let ks = &mut keys[k as usize];
        if !ks.rechecking {
            ks.rechecking = true;
            out.push(k);
        }
        k = ks.parent;
    }
}

/// Moves as many parked nodes of `key` back to the ready heap as the key could admit now (the
/// scheduler's parts, so that it can be called while the gate and the pool are locked).
fn unpark_in(
    keys: &mut [Key],
    ready: &mut BinaryHeap<Entry>,
    (reason, since, record): (&mut [Reason], &mut [f64], &mut Record),
    key: u32,
    now: f64,
) {
    let k = &mut keys[key as usize];
    let mut room = k.cap.room(k.running);
    if let Some(rate) = &k.rate {
        room = room.min(rate.available(now));
    }
    for _ in 0..room {
        match k.parked.pop() {
            Some(entry) => {
                mark_in(reason, since, record, entry.3, Reason::Ready, now);
                ready.push(entry);
            }
            None => break,
        }
    }
}

/// What an event did beyond its own node: nodes admitted now, nodes that can no longer run and
/// why, open nodes that failed with it ([`Scheduler::fail`], [`Scheduler::skip`],
/// [`Scheduler::grow`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Nodes that may start now.
    pub admitted: Vec<u32>,
    /// Nodes that will never run (state [`NodeState::Skipped`]), in the order they were reached.
    pub skipped: Vec<u32>,
    /// For each node of `skipped`, the node that caused it: after a failure, the nearest failed
    /// node upstream (the one that failed, or an open node failed with it); after a skip, the
    /// node that skipped ([`Scheduler::skip`]); at a growth, the finished predecessor that left
    /// the new node no way to run.
    pub skipped_by: Vec<u32>,
    /// Open nodes that failed because a child of theirs failed (or was skipped by a failure),
    /// nearest first; their successors are in `skipped`.
    pub failed: Vec<u32>,
}

/// The outcome of [`Scheduler::fail`] (the name it had before runs could grow).
pub type FailOutcome = Outcome;

/// Nodes and edges to add to a live run ([`Scheduler::grow`], [`Scheduler::expand`]).
///
/// The new nodes take the ids `node_count()..node_count() + count`; edges name nodes by id, new
/// or existing. Every per-node list is empty (its default for every new node) or holds one value
/// per new node; `optional` is empty (every edge required) or holds one flag per edge.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Growth {
    /// How many nodes to add.
    pub count: u32,
    /// Per new node: the node it is a child of ([`Scheduler::grow`] only; `expand` makes every
    /// new node a child of the expanded one). Default: none.
    pub parents: Vec<Option<u32>>,
    /// The edges `sources[i] -> targets[i]`.
    pub sources: Vec<u32>,
    pub targets: Vec<u32>,
    /// Per edge: whether it is optional (its consumer has a default for it, so a skipped source
    /// leaves it to run). Parallel edges between two nodes are optional only if all of them are.
    pub optional: Vec<bool>,
    /// Per new node: its admission key. Default: its parent's key, else key 0.
    pub keys: Vec<u32>,
    /// Per new node: its priority. Default: its parent's, else 0.
    pub priorities: Vec<i32>,
    /// Per new node: its weight for the remaining-path tie-break. Default: 1.
    pub weights: Vec<u64>,
    /// Per new node, when the run places nodes on a worker pool: its demand class. Default: its
    /// parent's class (a new node without a parent needs one).
    pub classes: Vec<u32>,
}

/// What only a run that grew keeps.
#[derive(Debug, Default)]
struct Tree {
    /// Nodes from this id on were added while the run lived (the others have no parent).
    base: u32,
    /// Per node from `base`: the node it is a child of, or [`NONE`].
    parent: Vec<u32>,
    /// Per node that was given children: their ids, as runs `(first, count)`.
    children: IdMap<Vec<(u32, u32)>>,
    /// Open nodes that closed (done) since [`Scheduler::take_closed`].
    closed: Vec<u32>,
}

impl Tree {
    fn new(base: u32) -> Self {
        Self { base, parent: Vec::new(), children: IdMap::default(), closed: Vec::new() }
    }

    /// Records `child` as a child of `parent`.
    fn adopt(&mut self, parent: u32, child: u32) {
        let runs = self.children.entry(parent).or_default();
        match runs.last_mut() {
            Some((first, count)) if *first + *count == child => *count += 1,
            _ => runs.push((child, 1)),
        }
    }

    #[inline]
    fn parent_of(&self, node: u32) -> u32 {
        match node.checked_sub(self.base) {
            Some(i) => self.parent[i as usize],
            None => NONE,
        }
    }
}

/// The key of an edge in the set of optional edges.
#[inline]
fn edge_key(source: u32, target: u32) -> u64 {
    (u64::from(source) << 32) | u64::from(target)
}

/// Counts of nodes by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub waiting: u32,
    pub queued: u32,
    pub running: u32,
    pub done: u32,
    pub failed: u32,
    pub skipped: u32,
    pub cancelled: u32,
    /// Open nodes: waiting for their children ([`NodeState::Open`]).
    pub open: u32,
    /// Running nodes waiting out a retry's backoff (also counted in `running`).
    pub backoff: u32,
}

/// A worker pool a run places its nodes on: the pool, the run's id there, each node's demand.
#[derive(Debug)]
struct PoolLink {
    pool: Shared<Pool>,
    run: RunId,
    class_of: Vec<u32>,
}

/// A run of one acyclic graph under admission control.
#[derive(Debug)]
pub struct Scheduler {
    graph: LiveGraph,
    pending: Vec<u32>,
    state: Vec<NodeState>,
    key_of: Vec<u32>,
    priority: Vec<i32>,
    remaining: Vec<u64>,
    keys: Vec<Key>,
    /// Ready nodes not yet offered to their key.
    ready: BinaryHeap<Entry>,
    global_cap: Cap,
    running: u32,
    sequence: u64,
    started: bool,
    cancelled: bool,
    counts: Counts,
    /// Keys with nodes waiting for a token.
    throttled: Vec<u32>,
    /// Keys whose slots or tokens changed since the last admission round.
    touched: Vec<u32>,
    /// The process-wide cap this run shares with others, and the run's id there.
    gate: Option<(Shared<Gate>, RunId)>,
    /// The worker pool nodes are placed on.
    pool: Option<PoolLink>,
    /// Admitted nodes that wait in the pool's queue for a worker.
    placing: u32,
    /// Each node's current reason, and since when.
    reason: Vec<Reason>,
    since: Vec<f64>,
    /// The last time the caller passed in.
    clock: f64,
    /// Every change of reason, and each node's last wait, when recording is on.
    record: Record,
    /// What held back the nodes left in the ready heap at the end of the last admission round
    /// (`Ready`: none was left; `RunCap` or `SharedCap`), and that round's time. Held nodes keep
    /// their own reason `Ready` (re-marking every one of them each round would cost O(ready) per
    /// event); [`Scheduler::explain`] and the wait record read it from here.
    held: Reason,
    held_at: f64,
    /// Nodes waiting out a retry's backoff, earliest due first: `(due, node)`, the time as
    /// [`time_order`] keys. An entry whose node left its backoff (failed, placed again) is
    /// stale and dropped when it comes up.
    backoff: BinaryHeap<Reverse<(u64, u32)>>,
    /// Each node's due time while it is in backoff.
    retry_due: Vec<f64>,
    /// Edges along which a skipped source lets its target run (`source << 32 | target`).
    optional: HashSet<u64>,
    /// Parents, children and closed nodes, once the run has grown.
    tree: Option<Box<Tree>>,
    /// Open nodes whose last child or input just finished, to close.
    closing: Vec<u32>,
    /// Keys above a key where a node was parked in this admission round: the slot or token one
    /// of them freed for it may still be free (it was held back lower), so they are looked at
    /// again before the round ends.
    recheck: Vec<u32>,
}

/// Reserves room for as many elements again, so that a run that grows up to its starting size
/// never copies the array (and one that grows further copies it as a `Vec` does).
fn with_headroom<T>(mut v: Vec<T>) -> Vec<T> {
    v.reserve(v.len().max(64));
    v
}

/// A per-node array of zeros with headroom, from zeroed memory (untouched pages cost nothing).
fn zeroed<T: Clone + Default>(n: usize) -> Vec<T> {
    let mut v = vec![T::default(); 2 * n.max(32)];
    v.truncate(n);
    v
}

/// A key that orders finite times as `f64::total_cmp` does, for a heap of due times.
fn time_order(t: f64) -> u64 {
    let bits = t.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.detach();
    }
}

impl Scheduler {
    /// A scheduler over `graph`, which must be acyclic.
    ///
    /// `key_of` assigns each node an admission key (default: all in key 0); `keys` holds each key's
    /// limits (missing keys are unbounded). `priority` (higher first) and `weights` (for the
    /// remaining-path tie-break) are per node, defaulting to 0 and 1. Every edge is required;
    /// [`Scheduler::set_optional`] marks some optional.
    pub fn new(
        graph: Graph,
        key_of: Option<Vec<u32>>,
        keys: &[KeyLimits],
        priority: Option<Vec<i32>>,
        weights: Option<&[u64]>,
    ) -> CoreResult<Self> {
        let n = graph.node_count() as usize;
        let per_node = |what: &str, len: usize| -> CoreResult<()> {
            if len == n {
                Ok(())
            } else {
                Err(CoreError::invalid(what, "one per node", format!("{len} values for {n} nodes")))
            }
        };
        let key_of = key_of.map_or_else(|| zeroed(n), with_headroom);
        per_node("keys", key_of.len())?;
        let priority = priority.map_or_else(|| zeroed(n), with_headroom);
        per_node("priorities", priority.len())?;
        let order = graph.topological_order()?;
        let remaining = with_headroom(graph.bottom_levels_in(&order, weights)?);
        drop(order);
        let key_count = key_of.iter().map(|&k| k as usize + 1).max().unwrap_or(0).max(keys.len());
        let mut key_states = Vec::with_capacity(key_count.max(1));
        for i in 0..key_count.max(1) {
            key_states.push(Key::new(keys.get(i).copied().unwrap_or_default())?);
        }
        let pending = with_headroom(graph.in_degrees());
        let mut state = Vec::with_capacity(2 * n.max(32));
        state.resize(n, NodeState::Waiting);
        Ok(Self {
            graph: LiveGraph::new(graph),
            pending,
            state,
            key_of,
            priority,
            remaining,
            keys: key_states,
            ready: BinaryHeap::new(),
            global_cap: Cap::NONE,
            running: 0,
            sequence: 0,
            started: false,
            cancelled: false,
            counts: Counts { waiting: n as u32, ..Counts::default() },
            throttled: Vec::new(),
            touched: Vec::new(),
            gate: None,
            pool: None,
            placing: 0,
            reason: {
                let mut reason = Vec::with_capacity(2 * n.max(32));
                reason.resize(n, Reason::Inputs);
                reason
            },
            since: zeroed(n),
            clock: 0.0,
            record: Record::default(),
            held: Reason::Ready,
            held_at: 0.0,
            backoff: BinaryHeap::new(),
            retry_due: zeroed(n),
            optional: HashSet::new(),
            tree: None,
            closing: Vec::new(),
            recheck: Vec::new(),
        })
    }

    /// Marks edges optional: `source -> target` for each pair, which must be edges of the graph
    /// (every parallel edge between the two becomes optional). When `source` skips
    /// ([`Scheduler::skip`]), `target` runs as if it were done instead of being skipped too.
    pub fn set_optional(&mut self, sources: &[u32], targets: &[u32]) -> CoreResult<()> {
        if sources.len() != targets.len() {
            return Err(CoreError::invalid(
                "optional edge lists",
                "of equal length",
                format!("{} sources and {} targets", sources.len(), targets.len()),
            ));
        }
        for (&u, &v) in sources.iter().zip(targets) {
            self.graph.check_node(u)?;
            self.graph.check_node(v)?;
            if !self.graph.successors(u).any(|s| s == v) {
                return Err(CoreError::invalid(
                    "optional edge",
                    "an edge of the graph",
                    format!("{u} -> {v}, which is not one"),
                ));
            }
        }
        self.optional.extend(sources.iter().zip(targets).map(|(&u, &v)| edge_key(u, v)));
        Ok(())
    }

    /// Marks optional the edges flagged in `optional` (one flag per edge of `sources[i] ->
    /// targets[i]`, as the graph was built): a pair of nodes is optional only if every edge
    /// between them is flagged.
    pub fn set_optional_flags(
        &mut self,
        sources: &[u32],
        targets: &[u32],
        optional: &[bool],
    ) -> CoreResult<()> {
        if optional.len() != sources.len() || sources.len() != targets.len() {
            return Err(CoreError::invalid(
                "optional",
                "one flag per edge",
                format!("{} flags for {} edges", optional.len(), sources.len()),
            ));
        }
        let mut pairs: HashSet<u64> = HashSet::new();
        for ((&u, &v), &o) in sources.iter().zip(targets).zip(optional) {
            if o {
                pairs.insert(edge_key(u, v));
            }
        }
        if !pairs.is_empty() {
            for ((&u, &v), &o) in sources.iter().zip(targets).zip(optional) {
                if !o {
                    pairs.remove(&edge_key(u, v));
                }
            }
        }
        let (su, sv): (Vec<u32>, Vec<u32>) =
            pairs.into_iter().map(|k| ((k >> 32) as u32, k as u32)).unzip();
        self.set_optional(&su, &sv)
    }

    /// Adds an admission key with `limits` under `parent` (a key that exists, or `None`): a node
    /// of the new key counts against its cap and rate and against every key above it. Returns
    /// the new key's id. Keys may be added at any time (to give an expansion its own cap).
    pub fn add_key(&mut self, limits: KeyLimits, parent: Option<u32>) -> CoreResult<u32> {
        if let Some(p) = parent {
            if p as usize >= self.keys.len() {
                return Err(CoreError::UnknownId { what: "admission key", id: p.into() });
            }
        }
        if self.keys.len() as u64 >= MAX_IDS {
            return Err(CoreError::TooLarge {
                what: "admission keys",
                count: self.keys.len() as u64 + 1,
                limit: MAX_IDS,
            });
        }
        let mut key = Key::new(limits)?;
        key.parent = parent.unwrap_or(NONE);
        self.keys.push(key);
        Ok(self.keys.len() as u32 - 1)
    }

    /// Number of admission keys.
    pub fn key_count(&self) -> u32 {
        self.keys.len() as u32
    }

    /// Before [`Scheduler::start`]: every node admitted from now on also takes a slot of `gate`,
    /// which other runs share (a slot one frees may go to another, round-robin between runs).
    pub fn attach_gate(&mut self, gate: Shared<Gate>) -> CoreResult<()> {
        if self.started {
            return Err(CoreError::Frozen);
        }
        if let Some((old, run)) = self.gate.take() {
            lock(&old).unregister(run);
        }
        let run = lock(&gate).register();
        self.gate = Some((gate, run));
        Ok(())
    }

    /// Before [`Scheduler::start`]: every admitted node is also placed on a worker of `pool`,
    /// needing demand class `class_of[node]`; a node no worker has room for yet waits in the
    /// pool's queue (holding its slots) and comes out of [`Scheduler::poll`] once placed.
    pub fn attach_pool(&mut self, pool: Shared<Pool>, class_of: Vec<u32>) -> CoreResult<()> {
        if self.started {
            return Err(CoreError::Frozen);
        }
        let n = self.node_count() as usize;
        if class_of.len() != n {
            return Err(CoreError::invalid(
                "demand classes",
                "one per node",
                format!("{} values for {n} nodes", class_of.len()),
            ));
        }
        let run = {
            let mut p = lock(&pool);
            let count = p.class_count();
            if let Some(&bad) = class_of.iter().find(|&&c| c >= count) {
                return Err(CoreError::UnknownId { what: "demand class", id: bad.into() });
            }
            p.register()
        };
        if let Some(old) = self.pool.take() {
            lock(&old.pool).unregister(old.run);
        }
        self.pool = Some(PoolLink { pool, run, class_of: with_headroom(class_of) });
        Ok(())
    }

    /// Leaves the shared gate and pool (also done when the scheduler is dropped): every slot
    /// and worker the run still holds goes to whoever waits for one. Admission stops.
    pub fn detach(&mut self) {
        if let Some((gate, run)) = self.gate.take() {
            lock(&gate).unregister(run);
        }
        if let Some(link) = self.pool.take() {
            lock(&link.pool).unregister(link.run);
        }
        self.cancelled = true;
    }

    /// Records every change of reason from now on (see [`Scheduler::take_history`]).
    pub fn record_history(&mut self, on: bool) {
        let history = &mut self.record.history;
        *history = if on { Some(history.take().unwrap_or_default()) } else { None };
    }

    /// The changes of reason recorded since the last call.
    pub fn take_history(&mut self) -> Vec<Change> {
        self.record.history.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Records, for every node from now on, how long it waited between becoming ready and
    /// running, and for what last (see [`Scheduler::wait_of`]).
    pub fn record_waits(&mut self, on: bool) {
        let n = self.node_count() as usize;
        self.record.waits = on.then(|| {
            let mut last = Vec::with_capacity(2 * n.max(32));
            last.resize(n, Reason::Ready);
            (zeroed(n), last)
        });
    }

    /// For a running node, when waits are recorded: the last reason it waited for before it ran,
    /// and the seconds from becoming ready to running.
    pub fn wait_of(&self, node: u32) -> CoreResult<Option<(Reason, f64)>> {
        self.graph.check_node(node)?;
        let i = node as usize;
        Ok(self
            .record
            .waits
            .as_ref()
            .map(|(ready_at, last)| (last[i], (self.since[i] - ready_at[i]).max(0.0))))
    }

    /// A node's reason, with what holds the ready heap back for a node that waits in it.
    fn held_reason(&self, i: usize) -> Reason {
        let reason = self.reason[i];
        if reason == Reason::Ready && self.state[i] == NodeState::Queued {
            self.held
        } else {
            reason
        }
    }

    fn mark(&mut self, node: u32, reason: Reason, now: f64) {
        mark_in(&mut self.reason, &mut self.since, &mut self.record, node, reason, now);
    }

    /// The key that holds a node waiting for `reason` back: the first of its chain that is full
    /// (`StepCap`) or out of tokens (`Rate`); its own key otherwise.
    fn limit_key(&self, key: u32, reason: Reason) -> u32 {
        let found = match reason {
            Reason::StepCap => self.full_key(key),
            Reason::Rate => {
                let mut k = key;
                loop {
                    let ks = &self.keys[k as usize];
                    if ks.rate.as_ref().is_some_and(|r| r.available(self.clock) == 0) {
                        break k;
                    }
                    if ks.parent == NONE {
                        break NONE;
                    }
                    k = ks.parent;
                }
            }
            _ => NONE,
        };
        if found == NONE {
            key
        } else {
            found
        }
    }

    /// Why `node` is where it is.
    pub fn explain(&self, node: u32) -> CoreResult<Explanation> {
        self.graph.check_node(node)?;
        let i = node as usize;
        let key = self.key_of[i];
        let limit_key = self.limit_key(key, self.reason[i]);
        let k = &self.keys[limit_key as usize];
        let open_children = (self.state[i] == NodeState::Open).then(|| self.children_left(node));
        Ok(Explanation {
            state: self.state[i],
            reason: self.held_reason(i),
            since: self.since[i],
            pending_inputs: self.pending[i] - open_children.unwrap_or(0),
            key,
            limit_key,
            key_running: k.running,
            key_cap: k.cap,
            next_token_at: if self.reason[i] == Reason::Rate { k.wake_at } else { None },
            run_running: self.running,
            run_cap: self.global_cap,
            shared: self.gate.as_ref().map(|(g, _)| {
                let g = lock(g);
                (g.in_use(), g.cap())
            }),
            worker: self.worker_of(node),
            retry_at: (self.reason[i] == Reason::Backoff).then(|| self.retry_due[i]),
            parent: self.parent_of(node),
            open_children,
        })
    }

    /// Children of `node` not finished yet: O(its children), for explaining.
    fn children_left(&self, node: u32) -> u32 {
        let Some(runs) = self.tree.as_ref().and_then(|t| t.children.get(&node)) else {
            return 0;
        };
        let unfinished = |v: u32| {
            matches!(
                self.state[v as usize],
                NodeState::Waiting | NodeState::Queued | NodeState::Running | NodeState::Open
            )
        };
        runs.iter()
            .map(|&(first, count)| (first..first + count).filter(|&v| unfinished(v)).count() as u32)
            .sum()
    }

    /// The open node `node` is a child of, if any (`None` for a node without a parent).
    pub fn parent_of(&self, node: u32) -> Option<u32> {
        let parent = self.tree.as_ref().map_or(NONE, |t| t.parent_of(node));
        (parent != NONE).then_some(parent)
    }

    /// The successors of `node`: its own edges, then edges added out of it while the run grew.
    pub fn successors(&self, node: u32) -> CoreResult<Vec<u32>> {
        self.graph.check_node(node)?;
        Ok(self.graph.successors(node).collect())
    }

    /// Open nodes that closed (became done) since the last call, each once, in the order they
    /// closed (a child before its parent). Any event can close one: a child completing or
    /// skipping, an input completing, a growth, [`Scheduler::start`].
    pub fn take_closed(&mut self) -> Vec<u32> {
        self.tree.as_mut().map(|t| std::mem::take(&mut t.closed)).unwrap_or_default()
    }

    /// The run's id in its gate, if it has one.
    pub fn gate_run(&self) -> Option<RunId> {
        self.gate.as_ref().map(|(_, run)| *run)
    }

    /// The run's id in its worker pool, if it has one.
    pub fn pool_run(&self) -> Option<RunId> {
        self.pool.as_ref().map(|link| link.run)
    }

    /// The worker a running node is placed on.
    pub fn worker_of(&self, node: u32) -> Option<u32> {
        let link = self.pool.as_ref()?;
        lock(&link.pool).worker_of(link.run, node)
    }

    /// Admitted nodes waiting in the pool's queue for a worker.
    pub fn placing(&self) -> u32 {
        self.placing
    }

    /// Places a running node again after its worker went away (it keeps its slots): `true` if
    /// it has a worker now, `false` if it waits in the pool's queue (it then comes out of
    /// [`Scheduler::poll`]).
    pub fn replace(&mut self, node: u32) -> CoreResult<bool> {
        self.check_running(node)?;
        let Some(link) = &self.pool else {
            return Err(CoreError::invalid("replace", "a run with a worker pool", "no pool"));
        };
        let backing_off = self.reason[node as usize] == Reason::Backoff;
        let mut pool = lock(&link.pool);
        if pool.worker_of(link.run, node).is_some() {
            return Ok(!backing_off);
        }
        let placed = pool.place_again(link.run, node, link.class_of[node as usize])?.is_some();
        drop(pool);
        if !placed {
            // A node in backoff that waits for a worker leaves its backoff: it goes out when
            // placed (its entry in the backoff heap is stale from now on).
            if backing_off {
                self.counts.backoff -= 1;
            }
            self.placing += 1;
            let now = self.clock;
            self.mark(node, Reason::Placement, now);
        }
        // Placed while in backoff, it still waits for its due time (it comes out of `poll`).
        Ok(placed && !backing_off)
    }

    /// Number of nodes.
    pub fn node_count(&self) -> u32 {
        self.graph.node_count()
    }

    /// The graph being run: every node with its own out-edges (those given with it), without
    /// the edges added later out of nodes that existed already (see [`Scheduler::successors`]).
    pub fn graph(&self) -> &Graph {
        self.graph.csr()
    }

    /// State of `node`.
    pub fn state(&self, node: u32) -> CoreResult<NodeState> {
        self.graph.check_node(node)?;
        Ok(self.state[node as usize])
    }

    /// Counts of nodes by state.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// True when no node can run any more: every node is done, failed, skipped or cancelled.
    pub fn is_finished(&self) -> bool {
        let c = &self.counts;
        c.waiting == 0 && c.queued == 0 && c.running == 0 && c.open == 0
    }

    /// The run's own cap.
    pub fn global_cap(&self) -> Cap {
        self.global_cap
    }

    /// Sets the global cap (`None` lifts it) and returns nodes a raised cap admits now.
    pub fn set_global_cap(&mut self, cap: Option<u64>, now: f64) -> CoreResult<Vec<u32>> {
        self.global_cap = Cap::new("max_parallel", cap)?;
        let mut admitted = Vec::new();
        if self.started {
            self.admit(now, &mut admitted)?;
        }
        Ok(admitted)
    }

    /// Sets the limits of `key` and returns nodes they admit now.
    pub fn set_key_limits(
        &mut self,
        key: u32,
        limits: KeyLimits,
        now: f64,
    ) -> CoreResult<Vec<u32>> {
        let Some(state) = self.keys.get_mut(key as usize) else {
            return Err(CoreError::UnknownId { what: "admission key", id: key.into() });
        };
        let fresh = Key::new(limits)?;
        state.cap = fresh.cap;
        state.rate = fresh.rate;
        state.wake_at = None;
        self.throttled.retain(|&k| k != key);
        let mut admitted = Vec::new();
        if self.started {
            self.unpark(key, now);
            self.touched.push(key);
            self.admit(now, &mut admitted)?;
        }
        Ok(admitted)
    }

    /// Starts the run: returns the nodes without predecessors that are admitted now. Open nodes
    /// (expanded before the start) whose children and inputs are all done close now.
    pub fn start(&mut self, now: f64) -> CoreResult<Vec<u32>> {
        check_now(now)?;
        if self.started {
            return Err(CoreError::AlreadyPrepared);
        }
        self.started = true;
        self.clock = now;
        self.since.fill(now);
        for v in 0..self.node_count() {
            if self.pending[v as usize] == 0 {
                match self.state[v as usize] {
                    NodeState::Waiting => self.enqueue(v, now),
                    NodeState::Open => self.closing.push(v),
                    _ => {}
                }
            }
        }
        self.close_ready(now);
        let mut admitted = Vec::new();
        self.admit(now, &mut admitted)?;
        Ok(admitted)
    }

    /// Before [`Scheduler::start`]: marks nodes that finished in an earlier run (an orchestrator
    /// that died and resumes) as done, releasing their successors. All or nothing: every
    /// restored node's predecessors must be restored too, or nothing changes. An open node (a
    /// resumed run's expansion, grown again before the start) may be restored with its children.
    pub fn restore_done(&mut self, nodes: &[u32]) -> CoreResult<()> {
        if self.started {
            return Err(CoreError::Frozen);
        }
        for &node in nodes {
            self.graph.check_node(node)?;
        }
        let mut marked = Vec::with_capacity(nodes.len());
        for &node in nodes {
            let before = self.state[node as usize];
            if matches!(before, NodeState::Waiting | NodeState::Open) {
                self.state[node as usize] = NodeState::Done;
                marked.push((node, before));
            }
        }
        for &(node, _) in &marked {
            let (own, added) = self.graph.successor_parts(node);
            for &s in own.iter().chain(added) {
                self.pending[s as usize] -= 1;
            }
        }
        if let Some(&(bad, _)) = marked.iter().find(|&&(v, _)| self.pending[v as usize] != 0) {
            for &(node, before) in &marked {
                self.state[node as usize] = before;
                let (own, added) = self.graph.successor_parts(node);
                for &s in own.iter().chain(added) {
                    self.pending[s as usize] += 1;
                }
            }
            return Err(CoreError::invalid(
                "restored nodes",
                "closed under predecessors (a done node's predecessors are done)",
                format!("node {bad} has a predecessor that is not restored"),
            ));
        }
        for &(node, before) in &marked {
            self.reason[node as usize] = Reason::Finished;
            if before == NodeState::Open {
                self.counts.open -= 1;
            } else {
                self.counts.waiting -= 1;
            }
        }
        self.counts.done += marked.len() as u32;
        Ok(())
    }

    fn check_running(&self, node: u32) -> CoreResult<()> {
        if !self.started {
            return Err(CoreError::NotPrepared);
        }
        self.graph.check_node(node)?;
        match self.state[node as usize] {
            NodeState::Running => Ok(()),
            NodeState::Done => Err(CoreError::AlreadyDone { node }),
            NodeState::Waiting | NodeState::Queued => Err(CoreError::NotPassedOut { node }),
            NodeState::Open => Err(CoreError::NodeOpen { node }),
            NodeState::Failed | NodeState::Skipped | NodeState::Cancelled => {
                Err(CoreError::NotRunning { node })
            }
        }
    }

    /// Marks a running node done; returns the nodes that may start now.
    pub fn complete(&mut self, node: u32, now: f64) -> CoreResult<Vec<u32>> {
        self.complete_many(&[node], now)
    }

    /// Marks running nodes done (all or nothing); returns the nodes that may start now. Open
    /// nodes this closes are in [`Scheduler::take_closed`].
    pub fn complete_many(&mut self, nodes: &[u32], now: f64) -> CoreResult<Vec<u32>> {
        check_now(now)?;
        for (i, &node) in nodes.iter().enumerate() {
            if let Err(err) = self.check_running(node) {
                for &undo in &nodes[..i] {
                    self.state[undo as usize] = NodeState::Running;
                }
                return Err(err);
            }
            // Marked now so that a node listed twice is caught; undone above on error.
            self.state[node as usize] = NodeState::Done;
        }
        self.clock = now;
        for &node in nodes {
            self.counts.running -= 1;
            self.counts.done += 1;
            self.leave_backoff(node);
            self.mark(node, Reason::Finished, now);
            self.release_slot(node, now);
            self.release_successors(node, now);
        }
        if !self.closing.is_empty() {
            self.close_ready(now);
        }
        let mut admitted = Vec::new();
        self.admit(now, &mut admitted)?;
        Ok(admitted)
    }

    /// `node` finished with its output (done): each successor has one input less; a waiting one
    /// with none left is queued, an open one with none left is closed ([`Scheduler::close_ready`]).
    ///
    /// By index rather than over a borrowed slice: moving the graph out and back (to borrow it
    /// beside `self`) would allocate an empty graph at every completion.
    #[inline]
    fn release_successors(&mut self, node: u32, now: f64) {
        for edge in self.graph.own_edges(node) {
            let s = self.graph.own_target(edge);
            self.input_done(s, now);
        }
        if self.graph.has_added_edges() {
            self.release_added(node, now);
        }
    }

    /// [`Scheduler::release_successors`] over the edges added out of `node` as the run grew.
    #[cold]
    fn release_added(&mut self, node: u32, now: f64) {
        let count = self.graph.added_successors(node).len();
        for k in 0..count {
            let s = self.graph.added_successors(node)[k];
            self.input_done(s, now);
        }
    }

    #[inline]
    fn input_done(&mut self, s: u32, now: f64) {
        let p = &mut self.pending[s as usize];
        *p -= 1;
        if *p == 0 {
            match self.state[s as usize] {
                NodeState::Waiting => self.enqueue(s, now),
                NodeState::Open => self.closing.push(s),
                _ => {}
            }
        }
    }

    /// Closes the open nodes whose children and inputs are all done: each is done, and releases
    /// its successors (which may close its own parent in turn).
    fn close_ready(&mut self, now: f64) {
        while let Some(node) = self.closing.pop() {
            let i = node as usize;
            if self.state[i] != NodeState::Open || self.pending[i] != 0 {
                continue;
            }
            self.state[i] = NodeState::Done;
            self.counts.open -= 1;
            self.counts.done += 1;
            self.mark(node, Reason::Finished, now);
            if let Some(tree) = &mut self.tree {
                tree.closed.push(node);
            }
            self.release_successors(node, now);
        }
    }

    /// For a stream over a window of nodes: finished (done, failed or skipped) nodes without
    /// successors run again as new work (the caller gave each a new item), queued as if newly
    /// ready. All or nothing; returns the nodes that may start now.
    pub fn recycle(&mut self, nodes: &[u32], now: f64) -> CoreResult<Vec<u32>> {
        check_now(now)?;
        if !self.started {
            return Err(CoreError::NotPrepared);
        }
        for &node in nodes {
            self.graph.check_node(node)?;
            if !matches!(
                self.state[node as usize],
                NodeState::Done | NodeState::Failed | NodeState::Skipped
            ) {
                return Err(CoreError::invalid(
                    "recycled node",
                    "done, failed or skipped",
                    format!("node {node} is {:?}", self.state[node as usize]),
                ));
            }
            if self.graph.successors(node).next().is_some() {
                return Err(CoreError::invalid(
                    "recycled node",
                    "without successors",
                    format!("node {node} has successors"),
                ));
            }
            if self.tree.as_ref().is_some_and(|t| t.children.contains_key(&node)) {
                return Err(CoreError::invalid(
                    "recycled node",
                    "without children",
                    format!("node {node} has some"),
                ));
            }
        }
        let mut unique = nodes.to_vec();
        unique.sort_unstable();
        unique.dedup();
        if unique.len() != nodes.len() {
            return Err(CoreError::invalid("recycled nodes", "each listed once", "a repeat"));
        }
        let mut admitted = Vec::new();
        if self.cancelled {
            return Ok(admitted);
        }
        for &node in nodes {
            match self.state[node as usize] {
                NodeState::Done => self.counts.done -= 1,
                NodeState::Skipped => self.counts.skipped -= 1,
                _ => self.counts.failed -= 1,
            }
            self.state[node as usize] = NodeState::Waiting;
            self.counts.waiting += 1;
            self.enqueue(node, now);
        }
        self.admit(now, &mut admitted)?;
        Ok(admitted)
    }

    /// Marks a running node failed. Its downstream nodes are skipped (reported, never run); an
    /// open node it is a child of fails too, and so on up through open ancestors (their own
    /// downstream nodes skipped, the failed ones in [`Outcome::failed`]). Its siblings are left
    /// to run: [`Scheduler::cancel`] stops them when the run stops. The slot it held goes to the
    /// next admissible node.
    pub fn fail(&mut self, node: u32, now: f64) -> CoreResult<Outcome> {
        check_now(now)?;
        self.check_running(node)?;
        self.state[node as usize] = NodeState::Failed;
        self.clock = now;
        self.counts.running -= 1;
        self.counts.failed += 1;
        self.leave_backoff(node);
        self.mark(node, Reason::Finished, now);
        self.release_slot(node, now);
        let mut outcome = Outcome::default();
        self.spread_failure(vec![(node, node)], &mut outcome, now);
        self.admit(now, &mut outcome.admitted)?;
        Ok(outcome)
    }

    /// A running node finished without an output (its task skipped): it is skipped (reason
    /// [`Reason::Skipped`]) and its slot goes to the next admissible node. Each successor over
    /// an optional edge (and its open parent, which leaves it out) goes on as if it were done;
    /// each over a required edge is skipped too, and so on down (a node skipped this way lets
    /// its own optional successors go on). [`Outcome::skipped_by`] names `node` for every node
    /// skipped.
    pub fn skip(&mut self, node: u32, now: f64) -> CoreResult<Outcome> {
        check_now(now)?;
        self.check_running(node)?;
        self.state[node as usize] = NodeState::Skipped;
        self.clock = now;
        self.counts.running -= 1;
        self.counts.skipped += 1;
        self.leave_backoff(node);
        self.mark(node, Reason::Skipped, now);
        self.release_slot(node, now);
        let mut outcome = Outcome::default();
        self.spread_absence(vec![(node, node)], &mut outcome, now);
        self.close_ready(now);
        self.admit(now, &mut outcome.admitted)?;
        Ok(outcome)
    }

    /// Whether the edge `source -> target` is optional (a child's edge to its parent always is).
    #[inline]
    fn is_optional(&self, source: u32, target: u32) -> bool {
        !self.optional.is_empty() && self.optional.contains(&edge_key(source, target))
    }

    /// A node that was waiting (or open) can never run: skipped with `reason`.
    fn end_skipped(&mut self, node: u32, reason: Reason, now: f64) {
        let i = node as usize;
        match self.state[i] {
            NodeState::Waiting => self.counts.waiting -= 1,
            NodeState::Open => self.counts.open -= 1,
            other => unreachable!("only a waiting or open node is skipped, not a {other:?} one"),
        }
        self.state[i] = NodeState::Skipped;
        self.counts.skipped += 1;
        self.reason[i] = reason;
        self.since[i] = now;
    }

    /// Spreads failures down from each `(node, cause)` of `stack`: a waiting successor is skipped
    /// (caused by `cause`); an open one is skipped too, unless `node` is its child: then it fails
    /// (and causes what it skips in turn).
    fn spread_failure(&mut self, mut stack: Vec<(u32, u32)>, out: &mut Outcome, now: f64) {
        let graph = std::mem::take(&mut self.graph);
        while let Some((u, cause)) = stack.pop() {
            let parent = self.parent_of(u);
            for s in graph.successors(u) {
                match self.state[s as usize] {
                    NodeState::Open if parent == Some(s) => {
                        self.state[s as usize] = NodeState::Failed;
                        self.counts.open -= 1;
                        self.counts.failed += 1;
                        self.mark(s, Reason::Finished, now);
                        out.failed.push(s);
                        stack.push((s, s));
                    }
                    NodeState::Waiting | NodeState::Open => {
                        self.end_skipped(s, Reason::Finished, now);
                        out.skipped.push(s);
                        out.skipped_by.push(cause);
                        stack.push((s, cause));
                    }
                    _ => {}
                }
            }
        }
        self.graph = graph;
    }

    /// Spreads skips down from each `(node, cause)` of `stack` (nodes without an output): over
    /// required edges a waiting or open successor is skipped too; over optional edges, and to
    /// an open parent, it has one input less. Open nodes this closes wait in `closing`.
    fn spread_absence(&mut self, mut stack: Vec<(u32, u32)>, out: &mut Outcome, now: f64) {
        let graph = std::mem::take(&mut self.graph);
        while let Some((u, cause)) = stack.pop() {
            let parent = self.parent_of(u);
            // Required edges first: a node with a required and an optional edge from `u` is
            // skipped, not released.
            for s in graph.successors(u) {
                if parent != Some(s)
                    && !self.is_optional(u, s)
                    && matches!(self.state[s as usize], NodeState::Waiting | NodeState::Open)
                {
                    self.end_skipped(s, Reason::Skipped, now);
                    out.skipped.push(s);
                    out.skipped_by.push(cause);
                    stack.push((s, cause));
                }
            }
            for s in graph.successors(u) {
                if (parent == Some(s) || self.is_optional(u, s))
                    && matches!(self.state[s as usize], NodeState::Waiting | NodeState::Open)
                {
                    self.input_done(s, now);
                }
            }
        }
        self.graph = graph;
    }

    /// Adds nodes and edges to the run, in O(added) whatever its size (see [`Growth`]).
    ///
    /// Each added edge has a new node at one end at least:
    /// - `u -> v`, `v` new: `u` is a new node with a lower id, or an existing node that is not
    ///   waiting, queued or open (nor a parent opened by this call). A running `u` holds `v`
    ///   back until it completes; a done `u` does not count; a failed `u` (or one skipped
    ///   because of a failure, or cancelled) skips `v` at once; a skipped `u` skips `v` over a
    ///   required edge and does not count over an optional one.
    /// - `v -> s`, `v` new and `s` existing: `s` is waiting or open (or a parent opened by this
    ///   call); it waits for `v` too.
    ///
    /// So the nodes that are not finished never wait on one another in a cycle: a new node's
    /// existing predecessors are running or finished, and neither kind waits on anything.
    /// Anything else is refused with [`CoreError::BadEdge`], and a refused call changes
    /// nothing.
    ///
    /// A node named in `parents` becomes open ([`Scheduler::expand`] says how). Every new node
    /// takes an admission key (an existing one: [`Scheduler::add_key`] makes new ones), a
    /// priority, a weight and, when the run has a worker pool, a demand class; its remaining
    /// path is computed over the added part (a child counts its parent as a successor, so
    /// deeper descendants go first among equals). After [`Scheduler::start`] the new nodes
    /// without unfinished inputs are admitted by this call's admission round, under every cap
    /// as any node; before it they wait for the start. After [`Scheduler::cancel`] the new
    /// nodes are cancelled at once and an expanding parent ends cancelled.
    ///
    /// Returns the nodes admitted now, the new nodes skipped at once (with what caused each) and
    /// the open nodes failed at once; open nodes it closes are in [`Scheduler::take_closed`].
    pub fn grow(&mut self, growth: &Growth, now: f64) -> CoreResult<Outcome> {
        self.grow_under(growth, None, now)
    }

    /// [`Scheduler::grow`] with every new node a child of `node`, which becomes open: it is done
    /// once all its children have finished (done, or skipped: a skipped child is left out) and
    /// its own inputs are done. Children with no inputs are admitted now.
    ///
    /// `node` may be running, which is how a task adds tasks: its attempt is over, and its slot,
    /// its shared slot and its worker are released at once (so that children under the same cap
    /// can run; a parent never holds a slot while its children wait). It must have been sent
    /// (not waiting for a worker or in a retry's backoff). It may be waiting or queued, which
    /// is how a step maps over items: it is never handed out (taken out of the ready queue) and
    /// stands for the items, which carry the real inputs. It may be open already (more
    /// children). An expansion with no children closes the node as soon as its inputs are done.
    ///
    /// A child that fails for good fails `node` ([`Scheduler::fail`]); any child may be
    /// expanded in turn, to any depth.
    pub fn expand(&mut self, node: u32, growth: &Growth, now: f64) -> CoreResult<Outcome> {
        if !growth.parents.is_empty() {
            return Err(CoreError::invalid(
                "parents",
                "empty when expanding (every new node is a child of the expanded node)",
                format!("{} parents", growth.parents.len()),
            ));
        }
        self.grow_under(growth, Some(node), now)
    }

    /// Why `node` cannot be given children now, if it cannot.
    fn cannot_open(&self, node: u32) -> Option<&'static str> {
        let i = node as usize;
        match self.state[i] {
            NodeState::Running => match self.reason[i] {
                Reason::Placement => Some("it waits for a worker (it was never sent)"),
                Reason::Backoff => Some("it waits out a retry's backoff"),
                _ => None,
            },
            NodeState::Waiting | NodeState::Queued | NodeState::Open => None,
            NodeState::Done => Some("it is done"),
            NodeState::Failed => Some("it failed"),
            NodeState::Skipped => Some("it was skipped"),
            NodeState::Cancelled => Some("it was cancelled"),
        }
    }

    /// Checks a growth whole (nothing changes on an error) and returns the distinct parents.
    #[allow(clippy::too_many_lines)] // every rule of a growth, in one place
    fn check_growth(&self, g: &Growth, common: Option<u32>) -> CoreResult<Vec<u32>> {
        let n0 = self.node_count();
        let count = g.count;
        let total = u64::from(n0) + u64::from(count);
        if total > MAX_IDS {
            return Err(CoreError::TooLarge { what: "nodes", count: total, limit: MAX_IDS });
        }
        let edges = self.graph.edge_count() as u64 + g.sources.len() as u64 + u64::from(count);
        if edges > MAX_IDS {
            return Err(CoreError::TooLarge { what: "edges", count: edges, limit: MAX_IDS });
        }
        let per_new = |what: &str, len: usize| -> CoreResult<()> {
            if len == 0 || len == count as usize {
                Ok(())
            } else {
                Err(CoreError::invalid(
                    what,
                    "one per new node (or none)",
                    format!("{len} values for {count} new nodes"),
                ))
            }
        };
        per_new("parents", g.parents.len())?;
        per_new("keys", g.keys.len())?;
        per_new("priorities", g.priorities.len())?;
        per_new("weights", g.weights.len())?;
        per_new("classes", g.classes.len())?;
        if g.sources.len() != g.targets.len() {
            return Err(CoreError::invalid(
                "edge lists",
                "of equal length",
                format!("{} sources and {} targets", g.sources.len(), g.targets.len()),
            ));
        }
        if !g.optional.is_empty() && g.optional.len() != g.sources.len() {
            return Err(CoreError::invalid(
                "optional",
                "one flag per edge (or none)",
                format!("{} flags for {} edges", g.optional.len(), g.sources.len()),
            ));
        }
        if let Some(&bad) = g.keys.iter().find(|&&k| k as usize >= self.keys.len()) {
            return Err(CoreError::UnknownId { what: "admission key", id: bad.into() });
        }
        let mut opened: Vec<u32> = if let Some(node) = common {
            vec![node]
        } else {
            let mut distinct: Vec<u32> = Vec::new();
            for &p in g.parents.iter().flatten() {
                if distinct.last() != Some(&p) {
                    distinct.push(p);
                }
            }
            distinct.sort_unstable();
            distinct.dedup();
            distinct
        };
        for &p in &opened {
            if p >= n0 {
                return Err(CoreError::UnknownNode { node: p, node_count: n0 });
            }
            if let Some(why) = self.cannot_open(p) {
                return Err(CoreError::NoChildren { node: p, why });
            }
        }
        match &self.pool {
            Some(link) => {
                let classes = lock(&link.pool).class_count();
                if let Some(&bad) = g.classes.iter().find(|&&c| c >= classes) {
                    return Err(CoreError::UnknownId { what: "demand class", id: bad.into() });
                }
                if g.classes.is_empty() && common.is_none() && count > 0 {
                    let orphan =
                        (0..count as usize).find(|&i| g.parents.get(i).is_none_or(Option::is_none));
                    if let Some(i) = orphan {
                        return Err(CoreError::invalid(
                            "classes",
                            "one per new node when the run places nodes on a worker pool",
                            format!(
                                "none for new node {} (it has no parent to take it from)",
                                n0 as usize + i
                            ),
                        ));
                    }
                }
            }
            None if !g.classes.is_empty() => {
                return Err(CoreError::invalid(
                    "classes",
                    "given only when the run places nodes on a worker pool",
                    "classes without a pool",
                ));
            }
            None => {}
        }
        let is_opened = |v: u32| opened.binary_search(&v).is_ok();
        for (&u, &v) in g.sources.iter().zip(&g.targets) {
            for id in [u, v] {
                if u64::from(id) >= total {
                    return Err(CoreError::UnknownNode { node: id, node_count: total as u32 });
                }
            }
            let why = match (u >= n0, v >= n0) {
                (true, true) if u >= v => Some("an edge between new nodes goes from the lower id to the higher"),
                (true, true) => None,
                (false, true) => match self.state[u as usize] {
                    _ if is_opened(u) => Some("its source is opened by this growth (it waits for the new nodes)"),
                    NodeState::Waiting | NodeState::Queued | NodeState::Open => {
                        Some("a new node's existing predecessor must be running or finished, not waiting")
                    }
                    _ => None,
                },
                (true, false) => match self.state[v as usize] {
                    _ if is_opened(v) => None,
                    NodeState::Waiting | NodeState::Open => None,
                    NodeState::Queued => Some("its target is ready already (only a waiting or open node takes a new input)"),
                    _ => Some("its target is running or finished (only a waiting or open node takes a new input)"),
                },
                (false, false) => Some("an added edge needs a new node at one end"),
            };
            if let Some(why) = why {
                return Err(CoreError::BadEdge { from: u, to: v, why });
            }
        }
        opened.shrink_to_fit();
        Ok(opened)
    }

    #[allow(clippy::too_many_lines)] // one growth, step by step
    fn grow_under(&mut self, g: &Growth, common: Option<u32>, now: f64) -> CoreResult<Outcome> {
        check_now(now)?;
        let opened = self.check_growth(g, common)?;
        let n0 = self.node_count();
        let count = g.count;
        self.clock = now;
        let parent_at = |i: usize| common.or_else(|| g.parents.get(i).copied().flatten());
        if self.tree.is_none() {
            self.tree = Some(Box::new(Tree::new(n0)));
        }
        let cancelled = self.cancelled;
        let mut outcome = Outcome::default();
        // The parents open (or, in a cancelled run, end cancelled: nothing more runs).
        for &p in &opened {
            let i = p as usize;
            match self.state[i] {
                NodeState::Running => {
                    self.counts.running -= 1;
                    self.release_slot(p, now);
                }
                NodeState::Waiting => self.counts.waiting -= 1,
                NodeState::Queued => {
                    self.counts.queued -= 1;
                    self.unqueue(p);
                }
                NodeState::Open => self.counts.open -= 1,
                _ => unreachable!("checked by check_growth"),
            }
            if cancelled {
                self.state[i] = NodeState::Cancelled;
                self.counts.cancelled += 1;
                self.mark(p, Reason::Finished, now);
            } else {
                self.state[i] = NodeState::Open;
                self.counts.open += 1;
                self.mark(p, Reason::Children, now);
            }
        }
        // The new nodes, with their own edges grouped by source (new-node sources only; a
        // child's edge to its parent last).
        let mut degree = vec![0u32; count as usize + 1];
        if !cancelled {
            for &u in &g.sources {
                if u >= n0 {
                    degree[(u - n0) as usize + 1] += 1;
                }
            }
            for i in 0..count as usize {
                if parent_at(i).is_some() {
                    degree[i + 1] += 1;
                }
            }
        }
        for i in 0..count as usize {
            degree[i + 1] += degree[i];
        }
        let mut adjacency = vec![0u32; degree[count as usize] as usize];
        let mut cursor: Vec<u32> = degree[..count as usize].to_vec();
        let mut resolve: Vec<(u32, u32)> = Vec::new();
        let state_new = if cancelled { NodeState::Cancelled } else { NodeState::Waiting };
        let reason_new = if cancelled { Reason::Finished } else { Reason::Inputs };
        for i in 0..count as usize {
            let parent = if cancelled { None } else { parent_at(i) };
            let key = g.keys.get(i).copied().or_else(|| parent.map(|p| self.key_of[p as usize]));
            self.key_of.push(key.unwrap_or(0));
            let priority =
                g.priorities.get(i).copied().or_else(|| parent.map(|p| self.priority[p as usize]));
            self.priority.push(priority.unwrap_or(0));
            self.pending.push(0);
            self.state.push(state_new);
            self.remaining.push(0);
            self.reason.push(reason_new);
            self.since.push(now);
            self.retry_due.push(0.0);
            if let Some((ready_at, last)) = &mut self.record.waits {
                ready_at.push(0.0);
                last.push(Reason::Ready);
            }
            if let Some(link) = &mut self.pool {
                let class = g
                    .classes
                    .get(i)
                    .copied()
                    .or_else(|| parent_at(i).map(|p| link.class_of[p as usize]));
                link.class_of.push(class.unwrap_or(0));
            }
            let tree = self.tree.as_mut().expect("made above");
            tree.parent.push(parent.unwrap_or(NONE));
        }
        if cancelled {
            self.counts.cancelled += count;
        } else {
            self.counts.waiting += count;
        }
        for (e, (&u, &v)) in g.sources.iter().zip(&g.targets).enumerate() {
            if cancelled {
                break;
            }
            let optional = g.optional.get(e).copied().unwrap_or(false);
            if u >= n0 {
                let slot = &mut cursor[(u - n0) as usize];
                adjacency[*slot as usize] = v;
                *slot += 1;
                self.pending[v as usize] += 1;
            } else {
                match self.state[u as usize] {
                    NodeState::Running => {
                        self.graph.add_edge(u, v);
                        self.pending[v as usize] += 1;
                    }
                    NodeState::Done => {}
                    _ => resolve.push((u, v)),
                }
            }
            if optional {
                self.optional.insert(edge_key(u, v));
            }
        }
        if !self.optional.is_empty() && g.optional.contains(&true) {
            // Parallel edges between two nodes are optional only if every one of them is.
            for (e, (&u, &v)) in g.sources.iter().zip(&g.targets).enumerate() {
                if !g.optional.get(e).copied().unwrap_or(false) {
                    self.optional.remove(&edge_key(u, v));
                }
            }
        }
        for (i, slot) in cursor.iter_mut().enumerate() {
            if let Some(p) = parent_at(i).filter(|_| !cancelled) {
                adjacency[*slot as usize] = p;
                *slot += 1;
                self.pending[p as usize] += 1;
                self.tree.as_mut().expect("made above").adopt(p, n0 + i as u32);
            }
        }
        for i in 0..count as usize {
            self.graph.push_node(&adjacency[degree[i] as usize..degree[i + 1] as usize]);
        }
        // Remaining paths over the added part: new edges go to higher ids or to existing nodes.
        for i in (0..count as usize).rev() {
            let v = n0 + i as u32;
            let (own, _) = self.graph.successor_parts(v);
            let below = own.iter().map(|&s| self.remaining[s as usize]).max().unwrap_or(0);
            let weight = g.weights.get(i).copied().unwrap_or(1);
            self.remaining[v as usize] = below.saturating_add(weight);
        }
        if cancelled {
            return Ok(outcome);
        }
        // New nodes whose finished predecessors leave them no way to run.
        let mut failures = Vec::new();
        let mut absences = Vec::new();
        for (u, v) in resolve {
            if self.state[v as usize] != NodeState::Waiting {
                continue;
            }
            let absent = self.state[u as usize] == NodeState::Skipped
                && self.reason[u as usize] == Reason::Skipped;
            if absent && self.is_optional(u, v) {
                continue; // it runs with its default
            }
            let reason = if absent { Reason::Skipped } else { Reason::Finished };
            self.end_skipped(v, reason, now);
            outcome.skipped.push(v);
            outcome.skipped_by.push(u);
            if absent {
                absences.push((v, u));
            } else {
                failures.push((v, u));
            }
        }
        if !failures.is_empty() {
            self.spread_failure(failures, &mut outcome, now);
        }
        if !absences.is_empty() {
            self.spread_absence(absences, &mut outcome, now);
        }
        if self.started {
            for v in n0..n0 + count {
                if self.pending[v as usize] == 0 && self.state[v as usize] == NodeState::Waiting {
                    self.enqueue(v, now);
                }
            }
            for &p in &opened {
                if self.pending[p as usize] == 0 {
                    self.closing.push(p);
                }
            }
            self.close_ready(now);
            self.admit(now, &mut outcome.admitted)?;
        }
        Ok(outcome)
    }

    /// Takes a queued node out of the ready heap and of any key's parked heap: O(queued nodes),
    /// for the rare node opened while it was ready.
    fn unqueue(&mut self, node: u32) {
        self.ready.retain(|e| e.3 != node);
        let mut key = self.key_of[node as usize];
        while key != NONE {
            let k = &mut self.keys[key as usize];
            k.parked.retain(|e| e.3 != node);
            key = k.parent;
        }
    }

    /// Stops admitting: every node that has not started is cancelled and returned, and so is
    /// every open node (its output will not come; its children that run go on and finish
    /// normally, but no longer close it). Running nodes still complete or fail normally.
    pub fn cancel(&mut self) -> Vec<u32> {
        self.cancelled = true;
        self.ready.clear();
        self.held = Reason::Ready;
        self.throttled.clear();
        for key in &mut self.keys {
            key.parked.clear();
            key.wake_at = None;
        }
        let mut cancelled = Vec::new();
        for (v, state) in self.state.iter_mut().enumerate() {
            if matches!(state, NodeState::Waiting | NodeState::Queued | NodeState::Open) {
                *state = NodeState::Cancelled;
                cancelled.push(v as u32);
            }
        }
        let now = self.clock;
        for &v in &cancelled {
            self.mark(v, Reason::Finished, now);
        }
        self.counts.cancelled += cancelled.len() as u32;
        self.counts.waiting = 0;
        self.counts.queued = 0;
        self.counts.open = 0;
        self.closing.clear();
        // Nodes waiting out a backoff will not be tried again: their last attempt failed.
        while let Some(Reverse((due, node))) = self.backoff.pop() {
            if self.in_backoff(node, due) {
                self.leave_backoff(node);
                self.state[node as usize] = NodeState::Failed;
                self.mark(node, Reason::Finished, now);
                self.counts.running -= 1;
                self.counts.failed += 1;
                self.release_slot(node, now);
            }
        }
        if let Some((gate, run)) = &self.gate {
            let _ = lock(gate).settle(*run);
        }
        // Admitted nodes still waiting for a worker never started: cancelled too.
        let unplaced = match &self.pool {
            Some(link) => lock(&link.pool).cancel_waiting(link.run),
            None => Vec::new(),
        };
        for node in unplaced {
            self.placing -= 1;
            self.mark(node, Reason::Finished, now);
            self.state[node as usize] = NodeState::Cancelled;
            self.counts.running -= 1;
            self.counts.cancelled += 1;
            self.release_slot(node, 0.0);
            cancelled.push(node);
        }
        cancelled
    }

    /// Admits what rate limits allow at `now`; call it at [`Scheduler::next_wakeup`].
    pub fn poll(&mut self, now: f64) -> CoreResult<Vec<u32>> {
        check_now(now)?;
        let mut admitted = Vec::new();
        if !self.started {
            return Ok(admitted);
        }
        self.clock = now;
        let cutoff = time_order(now);
        while let Some(&Reverse((due, node))) = self.backoff.peek() {
            if due > cutoff {
                break;
            }
            self.backoff.pop();
            if self.in_backoff(node, due) {
                self.leave_backoff(node);
                self.mark(node, Reason::Running, now);
                admitted.push(node);
            }
        }
        let due: Vec<u32> = self
            .throttled
            .iter()
            .copied()
            .filter(|&k| self.keys[k as usize].wake_at.is_some_and(|t| t <= now))
            .collect();
        if !due.is_empty() {
            self.throttled.retain(|k| !due.contains(k));
            for key in due {
                self.keys[key as usize].wake_at = None;
                self.unpark(key, now);
                self.touched.push(key);
            }
        }
        self.admit(now, &mut admitted)?;
        Ok(admitted)
    }

    /// The earliest time a rate-limited node can be admitted or a retry is due, if any waits.
    pub fn next_wakeup(&self) -> Option<f64> {
        let token = self
            .throttled
            .iter()
            .filter_map(|&k| self.keys[k as usize].wake_at)
            .min_by(f64::total_cmp);
        // A stale entry at the top only makes the caller poll early, once: `poll` drops it.
        let retry = self.backoff.peek().map(|&Reverse((_, node))| self.retry_due[node as usize]);
        match (token, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A running node's attempt failed and it is tried again at `due`: it keeps its slots and
    /// its worker, waits with reason [`Reason::Backoff`], and comes out of [`Scheduler::poll`]
    /// once `due` has come (to be sent again); [`Scheduler::next_wakeup`] includes `due`.
    /// [`Scheduler::cancel`] fails it; [`Scheduler::fail`] ends it at once.
    pub fn retry_at(&mut self, node: u32, due: f64, now: f64) -> CoreResult<()> {
        check_now(now)?;
        if !due.is_finite() {
            return Err(CoreError::invalid("due", "a finite time", due));
        }
        self.check_running(node)?;
        let i = node as usize;
        let why = match self.reason[i] {
            Reason::Backoff => Some("it already waits for one"),
            Reason::Placement => Some("it waits for a worker, never sent"),
            _ if self.cancelled => Some("the run was cancelled"),
            _ => None,
        };
        if let Some(why) = why {
            return Err(CoreError::NoRetry { node, why });
        }
        self.clock = now;
        self.retry_due[i] = due;
        self.backoff.push(Reverse((time_order(due), node)));
        self.counts.backoff += 1;
        self.mark(node, Reason::Backoff, now);
        Ok(())
    }

    /// Whether a backoff heap entry is current: its node still waits out that backoff.
    fn in_backoff(&self, node: u32, due: u64) -> bool {
        let i = node as usize;
        self.state[i] == NodeState::Running
            && self.reason[i] == Reason::Backoff
            && time_order(self.retry_due[i]) == due
    }

    /// Counts a node out of its backoff, if it was in one (its heap entry turns stale).
    fn leave_backoff(&mut self, node: u32) {
        if self.reason[node as usize] == Reason::Backoff {
            self.counts.backoff -= 1;
        }
    }

    fn enqueue(&mut self, v: u32, now: f64) {
        self.sequence += 1;
        self.mark(v, Reason::Ready, now);
        let i = v as usize;
        self.state[i] = NodeState::Queued;
        self.counts.waiting -= 1;
        self.counts.queued += 1;
        self.ready.push((self.priority[i], self.remaining[i], Reverse(self.sequence), v));
    }

    fn release_slot(&mut self, node: u32, now: f64) {
        self.running -= 1;
        let mut key = self.key_of[node as usize];
        // Its key and every key above it free a slot.
        loop {
            let k = &mut self.keys[key as usize];
            k.running -= 1;
            let parent = k.parent;
            if !k.parked.is_empty() && k.wake_at.is_none() {
                self.unpark(key, now);
                self.touched.push(key);
            }
            if parent == NONE {
                break;
            }
            key = parent;
        }
        // The slot and the worker go to whoever waits for them, in this run or another.
        if let Some((gate, run)) = &self.gate {
            let _ = lock(gate).release(*run);
        }
        if let Some(link) = &self.pool {
            let _ = lock(&link.pool).release(link.run, node);
        }
    }

    /// The first key of `key`'s chain (itself, then each key above) without a free slot, or
    /// [`NONE`].
    #[inline]
    fn full_key(&self, key: u32) -> u32 {
        let mut k = key;
        loop {
            let ks = &self.keys[k as usize];
            if !ks.cap.admits(ks.running) {
                return k;
            }
            if ks.parent == NONE {
                return NONE;
            }
            k = ks.parent;
        }
    }

    /// After an admission round: a key that still has parked nodes and a free slot waits for a
    /// token, so it gets a wake-up time.
    fn rearm(&mut self, key: u32, now: f64) {
        let k = &mut self.keys[key as usize];
        if k.wake_at.is_some() || k.parked.is_empty() || !k.cap.admits(k.running) {
            return;
        }
        if let Some(rate) = &k.rate {
            k.wake_at = Some(rate.next_token_at(now));
            self.throttled.push(key);
        }
    }

    /// Moves as many parked nodes of `key` back to the ready heap as the key could admit now.
    fn unpark(&mut self, key: u32, now: f64) {
        unpark_in(
            &mut self.keys,
            &mut self.ready,
            (&mut self.reason, &mut self.since, &mut self.record),
            key,
            now,
        );
    }

    /// Admits ready nodes, best first, until the run's cap or the shared gate is full or none is
    /// left; an admitted node is placed on a worker when the run has a pool. Nodes placed from
    /// the pool's queue since the last round come out too.
    #[allow(clippy::too_many_lines)] // one admission round reads best in one place
    fn admit(&mut self, now: f64, out: &mut Vec<u32>) -> CoreResult<()> {
        self.clock = now;
        if self.cancelled {
            self.touched.clear();
            return Ok(());
        }
        let mut gate = self.gate.as_ref().map(|(g, run)| (lock(g), *run));
        let mut pool = self.pool.as_ref().map(|link| (lock(&link.pool), link));
        if let Some((p, link)) = &mut pool {
            let placed = p.take_placed(link.run);
            self.placing -= placed.len() as u32;
            for &node in &placed {
                mark_in(
                    &mut self.reason,
                    &mut self.since,
                    &mut self.record,
                    node,
                    Reason::Running,
                    now,
                );
            }
            out.extend(placed);
        }
        let mut blocked = false;
        loop {
            while self.global_cap.admits(self.running) {
                let Some(entry) = self.ready.pop() else { break };
                let node = entry.3;
                let key = self.key_of[node as usize];
                // Its key's cap, then (for a key with a parent) every cap above it.
                let k = &self.keys[key as usize];
                let full = if !k.cap.admits(k.running) {
                    key
                } else if k.parent != NONE {
                    self.full_key(k.parent)
                } else {
                    NONE
                };
                if full != NONE {
                    let f = &mut self.keys[full as usize];
                    f.parked.push(entry);
                    if f.parent != NONE {
                        recheck_above(&mut self.keys, full, &mut self.recheck);
                    }
                    mark_in(
                        &mut self.reason,
                        &mut self.since,
                        &mut self.record,
                        node,
                        Reason::StepCap,
                        now,
                    );
                    continue;
                }
                if let Some((g, run)) = &mut gate {
                    if !g.can_take(*run) {
                        // The shared cap is full: this run waits its turn for the next free slot.
                        self.ready.push(entry);
                        g.wait(*run)?;
                        blocked = true;
                        mark_in(
                            &mut self.reason,
                            &mut self.since,
                            &mut self.record,
                            node,
                            Reason::SharedCap,
                            now,
                        );
                        break;
                    }
                }
                let k = &mut self.keys[key as usize];
                let tokens = if k.parent != NONE {
                    take_tokens(&mut self.keys, key, now)?
                } else if let Some(rate) = &mut k.rate {
                    rate.try_acquire(now)?.map_err(|at| (key, at))
                } else {
                    Ok(())
                };
                if let Err((short, at)) = tokens {
                    if self.keys[short as usize].parent != NONE {
                        recheck_above(&mut self.keys, short, &mut self.recheck);
                    }
                    let k = &mut self.keys[short as usize];
                    k.parked.push(entry);
                    mark_in(
                        &mut self.reason,
                        &mut self.since,
                        &mut self.record,
                        node,
                        Reason::Rate,
                        now,
                    );
                    if k.wake_at.is_none() {
                        k.wake_at = Some(at);
                        self.throttled.push(short);
                    }
                    continue;
                }
                if let Some((g, run)) = &mut gate {
                    g.take(*run)?;
                }
                // It waited in the ready heap past the end of the last round: what held the heap
                // back then (the run's cap, the shared cap) is what it waited for last.
                let i = node as usize;
                if self.held != Reason::Ready
                    && self.reason[i] == Reason::Ready
                    && self.since[i] < now
                    && self.since[i] <= self.held_at
                {
                    if let Some((_, last)) = &mut self.record.waits {
                        last[i] = self.held;
                    }
                }
                let mut k = key;
                loop {
                    let ks = &mut self.keys[k as usize];
                    ks.running += 1;
                    if ks.parent == NONE {
                        break;
                    }
                    k = ks.parent;
                }
                self.running += 1;
                self.state[node as usize] = NodeState::Running;
                self.counts.queued -= 1;
                self.counts.running += 1;
                let placed = match &mut pool {
                    Some((p, link)) => {
                        p.place(link.run, node, link.class_of[node as usize])?.is_some()
                    }
                    None => true,
                };
                if placed {
                    out.push(node);
                } else {
                    self.placing += 1;
                }
                let reason = if placed { Reason::Running } else { Reason::Placement };
                mark_in(&mut self.reason, &mut self.since, &mut self.record, node, reason, now);
            }
            // A key above where a node was parked may have freed its slot for that node: give it
            // to the next of its own, and go round again.
            // (While the run's or the shared cap is full, they wait in `recheck` for a later
            // round.)
            let mut again = false;
            if !blocked && self.global_cap.admits(self.running) {
                while let Some(key) = self.recheck.pop() {
                    let k = &mut self.keys[key as usize];
                    k.rechecking = false;
                    if !k.parked.is_empty() && k.wake_at.is_none() && k.cap.admits(k.running) {
                        unpark_in(
                            &mut self.keys,
                            &mut self.ready,
                            (&mut self.reason, &mut self.since, &mut self.record),
                            key,
                            now,
                        );
                        self.touched.push(key);
                        again = !self.ready.is_empty();
                    }
                }
            }
            if !again {
                break;
            }
        }
        if let Some((g, run)) = &mut gate {
            if !blocked {
                g.settle(*run)?;
            }
        }
        self.held = if self.ready.is_empty() {
            Reason::Ready
        } else if blocked {
            Reason::SharedCap
        } else {
            Reason::RunCap // the loop ended on the run's own cap
        };
        self.held_at = now;
        drop(gate);
        drop(pool);
        while let Some(key) = self.touched.pop() {
            self.rearm(key, now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn graph(n: u32, edges: &[(u32, u32)]) -> Graph {
        let (src, dst): (Vec<u32>, Vec<u32>) = edges.iter().copied().unzip();
        Graph::from_edges(n, &src, &dst).unwrap()
    }

    fn capped(cap: u64) -> KeyLimits {
        KeyLimits { max_parallel: Some(cap), rate: None }
    }

    #[test]
    fn ready_order_is_priority_then_longest_remaining_path() {
        // 0 -> 1 -> 2 is the long branch; 3 and 4 are single nodes; 4 has higher priority.
        let g = graph(5, &[(0, 1), (1, 2)]);
        let mut s = Scheduler::new(g, None, &[capped(1)], Some(vec![0, 0, 0, 0, 7]), None).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![4]);
        assert_eq!(s.complete(4, 0.0).unwrap(), vec![0]);
        assert_eq!(s.complete(0, 0.0).unwrap(), vec![1]);
    }

    #[test]
    fn cap_per_key_and_global_cap() {
        let g = graph(6, &[]);
        let keys = vec![capped(2), capped(1)];
        let mut s = Scheduler::new(g, Some(vec![0, 0, 0, 1, 1, 1]), &keys, None, None).unwrap();
        s.set_global_cap(Some(3), 0.0).unwrap();
        let first = s.start(0.0).unwrap();
        assert_eq!(first, vec![0, 1, 3]);
        assert_eq!(s.complete(3, 0.0).unwrap(), vec![4]);
        assert_eq!(s.complete(0, 0.0).unwrap(), vec![2]);
        assert_eq!(s.complete_many(&[1, 2, 4], 0.0).unwrap(), vec![5]);
        assert!(!s.is_finished());
        s.complete(5, 0.0).unwrap();
        assert!(s.is_finished());
        assert_eq!(s.counts().done, 6);
    }

    #[test]
    fn failure_skips_downstream_only() {
        // 0 -> 1 -> 2, and 3 independent.
        let g = graph(4, &[(0, 1), (1, 2)]);
        let mut s = Scheduler::new(g, None, &[], None, None).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![0, 3]);
        let outcome = s.fail(0, 0.0).unwrap();
        assert_eq!(outcome.skipped, vec![1, 2]);
        assert_eq!(s.state(2).unwrap(), NodeState::Skipped);
        assert_eq!(s.fail(0, 0.0), Err(CoreError::NotRunning { node: 0 }));
        assert_eq!(s.complete(1, 0.0), Err(CoreError::NotRunning { node: 1 }));
        s.complete(3, 0.0).unwrap();
        assert!(s.is_finished());
    }

    #[test]
    fn a_skipped_window_node_is_recycled_with_its_count_moved() {
        // A stream's window of two nodes, one slot: a skipped node takes the next item.
        let g = graph(2, &[]);
        let mut s = Scheduler::new(g, None, &[], None, None).unwrap();
        s.set_global_cap(Some(1), 0.0).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![0]);
        assert_eq!(s.skip(0, 0.0).unwrap().admitted, vec![1]);
        assert_eq!(s.counts().skipped, 1);
        assert_eq!(s.recycle(&[0], 0.0).unwrap(), Vec::<u32>::new());
        assert_eq!((s.counts().skipped, s.counts().waiting), (0, 0));
        assert_eq!(s.complete(1, 0.0).unwrap(), vec![0]);
        s.complete(0, 0.0).unwrap();
        assert!(s.is_finished());
    }

    #[test]
    fn bad_completions_change_nothing() {
        let g = graph(3, &[(0, 1)]);
        let mut s = Scheduler::new(g, None, &[], None, None).unwrap();
        assert_eq!(s.complete(0, 0.0), Err(CoreError::NotPrepared));
        s.start(0.0).unwrap();
        assert_eq!(s.complete_many(&[0, 0], 0.0), Err(CoreError::AlreadyDone { node: 0 }));
        assert_eq!(s.complete_many(&[0, 1], 0.0), Err(CoreError::NotPassedOut { node: 1 }));
        assert_eq!(s.complete(9, 0.0), Err(CoreError::UnknownNode { node: 9, node_count: 3 }));
        assert!(s.complete(0, f64::NAN).is_err());
        assert_eq!(s.state(0).unwrap(), NodeState::Running);
        assert_eq!(s.complete(0, 0.0).unwrap(), vec![1]);
    }

    #[test]
    fn cyclic_graph_is_refused() {
        let g = graph(2, &[(0, 1), (1, 0)]);
        let err = Scheduler::new(g, None, &[], None, None).unwrap_err();
        assert!(matches!(err, CoreError::Cycle { .. }));
    }

    #[test]
    fn rate_limit_sets_wakeups_exactly() {
        let g = graph(4, &[]);
        let keys = [KeyLimits { max_parallel: None, rate: Some((2.0, 1)) }];
        let mut s = Scheduler::new(g, None, &keys, None, None).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![0]);
        assert_eq!(s.next_wakeup(), Some(0.5));
        assert_eq!(s.poll(0.4).unwrap(), Vec::<u32>::new());
        assert_eq!(s.poll(0.5).unwrap(), vec![1]);
        assert_eq!(s.next_wakeup(), Some(1.0));
        s.complete_many(&[0, 1], 0.6).unwrap();
        assert_eq!(s.poll(1.0).unwrap(), vec![2]);
        assert_eq!(s.poll(1.5).unwrap(), vec![3]);
        assert_eq!(s.next_wakeup(), None);
    }

    #[test]
    fn restored_nodes_are_done_and_release_their_successors() {
        // 0 -> 1 -> 2, and 3 alone.
        let g = graph(4, &[(0, 1), (1, 2)]);
        let mut s = Scheduler::new(g, None, &[], None, None).unwrap();
        assert!(matches!(s.restore_done(&[1]), Err(CoreError::InvalidValue { .. })));
        assert_eq!(s.state(1).unwrap(), NodeState::Waiting); // nothing changed
        s.restore_done(&[0, 1]).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![2, 3]);
        assert_eq!(s.counts().done, 2);
        assert_eq!(s.restore_done(&[3]), Err(CoreError::Frozen));
        s.complete_many(&[2, 3], 0.0).unwrap();
        assert!(s.is_finished());
    }

    #[test]
    fn every_wait_has_its_reason_and_time() {
        // 0 -> 1; 2, 3 in key 1 (cap 1); 4 rate-limited in key 2; run cap 3.
        let g = graph(5, &[(0, 1)]);
        let keys = [
            KeyLimits::default(),
            capped(1),
            KeyLimits { max_parallel: None, rate: Some((1.0, 1)) },
        ];
        let mut s = Scheduler::new(g, Some(vec![0, 0, 1, 1, 2]), &keys, None, None).unwrap();
        s.set_global_cap(Some(3), 0.0).unwrap();
        s.record_history(true);
        assert_eq!(s.start(1.0).unwrap(), vec![0, 2, 4]);
        let why = |s: &Scheduler, v: u32| s.explain(v).unwrap();
        assert_eq!((why(&s, 1).reason, why(&s, 1).pending_inputs), (Reason::Inputs, 1));
        assert_eq!(why(&s, 3).reason, Reason::StepCap);
        assert_eq!((why(&s, 3).key_running, why(&s, 3).key_cap.get()), (1, Some(1)));
        assert_eq!(why(&s, 0).reason, Reason::Running);
        assert_eq!(why(&s, 0).since, 1.0);
        // Node 2 done: 3 is admitted; node 1 not ready yet.
        assert_eq!(s.complete(2, 2.0).unwrap(), vec![3]);
        assert_eq!((why(&s, 3).reason, why(&s, 3).since), (Reason::Running, 2.0));
        let history = s.take_history();
        assert!(history.contains(&(3, Reason::StepCap, 1.0)));
        assert!(history.contains(&(3, Reason::Running, 2.0)));
        assert!(history.contains(&(2, Reason::Finished, 2.0)));
        assert!(s.take_history().is_empty());
    }

    #[test]
    fn waits_say_what_held_a_node_last_and_for_how_long() {
        let g = graph(3, &[]);
        let mut s = Scheduler::new(g, None, &[capped(1)], None, None).unwrap();
        s.record_waits(true);
        assert_eq!(s.start(1.0).unwrap(), vec![0]);
        assert_eq!(s.wait_of(0).unwrap(), Some((Reason::Ready, 0.0)));
        assert_eq!(s.complete(0, 3.5).unwrap(), vec![1]);
        assert_eq!(s.wait_of(1).unwrap(), Some((Reason::StepCap, 2.5)));
    }

    #[test]
    fn the_runs_own_cap_is_a_reason_of_its_own() {
        // Three independent nodes, run cap 1: two wait for the run's cap, not "ready".
        let g = graph(3, &[]);
        let mut s = Scheduler::new(g, None, &[], None, None).unwrap();
        s.set_global_cap(Some(1), 0.0).unwrap();
        s.record_waits(true);
        s.record_history(true);
        assert_eq!(s.start(1.0).unwrap(), vec![0]);
        let why = |s: &Scheduler, v: u32| s.explain(v).unwrap();
        assert_eq!((why(&s, 1).reason, why(&s, 1).since), (Reason::RunCap, 1.0));
        assert_eq!((why(&s, 1).run_running, why(&s, 1).run_cap.get()), (1, Some(1)));
        assert_eq!(s.complete(0, 3.0).unwrap(), vec![1]);
        assert_eq!(s.wait_of(1).unwrap(), Some((Reason::RunCap, 2.0)));
        assert_eq!(why(&s, 2).reason, Reason::RunCap);
        // A raised cap admits the last one: it too waited for the run's cap.
        assert_eq!(s.set_global_cap(Some(2), 4.5).unwrap(), vec![2]);
        assert_eq!(s.wait_of(2).unwrap(), Some((Reason::RunCap, 3.5)));
        // Nothing left in the heap: nothing is held.
        assert_eq!(s.complete(1, 5.0).unwrap(), Vec::<u32>::new());
        assert_eq!(why(&s, 1).reason, Reason::Finished);
        // Admitted in the round it became ready: no wait, and nothing held it.
        let g = graph(2, &[(0, 1)]);
        let mut s = Scheduler::new(g, None, &[], None, None).unwrap();
        s.set_global_cap(Some(1), 0.0).unwrap();
        s.record_waits(true);
        assert_eq!(s.start(0.0).unwrap(), vec![0]);
        assert_eq!(s.complete(0, 2.0).unwrap(), vec![1]);
        assert_eq!(s.wait_of(1).unwrap(), Some((Reason::Ready, 0.0)));
    }

    #[test]
    fn cancel_returns_what_never_started() {
        let g = graph(3, &[(0, 1)]);
        let mut s = Scheduler::new(g, None, &[capped(1)], None, None).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![0]);
        assert_eq!(s.cancel(), vec![1, 2]);
        assert_eq!(s.complete(0, 0.0).unwrap(), Vec::<u32>::new());
        assert!(s.is_finished());
    }

    #[test]
    fn a_retry_keeps_its_slot_and_comes_back_when_due() {
        let g = graph(2, &[]);
        let mut s = Scheduler::new(g, None, &[capped(1)], None, None).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![0]);
        s.retry_at(0, 5.0, 1.0).unwrap();
        let why = s.explain(0).unwrap();
        assert_eq!((why.reason, why.retry_at, why.since), (Reason::Backoff, Some(5.0), 1.0));
        assert_eq!(s.counts().backoff, 1);
        assert_eq!(s.counts().running, 1);
        assert_eq!(s.next_wakeup(), Some(5.0));
        // Its slot stays held: node 1 waits for the step cap, and nothing comes out early.
        assert_eq!(s.poll(4.9).unwrap(), Vec::<u32>::new());
        assert_eq!(s.explain(1).unwrap().reason, Reason::StepCap);
        assert_eq!(s.poll(5.0).unwrap(), vec![0]);
        assert_eq!(s.explain(0).unwrap().reason, Reason::Running);
        assert_eq!(s.explain(0).unwrap().retry_at, None);
        assert_eq!((s.counts().backoff, s.next_wakeup()), (0, None));
        assert_eq!(s.complete(0, 6.0).unwrap(), vec![1]);
    }

    #[test]
    fn retries_come_back_earliest_first_with_rate_wakeups_merged() {
        let g = graph(3, &[]);
        let keys = [KeyLimits { max_parallel: None, rate: Some((1.0, 1)) }];
        let mut s = Scheduler::new(g, None, &keys, None, None).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![0]);
        assert_eq!(s.next_wakeup(), Some(1.0)); // the next token
        s.retry_at(0, 0.5, 0.1).unwrap();
        assert_eq!(s.next_wakeup(), Some(0.5));
        assert_eq!(s.poll(0.5).unwrap(), vec![0]);
        assert_eq!(s.poll(1.0).unwrap(), vec![1]);
        s.retry_at(1, 3.0, 1.1).unwrap();
        s.retry_at(0, 2.0, 1.2).unwrap();
        assert_eq!(s.poll(10.0).unwrap(), vec![0, 1, 2]);
    }

    #[test]
    fn a_node_failed_or_cancelled_in_backoff_never_comes_back() {
        let g = graph(3, &[(0, 2)]);
        let mut s = Scheduler::new(g, None, &[capped(2)], None, None).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![0, 1]);
        s.retry_at(0, 5.0, 1.0).unwrap();
        let outcome = s.fail(0, 2.0).unwrap();
        assert_eq!(outcome.skipped, vec![2]);
        assert_eq!(s.counts().backoff, 0);
        assert_eq!(s.poll(9.0).unwrap(), Vec::<u32>::new()); // its entry was stale
        s.retry_at(1, 5.0, 2.0).unwrap();
        assert_eq!(s.cancel(), Vec::<u32>::new());
        assert_eq!(s.state(1).unwrap(), NodeState::Failed);
        let c = s.counts();
        assert_eq!((c.running, c.failed, c.backoff), (0, 2, 0));
        assert!(s.is_finished());
        assert_eq!(s.poll(9.0).unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn retry_at_refuses_what_is_not_sent_or_already_waiting() {
        let g = graph(2, &[(0, 1)]);
        let mut s = Scheduler::new(g, None, &[], None, None).unwrap();
        assert!(matches!(s.retry_at(0, 1.0, 0.0), Err(CoreError::NotPrepared)));
        assert_eq!(s.start(0.0).unwrap(), vec![0]);
        assert!(matches!(s.retry_at(1, 1.0, 0.0), Err(CoreError::NotPassedOut { node: 1 })));
        assert!(s.retry_at(0, f64::NAN, 0.0).is_err());
        assert!(s.retry_at(0, 1.0, f64::INFINITY).is_err());
        s.retry_at(0, 1.0, 0.0).unwrap();
        assert!(matches!(s.retry_at(0, 2.0, 0.0), Err(CoreError::NoRetry { node: 0, .. })));
        assert_eq!(s.explain(0).unwrap().retry_at, Some(1.0)); // unchanged by the refusal
        assert!(matches!(s.retry_at(7, 1.0, 0.0), Err(CoreError::UnknownNode { .. })));
    }

    fn children(count: u32) -> Growth {
        Growth { count, ..Growth::default() }
    }

    #[test]
    fn a_task_adds_tasks_and_its_slot_goes_to_them() {
        // 0 -> 1; key 0 capped at 1: node 0 expands into 3 children that run one at a time.
        let g = graph(2, &[(0, 1)]);
        let mut s = Scheduler::new(g, None, &[capped(1)], None, None).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![0]);
        let out = s.expand(0, &children(3), 1.0).unwrap();
        // The parent's slot went at once to its first child.
        assert_eq!(out.admitted, vec![2]);
        assert_eq!(s.state(0).unwrap(), NodeState::Open);
        assert_eq!((s.counts().open, s.counts().running, s.counts().waiting), (1, 1, 1));
        let why = s.explain(0).unwrap();
        assert_eq!(
            (why.reason, why.open_children, why.pending_inputs),
            (Reason::Children, Some(3), 0)
        );
        assert_eq!(s.explain(3).unwrap().parent, Some(0));
        assert_eq!(s.explain(3).unwrap().reason, Reason::StepCap);
        assert_eq!(s.complete(2, 2.0).unwrap(), vec![3]);
        assert_eq!(s.explain(0).unwrap().open_children, Some(2));
        assert_eq!(s.complete(3, 3.0).unwrap(), vec![4]);
        assert!(s.take_closed().is_empty());
        // The last child closes the parent, which releases its successor in the same call.
        assert_eq!(s.complete(4, 4.0).unwrap(), vec![1]);
        assert_eq!(s.take_closed(), vec![0]);
        assert_eq!(s.state(0).unwrap(), NodeState::Done);
        assert_eq!(s.complete(0, 5.0), Err(CoreError::AlreadyDone { node: 0 }));
        s.complete(1, 5.0).unwrap();
        assert!(s.is_finished());
        assert_eq!(s.counts().done, 5);
    }

    #[test]
    fn recursion_under_a_cap_of_one_never_deadlocks_and_closes_bottom_up() {
        let g = graph(1, &[]);
        let mut s = Scheduler::new(g, None, &[], None, None).unwrap();
        s.set_global_cap(Some(1), 0.0).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![0]);
        assert_eq!(s.expand(0, &children(2), 0.0).unwrap().admitted, vec![1]);
        // Child 1 expands in turn: its child 3 goes before its sibling 2 (deeper first).
        assert_eq!(s.expand(1, &children(1), 0.0).unwrap().admitted, vec![3]);
        assert_eq!(s.complete(3, 0.0).unwrap(), vec![2]);
        assert_eq!(s.take_closed(), vec![1]);
        assert_eq!(s.complete(2, 0.0).unwrap(), Vec::<u32>::new());
        assert_eq!(s.take_closed(), vec![0]);
        assert!(s.is_finished());
        // An expansion with no children closes its node at once.
        let mut s = Scheduler::new(graph(2, &[(0, 1)]), None, &[], None, None).unwrap();
        s.start(0.0).unwrap();
        assert_eq!(s.expand(0, &children(0), 0.0).unwrap().admitted, vec![1]);
        assert_eq!(s.take_closed(), vec![0]);
    }

    #[test]
    fn chained_each_steps_run_depth_first_per_item() {
        // list(0) -> fetch(1) -> count(2) -> total(3); fetch and count are placeholders.
        let g = graph(4, &[(0, 1), (1, 2), (2, 3)]);
        let keys = [capped(1), capped(2), KeyLimits::default()];
        let mut s = Scheduler::new(g, Some(vec![0, 1, 2, 0]), &keys, None, None).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![0]);
        // list's output arrives with 3 items: fetch_i = 4..7, count_i = 7..10.
        let n = 3;
        let mut grow = Growth { count: 2 * n, ..Growth::default() };
        for i in 0..n {
            grow.parents.push(Some(1));
            grow.sources.extend([0, 4 + i]);
            grow.targets.extend([4 + i, 4 + n + i]);
        }
        for _ in 0..n {
            grow.parents.push(Some(2));
        }
        assert_eq!(s.grow(&grow, 1.0).unwrap(), Outcome::default());
        assert_eq!(s.key_of[4..10].to_vec(), vec![1, 1, 1, 2, 2, 2]);
        // list done: two fetches (fetch's cap); the placeholders are never handed out.
        assert_eq!(s.complete(0, 2.0).unwrap(), vec![4, 5]);
        assert_eq!((s.state(1).unwrap(), s.state(2).unwrap()), (NodeState::Open, NodeState::Open));
        // Item 0 reaches count while items 1 and 2 are still being fetched.
        assert_eq!(s.complete(4, 3.0).unwrap(), vec![6, 7]);
        assert_eq!(s.complete(7, 4.0).unwrap(), Vec::<u32>::new());
        let why = s.explain(2).unwrap();
        assert_eq!((why.open_children, why.pending_inputs), (Some(2), 1));
        assert_eq!(s.complete_many(&[5, 6], 5.0).unwrap(), vec![8, 9]);
        assert_eq!(s.take_closed(), vec![1]);
        assert_eq!(s.complete_many(&[8, 9], 6.0).unwrap(), vec![3]);
        assert_eq!(s.take_closed(), vec![2]);
        s.complete(3, 7.0).unwrap();
        assert!(s.is_finished());
        assert_eq!(s.counts().done, 10);
    }

    #[test]
    fn a_placeholder_over_nothing_closes_when_its_input_is_done() {
        // 0 -> 1 -> 2; 1 is expanded into no items while 0 runs.
        let mut s = Scheduler::new(graph(3, &[(0, 1), (1, 2)]), None, &[], None, None).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![0]);
        s.expand(1, &children(0), 0.0).unwrap();
        assert_eq!(s.explain(1).unwrap().pending_inputs, 1);
        assert_eq!(s.complete(0, 0.0).unwrap(), vec![2]);
        assert_eq!(s.take_closed(), vec![1]);
        // Expanded before the start, with no inputs: it closes at the start.
        let mut s = Scheduler::new(graph(2, &[(0, 1)]), None, &[], None, None).unwrap();
        s.expand(0, &children(0), 0.0).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![1]);
        assert_eq!(s.take_closed(), vec![0]);
        // A queued node opened leaves the ready queue (run cap 1 holds node 1 there).
        let mut s = Scheduler::new(graph(3, &[]), None, &[], None, None).unwrap();
        s.set_global_cap(Some(1), 0.0).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![0]);
        assert_eq!(s.state(1).unwrap(), NodeState::Queued);
        s.expand(1, &children(1), 0.0).unwrap();
        assert_eq!(s.complete(0, 0.0).unwrap(), vec![3]);
        assert_eq!(s.complete(3, 0.0).unwrap(), vec![2]);
        assert_eq!(s.take_closed(), vec![1]);
    }

    #[test]
    fn a_failed_child_fails_its_open_ancestors_and_skips_their_successors() {
        // 0 -> 1; 0 expands into 2, which expands into 3 and 4; 4 fails.
        let mut s = Scheduler::new(graph(2, &[(0, 1)]), None, &[], None, None).unwrap();
        s.start(0.0).unwrap();
        s.expand(0, &children(1), 0.0).unwrap();
        assert_eq!(s.expand(2, &children(2), 0.0).unwrap().admitted, vec![3, 4]);
        let out = s.fail(4, 1.0).unwrap();
        assert_eq!(out.failed, vec![2, 0]);
        assert_eq!((out.skipped, out.skipped_by), (vec![1], vec![0]));
        assert_eq!(s.state(0).unwrap(), NodeState::Failed);
        // The sibling still runs and finishes; it closes nothing.
        assert_eq!(s.complete(3, 2.0).unwrap(), Vec::<u32>::new());
        assert!(s.take_closed().is_empty());
        assert!(s.is_finished());
        let c = s.counts();
        assert_eq!((c.failed, c.skipped, c.done, c.open), (3, 1, 1, 0));
    }

    #[test]
    fn skip_spreads_over_required_edges_and_lets_optional_ones_run() {
        // 0 -> 1 (required) -> 2 (optional) -> 3; 0 -> 4 (optional); 1 -> 5 (required).
        let g = graph(6, &[(0, 1), (1, 2), (2, 3), (0, 4), (1, 5)]);
        let mut s = Scheduler::new(g, None, &[], None, None).unwrap();
        s.set_optional(&[1, 0], &[2, 4]).unwrap();
        assert!(s.set_optional(&[0], &[3]).is_err());
        assert_eq!(s.start(0.0).unwrap(), vec![0]);
        let out = s.skip(0, 1.0).unwrap();
        assert_eq!(out.admitted, vec![2, 4]); // 2 has the longer path left
        assert_eq!(out.skipped, vec![1, 5]);
        assert_eq!(out.skipped_by, vec![0, 0]);
        assert_eq!(s.explain(1).unwrap().reason, Reason::Skipped);
        assert_eq!(s.explain(0).unwrap().reason, Reason::Skipped);
        assert_eq!(s.complete(2, 2.0).unwrap(), vec![3]);
        s.complete_many(&[3, 4], 3.0).unwrap();
        assert!(s.is_finished());
        assert_eq!(s.counts().skipped, 3);
        // A required and an optional edge between the same nodes: required wins.
        let mut s = Scheduler::new(graph(2, &[(0, 1), (0, 1)]), None, &[], None, None).unwrap();
        s.start(0.0).unwrap();
        let mut grow = Growth { count: 1, ..Growth::default() };
        grow.sources = vec![0, 0];
        grow.targets = vec![2, 2];
        grow.optional = vec![true, false];
        s.grow(&grow, 0.0).unwrap();
        let out = s.skip(0, 0.0).unwrap();
        assert_eq!(out.skipped, vec![1, 2]);
    }

    #[test]
    fn a_skipped_child_is_left_out_of_its_parent() {
        let mut s = Scheduler::new(graph(2, &[(0, 1)]), None, &[], None, None).unwrap();
        s.start(0.0).unwrap();
        // Children 2 -> 3 (required) and 4; 2 skips: 3 is skipped too, both left out.
        let mut grow = children(3);
        grow.sources = vec![2];
        grow.targets = vec![3];
        assert_eq!(s.expand(0, &grow, 0.0).unwrap().admitted, vec![2, 4]);
        let out = s.skip(2, 1.0).unwrap();
        assert_eq!((out.skipped, out.admitted), (vec![3], vec![]));
        assert_eq!(s.explain(0).unwrap().open_children, Some(1));
        assert_eq!(s.complete(4, 2.0).unwrap(), vec![1]);
        assert_eq!(s.take_closed(), vec![0]);
        // Every child skips: the parent closes, done, with no children's output.
        let mut s = Scheduler::new(graph(1, &[]), None, &[], None, None).unwrap();
        s.start(0.0).unwrap();
        s.expand(0, &children(1), 0.0).unwrap();
        s.skip(1, 0.0).unwrap();
        assert_eq!(s.take_closed(), vec![0]);
        assert!(s.is_finished());
    }

    #[test]
    fn growth_refuses_edges_that_could_close_a_cycle_and_changes_nothing() {
        // 0 -> 1 -> 2; 0 running, 1 and 2 waiting.
        let mut s = Scheduler::new(graph(3, &[(0, 1), (1, 2)]), None, &[], None, None).unwrap();
        s.start(0.0).unwrap();
        let edge = |src: Vec<u32>, dst: Vec<u32>| Growth {
            count: 2,
            sources: src,
            targets: dst,
            ..Growth::default()
        };
        let bad = [
            edge(vec![1], vec![3]), // from a waiting node
            edge(vec![4], vec![3]), // new to new, downwards
            edge(vec![3], vec![3]), // a self-loop
            edge(vec![0], vec![1]), // between existing nodes
            edge(vec![3], vec![0]), // into a running node
            edge(vec![0], vec![9]), // unknown
        ];
        let before = (s.node_count(), s.counts(), s.graph.edge_count());
        for g in &bad {
            let err = s.grow(g, 0.0).unwrap_err();
            assert!(
                matches!(err, CoreError::BadEdge { .. } | CoreError::UnknownNode { .. }),
                "{err:?}"
            );
            assert_eq!((s.node_count(), s.counts(), s.graph.edge_count()), before);
        }
        // Into a waiting node is fine: 2 waits for the new node 3 too.
        s.grow(&edge(vec![0, 3], vec![3, 2]), 0.0).unwrap();
        assert_eq!(s.explain(2).unwrap().pending_inputs, 2);
        // Bad lists and parents.
        let g = Growth { count: 1, keys: vec![7], ..Growth::default() };
        assert!(matches!(s.grow(&g, 0.0), Err(CoreError::UnknownId { .. })));
        let g = Growth { count: 2, weights: vec![1], ..Growth::default() };
        assert!(matches!(s.grow(&g, 0.0), Err(CoreError::InvalidValue { .. })));
        s.complete(0, 0.0).unwrap();
        assert!(matches!(s.expand(0, &children(1), 0.0), Err(CoreError::NoChildren { .. })));
        let g = Growth { count: 1, parents: vec![Some(0)], ..Growth::default() };
        assert!(matches!(s.expand(3, &g, 0.0), Err(CoreError::InvalidValue { .. })));
        // An open node is not running: complete, fail and skip say so.
        s.expand(3, &children(1), 0.0).unwrap();
        assert_eq!(s.complete(3, 0.0), Err(CoreError::NodeOpen { node: 3 }));
        assert_eq!(s.skip(3, 0.0), Err(CoreError::NodeOpen { node: 3 }));
        // A node opened by this growth cannot feed its own children.
        let g = Growth { count: 1, sources: vec![5], targets: vec![6], ..Growth::default() };
        assert!(matches!(s.expand(5, &g, 0.0), Err(CoreError::BadEdge { .. })));
    }

    #[test]
    fn finished_predecessors_decide_a_new_node_at_once() {
        // 0 fails, 1 skips, 2 completes; then new nodes hang off each.
        let mut s = Scheduler::new(graph(4, &[]), None, &[], None, None).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![0, 1, 2, 3]);
        s.fail(0, 0.0).unwrap();
        s.skip(1, 0.0).unwrap();
        s.complete(2, 0.0).unwrap();
        // 4 <- 0 (failed); 5 <- 1 required; 6 <- 1 optional; 7 <- 2 (done) and -> 8 <- 4.
        let g = Growth {
            count: 5,
            sources: vec![0, 1, 1, 2, 4, 7],
            targets: vec![4, 5, 6, 7, 8, 8],
            optional: vec![false, false, true, false, true, false],
            ..Growth::default()
        };
        let out = s.grow(&g, 1.0).unwrap();
        assert_eq!(out.skipped, vec![4, 5, 8]);
        assert_eq!(out.skipped_by, vec![0, 1, 0]);
        assert_eq!(out.admitted, vec![7, 6]); // 7 had a path through 8
        assert_eq!(s.explain(8).unwrap().reason, Reason::Finished);
        assert_eq!(s.explain(5).unwrap().reason, Reason::Skipped);
        // A child whose predecessor failed fails its parent at once.
        let g = Growth { count: 1, sources: vec![0], targets: vec![9], ..Growth::default() };
        let out = s.expand(3, &g, 2.0).unwrap();
        assert_eq!((out.skipped, out.failed), (vec![9], vec![3]));
        s.complete_many(&[6, 7], 3.0).unwrap();
        assert!(s.is_finished());
    }

    #[test]
    fn cancel_ends_open_nodes_cancelled_and_growth_after_it_runs_nothing() {
        let mut s = Scheduler::new(graph(2, &[]), None, &[capped(2)], None, None).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![0, 1]);
        assert_eq!(s.expand(0, &children(2), 0.0).unwrap().admitted, vec![2]);
        let cancelled = s.cancel();
        assert_eq!(cancelled, vec![0, 3]);
        assert_eq!(s.state(0).unwrap(), NodeState::Cancelled);
        // Node 2 runs on; it finishes normally and closes nothing.
        assert_eq!(s.complete(2, 0.0).unwrap(), Vec::<u32>::new());
        // A running node that expands after the cancel: it and its children end cancelled.
        let mut g = children(2);
        g.sources = vec![4];
        g.targets = vec![5];
        let out = s.expand(1, &g, 0.0).unwrap();
        assert_eq!(out, Outcome::default());
        assert_eq!(s.successors(4).unwrap(), Vec::<u32>::new());
        assert_eq!(s.state(1).unwrap(), NodeState::Cancelled);
        assert_eq!(s.state(5).unwrap(), NodeState::Cancelled);
        assert!(s.is_finished());
        assert_eq!(s.counts().cancelled, 5);
    }

    #[test]
    fn a_child_counts_against_every_cap_above_it() {
        // Step key 0 capped at 3; expansions' own keys under it, capped at 2 and 5.
        let mut s = Scheduler::new(graph(2, &[]), None, &[capped(3)], None, None).unwrap();
        let own = s.add_key(capped(2), Some(0)).unwrap();
        let other = s.add_key(capped(5), Some(0)).unwrap();
        assert!(matches!(s.add_key(capped(2), Some(9)), Err(CoreError::UnknownId { .. })));
        assert_eq!(s.start(0.0).unwrap(), vec![0, 1]);
        let g = Growth { count: 4, keys: vec![own; 4], ..Growth::default() };
        // Node 0's slot is free: two children (their own cap), node 1 still holds one.
        assert_eq!(s.expand(0, &g, 0.0).unwrap().admitted, vec![2, 3]);
        let why = s.explain(4).unwrap();
        assert_eq!((why.reason, why.key, why.limit_key), (Reason::StepCap, own, own));
        // Node 1 expands under the step's cap: one slot of key 0 left.
        let g = Growth { count: 2, keys: vec![other; 2], ..Growth::default() };
        assert_eq!(s.expand(1, &g, 0.0).unwrap().admitted, vec![6]);
        // Key `other` has room, key 0 above it does not: node 7 waits for the step's cap.
        let why = s.explain(7).unwrap();
        assert_eq!((why.reason, why.key, why.limit_key), (Reason::StepCap, other, 0));
        assert_eq!((why.key_running, why.key_cap.get()), (3, Some(3)));
        // A freed slot frees it in every key of the chain: the best waiting node gets it.
        assert_eq!(s.complete(2, 0.0).unwrap(), vec![4]);
        assert_eq!(s.complete_many(&[3, 4, 6], 0.0).unwrap(), vec![5, 7]);
        s.complete_many(&[5, 7], 0.0).unwrap();
        assert_eq!(s.take_closed(), vec![1, 0]);
        assert!(s.is_finished());
    }

    #[test]
    fn a_rate_above_a_childs_key_holds_it_too() {
        let keys = [KeyLimits { max_parallel: None, rate: Some((1.0, 2)) }];
        let mut s = Scheduler::new(graph(1, &[]), None, &keys, None, None).unwrap();
        let own =
            s.add_key(KeyLimits { max_parallel: None, rate: Some((10.0, 5)) }, Some(0)).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![0]);
        let g = Growth { count: 3, keys: vec![own; 3], ..Growth::default() };
        // One token left in key 0's bucket of 2: one child now, the next at t = 1.
        assert_eq!(s.expand(0, &g, 0.0).unwrap().admitted, vec![1]);
        let why = s.explain(2).unwrap();
        assert_eq!((why.reason, why.limit_key, why.next_token_at), (Reason::Rate, 0, Some(1.0)));
        assert_eq!(s.next_wakeup(), Some(1.0));
        assert_eq!(s.poll(1.0).unwrap(), vec![2]);
        assert_eq!(s.poll(2.0).unwrap(), vec![3]);
    }

    #[test]
    fn growth_before_the_start_and_a_resume_restore_children() {
        // A resumed run: node 0 had expanded into 3 children; two were done.
        let mut s = Scheduler::new(graph(2, &[(0, 1)]), None, &[], None, None).unwrap();
        s.expand(0, &children(3), 0.0).unwrap();
        assert_eq!(s.counts().waiting, 4);
        s.restore_done(&[2, 3]).unwrap();
        assert!(s.restore_done(&[0]).is_err());
        assert_eq!(s.start(0.0).unwrap(), vec![4]);
        assert_eq!(s.complete(4, 0.0).unwrap(), vec![1]);
        assert_eq!(s.take_closed(), vec![0]);
        // All children restored, and the parent with them: done at once.
        let mut s = Scheduler::new(graph(2, &[(0, 1)]), None, &[], None, None).unwrap();
        s.expand(0, &children(2), 0.0).unwrap();
        s.restore_done(&[2, 3, 0]).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![1]);
        assert_eq!(s.counts().done, 3);
    }

    #[test]
    fn children_take_a_worker_of_their_parents_class() {
        use crate::packing::{Demand, Placer, Policy};
        let placer = Placer::new(vec!["cpu".into()], Policy::FirstFit).unwrap();
        let mut pool = Pool::new(placer, 8);
        pool.add_worker(&[2], &[]).unwrap();
        let small = pool.add_class(Demand { amounts: vec![1], labels: vec![] }).unwrap();
        let big = pool.add_class(Demand { amounts: vec![2], labels: vec![] }).unwrap();
        let pool = std::sync::Arc::new(std::sync::Mutex::new(pool));
        let mut s = Scheduler::new(graph(1, &[]), None, &[], None, None).unwrap();
        s.attach_pool(pool.clone(), vec![small]).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![0]);
        // Three children of the parent's class: two fit beside each other, once it left.
        assert_eq!(s.expand(0, &children(3), 0.0).unwrap().admitted, vec![1, 2]);
        assert_eq!(s.placing(), 1);
        assert_eq!(s.explain(3).unwrap().reason, Reason::Placement);
        // A new node without a parent needs a class; one too large waits.
        assert!(s.grow(&children(1), 0.0).is_err());
        let g = Growth { count: 1, classes: vec![big], ..Growth::default() };
        assert_eq!(s.grow(&g, 0.0).unwrap().admitted, Vec::<u32>::new());
        let mut out = s.complete(1, 0.0).unwrap();
        out.extend(s.complete(2, 0.0).unwrap());
        assert_eq!(out, vec![3]);
        assert_eq!(s.complete(3, 0.0).unwrap(), vec![4]);
        s.complete(4, 0.0).unwrap();
        assert!(s.is_finished());
        assert_eq!(s.take_closed(), vec![0]);
    }

    /// The states the test expects to see, checked against the scheduler after every event.
    struct Model {
        /// Every edge, including children's edges to their parents.
        preds: Vec<Vec<u32>>,
        running: Vec<u32>,
        key_caps: Vec<u64>,
        key_parent: Vec<Option<u32>>,
        global_cap: u64,
    }

    impl Model {
        fn terminal(s: &Scheduler, v: u32) -> bool {
            matches!(
                s.state(v).unwrap(),
                NodeState::Done | NodeState::Failed | NodeState::Skipped | NodeState::Cancelled
            )
        }

        fn chain(&self, s: &Scheduler, v: u32) -> Vec<u32> {
            let mut keys = vec![s.key_of[v as usize]];
            while let Some(p) = self.key_parent[*keys.last().unwrap() as usize] {
                keys.push(p);
            }
            keys
        }

        fn check(&self, s: &Scheduler) -> Result<(), TestCaseError> {
            let n = s.node_count();
            let c = s.counts();
            let total = c.waiting + c.queued + c.running + c.done + c.failed + c.skipped;
            prop_assert_eq!(total + c.cancelled + c.open, n, "counts sum to the node count");
            let mut running: Vec<u32> =
                (0..n).filter(|&v| s.state(v).unwrap() == NodeState::Running).collect();
            let mut mine = self.running.clone();
            mine.sort_unstable();
            running.sort_unstable();
            prop_assert_eq!(&mine, &running, "what came out is what runs");
            let count =
                |st: NodeState| (0..n).filter(|&v| s.state(v).unwrap() == st).count() as u32;
            prop_assert_eq!(c.open, count(NodeState::Open));
            prop_assert_eq!(c.waiting, count(NodeState::Waiting));
            prop_assert_eq!(c.queued, count(NodeState::Queued));
            prop_assert!(running.len() as u64 <= self.global_cap);
            let mut per_key = vec![0u64; self.key_caps.len()];
            for &v in &running {
                for k in self.chain(s, v) {
                    per_key[k as usize] += 1;
                }
            }
            for (k, &used) in per_key.iter().enumerate() {
                prop_assert!(used <= self.key_caps[k], "key {} over its cap", k);
            }
            for v in 0..n {
                let unfinished_pred = self.preds[v as usize].iter().any(|&u| !Self::terminal(s, u));
                match s.state(v).unwrap() {
                    NodeState::Running | NodeState::Done | NodeState::Queued => {
                        prop_assert!(!unfinished_pred, "node {} ran before a predecessor", v);
                    }
                    NodeState::Waiting | NodeState::Open => {
                        prop_assert!(unfinished_pred, "node {} could go on but waits", v);
                    }
                    _ => {}
                }
                if s.state(v).unwrap() == NodeState::Open {
                    let why = s.explain(v).unwrap();
                    let preds = &self.preds[v as usize];
                    let left = |u: &&u32| !Self::terminal(s, **u);
                    let children =
                        preds.iter().filter(left).filter(|&&u| s.parent_of(u) == Some(v));
                    prop_assert_eq!(why.open_children, Some(children.count() as u32));
                    prop_assert_eq!(
                        why.pending_inputs + why.open_children.unwrap(),
                        preds.iter().filter(left).count() as u32
                    );
                }
                if s.state(v).unwrap() == NodeState::Queued {
                    let full = running.len() as u64 >= self.global_cap
                        || self
                            .chain(s, v)
                            .iter()
                            .any(|&k| per_key[k as usize] >= self.key_caps[k as usize]);
                    prop_assert!(
                        full,
                        "node {} is admissible but waits: chain {:?}, per key {:?}, caps {:?}, {:?}",
                        v,
                        self.chain(s, v),
                        per_key,
                        self.key_caps,
                        s.explain(v).unwrap()
                    );
                }
            }
            Ok(())
        }
    }

    /// Nodes, edges, each node's key, a key cap, a global cap, and the completion choices.
    type Run = (u32, Vec<(u32, u32)>, Vec<u32>, u64, u64, Vec<u8>);

    fn run_strategy() -> impl Strategy<Value = Run> {
        (1u32..40).prop_flat_map(|n| {
            let edge = (0..n, 0..n).prop_map(|(a, b)| if a < b { (a, b) } else { (b, a) });
            (
                Just(n),
                proptest::collection::vec(edge, 0..80),
                proptest::collection::vec(0u32..3, n as usize),
                1u64..4,
                1u64..6,
                proptest::collection::vec(any::<u8>(), n as usize),
            )
        })
    }

    proptest! {
        /// Under a rate limit (and a cap), nodes go out no faster than the bucket allows, and
        /// polling at each wake-up time drives every run to the end.
        #[test]
        fn rate_limited_runs_finish_within_the_rate(
            (n, edges, _, key_cap, _, choices) in run_strategy(),
            rate in 1.0f64..50.0,
            burst in 1u64..4,
        ) {
            let edges: Vec<(u32, u32)> = edges.into_iter().filter(|(a, b)| a != b).collect();
            let keys = [KeyLimits { max_parallel: Some(key_cap), rate: Some((rate, burst)) }];
            let mut s = Scheduler::new(graph(n, &edges), None, &keys, None, None).unwrap();
            let mut now = 0.0;
            let mut starts: Vec<f64> = Vec::new();
            let mut running: Vec<u32> = s.start(now).unwrap();
            starts.extend(running.iter().map(|_| now));
            let mut step = 0;
            while !s.is_finished() {
                prop_assert!(running.len() as u64 <= key_cap);
                let admitted = if running.is_empty() {
                    // Nothing runs: only time can help, and the scheduler must say when.
                    let wake = s.next_wakeup();
                    prop_assert!(wake.is_some(), "stuck with nothing running and no wake-up");
                    now = wake.unwrap().max(now);
                    s.poll(now).unwrap()
                } else {
                    now += f64::from(choices[step % choices.len()]) / 2000.0;
                    let pick = choices[step % choices.len()] as usize % running.len();
                    step += 1;
                    let node = running.swap_remove(pick);
                    let mut out = s.complete(node, now).unwrap();
                    out.extend(s.poll(now).unwrap());
                    out
                };
                starts.extend(admitted.iter().map(|_| now));
                running.extend(admitted);
            }
            prop_assert_eq!(s.counts().done, n);
            for (i, &a) in starts.iter().enumerate() {
                for (j, &b) in starts.iter().enumerate().skip(i) {
                    prop_assert!((j - i + 1) as f64 <= burst as f64 + rate * (b - a) + 1e-6);
                }
            }
        }

        /// A run that grows while it runs, with random events (complete, skip, fail, a running
        /// node expanding, a waiting node expanded as a placeholder, plain growth into waiting
        /// nodes, new capped keys under old ones): after every event the counts add up and
        /// match the states, what came out is what runs, caps hold along every key chain,
        /// nothing admissible waits, nothing runs or closes before its inputs and children,
        /// nothing that could go on waits; and every run ends.
        #[test]
        fn growing_runs_keep_every_invariant_and_end(
            (n, edges, key_of, key_cap, global_cap, choices) in run_strategy(),
            events in proptest::collection::vec(any::<u32>(), 1..120),
        ) {
            let edges: Vec<(u32, u32)> = edges.into_iter().filter(|(a, b)| a != b).collect();
            let g = graph(n, &edges);
            let keys = vec![capped(key_cap), capped(key_cap + 1), KeyLimits::default()];
            let mut s = Scheduler::new(g, Some(key_of), &keys, None, None).unwrap();
            s.set_global_cap(Some(global_cap + 1), 0.0).unwrap();
            let mut preds = vec![Vec::new(); n as usize];
            for &(a, b) in &edges {
                preds[b as usize].push(a);
            }
            let mut m = Model {
                preds,
                running: Vec::new(),
                key_caps: vec![key_cap, key_cap + 1, u64::MAX],
                key_parent: vec![None; 3],
                global_cap: global_cap + 1,
            };
            let opt_edges: Vec<(u32, u32)> =
                edges.iter().copied().filter(|&(a, b)| (a + b) % 3 == 0).collect();
            let (os, ot): (Vec<u32>, Vec<u32>) = opt_edges.into_iter().unzip();
            s.set_optional(&os, &ot).unwrap();
            m.running = s.start(0.0).unwrap();
            m.check(&s)?;
            let mut now = 0.0;
            let mut step = 0usize;
            let mut closed_seen = 0usize;
            while !m.running.is_empty() {
                now += 0.001;
                let e = events[step % events.len()];
                let c = u32::from(choices[step % choices.len()]);
                step += 1;
                let pick = (e as usize / 7) % m.running.len();
                let node = m.running[pick];
                let action = if step > 400 { 0 } else { e % 10 };
                match action {
                    // A running node (sent) expands into a few children with random edges.
                    5 | 6 if s.explain(node).unwrap().reason == Reason::Running => {
                        m.running.swap_remove(pick);
                        let first = s.node_count();
                        let k = c % 4;
                        let mut grow = Growth { count: k, ..Growth::default() };
                        for i in 1..k {
                            if (e >> i) & 1 == 1 {
                                grow.sources.push(first + (c >> i) % i);
                                grow.targets.push(first + i);
                                grow.optional.push((e >> (i + 8)) & 1 == 1);
                            }
                        }
                        if e & 0x100 != 0 {
                            // The children under a new key below the parent's.
                            let parent_key = s.key_of[node as usize];
                            let cap = u64::from(1 + c % 3);
                            let key = s.add_key(capped(cap), Some(parent_key)).unwrap();
                            m.key_caps.push(cap);
                            m.key_parent.push(Some(parent_key));
                            grow.keys = vec![key; k as usize];
                        }
                        for v in 0..k {
                            m.preds.push(Vec::new());
                            m.preds[node as usize].push(first + v);
                        }
                        for (&u, &v) in grow.sources.iter().zip(&grow.targets) {
                            m.preds[v as usize].push(u);
                        }
                        let out = s.expand(node, &grow, now).unwrap();
                        m.running.extend(out.admitted);
                    }
                    // A waiting node becomes a placeholder: items hang off running or finished
                    // nodes (the placeholder's inputs stay its own).
                    7 => {
                        let waiting: Vec<u32> = (0..s.node_count())
                            .filter(|&v| s.state(v).unwrap() == NodeState::Waiting)
                            .collect();
                        if let Some(&p) = waiting.get(c as usize % waiting.len().max(1)) {
                            let first = s.node_count();
                            let k = c % 3;
                            let mut grow = Growth { count: k, ..Growth::default() };
                            for i in 0..k {
                                m.preds.push(Vec::new());
                                m.preds[p as usize].push(first + i);
                                let src = (e >> (i * 3)) % first;
                                if !matches!(
                                    s.state(src).unwrap(),
                                    NodeState::Waiting | NodeState::Queued | NodeState::Open
                                ) {
                                    grow.sources.push(src);
                                    grow.targets.push(first + i);
                                    grow.optional.push(e & (1 << (20 + i)) != 0);
                                    m.preds[(first + i) as usize].push(src);
                                }
                            }
                            let out = s.expand(p, &grow, now).unwrap();
                            m.running.extend(out.admitted);
                        }
                    }
                    // Plain growth: a new node after a running one, feeding a waiting one.
                    8 => {
                        let first = s.node_count();
                        let target = (0..first)
                            .find(|&v| s.state(v).unwrap() == NodeState::Waiting && (v + c) % 2 == 0);
                        let mut grow = Growth {
                            count: 1,
                            sources: vec![node],
                            targets: vec![first],
                            keys: vec![c % 3],
                            ..Growth::default()
                        };
                        m.preds.push(vec![node]);
                        if let Some(t) = target {
                            grow.sources.push(first);
                            grow.targets.push(t);
                            m.preds[t as usize].push(first);
                        }
                        let out = s.grow(&grow, now).unwrap();
                        m.running.extend(out.admitted);
                    }
                    9 if c % 4 == 0 => {
                        m.running.swap_remove(pick);
                        let out = s.fail(node, now).unwrap();
                        m.running.extend(out.admitted);
                    }
                    3 | 4 => {
                        m.running.swap_remove(pick);
                        let out = s.skip(node, now).unwrap();
                        prop_assert_eq!(out.skipped.len(), out.skipped_by.len());
                        m.running.extend(out.admitted);
                    }
                    _ => {
                        m.running.swap_remove(pick);
                        let out = s.complete(node, now).unwrap();
                        m.running.extend(out);
                    }
                }
                for v in s.take_closed() {
                    prop_assert_eq!(s.state(v).unwrap(), NodeState::Done);
                    closed_seen += 1;
                }
                m.check(&s)?;
            }
            prop_assert!(s.is_finished(), "the run ends: {:?}", s.counts());
            prop_assert!(closed_seen as u32 <= s.counts().done);
        }

        /// Admission never exceeds a cap, never leaves an admissible node waiting, respects edges.
        #[test]
        fn caps_hold_and_nothing_admissible_waits(
            (n, edges, key_of, key_cap, global_cap, choices) in run_strategy()
        ) {
            let edges: Vec<(u32, u32)> = edges.into_iter().filter(|(a, b)| a != b).collect();
            let g = graph(n, &edges);
            let keys = vec![capped(key_cap), capped(key_cap + 1), KeyLimits::default()];
            let caps = [key_cap, key_cap + 1, u64::MAX];
            let mut s = Scheduler::new(g, Some(key_of.clone()), &keys, None, None).unwrap();
            s.set_global_cap(Some(global_cap), 0.0).unwrap();
            let mut running: Vec<u32> = s.start(0.0).unwrap();
            let mut done = vec![false; n as usize];
            let mut step = 0;
            while !running.is_empty() {
                // Caps hold.
                prop_assert!(running.len() as u64 <= global_cap);
                for k in 0..3u32 {
                    let c = running.iter().filter(|&&v| key_of[v as usize] == k).count() as u64;
                    prop_assert!(c <= caps[k as usize]);
                }
                // Every predecessor of a running node is done.
                for &(a, b) in &edges {
                    if running.contains(&b) { prop_assert!(done[a as usize]); }
                }
                // Nothing admissible waits: every queued node is blocked by a full cap.
                for v in 0..n {
                    if s.state(v).unwrap() == NodeState::Queued {
                        let k = key_of[v as usize];
                        let key_full = running.iter()
                            .filter(|&&r| key_of[r as usize] == k).count() as u64 >= caps[k as usize];
                        prop_assert!(running.len() as u64 >= global_cap || key_full);
                    }
                }
                let pick = choices[step % choices.len()] as usize % running.len();
                step += 1;
                let node = running.swap_remove(pick);
                done[node as usize] = true;
                running.extend(s.complete(node, 0.0).unwrap());
            }
            prop_assert!(s.is_finished());
            prop_assert_eq!(s.counts().done, n);
        }
    }
}
