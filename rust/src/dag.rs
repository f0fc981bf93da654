//! Directed acyclic graphs on dense integer ids, and the `graphlib`-shaped ready-queue state machine.
//!
//! Nodes are `u32` ids `0..n`; names live with the caller. A [`GraphBuilder`] collects edges in bulk
//! and [`GraphBuilder::build`] turns them into a compressed adjacency array ([`Graph`]): one offset per
//! node and one target per edge, edges of a node kept in insertion order. Every algorithm here is
//! iterative (a 10^6-node chain must not touch the call stack) and hashing-free.
//!
//! [`Sorter`] runs a graph the way `graphlib.TopologicalSorter` does: `prepare`, `get_ready`,
//! `done`, with the same order of ready nodes and the same errors, so a drop-in Python class can sit on
//! top of it. The ranked, admission-controlled state machine lives in [`crate::scheduler`].

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::{CoreError, CoreResult};

/// Hashes a node id by one multiplication (ids are dense integers, not attacker-chosen keys).
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = (u64::from(id) ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (id ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A map keyed by node ids.
pub type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// Largest node or edge count: ids and offsets are `u32`, and two values are reserved as states.
pub const MAX_IDS: u64 = u32::MAX as u64 - 2;

/// Collects nodes and edges before a [`Graph`] is built.
#[derive(Debug, Clone, Default)]
pub struct GraphBuilder {
    node_count: u32,
    src: Vec<u32>,
    dst: Vec<u32>,
}

impl GraphBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder with `node_count` nodes and no edges.
    pub fn with_nodes(node_count: u32) -> CoreResult<Self> {
        let mut builder = Self::new();
        builder.add_nodes(node_count)?;
        Ok(builder)
    }

    /// Number of nodes so far.
    pub fn node_count(&self) -> u32 {
        self.node_count
    }

    /// Number of edges so far.
    pub fn edge_count(&self) -> usize {
        self.src.len()
    }

    /// Adds `count` nodes and returns the id of the first one.
    pub fn add_nodes(&mut self, count: u32) -> CoreResult<u32> {
        let first = self.node_count;
        let total = u64::from(first) + u64::from(count);
        if total > MAX_IDS {
            return Err(CoreError::TooLarge { what: "nodes", count: total, limit: MAX_IDS });
        }
        self.node_count = total as u32;
        Ok(first)
    }

    /// Adds the edges `src[i] -> dst[i]`. All or nothing: on an unknown id nothing is added.
    pub fn add_edges(&mut self, src: &[u32], dst: &[u32]) -> CoreResult<()> {
        if src.len() != dst.len() {
            return Err(CoreError::invalid(
                "edge lists",
                "of equal length",
                format!("{} sources and {} targets", src.len(), dst.len()),
            ));
        }
        let total = (self.src.len() + src.len()) as u64;
        if total > MAX_IDS {
            return Err(CoreError::TooLarge { what: "edges", count: total, limit: MAX_IDS });
        }
        let n = self.node_count;
        if let Some(&bad) = src.iter().chain(dst).find(|&&id| id >= n) {
            return Err(CoreError::UnknownNode { node: bad, node_count: n });
        }
        self.src.extend_from_slice(src);
        self.dst.extend_from_slice(dst);
        Ok(())
    }

    /// Adds the edges `sources[i] -> target`, one per source (repeats make parallel edges). All or
    /// nothing, like [`GraphBuilder::add_edges`].
    pub fn add_edges_to(&mut self, target: u32, sources: &[u32]) -> CoreResult<()> {
        let total = (self.src.len() + sources.len()) as u64;
        if total > MAX_IDS {
            return Err(CoreError::TooLarge { what: "edges", count: total, limit: MAX_IDS });
        }
        let n = self.node_count;
        if let Some(&bad) = sources.iter().chain(std::iter::once(&target)).find(|&&id| id >= n) {
            return Err(CoreError::UnknownNode { node: bad, node_count: n });
        }
        self.src.extend_from_slice(sources);
        self.dst.extend(std::iter::repeat_n(target, sources.len()));
        Ok(())
    }

    /// Builds the adjacency arrays. Cycles are allowed here; see [`Graph::topological_order`].
    pub fn build(&self) -> Graph {
        let n = self.node_count as usize;
        // Counting sort of the edges by source; stable, so each node keeps its insertion order.
        let mut offsets = vec![0u32; n + 1];
        for &s in &self.src {
            offsets[s as usize + 1] += 1;
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let mut cursor: Vec<u32> = offsets[..n].to_vec();
        let mut targets = vec![0u32; self.src.len()];
        for (&s, &d) in self.src.iter().zip(&self.dst) {
            let slot = &mut cursor[s as usize];
            targets[*slot as usize] = d;
            *slot += 1;
        }
        Graph { offsets, targets }
    }
}

/// An immutable graph in compressed adjacency form. May contain cycles until checked.
#[derive(Debug, Clone)]
pub struct Graph {
    offsets: Vec<u32>,
    targets: Vec<u32>,
}

impl Default for Graph {
    /// The graph without nodes.
    fn default() -> Self {
        Self { offsets: vec![0], targets: Vec::new() }
    }
}

impl Graph {
    /// Builds a graph from `node_count` nodes and edge lists.
    pub fn from_edges(node_count: u32, src: &[u32], dst: &[u32]) -> CoreResult<Self> {
        let mut builder = GraphBuilder::with_nodes(node_count)?;
        builder.add_edges(src, dst)?;
        Ok(builder.build())
    }

    /// Number of nodes.
    pub fn node_count(&self) -> u32 {
        (self.offsets.len() - 1) as u32
    }

    /// Number of edges (parallel edges count separately).
    pub fn edge_count(&self) -> usize {
        self.targets.len()
    }

    /// The successors of `node`, in insertion order.
    #[inline]
    pub fn successors(&self, node: u32) -> &[u32] {
        let i = node as usize;
        &self.targets[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// Checks that `node` exists.
    pub fn check_node(&self, node: u32) -> CoreResult<()> {
        if node < self.node_count() {
            Ok(())
        } else {
            Err(CoreError::UnknownNode { node, node_count: self.node_count() })
        }
    }

    /// Number of incoming edges of every node.
    pub fn in_degrees(&self) -> Vec<u32> {
        let mut indegree = vec![0u32; self.node_count() as usize];
        for &t in &self.targets {
            indegree[t as usize] += 1;
        }
        indegree
    }

    /// A topological order (Kahn's algorithm, sources in id order, then first-come first-served).
    ///
    /// Fails with [`CoreError::Cycle`] carrying one cycle of the graph.
    pub fn topological_order(&self) -> CoreResult<Vec<u32>> {
        let mut pending = self.in_degrees();
        let mut order: Vec<u32> = Vec::with_capacity(pending.len());
        order.extend((0..self.node_count()).filter(|&v| pending[v as usize] == 0));
        let mut head = 0;
        while head < order.len() {
            let node = order[head];
            head += 1;
            for &s in self.successors(node) {
                let p = &mut pending[s as usize];
                *p -= 1;
                if *p == 0 {
                    order.push(s);
                }
            }
        }
        if order.len() == pending.len() {
            Ok(order)
        } else {
            Err(CoreError::Cycle { path: self.cycle_among(&pending) })
        }
    }

    /// One cycle of the graph, if it has any: `[a, b, ..., a]` with every step an edge.
    pub fn find_cycle(&self) -> Option<Vec<u32>> {
        match self.topological_order() {
            Ok(_) => None,
            Err(CoreError::Cycle { path }) => Some(path),
            Err(_) => unreachable!("topological_order only fails with a cycle"),
        }
    }

    /// The cycle `graphlib.TopologicalSorter.prepare` reports, if the graph has one.
    ///
    /// `CPython`'s search, step for step but without recursion: a depth-first walk started from
    /// each unvisited node in id (insertion) order, successors in insertion order; the first edge
    /// back into the current path closes the cycle, reported from that node along the path and
    /// back to it. For `{1: [2], 2: [1]}` (ids 1 → 0, 2 → 1) that is `[1, 2, 1]`.
    pub fn graphlib_cycle(&self) -> Option<Vec<u32>> {
        const OFF_PATH: u32 = u32::MAX;
        if self.edges_go_forward() {
            return None;
        }
        let n = self.node_count() as usize;
        let mut seen = vec![false; n];
        // Position of each node on the current path, or OFF_PATH.
        let mut on_path = vec![OFF_PATH; n];
        let mut path: Vec<u32> = Vec::new();
        // For each path entry, the index of its next successor edge in `targets`.
        let mut cursor: Vec<u32> = Vec::new();
        for start in 0..self.node_count() {
            if seen[start as usize] {
                continue;
            }
            let mut node = start;
            loop {
                if seen[node as usize] {
                    let at = on_path[node as usize];
                    if at != OFF_PATH {
                        let mut cycle = path[at as usize..].to_vec();
                        cycle.push(node);
                        return Some(cycle);
                    }
                } else {
                    seen[node as usize] = true;
                    on_path[node as usize] = path.len() as u32;
                    path.push(node);
                    cursor.push(self.offsets[node as usize]);
                }
                // Back up to the deepest path entry with a successor left.
                let mut next = None;
                while let (Some(&top), Some(edge)) = (path.last(), cursor.last_mut()) {
                    if *edge < self.offsets[top as usize + 1] {
                        next = Some(self.targets[*edge as usize]);
                        *edge += 1;
                        break;
                    }
                    on_path[top as usize] = OFF_PATH;
                    path.pop();
                    cursor.pop();
                }
                match next {
                    Some(successor) => node = successor,
                    None => break,
                }
            }
        }
        None
    }

    /// Whether every edge goes from a lower id to a higher one, which no cycle can: the common
    /// case when nodes are added after their predecessors, checked in one sequential pass.
    fn edges_go_forward(&self) -> bool {
        (0..self.node_count()).all(|u| self.successors(u).iter().all(|&v| v > u))
    }

    /// Finds a cycle among the nodes Kahn's algorithm could not release (`pending > 0`).
    ///
    /// Each such node has a predecessor that is also stuck, so walking backwards along stuck
    /// predecessors must revisit a node; the revisited stretch, reversed, is a cycle.
    fn cycle_among(&self, pending: &[u32]) -> Vec<u32> {
        const NONE: u32 = u32::MAX;
        let mut stuck_pred = vec![NONE; pending.len()];
        let mut start = NONE;
        for u in 0..self.node_count() {
            if pending[u as usize] == 0 {
                continue;
            }
            start = u;
            for &v in self.successors(u) {
                if pending[v as usize] > 0 {
                    stuck_pred[v as usize] = u;
                }
            }
        }
        let mut seen_at = vec![NONE; pending.len()];
        let mut walk: Vec<u32> = Vec::new();
        let mut node = start;
        while seen_at[node as usize] == NONE {
            seen_at[node as usize] = walk.len() as u32;
            walk.push(node);
            node = stuck_pred[node as usize];
        }
        walk.push(node);
        let mut cycle = walk.split_off(seen_at[node as usize] as usize);
        cycle.reverse();
        cycle
    }

    /// The level of every node: 0 for nodes without predecessors, else one more than the deepest
    /// predecessor. Nodes of one level can all run at once.
    pub fn levels(&self) -> CoreResult<Vec<u32>> {
        let order = self.topological_order()?;
        let mut level = vec![0u32; order.len()];
        for &u in &order {
            let next = level[u as usize] + 1;
            for &s in self.successors(u) {
                let l = &mut level[s as usize];
                *l = (*l).max(next);
            }
        }
        Ok(level)
    }

    /// For every node, the heaviest path that starts at it (its own weight included).
    ///
    /// `weights` defaults to 1 per node, which makes this the longest remaining path in nodes.
    pub fn bottom_levels(&self, weights: Option<&[u64]>) -> CoreResult<Vec<u64>> {
        let order = self.topological_order()?;
        self.bottom_levels_in(&order, weights)
    }

    pub(crate) fn bottom_levels_in(
        &self,
        order: &[u32],
        weights: Option<&[u64]>,
    ) -> CoreResult<Vec<u64>> {
        let n = self.node_count() as usize;
        if let Some(w) = weights {
            if w.len() != n {
                return Err(CoreError::invalid(
                    "weights",
                    "one per node",
                    format!("{} weights for {n} nodes", w.len()),
                ));
            }
        }
        let weight = |v: u32| weights.map_or(1, |w| w[v as usize]);
        let mut bottom = vec![0u64; n];
        for &u in order.iter().rev() {
            let below = self.successors(u).iter().map(|&s| bottom[s as usize]).max().unwrap_or(0);
            bottom[u as usize] = below.saturating_add(weight(u));
        }
        Ok(bottom)
    }

    /// The heaviest path through the graph: its total weight and its nodes, first to last.
    pub fn critical_path(&self, weights: Option<&[u64]>) -> CoreResult<(u64, Vec<u32>)> {
        let bottom = self.bottom_levels(weights)?;
        let Some((start, &length)) =
            bottom.iter().enumerate().max_by_key(|&(i, &b)| (b, std::cmp::Reverse(i)))
        else {
            return Ok((0, Vec::new()));
        };
        let mut path = vec![start as u32];
        let mut node = start as u32;
        // Follow the successor that carries the rest of the heaviest path.
        while let Some(&next) = self
            .successors(node)
            .iter()
            .max_by_key(|&&s| (bottom[s as usize], std::cmp::Reverse(s)))
        {
            path.push(next);
            node = next;
        }
        Ok((length, path))
    }
}

/// A graph that grows while it runs: the [`Graph`] it started with, nodes appended with their own
/// out-edges (compressed adjacency, appended in place), and edges added later out of nodes that
/// existed already (a list per such node, in a map: nothing per node is allocated for them).
///
/// Appending costs O(added nodes + added edges): the arrays are reserved with room for as many
/// nodes and edges again as the graph started with ([`LiveGraph::new`]), so the first growth of a
/// large graph copies nothing, and later ones double as a `Vec` does (amortized O(1) per added
/// node, whatever the graph's size). Successors of a node are its own edges in insertion order,
/// then the edges added out of it later, in insertion order.
#[derive(Debug, Clone, Default)]
pub struct LiveGraph {
    csr: Graph,
    /// Edges added out of nodes that existed already, by source.
    added: IdMap<Vec<u32>>,
    /// Edges in `added`.
    added_edges: usize,
}

impl LiveGraph {
    /// Wraps `graph`, reserving room to grow by as many nodes and edges again.
    pub fn new(mut graph: Graph) -> Self {
        let nodes = graph.offsets.len();
        let edges = graph.targets.len();
        graph.offsets.reserve(nodes.max(64));
        graph.targets.reserve(edges.max(64));
        Self { csr: graph, added: IdMap::default(), added_edges: 0 }
    }

    /// The compressed part: every node with its own out-edges (those added with it or before the
    /// run), without edges added later out of existing nodes.
    pub fn csr(&self) -> &Graph {
        &self.csr
    }

    /// Number of nodes.
    #[inline]
    pub fn node_count(&self) -> u32 {
        self.csr.node_count()
    }

    /// Number of edges (parallel edges count separately).
    pub fn edge_count(&self) -> usize {
        self.csr.edge_count() + self.added_edges
    }

    /// Checks that `node` exists.
    #[inline]
    pub fn check_node(&self, node: u32) -> CoreResult<()> {
        self.csr.check_node(node)
    }

    /// The successors of `node`: its own edges, and those added out of it later.
    #[inline]
    pub fn successor_parts(&self, node: u32) -> (&[u32], &[u32]) {
        let own = self.csr.successors(node);
        if self.added.is_empty() {
            return (own, &[]);
        }
        match self.added.get(&node) {
            Some(list) => (own, list),
            None => (own, &[]),
        }
    }

    /// The range of `node`'s own edges, for [`LiveGraph::own_target`].
    #[inline]
    pub fn own_edges(&self, node: u32) -> std::ops::Range<usize> {
        let i = node as usize;
        self.csr.offsets[i] as usize..self.csr.offsets[i + 1] as usize
    }

    /// The target of own edge `edge` (an index of [`LiveGraph::own_edges`]).
    #[inline]
    pub fn own_target(&self, edge: usize) -> u32 {
        self.csr.targets[edge]
    }

    /// The edges added out of `node` after it was added.
    #[inline]
    pub fn added_successors(&self, node: u32) -> &[u32] {
        self.successor_parts(node).1
    }

    /// The successors of `node`, its own edges first.
    pub fn successors(&self, node: u32) -> impl Iterator<Item = u32> + '_ {
        let (own, added) = self.successor_parts(node);
        own.iter().chain(added).copied()
    }

    /// Whether any edge was added out of an existing node.
    #[inline]
    pub fn has_added_edges(&self) -> bool {
        !self.added.is_empty()
    }

    /// Appends one node with its out-edges and returns its id. The caller checks ids and limits.
    pub fn push_node(&mut self, successors: &[u32]) -> u32 {
        let id = self.node_count();
        self.csr.targets.extend_from_slice(successors);
        self.csr.offsets.push(self.csr.targets.len() as u32);
        id
    }

    /// Adds the edge `node -> target` out of an existing node, after its own edges.
    pub fn add_edge(&mut self, node: u32, target: u32) {
        self.added.entry(node).or_default().push(target);
        self.added_edges += 1;
    }
}

/// Marks in [`Sorter`]'s `pending` array; real counts are below [`MAX_IDS`].
const OUT: u32 = u32::MAX - 1;
const DONE: u32 = u32::MAX;

/// The `graphlib.TopologicalSorter` state machine on integer ids.
///
/// Ready nodes come out exactly in `graphlib`'s order: initially by id, then in the order `done`
/// released them, each node's successors in insertion order.
#[derive(Debug, Clone, Default)]
pub struct Sorter {
    builder: GraphBuilder,
    graph: Option<Graph>,
    /// Predecessors not yet done, or [`OUT`] / [`DONE`].
    pending: Vec<u32>,
    ready: Vec<u32>,
    /// The batch most recently handed out by [`Sorter::take_ready`] (reused, never reallocated).
    handed: Vec<u32>,
    passed_out: u32,
    finished: u32,
}

impl Sorter {
    /// An empty sorter.
    pub fn new() -> Self {
        Self::default()
    }

    /// A sorter over `node_count` nodes and the given edges.
    pub fn from_edges(node_count: u32, src: &[u32], dst: &[u32]) -> CoreResult<Self> {
        let mut sorter = Self::new();
        sorter.add_nodes(node_count)?;
        sorter.add_edges(src, dst)?;
        Ok(sorter)
    }

    /// Adds `count` nodes; returns the first new id.
    pub fn add_nodes(&mut self, count: u32) -> CoreResult<u32> {
        self.check_building()?;
        self.builder.add_nodes(count)
    }

    /// Adds edges `src[i] -> dst[i]` (all or nothing).
    pub fn add_edges(&mut self, src: &[u32], dst: &[u32]) -> CoreResult<()> {
        self.check_building()?;
        self.builder.add_edges(src, dst)
    }

    /// Adds edges from each of `sources` to `target` (all or nothing): `graphlib`'s
    /// `add(target, *sources)` once both are ids.
    pub fn add_edges_to(&mut self, target: u32, sources: &[u32]) -> CoreResult<()> {
        self.check_building()?;
        self.builder.add_edges_to(target, sources)
    }

    fn check_building(&self) -> CoreResult<()> {
        if self.graph.is_some() {
            Err(CoreError::Frozen)
        } else {
            Ok(())
        }
    }

    /// Number of nodes.
    pub fn node_count(&self) -> u32 {
        self.builder.node_count()
    }

    /// Whether `prepare` has run.
    pub fn is_prepared(&self) -> bool {
        self.graph.is_some()
    }

    /// Freezes the graph and releases the nodes without predecessors.
    ///
    /// On a cycle this still prepares (the acyclic part can be run, as in `graphlib`) and then fails
    /// with [`CoreError::Cycle`], carrying the cycle `graphlib` reports ([`Graph::graphlib_cycle`]).
    pub fn prepare(&mut self) -> CoreResult<()> {
        if self.graph.is_some() {
            return Err(CoreError::AlreadyPrepared);
        }
        let graph = self.builder.build();
        self.builder = GraphBuilder::new();
        self.pending = graph.in_degrees();
        self.ready = (0..graph.node_count()).filter(|&v| self.pending[v as usize] == 0).collect();
        let cycle = graph.graphlib_cycle();
        self.graph = Some(graph);
        match cycle {
            Some(path) => Err(CoreError::Cycle { path }),
            None => Ok(()),
        }
    }

    fn graph(&self) -> CoreResult<&Graph> {
        self.graph.as_ref().ok_or(CoreError::NotPrepared)
    }

    /// Hands out every node that became ready since the last call, and marks them as out.
    pub fn get_ready(&mut self) -> CoreResult<Vec<u32>> {
        self.take_ready().map(<[u32]>::to_vec)
    }

    /// [`Sorter::get_ready`] without allocating: the batch is valid until the next call.
    pub fn take_ready(&mut self) -> CoreResult<&[u32]> {
        self.graph()?;
        std::mem::swap(&mut self.ready, &mut self.handed);
        self.ready.clear();
        for &v in &self.handed {
            self.pending[v as usize] = OUT;
        }
        self.passed_out += self.handed.len() as u32;
        Ok(&self.handed)
    }

    /// Whether more nodes can be handed out or are still out.
    pub fn is_active(&self) -> CoreResult<bool> {
        self.graph()?;
        Ok(self.finished < self.passed_out || !self.ready.is_empty())
    }

    /// Marks `nodes` done. All or nothing: if any node is unknown, not out, or done twice (also within
    /// `nodes`), nothing changes.
    pub fn done(&mut self, nodes: &[u32]) -> CoreResult<()> {
        self.mark_done(nodes, false).map_err(|(_, err)| err)?;
        let graph = self.graph.as_ref().ok_or(CoreError::NotPrepared)?;
        for &node in nodes {
            for &s in graph.successors(node) {
                let p = &mut self.pending[s as usize];
                *p -= 1;
                if *p == 0 {
                    self.ready.push(s);
                }
            }
        }
        self.finished += nodes.len() as u32;
        Ok(())
    }

    /// The error `done(nodes)` would give, with the position in `nodes` of the first bad node
    /// (the one `graphlib` trips over), changing nothing.
    pub fn check_done(&mut self, nodes: &[u32]) -> Result<(), (usize, CoreError)> {
        self.mark_done(nodes, true)
    }

    /// Marks `nodes` done without releasing successors; on the first bad node (or always, with
    /// `dry_run`) every mark is undone.
    fn mark_done(&mut self, nodes: &[u32], dry_run: bool) -> Result<(), (usize, CoreError)> {
        let node_count = self.graph.as_ref().ok_or((0, CoreError::NotPrepared))?.node_count();
        let mut fault = None;
        let mut marked = 0;
        for &node in nodes {
            fault = if node >= node_count {
                Some(CoreError::UnknownNode { node, node_count })
            } else {
                match self.pending[node as usize] {
                    OUT => None,
                    DONE => Some(CoreError::AlreadyDone { node }),
                    _ => Some(CoreError::NotPassedOut { node }),
                }
            };
            if fault.is_some() {
                break;
            }
            self.pending[node as usize] = DONE;
            marked += 1;
        }
        if fault.is_some() || dry_run {
            for &undo in &nodes[..marked] {
                self.pending[undo as usize] = OUT;
            }
        }
        fault.map_or(Ok(()), |err| Err((marked, err)))
    }

    /// `done(&[node])` then `take_ready()`: one completion in, the nodes now ready out.
    ///
    /// The orchestrator's hot path, so it is written out for one node: one state check, one pass
    /// over the successors, and the batch returned from a reused buffer.
    pub fn complete(&mut self, node: u32) -> CoreResult<&[u32]> {
        let graph = self.graph.as_ref().ok_or(CoreError::NotPrepared)?;
        let state = self
            .pending
            .get(node as usize)
            .copied()
            .ok_or(CoreError::UnknownNode { node, node_count: graph.node_count() })?;
        match state {
            OUT => {}
            DONE => return Err(CoreError::AlreadyDone { node }),
            _ => return Err(CoreError::NotPassedOut { node }),
        }
        self.pending[node as usize] = DONE;
        self.finished += 1;
        std::mem::swap(&mut self.ready, &mut self.handed);
        self.ready.clear();
        // Nodes released earlier by `done` and not yet handed out go first, as in `get_ready`.
        for &v in &self.handed {
            self.pending[v as usize] = OUT;
        }
        for &s in graph.successors(node) {
            let p = &mut self.pending[s as usize];
            *p -= 1;
            if *p == 0 {
                *p = OUT;
                self.handed.push(s);
            }
        }
        self.passed_out += self.handed.len() as u32;
        Ok(&self.handed)
    }

    /// Prepares and runs the whole graph, returning every node in `graphlib`'s static order.
    pub fn static_order(&mut self) -> CoreResult<Vec<u32>> {
        self.prepare()?;
        let mut order = Vec::with_capacity(self.pending.len());
        loop {
            let batch = self.get_ready()?;
            if batch.is_empty() {
                break;
            }
            self.done(&batch)?;
            order.extend_from_slice(&batch);
        }
        self.handed = Vec::new();
        Ok(order)
    }

    /// Nodes handed out and not done yet.
    pub fn in_flight(&self) -> u32 {
        self.passed_out - self.finished
    }

    /// Nodes marked done.
    pub fn finished(&self) -> u32 {
        self.finished
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

    fn assert_is_cycle(g: &Graph, path: &[u32]) {
        assert!(path.len() >= 2, "{path:?}");
        assert_eq!(path.first(), path.last());
        for w in path.windows(2) {
            assert!(g.successors(w[0]).contains(&w[1]), "{} -> {} is not an edge", w[0], w[1]);
        }
    }

    #[test]
    fn diamond_order_levels_and_critical_path() {
        let g = graph(4, &[(0, 1), (0, 2), (1, 3), (2, 3)]);
        assert_eq!(g.topological_order().unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(g.levels().unwrap(), vec![0, 1, 1, 2]);
        let (len, path) = g.critical_path(Some(&[1, 1, 5, 1])).unwrap();
        assert_eq!((len, path), (7, vec![0, 2, 3]));
    }

    #[test]
    fn self_loop_two_cycle_and_long_cycle_are_reported() {
        let g = graph(1, &[(0, 0)]);
        assert_eq!(g.find_cycle(), Some(vec![0, 0]));
        let g = graph(3, &[(0, 1), (1, 2), (2, 1)]);
        let cycle = g.find_cycle().unwrap();
        assert_is_cycle(&g, &cycle);
        assert_eq!(cycle.len(), 3);
        let n = 100_000u32;
        let edges: Vec<(u32, u32)> = (0..n).map(|i| (i, (i + 1) % n)).collect();
        let g = graph(n, &edges);
        let cycle = g.find_cycle().unwrap();
        assert_eq!(cycle.len(), n as usize + 1);
        assert_is_cycle(&g, &cycle);
    }

    #[test]
    fn unknown_ids_add_nothing() {
        let mut b = GraphBuilder::with_nodes(3).unwrap();
        let err = b.add_edges(&[0, 1], &[1, 7]).unwrap_err();
        assert_eq!(err, CoreError::UnknownNode { node: 7, node_count: 3 });
        assert_eq!(b.edge_count(), 0);
        assert!(b.add_edges(&[0], &[]).is_err());
    }

    #[test]
    fn million_node_chain_needs_no_stack() {
        let n = 1_000_000u32;
        let src: Vec<u32> = (0..n - 1).collect();
        let dst: Vec<u32> = (1..n).collect();
        let g = Graph::from_edges(n, &src, &dst).unwrap();
        assert_eq!(g.levels().unwrap()[n as usize - 1], n - 1);
        assert_eq!(g.critical_path(None).unwrap().0, u64::from(n));
        let mut s = Sorter::from_edges(n, &src, &dst).unwrap();
        assert_eq!(s.static_order().unwrap().len(), n as usize);
    }

    #[test]
    fn sorter_follows_graphlib_protocol_and_errors() {
        let mut s = Sorter::from_edges(3, &[0, 0], &[1, 2]).unwrap();
        assert_eq!(s.get_ready(), Err(CoreError::NotPrepared));
        s.prepare().unwrap();
        assert_eq!(s.prepare(), Err(CoreError::AlreadyPrepared));
        assert_eq!(s.add_edges(&[1], &[2]), Err(CoreError::Frozen));
        assert_eq!(s.done(&[1]), Err(CoreError::NotPassedOut { node: 1 }));
        assert_eq!(s.get_ready().unwrap(), vec![0]);
        assert_eq!(s.get_ready().unwrap(), Vec::<u32>::new());
        // A bad node later in the batch leaves the earlier ones untouched.
        assert_eq!(s.done(&[0, 0]), Err(CoreError::AlreadyDone { node: 0 }));
        assert_eq!(s.done(&[0, 9]), Err(CoreError::UnknownNode { node: 9, node_count: 3 }));
        assert!(s.is_active().unwrap());
        assert_eq!(s.complete(0).unwrap(), &[1, 2]);
        assert_eq!(s.done(&[0]), Err(CoreError::AlreadyDone { node: 0 }));
        s.done(&[2, 1]).unwrap();
        assert!(!s.is_active().unwrap());
    }

    #[test]
    fn graphlib_cycle_starts_where_cpython_starts() {
        // graphlib on {1: [2], 2: [1]}: 1 is id 0, 2 is id 1; CycleError.args[1] == [1, 2, 1].
        let g = graph(2, &[(1, 0), (0, 1)]);
        assert_eq!(g.graphlib_cycle(), Some(vec![0, 1, 0]));
        assert_eq!(graph(1, &[(0, 0)]).graphlib_cycle(), Some(vec![0, 0]));
        // The walk from 0 goes 0 -> 1 -> 2 -> 3 -> 1: the cycle starts at 1, not at 0.
        let g = graph(4, &[(0, 1), (1, 2), (2, 3), (3, 1)]);
        assert_eq!(g.graphlib_cycle(), Some(vec![1, 2, 3, 1]));
        // Successors are tried in insertion order: 0 -> 2 first, and 2 closes 2 -> 3 -> 2.
        let g = graph(4, &[(0, 2), (0, 1), (1, 0), (2, 3), (3, 2)]);
        assert_eq!(g.graphlib_cycle(), Some(vec![2, 3, 2]));
        assert_eq!(graph(3, &[(0, 1), (1, 2), (0, 2)]).graphlib_cycle(), None);
        // Backward edges without a cycle: the forward-only shortcut does not apply.
        assert_eq!(graph(3, &[(2, 1), (1, 0), (2, 0)]).graphlib_cycle(), None);
        assert_eq!(graph(3, &[(2, 1), (1, 0), (0, 2)]).graphlib_cycle(), Some(vec![0, 2, 1, 0]));
        let n = 200_000u32;
        let edges: Vec<(u32, u32)> = (0..n).map(|i| (i, (i + 1) % n)).collect();
        assert_eq!(graph(n, &edges).graphlib_cycle().map(|c| c.len()), Some(n as usize + 1));
    }

    #[test]
    fn check_done_changes_nothing_and_names_the_first_bad_node() {
        let mut s = Sorter::from_edges(3, &[0, 0], &[1, 2]).unwrap();
        assert_eq!(s.check_done(&[0]), Err((0, CoreError::NotPrepared)));
        s.prepare().unwrap();
        assert_eq!(s.get_ready().unwrap(), vec![0]);
        assert_eq!(s.check_done(&[0]), Ok(()));
        assert_eq!(s.check_done(&[0, 1, 0]), Err((1, CoreError::NotPassedOut { node: 1 })));
        assert_eq!(s.check_done(&[0, 0]), Err((1, CoreError::AlreadyDone { node: 0 })));
        s.add_edges_to(1, &[0]).unwrap_err();
        s.done(&[0]).unwrap();
        assert_eq!(s.get_ready().unwrap(), vec![1, 2]);
        let mut b = Sorter::new();
        b.add_nodes(2).unwrap();
        assert_eq!(
            b.add_edges_to(0, &[1, 5]),
            Err(CoreError::UnknownNode { node: 5, node_count: 2 })
        );
        b.add_edges_to(0, &[1, 1]).unwrap();
        b.prepare().unwrap();
        assert_eq!(b.get_ready().unwrap(), vec![1]);
        b.done(&[1]).unwrap();
        assert_eq!(b.get_ready().unwrap(), vec![0]);
    }

    #[test]
    fn sorter_with_cycle_still_runs_the_acyclic_part() {
        let mut s = Sorter::from_edges(4, &[0, 1, 2], &[1, 2, 1]).unwrap();
        assert!(matches!(s.prepare(), Err(CoreError::Cycle { .. })));
        assert_eq!(s.get_ready().unwrap(), vec![0, 3]);
        s.done(&[0, 3]).unwrap();
        assert_eq!(s.get_ready().unwrap(), Vec::<u32>::new());
        assert!(!s.is_active().unwrap());
    }

    fn dag_strategy() -> impl Strategy<Value = (u32, Vec<(u32, u32)>)> {
        (1u32..60).prop_flat_map(|n| {
            let edge = (0..n, 0..n).prop_map(|(a, b)| if a < b { (a, b) } else { (b, a) });
            (Just(n), proptest::collection::vec(edge, 0..200))
        })
    }

    proptest! {
        #[test]
        fn every_order_respects_every_edge((n, edges) in dag_strategy()) {
            let edges: Vec<(u32, u32)> = edges.into_iter().filter(|(a, b)| a != b).collect();
            let g = graph(n, &edges);
            let mut position = vec![0usize; n as usize];
            for (i, &v) in g.topological_order().unwrap().iter().enumerate() {
                position[v as usize] = i;
            }
            let levels = g.levels().unwrap();
            let bottom = g.bottom_levels(None).unwrap();
            for &(a, b) in &edges {
                prop_assert!(position[a as usize] < position[b as usize]);
                prop_assert!(levels[a as usize] < levels[b as usize]);
                prop_assert!(bottom[a as usize] > bottom[b as usize]);
            }
            // The sorter's waves respect the edges too, and hand out every node once.
            let (src, dst): (Vec<u32>, Vec<u32>) = edges.iter().copied().unzip();
            let mut s = Sorter::from_edges(n, &src, &dst).unwrap();
            let order = s.static_order().unwrap();
            prop_assert_eq!(order.len(), n as usize);
            for (i, &v) in order.iter().enumerate() {
                position[v as usize] = i;
            }
            for &(a, b) in &edges {
                prop_assert!(position[a as usize] < position[b as usize]);
            }
        }

        #[test]
        fn back_edge_is_always_found((n, edges) in dag_strategy(), a in 0u32..60, b in 0u32..60) {
            let (a, b) = (a % n, b % n);
            let mut edges: Vec<(u32, u32)> = edges.into_iter().filter(|(x, y)| x != y).collect();
            // a path a -> b exists once we add it, and b -> a closes a cycle
            edges.push((a.min(b), a.max(b)));
            edges.push((a.max(b), a.min(b)));
            let g = graph(n, &edges);
            let cycle = g.find_cycle().unwrap();
            assert_is_cycle(&g, &cycle);
            assert_is_cycle(&g, &g.graphlib_cycle().unwrap());
        }

        #[test]
        fn graphlib_cycle_only_on_cyclic_graphs((n, edges) in dag_strategy()) {
            let edges: Vec<(u32, u32)> = edges.into_iter().filter(|(a, b)| a != b).collect();
            prop_assert_eq!(graph(n, &edges).graphlib_cycle(), None);
        }
    }
}
