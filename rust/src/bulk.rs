//! A columnar dataflow: many nodes of a few tasks, declared as arrays, held as arrays.
//!
//! A [`Table`] keeps, per node, its task (an index into the caller's short list of tasks) and its
//! inputs in compressed form: one offset per node, then per input the parameter it is passed as (an
//! index into the caller's interned parameter names) and where its value comes from (another node,
//! or an external input of the run). Nothing is kept per node beyond these integers: a 10^7-node
//! dataflow with a few inputs a node is a few hundred MiB, with no allocation per node.
//!
//! [`Table::new`] checks the arrays (equal lengths, ids in range, no cycle: the cycle's nodes are
//! named) and [`Table::check_params`] checks every node's parameters against its task's
//! (each given once, every required one given, none the task does not take), so that a caller can
//! refuse a bad declaration before anything runs.

use crate::dag::Graph;
use crate::error::{CoreError, CoreResult};

/// Marks an input slot fed by an external input (the low bits are the input's id).
const EXTERNAL: u32 = 1 << 31;

/// Largest node count of a table: node ids and external-input ids share one `u32` per input slot.
pub const MAX_TABLE_NODES: u32 = EXTERNAL - 1;

/// Where one input of a node comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The value of another node.
    Node(u32),
    /// An external input of the run, by id.
    Input(u32),
}

/// What a task takes, by interned parameter id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskParams {
    /// Parameters every node of the task must be given.
    pub required: Vec<u32>,
    /// Every parameter the task takes; `None` when it takes any keyword (`**kwargs`).
    pub known: Option<Vec<u32>>,
}

/// A node whose parameters do not fit its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamProblem {
    /// `node` is given `param` more than once.
    Twice { node: u32, param: u32 },
    /// `node` is not given `param`, which its task requires.
    Missing { node: u32, param: u32 },
    /// `node` is given `param`, which its task does not take.
    Unknown { node: u32, param: u32 },
}

/// A read-only array of ids: a slice, or native-endian bytes four to an id (read in place, so
/// that a caller's packed array is not copied into a `Vec` first).
#[derive(Debug, Clone, Copy)]
pub enum Ids<'a> {
    Slice(&'a [u32]),
    Bytes(&'a [u8]),
}

impl<'a> Ids<'a> {
    /// Ids packed four bytes each, native-endian.
    ///
    /// # Errors
    /// [`CoreError::InvalidValue`] when the length is not a multiple of four.
    pub fn from_ne_bytes(what: &str, bytes: &'a [u8]) -> CoreResult<Self> {
        if bytes.len() % 4 == 0 {
            Ok(Ids::Bytes(bytes))
        } else {
            Err(CoreError::invalid(what, "bytes of 4-byte ids", format!("{} bytes", bytes.len())))
        }
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        match self {
            Ids::Slice(s) => s.len(),
            Ids::Bytes(b) => b.len() / 4,
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids in order.
    pub fn iter(&self) -> IdsIter<'a> {
        match *self {
            Ids::Slice(s) => IdsIter::Slice(s.iter()),
            Ids::Bytes(b) => IdsIter::Bytes(b.chunks_exact(4)),
        }
    }

    /// The ids as a `Vec`.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Ids::Slice(s) => s.to_vec(),
            Ids::Bytes(_) => self.iter().collect(),
        }
    }
}

impl<'a> From<&'a [u32]> for Ids<'a> {
    fn from(slice: &'a [u32]) -> Self {
        Ids::Slice(slice)
    }
}

impl<'a, const N: usize> From<&'a [u32; N]> for Ids<'a> {
    fn from(slice: &'a [u32; N]) -> Self {
        Ids::Slice(slice)
    }
}

impl<'a> From<&'a Vec<u32>> for Ids<'a> {
    fn from(v: &'a Vec<u32>) -> Self {
        Ids::Slice(v)
    }
}

impl<'a> IntoIterator for &Ids<'a> {
    type Item = u32;
    type IntoIter = IdsIter<'a>;

    fn into_iter(self) -> IdsIter<'a> {
        self.iter()
    }
}

/// The iterator of [`Ids::iter`].
#[derive(Debug, Clone)]
pub enum IdsIter<'a> {
    Slice(std::slice::Iter<'a, u32>),
    Bytes(std::slice::ChunksExact<'a, u8>),
}

impl Iterator for IdsIter<'_> {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        match self {
            IdsIter::Slice(it) => it.next().copied(),
            IdsIter::Bytes(it) => it.next().map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            IdsIter::Slice(it) => it.size_hint(),
            IdsIter::Bytes(it) => it.size_hint(),
        }
    }
}

/// The edges of a columnar dataflow: `sources[i]` feeds `targets[i]` as parameter `params[i]`.
#[derive(Debug, Clone, Copy)]
pub struct Edges<'a> {
    pub sources: Ids<'a>,
    pub targets: Ids<'a>,
    pub params: Ids<'a>,
}

/// The external inputs of a columnar dataflow: input `inputs[i]` feeds `targets[i]` as
/// parameter `params[i]`.
#[derive(Debug, Clone, Copy)]
pub struct Feeds<'a> {
    pub targets: Ids<'a>,
    pub params: Ids<'a>,
    pub inputs: Ids<'a>,
}

/// A checked columnar dataflow.
#[derive(Debug, Clone)]
pub struct Table {
    task_of: Vec<u32>,
    task_count: u32,
    param_count: u32,
    input_count: u32,
    /// Inputs of node `v` are slots `offsets[v]..offsets[v + 1]`.
    offsets: Vec<u32>,
    slot_param: Vec<u32>,
    slot_source: Vec<u32>,
    edge_count: usize,
}

fn same_length(what: &str, lengths: &[usize]) -> CoreResult<()> {
    if lengths.windows(2).all(|w| w[0] == w[1]) {
        return Ok(());
    }
    let shown: Vec<String> = lengths.iter().map(ToString::to_string).collect();
    Err(CoreError::invalid(what, "of equal length", format!("lengths {}", shown.join(", "))))
}

fn below(what: &str, values: Ids<'_>, limit: u32, expected: &'static str) -> CoreResult<()> {
    match values.iter().enumerate().find(|&(_, v)| v >= limit) {
        None => Ok(()),
        Some((i, v)) => Err(CoreError::invalid(
            format!("{what}[{i}]"),
            expected,
            format!("{v} (there are {limit})"),
        )),
    }
}

impl Table {
    /// Checks and builds a table of `task_of.len()` nodes.
    ///
    /// `task_count`, `param_count` and `input_count` bound the task, parameter and input ids.
    ///
    /// # Errors
    /// [`CoreError::InvalidValue`] for arrays of unequal length or an id out of its range (naming
    /// the array and the position), [`CoreError::UnknownNode`] for an edge naming a node that does
    /// not exist, [`CoreError::TooLarge`] beyond [`MAX_TABLE_NODES`], [`CoreError::Cycle`] with
    /// the cycle's nodes.
    pub fn new(
        task_of: Vec<u32>,
        counts: (u32, u32, u32),
        edges: Edges<'_>,
        feeds: Feeds<'_>,
    ) -> CoreResult<Self> {
        let (task_count, param_count, input_count) = counts;
        let n64 = task_of.len() as u64;
        if n64 > u64::from(MAX_TABLE_NODES) {
            return Err(CoreError::TooLarge {
                what: "nodes",
                count: n64,
                limit: u64::from(MAX_TABLE_NODES),
            });
        }
        let n = task_of.len() as u32;
        same_length(
            "edge arrays (sources, targets, params)",
            &[edges.sources.len(), edges.targets.len(), edges.params.len()],
        )?;
        same_length(
            "input arrays (targets, params, inputs)",
            &[feeds.targets.len(), feeds.params.len(), feeds.inputs.len()],
        )?;
        let slots = edges.sources.len() as u64 + feeds.targets.len() as u64;
        if slots > u64::from(MAX_TABLE_NODES) {
            return Err(CoreError::TooLarge {
                what: "inputs",
                count: slots,
                limit: u64::from(MAX_TABLE_NODES),
            });
        }
        below("task", Ids::Slice(&task_of), task_count, "an index into the tasks")?;
        let mut ids = edges.sources.iter().chain(edges.targets.iter()).chain(feeds.targets.iter());
        if let Some(bad) = ids.find(|&v| v >= n) {
            return Err(CoreError::UnknownNode { node: bad, node_count: n });
        }
        below("edge param", edges.params, param_count, "an index into the parameter names")?;
        below("input param", feeds.params, param_count, "an index into the parameter names")?;
        below("input", feeds.inputs, input_count, "an index into the input names")?;

        // Counting sort of every input slot by its target; edges first, then external inputs, each
        // in the order given.
        let mut offsets = vec![0u32; n as usize + 1];
        for t in edges.targets.iter().chain(feeds.targets.iter()) {
            offsets[t as usize + 1] += 1;
        }
        for i in 0..n as usize {
            offsets[i + 1] += offsets[i];
        }
        let mut cursor = offsets[..n as usize].to_vec();
        let total = slots as usize;
        let mut slot_param = vec![0u32; total];
        let mut slot_source = vec![0u32; total];
        let mut place = |target: u32, param: u32, source: u32| {
            let at = &mut cursor[target as usize];
            slot_param[*at as usize] = param;
            slot_source[*at as usize] = source;
            *at += 1;
        };
        for ((t, p), s) in edges.targets.iter().zip(edges.params.iter()).zip(edges.sources.iter()) {
            place(t, p, s);
        }
        for ((t, p), i) in feeds.targets.iter().zip(feeds.params.iter()).zip(feeds.inputs.iter()) {
            place(t, p, i | EXTERNAL);
        }
        drop(cursor);
        // A cycle is refused with its nodes; the order itself is the scheduler's to make. Nodes
        // declared in order (every edge from a lower id to a higher one) cannot form one, and
        // need no graph built to say so.
        if !edges.sources.iter().zip(edges.targets.iter()).all(|(s, t)| s < t) {
            let (src, dst) = (edges.sources.to_vec(), edges.targets.to_vec());
            Graph::from_edges(n, &src, &dst)?.topological_order()?;
        }
        Ok(Self {
            task_of,
            task_count,
            param_count,
            input_count,
            offsets,
            slot_param,
            slot_source,
            edge_count: edges.sources.len(),
        })
    }

    /// Number of nodes.
    pub fn node_count(&self) -> u32 {
        self.task_of.len() as u32
    }

    /// Number of edges between nodes (external inputs not counted).
    pub fn edge_count(&self) -> usize {
        self.edge_count
    }

    /// Number of input slots: edges and external inputs.
    pub fn slot_count(&self) -> usize {
        self.slot_param.len()
    }

    /// Number of tasks, parameter names and external inputs the ids refer to.
    pub fn counts(&self) -> (u32, u32, u32) {
        (self.task_count, self.param_count, self.input_count)
    }

    /// The task of each node.
    pub fn task_of(&self) -> &[u32] {
        &self.task_of
    }

    /// Checks that `node` exists.
    pub fn check_node(&self, node: u32) -> CoreResult<()> {
        if node < self.node_count() {
            Ok(())
        } else {
            Err(CoreError::UnknownNode { node, node_count: self.node_count() })
        }
    }

    /// The inputs of `node`: `(parameter, source)`, edges first, each in the order declared.
    pub fn inputs(&self, node: u32) -> impl ExactSizeIterator<Item = (u32, Source)> + '_ {
        let range = self.offsets[node as usize] as usize..self.offsets[node as usize + 1] as usize;
        self.slot_param[range.clone()].iter().zip(&self.slot_source[range]).map(|(&p, &s)| {
            let source =
                if s & EXTERNAL == 0 { Source::Node(s) } else { Source::Input(s & !EXTERNAL) };
            (p, source)
        })
    }

    /// The first node (by id) whose parameters do not fit its task, if any: a parameter given
    /// twice, a required one not given, or one the task does not take. `tasks[t]` says what task
    /// `t` takes; a task beyond `tasks` is not checked.
    pub fn check_params(&self, tasks: &[TaskParams]) -> Option<ParamProblem> {
        let params = self.param_count as usize;
        // Per task, what each parameter is: 0 not taken, 1 optional, 2 required.
        let mut kinds: Vec<Option<Vec<u8>>> = Vec::with_capacity(tasks.len());
        let mut required_count: Vec<u32> = Vec::with_capacity(tasks.len());
        for task in tasks {
            let mut kind = vec![u8::from(task.known.is_none()); params];
            for &p in task.known.iter().flatten() {
                if let Some(k) = kind.get_mut(p as usize) {
                    *k = 1;
                }
            }
            let mut count = 0;
            for &p in &task.required {
                if let Some(k) = kind.get_mut(p as usize) {
                    if *k != 2 {
                        count += 1;
                    }
                    *k = 2;
                }
            }
            kinds.push(Some(kind));
            required_count.push(count);
        }
        // The last node that was given each parameter: a second sighting in one node is a repeat.
        let mut seen = vec![u32::MAX; params];
        for node in 0..self.node_count() {
            let task = self.task_of[node as usize] as usize;
            let Some(Some(kind)) = kinds.get(task) else { continue };
            let mut required = 0;
            for (param, _) in self.inputs(node) {
                let p = param as usize;
                if seen[p] == node {
                    return Some(ParamProblem::Twice { node, param });
                }
                seen[p] = node;
                match kind[p] {
                    0 => return Some(ParamProblem::Unknown { node, param }),
                    2 => required += 1,
                    _ => {}
                }
            }
            if required != required_count[task] {
                let given: Vec<u32> = self.inputs(node).map(|(p, _)| p).collect();
                let param = tasks[task].required.iter().copied().find(|p| !given.contains(p));
                if let Some(param) = param {
                    return Some(ParamProblem::Missing { node, param });
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table(
        task_of: Vec<u32>,
        e: (&[u32], &[u32], &[u32]),
        f: (&[u32], &[u32], &[u32]),
    ) -> CoreResult<Table> {
        let counts = (2, 4, 2);
        let edges = Edges { sources: e.0.into(), targets: e.1.into(), params: e.2.into() };
        let feeds = Feeds { targets: f.0.into(), params: f.1.into(), inputs: f.2.into() };
        Table::new(task_of, counts, edges, feeds)
    }

    #[test]
    fn inputs_come_back_by_target_in_declared_order() {
        // 0 and 1 take input 0; 2 takes 0 as param 1 and 1 as param 2.
        let t =
            table(vec![0, 0, 1], (&[1, 0], &[2, 2], &[2, 1]), (&[0, 1], &[0, 0], &[0, 0])).unwrap();
        assert_eq!(t.node_count(), 3);
        assert_eq!(t.edge_count(), 2);
        assert_eq!(t.slot_count(), 4);
        let got: Vec<_> = t.inputs(2).collect();
        assert_eq!(got, vec![(2, Source::Node(1)), (1, Source::Node(0))]);
        assert_eq!(t.inputs(0).collect::<Vec<_>>(), vec![(0, Source::Input(0))]);
    }

    #[test]
    fn ids_read_in_place_from_bytes_equal_the_slice() {
        fn from_bytes(b: &[u8]) -> Ids<'_> {
            Ids::from_ne_bytes("x", b).unwrap()
        }
        let ids = [7u32, 0, 4_000_000_000];
        let bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let read = Ids::from_ne_bytes("ids", &bytes).unwrap();
        assert_eq!((read.len(), read.to_vec()), (3, ids.to_vec()));
        let err = Ids::from_ne_bytes("ids", &bytes[..5]).unwrap_err();
        assert_eq!(err.to_string(), "ids must be bytes of 4-byte ids, got 5 bytes");
        let (s, t, p) = ([0u32, 1], [1u32, 2], [0u32, 1]);
        let bs: Vec<u8> = s.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let bt: Vec<u8> = t.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let bp: Vec<u8> = p.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let edges =
            Edges { sources: from_bytes(&bs), targets: from_bytes(&bt), params: from_bytes(&bp) };
        let none = Feeds { targets: (&[]).into(), params: (&[]).into(), inputs: (&[]).into() };
        let t = Table::new(vec![0, 0, 0], (1, 2, 0), edges, none).unwrap();
        assert_eq!(t.inputs(2).collect::<Vec<_>>(), vec![(1, Source::Node(1))]);
    }

    #[test]
    fn bad_arrays_are_named() {
        let err = table(vec![0, 0], (&[0], &[1, 1], &[0]), (&[], &[], &[])).unwrap_err();
        assert!(err.to_string().contains("edge arrays"), "{err}");
        let err = table(vec![0, 2], (&[], &[], &[]), (&[], &[], &[])).unwrap_err();
        assert_eq!(err.to_string(), "task[1] must be an index into the tasks, got 2 (there are 2)");
        let err = table(vec![0, 0], (&[5], &[1], &[0]), (&[], &[], &[])).unwrap_err();
        assert_eq!(err, CoreError::UnknownNode { node: 5, node_count: 2 });
        let err = table(vec![0, 0], (&[0], &[1], &[4]), (&[], &[], &[])).unwrap_err();
        assert!(err.to_string().starts_with("edge param[0]"), "{err}");
        let err = table(vec![0, 0], (&[], &[], &[]), (&[1], &[0], &[3])).unwrap_err();
        assert!(err.to_string().starts_with("input[0]"), "{err}");
    }

    #[test]
    fn a_cycle_is_refused_with_its_nodes() {
        let err = table(vec![0, 0, 0], (&[0, 1, 2], &[1, 2, 1], &[0, 0, 1]), (&[], &[], &[]))
            .unwrap_err();
        match err {
            CoreError::Cycle { path } => {
                assert_eq!(path.first(), path.last());
                assert!(path.contains(&1) && path.contains(&2) && !path.contains(&0));
            }
            other => panic!("expected a cycle, got {other}"),
        }
    }

    #[test]
    fn edges_in_any_order_are_checked_for_cycles() {
        // Backward edges without a cycle are fine; a self-loop is a cycle.
        table(vec![0, 0, 0], (&[2, 1], &[1, 0], &[0, 0]), (&[], &[], &[])).unwrap();
        let err = table(vec![0, 0], (&[1], &[1], &[0]), (&[], &[], &[])).unwrap_err();
        assert_eq!(err, CoreError::Cycle { path: vec![1, 1] });
    }

    #[test]
    fn params_are_checked_against_the_task() {
        let t = table(vec![0, 1, 1], (&[0, 0], &[1, 2], &[1, 1]), (&[2], &[1], &[0])).unwrap();
        let take = |required: Vec<u32>, known: Option<Vec<u32>>| TaskParams { required, known };
        let tasks = [take(vec![], Some(vec![])), take(vec![1], Some(vec![1, 2]))];
        assert_eq!(t.check_params(&tasks), Some(ParamProblem::Twice { node: 2, param: 1 }));
        let t = table(vec![0, 1, 1], (&[0], &[1], &[1]), (&[], &[], &[])).unwrap();
        assert_eq!(t.check_params(&tasks), Some(ParamProblem::Missing { node: 2, param: 1 }));
        let t = table(vec![0, 1], (&[0], &[1], &[3]), (&[], &[], &[])).unwrap();
        assert_eq!(t.check_params(&tasks), Some(ParamProblem::Unknown { node: 1, param: 3 }));
        let any = [take(vec![], None), take(vec![3], None)];
        assert_eq!(t.check_params(&any), None);
    }

    proptest! {
        /// Every slot comes back once, at its target, with its parameter and source.
        #[test]
        fn every_slot_comes_back_once(
            n in 1u32..40,
            raw in prop::collection::vec((0u32..1000, 0u32..1000, 0u32..4), 0..120),
        ) {
            let (mut src, mut dst, mut par) = (vec![], vec![], vec![]);
            for (a, b, p) in raw {
                let (a, b) = (a % n, b % n);
                if a != b {
                    src.push(a.min(b));
                    dst.push(a.max(b));
                    par.push(p);
                }
            }
            let t = table(vec![0; n as usize], (&src, &dst, &par), (&[], &[], &[])).unwrap();
            let mut got = vec![];
            for v in 0..n {
                got.extend(t.inputs(v).map(|(p, s)| (s, v, p)));
            }
            let mut want: Vec<_> =
                src.iter().zip(&dst).zip(&par).map(|((&a, &b), &p)| (Source::Node(a), b, p)).collect();
            let key = |x: &(Source, u32, u32)| (x.1, match x.0 { Source::Node(a) | Source::Input(a) => a }, x.2);
            got.sort_by_key(key);
            want.sort_by_key(key);
            prop_assert_eq!(got, want);
        }
    }
}
