//! Resource placement: which worker runs a task, given capacities, demands and labels.
//!
//! Resources are a fixed, named list (for example `cpu` in milli-units, `ram` in MB, `gpu`); a
//! worker offers an integer capacity of each and carries labels; a task demands an amount of each and
//! may require labels. Labels are interned strings (`"gpu=true"`), passed around as `u32` ids.
//!
//! [`Placer`] places online (best fit by default, also spread and first fit), holds capacity until
//! [`Placer::release`], and refuses at submit time a task that no worker could ever take, saying
//! which resource or label is missing and the largest offer. [`plan`] packs a batch offline.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use crate::error::{CoreError, CoreResult};

/// Hashes task ids (integers chosen by the caller) with one multiply instead of the default hasher:
/// the table of placed tasks is touched on every placement and release.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing; the table takes the high bits for tags and the low bits for buckets,
        // so fold the high half down.
        let h = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 32);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Placed tasks: each one's worker and what it holds. The map keeps only `(worker, slot)`, 16
/// bytes a task, so that growing it stays cheap (a placer holding many tasks spent most of a
/// placement growing a map of 56-byte entries); the amounts live in one flat array of slots of
/// `R` entries, reused as tasks are released.
#[derive(Debug, Clone, Default)]
struct Holdings {
    by_task: HashMap<u64, (u32, u32), BuildHasherDefault<IdHasher>>,
    amounts: Vec<u64>,
    free_slots: Vec<u32>,
}

impl Holdings {
    fn contains(&self, task: u64) -> bool {
        self.by_task.contains_key(&task)
    }

    fn len(&self) -> usize {
        self.by_task.len()
    }

    fn worker_of(&self, task: u64) -> Option<u32> {
        self.by_task.get(&task).map(|&(w, _)| w)
    }

    fn tasks(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.by_task.iter().map(|(&t, &(w, _))| (t, w))
    }

    /// Records that `task` holds `amounts` on `worker` (it holds nothing yet).
    fn insert(&mut self, task: u64, worker: u32, amounts: &[u64]) {
        let r = amounts.len();
        let slot = if let Some(slot) = self.free_slots.pop() {
            let k = slot as usize;
            self.amounts[k * r..(k + 1) * r].copy_from_slice(amounts);
            slot
        } else {
            self.amounts.extend_from_slice(amounts);
            (self.amounts.len() / r - 1) as u32
        };
        self.by_task.insert(task, (worker, slot));
    }

    /// Forgets `task`; returns its worker and writes what it held (`r` amounts) into `out`.
    fn remove(&mut self, task: u64, r: usize, out: &mut Vec<u64>) -> Option<u32> {
        let (worker, slot) = self.by_task.remove(&task)?;
        let k = slot as usize;
        out.clear();
        out.extend_from_slice(&self.amounts[k * r..(k + 1) * r]);
        self.free_slots.push(slot);
        Some(worker)
    }
}

/// How [`Placer::place`] chooses among the workers a task fits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// The worker left with the least spare capacity (bin packing).
    #[default]
    BestFit,
    /// The worker left with the most spare capacity.
    Spread,
    /// The first worker, in registration order.
    FirstFit,
}

impl Policy {
    /// Parses `"best_fit"`, `"spread"` or `"first_fit"`.
    pub fn parse(name: &str) -> CoreResult<Self> {
        match name {
            "best_fit" => Ok(Self::BestFit),
            "spread" => Ok(Self::Spread),
            "first_fit" => Ok(Self::FirstFit),
            other => Err(CoreError::invalid(
                "policy",
                "one of 'best_fit', 'spread', 'first_fit'",
                format!("{other:?}"),
            )),
        }
    }
}

/// Why one worker cannot take a task now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shortfall {
    /// Not enough of a resource free.
    Resource { resource: String, needed: u64, free: u64, capacity: u64 },
    /// A required label the worker lacks.
    Label { label: String },
    /// The worker was removed.
    Removed,
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shortfall::Resource { resource, needed, free, capacity } => write!(
                f,
                "{resource}: needs {needed}, {free} free of {capacity} (short by {})",
                needed - free
            ),
            Shortfall::Label { label } => write!(f, "missing label {label}"),
            Shortfall::Removed => write!(f, "worker removed"),
        }
    }
}

/// A task's demand: an amount of each resource, and labels the worker must carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Demand {
    pub amounts: Vec<u64>,
    pub labels: Vec<u32>,
}

/// Workers per leaf of the index: a leaf is scanned linearly, which is cheaper than more levels.
const BLOCK: usize = 8;

/// Bit 0 of a label set's signature: "an active worker is here".
const ACTIVE_BIT: u64 = 1;

/// A label's bit in a label set's signature (a 63-bit Bloom filter; bit 0 is [`ACTIVE_BIT`]).
#[inline]
fn label_bit(label: u32) -> u64 {
    1 << (1 + label % 63)
}

/// The signature a worker must carry: active, and every required label's bit.
fn signature(labels: &[u32]) -> u64 {
    labels.iter().fold(ACTIVE_BIT, |s, &l| s | label_bit(l))
}

/// A demand as the index wants it: the amounts, the required labels and their signature.
struct Query<'a> {
    amounts: &'a [u64],
    labels: &'a [u32],
    signature: u64,
}

impl<'a> Query<'a> {
    fn new(demand: &'a Demand) -> Self {
        Self {
            amounts: &demand.amounts,
            labels: &demand.labels,
            signature: signature(&demand.labels),
        }
    }
}

/// Summaries of the workers, as a complete binary tree over blocks of [`BLOCK`] slots (node 1 is
/// the root, node `n` has children `2n` and `2n + 1`, leaf `k` is node `leaves + k` and covers
/// slots `k * BLOCK ..`; slot `s` holds worker `order[s]`, or worker `s` when `order` is empty).
/// Every node keeps, over the active workers below it: the largest free
/// amount and the largest capacity of each resource, the smallest normalized free capacity
/// (`Σ free · 1/capacity`), the largest `1/capacity` of each resource, and the union of their label
/// signatures.
///
/// A subtree is skipped when some resource's largest free amount is below the demand or a required
/// label's bit is missing; so a full cluster answers "no room" at the root, and a search descends
/// only into subtrees that may hold a worker with room. Best fit also skips a subtree whose
/// smallest possible slack (`min Σ free/capacity − Σ demand · max 1/capacity`) exceeds the best
/// found so far. The workers themselves are scored exactly as a linear scan scores them, so the
/// choices are the same.
#[derive(Debug, Clone, Default)]
struct Index {
    /// Leaf nodes (blocks), a power of two.
    leaves: usize,
    /// The worker in each slot; empty for slots in id order.
    order: Vec<u32>,
    max_free: Vec<u64>,
    max_capacity: Vec<u64>,
    min_normalized: Vec<f64>,
    max_inverse: Vec<f64>,
    signature: Vec<u64>,
}

impl Index {
    /// The workers of leaf `node`.
    fn workers_of(&self, node: usize, workers: usize) -> impl Iterator<Item = usize> + '_ {
        let block = node - self.leaves;
        let slots = block * BLOCK..((block + 1) * BLOCK).min(workers);
        slots.map(|slot| self.order.get(slot).map_or(slot, |&w| w as usize))
    }

    fn combine(&mut self, node: usize, r: usize) {
        let (a, b) = (2 * node, 2 * node + 1);
        for i in 0..r {
            self.max_free[node * r + i] = self.max_free[a * r + i].max(self.max_free[b * r + i]);
            self.max_capacity[node * r + i] =
                self.max_capacity[a * r + i].max(self.max_capacity[b * r + i]);
            self.max_inverse[node * r + i] =
                self.max_inverse[a * r + i].max(self.max_inverse[b * r + i]);
        }
        self.min_normalized[node] = self.min_normalized[a].min(self.min_normalized[b]);
        self.signature[node] = self.signature[a] | self.signature[b];
    }

    /// [`Index::combine`] for the free amounts only (what a placement or release changes);
    /// whether `node` changed.
    fn combine_free(&mut self, node: usize, r: usize) -> bool {
        let (a, b) = (2 * node, 2 * node + 1);
        let mut changed = false;
        for i in 0..r {
            let top = self.max_free[a * r + i].max(self.max_free[b * r + i]);
            changed |= top != self.max_free[node * r + i];
            self.max_free[node * r + i] = top;
        }
        let normalized = self.min_normalized[a].min(self.min_normalized[b]);
        changed |= normalized.to_bits() != self.min_normalized[node].to_bits();
        self.min_normalized[node] = normalized;
        changed
    }

    /// Whether some worker below `node` may offer `query` (free capacity, or total capacity
    /// when `ever`): a necessary condition, exact at a single worker.
    #[inline]
    fn may_fit(&self, node: usize, query: &Query<'_>, ever: bool, r: usize) -> bool {
        let top = if ever { &self.max_capacity } else { &self.max_free };
        self.signature[node] & query.signature == query.signature
            && top[node * r..(node + 1) * r].iter().zip(query.amounts).all(|(&t, &d)| d <= t)
    }

    /// The smallest slack any worker below `node` could be left with after taking `query`, less a
    /// margin far above rounding error (so a subtree is never skipped for rounding).
    fn slack_bound(&self, node: usize, query: &Query<'_>, r: usize) -> f64 {
        let normalized = self.min_normalized[node];
        if normalized.is_infinite() {
            return f64::INFINITY; // no active worker below
        }
        let demand: f64 = self.max_inverse[node * r..(node + 1) * r]
            .iter()
            .zip(query.amounts)
            .map(|(&inverse, &d)| d as f64 * inverse)
            .sum();
        normalized - demand - 1e-9 * (1.0 + normalized.abs() + demand)
    }
}

/// Demands that found no worker with room since, kept while that stays true: a demand at least
/// as large (every amount, every label) has no room either, so it is answered without a search.
///
/// Free capacity only shrinks on placement, so an entry stays true until a release or a new
/// worker; then only the entries that fit that one worker are dropped. The index prunes on each
/// resource's largest free amount, which tells little once every worker is left with crumbs of
/// different shapes (one has CPU but no memory, another the reverse); this is what answers "no
/// room" at once then. At most [`MISSES`] entries, the minimal ones.
#[derive(Debug, Clone, Default)]
struct Misses {
    /// `amounts[k * R..]` of entry `k`.
    amounts: Vec<u64>,
    labels: Vec<Vec<u32>>,
    signatures: Vec<u64>,
    /// The entry the next one replaces when full.
    next: usize,
}

/// The worker that last proved a demand schedulable: tried first by the next check, since
/// consecutive demands tend to be alike. Atomic only so that a shared `&Placer` can update it.
#[derive(Debug, Default)]
struct Witness(AtomicU32);

impl Clone for Witness {
    fn clone(&self) -> Self {
        Self(AtomicU32::new(self.0.load(Relaxed)))
    }
}

/// Entries kept in [`Misses`].
const MISSES: usize = 64;

/// Online placement over a set of workers.
///
/// Workers live in flat arrays (`free[w * R + r]`), summarized by an [`Index`] of their free and
/// total capacities, so that placement and the schedulability check descend a tree instead of
/// scanning every worker, and by [`Misses`], so that a demand known to find no room is answered
/// at once. The choices are those of a scan of every worker (property-tested against one).
#[derive(Debug, Clone)]
pub struct Placer {
    resources: Vec<String>,
    label_names: Vec<String>,
    label_ids: HashMap<String, u32>,
    capacity: Vec<u64>,
    free: Vec<u64>,
    /// `1 / capacity` per resource (0 where the capacity is 0), for scoring.
    inverse: Vec<f64>,
    /// `Σ free · 1/capacity` per worker (what the index's slack bound is made of).
    normalized: Vec<f64>,
    /// Sorted label ids, per worker.
    labels: Vec<Vec<u32>>,
    /// Label signature per worker ([`ACTIVE_BIT`] cleared once removed).
    signatures: Vec<u64>,
    tasks: Vec<u32>,
    /// The index: in id order for first fit (the first worker that fits is the leftmost), in
    /// order of capacity then labels for best fit and spread (so that neighbours share a
    /// capacity and the slack bound of a subtree is tight).
    index: Index,
    /// Each worker's slot in the index (empty in id order).
    slot: Vec<u32>,
    /// Workers were added since the index was built in capacity order: rebuild it before use.
    stale: bool,
    misses: Misses,
    witness: Witness,
    placed: Holdings,
    /// What the last released task held (kept for its allocation).
    released: Vec<u64>,
    policy: Policy,
}

impl Placer {
    /// A placer over the named resources (unique, at least one).
    pub fn new(resources: Vec<String>, policy: Policy) -> CoreResult<Self> {
        if resources.is_empty() {
            return Err(CoreError::invalid("resources", "at least one resource name", "none"));
        }
        for (i, name) in resources.iter().enumerate() {
            if name.is_empty() || resources[..i].contains(name) {
                return Err(CoreError::invalid("resource names", "unique and non-empty", name));
            }
        }
        let mut placer = Self {
            resources,
            label_names: Vec::new(),
            label_ids: HashMap::new(),
            capacity: Vec::new(),
            free: Vec::new(),
            inverse: Vec::new(),
            normalized: Vec::new(),
            labels: Vec::new(),
            signatures: Vec::new(),
            tasks: Vec::new(),
            index: Index::default(),
            slot: Vec::new(),
            stale: false,
            misses: Misses::default(),
            witness: Witness::default(),
            placed: Holdings::default(),
            released: Vec::new(),
            policy,
        };
        placer.rebuild();
        Ok(placer)
    }

    /// The resource names, in vector order.
    pub fn resources(&self) -> &[String] {
        &self.resources
    }

    /// The placement policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The id of a label, interning it on first use.
    pub fn label(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.label_ids.get(name) {
            return id;
        }
        let id = self.label_names.len() as u32;
        self.label_names.push(name.to_owned());
        self.label_ids.insert(name.to_owned(), id);
        id
    }

    fn label_name(&self, id: u32) -> &str {
        self.label_names.get(id as usize).map_or("<unknown label>", String::as_str)
    }

    fn check_amounts(&self, what: &str, amounts: &[u64]) -> CoreResult<()> {
        if amounts.len() == self.resources.len() {
            Ok(())
        } else {
            Err(CoreError::invalid(
                what,
                "one amount per resource",
                format!("{} amounts for resources {:?}", amounts.len(), self.resources),
            ))
        }
    }

    fn check_labels(&self, labels: &[u32]) -> CoreResult<()> {
        match labels.iter().find(|&&l| l as usize >= self.label_names.len()) {
            Some(&bad) => Err(CoreError::UnknownId { what: "label", id: bad.into() }),
            None => Ok(()),
        }
    }

    #[inline]
    fn r(&self) -> usize {
        self.resources.len()
    }

    #[inline]
    fn active(&self, w: usize) -> bool {
        self.signatures[w] & ACTIVE_BIT != 0
    }

    #[inline]
    fn row<'s, T>(&self, values: &'s [T], w: usize) -> &'s [T] {
        let r = self.r();
        &values[w * r..(w + 1) * r]
    }

    #[inline]
    fn has_labels(&self, w: usize, query: &Query<'_>) -> bool {
        self.signatures[w] & query.signature == query.signature
            && query.labels.iter().all(|l| self.labels[w].binary_search(l).is_ok())
    }

    /// Spare capacity of worker `w` after taking `demand`, as a sum of fractions of capacity.
    #[inline]
    fn slack_after(&self, w: usize, demand: &[u64]) -> f64 {
        let mut slack = 0.0;
        for ((&free, &want), &inverse) in
            self.row(&self.free, w).iter().zip(demand).zip(self.row(&self.inverse, w))
        {
            slack += (free - want) as f64 * inverse;
        }
        slack
    }

    /// Recomputes `normalized[w]` after worker `w`'s free amounts changed.
    #[inline]
    fn normalize(&mut self, w: usize) {
        let r = self.r();
        let mut normalized = 0.0;
        for (&free, &inverse) in self.free[w * r..(w + 1) * r].iter().zip(&self.inverse[w * r..]) {
            normalized += free as f64 * inverse;
        }
        self.normalized[w] = normalized;
    }

    /// Registers a worker; returns its id. A worker offering nothing at all is refused.
    pub fn add_worker(&mut self, capacity: &[u64], labels: &[u32]) -> CoreResult<u32> {
        self.check_amounts("worker capacity", capacity)?;
        self.check_labels(labels)?;
        if capacity.iter().all(|&c| c == 0) {
            return Err(CoreError::invalid(
                "worker capacity",
                "more than zero of some resource",
                "zero of every resource",
            ));
        }
        let mut labels = labels.to_vec();
        labels.sort_unstable();
        labels.dedup();
        self.capacity.extend_from_slice(capacity);
        self.free.extend_from_slice(capacity);
        self.inverse.extend(capacity.iter().map(|&c| if c == 0 { 0.0 } else { 1.0 / c as f64 }));
        self.signatures.push(signature(&labels));
        self.labels.push(labels);
        self.normalized.push(0.0);
        self.normalize(self.normalized.len() - 1);
        self.tasks.push(0);
        let id = self.tasks.len() - 1;
        if self.policy != Policy::FirstFit {
            // Rebuilt before its next placement, with the new worker in its place.
            self.stale = true;
        } else if id / BLOCK >= self.index.leaves {
            self.rebuild();
        } else {
            self.refresh(id);
        }
        self.forget_misses_fitting(id);
        Ok(id as u32)
    }

    fn check_worker(&self, id: u32) -> CoreResult<usize> {
        if (id as usize) < self.tasks.len() {
            Ok(id as usize)
        } else {
            Err(CoreError::UnknownId { what: "worker", id: id.into() })
        }
    }

    /// Removes a worker (it died or left). Returns the tasks that were placed on it, which are
    /// released; they must be placed again.
    pub fn remove_worker(&mut self, id: u32) -> CoreResult<Vec<u64>> {
        let w = self.check_worker(id)?;
        let mut orphans: Vec<u64> =
            self.placed.tasks().filter(|&(_, w)| w == id).map(|(t, _)| t).collect();
        orphans.sort_unstable();
        let r = self.r();
        let mut held = Vec::new();
        for &t in &orphans {
            self.placed.remove(t, r, &mut held);
        }
        self.signatures[w] &= !ACTIVE_BIT;
        self.free[w * r..(w + 1) * r].copy_from_slice(&self.capacity[w * r..(w + 1) * r]);
        self.tasks[w] = 0;
        self.normalize(w);
        self.refresh(w);
        Ok(orphans)
    }

    /// Ids of the tasks holding capacity now, in no particular order.
    pub fn placed_tasks(&self) -> impl Iterator<Item = u64> + '_ {
        self.placed.tasks().map(|(t, _)| t)
    }

    /// Number of registered workers (removed ones included: ids are never reused).
    pub fn worker_count(&self) -> u32 {
        self.tasks.len() as u32
    }

    /// Free capacity of a worker.
    pub fn free(&self, id: u32) -> CoreResult<Vec<u64>> {
        let w = self.check_worker(id)?;
        Ok(self.row(&self.free, w).to_vec())
    }

    /// Number of tasks placed on a worker.
    pub fn task_count(&self, id: u32) -> CoreResult<u32> {
        Ok(self.tasks[self.check_worker(id)?])
    }

    /// Number of tasks holding capacity.
    pub fn placed_count(&self) -> usize {
        self.placed.len()
    }

    /// The worker a placed task holds capacity on.
    pub fn worker_of(&self, task: u64) -> Option<u32> {
        self.placed.worker_of(task)
    }

    // -- the index --------------------------------------------------------------------------------

    /// Rebuilds the index, in the order the policy wants.
    fn rebuild(&mut self) {
        let r = self.r();
        let mut order = Vec::new();
        if self.policy != Policy::FirstFit {
            order = (0..self.tasks.len() as u32).collect();
            order.sort_by(|&a, &b| {
                let (a, b) = (a as usize, b as usize);
                self.capacity[a * r..(a + 1) * r]
                    .cmp(&self.capacity[b * r..(b + 1) * r])
                    .then(self.signatures[a].cmp(&self.signatures[b]))
                    .then(a.cmp(&b))
            });
        }
        self.slot.clear();
        self.slot.resize(order.len(), 0);
        for (slot, &w) in order.iter().enumerate() {
            self.slot[w as usize] = slot as u32;
        }
        self.index = self.build(order);
        self.stale = false;
    }

    fn build(&self, order: Vec<u32>) -> Index {
        let r = self.r();
        let blocks = self.tasks.len().div_ceil(BLOCK).max(1);
        let leaves = blocks.next_power_of_two();
        let mut ix = Index {
            leaves,
            order,
            max_free: vec![0; 2 * leaves * r],
            max_capacity: vec![0; 2 * leaves * r],
            min_normalized: vec![f64::INFINITY; 2 * leaves],
            max_inverse: vec![0.0; 2 * leaves * r],
            signature: vec![0; 2 * leaves],
        };
        for block in 0..blocks {
            self.summarize_block(&mut ix, block);
        }
        for node in (1..leaves).rev() {
            ix.combine(node, r);
        }
        ix
    }

    /// Brings the index up to date after worker `w`'s free capacity or state changed.
    fn refresh(&mut self, w: usize) {
        if self.stale {
            return;
        }
        let r = self.r();
        let slot = self.slot.get(w).map_or(w, |&slot| slot as usize);
        let mut ix = std::mem::take(&mut self.index);
        self.refresh_slot(&mut ix, slot, r);
        self.index = ix;
    }

    /// [`Placer::refresh`] after only worker `w`'s free amounts changed, by `amounts` taken
    /// (a placement) or given back (`grew`, a release) on an active worker: the rest of its
    /// summaries stand. Its block's summary is updated in place unless `w` held the block's
    /// largest free amount of a resource it lost or its smallest slack that grew (then the block
    /// is summarized again); the walk to the root stops at the first node that does not change.
    fn refresh_free(&mut self, w: usize, amounts: &[u64], grew: bool) {
        let before = self.normalized[w];
        self.normalize(w);
        if self.stale {
            return;
        }
        let r = self.r();
        let slot = self.slot.get(w).map_or(w, |&slot| slot as usize);
        let block = slot / BLOCK;
        let ix = &mut self.index;
        let node = ix.leaves + block;
        let row = &self.free[w * r..(w + 1) * r];
        let top = &mut ix.max_free[node * r..(node + 1) * r];
        let in_place = if grew {
            for (t, &f) in top.iter_mut().zip(row) {
                *t = (*t).max(f);
            }
            before > ix.min_normalized[node]
        } else {
            ix.min_normalized[node] = ix.min_normalized[node].min(self.normalized[w]);
            row.iter().zip(amounts).zip(top.iter()).all(|((&f, &d), &t)| d == 0 || f + d < t)
        };
        if !in_place {
            let mut min_normalized = f64::INFINITY;
            top.fill(0);
            for slot in block * BLOCK..((block + 1) * BLOCK).min(self.tasks.len()) {
                let w = ix.order.get(slot).map_or(slot, |&w| w as usize);
                if self.signatures[w] & ACTIVE_BIT == 0 {
                    continue;
                }
                for (t, &f) in top.iter_mut().zip(&self.free[w * r..(w + 1) * r]) {
                    *t = (*t).max(f);
                }
                min_normalized = min_normalized.min(self.normalized[w]);
            }
            ix.min_normalized[node] = min_normalized;
        }
        let mut node = node / 2;
        while node >= 1 && ix.combine_free(node, r) {
            node /= 2;
        }
    }

    fn refresh_slot(&self, ix: &mut Index, slot: usize, r: usize) {
        let block = slot / BLOCK;
        self.summarize_block(ix, block);
        let mut node = (ix.leaves + block) / 2;
        while node >= 1 {
            ix.combine(node, r);
            node /= 2;
        }
    }

    fn summarize_block(&self, ix: &mut Index, block: usize) {
        let r = self.r();
        let node = ix.leaves + block;
        let range = node * r..(node + 1) * r;
        ix.max_free[range.clone()].fill(0);
        ix.max_capacity[range.clone()].fill(0);
        ix.max_inverse[range].fill(0.0);
        let mut min_normalized = f64::INFINITY;
        let mut sig = 0;
        for slot in block * BLOCK..((block + 1) * BLOCK).min(self.tasks.len()) {
            let w = ix.order.get(slot).map_or(slot, |&w| w as usize);
            if !self.active(w) {
                continue;
            }
            for i in 0..r {
                let top = &mut ix.max_free[node * r + i];
                *top = (*top).max(self.free[w * r + i]);
                let top = &mut ix.max_capacity[node * r + i];
                *top = (*top).max(self.capacity[w * r + i]);
                let top = &mut ix.max_inverse[node * r + i];
                *top = top.max(self.inverse[w * r + i]);
            }
            min_normalized = min_normalized.min(self.normalized[w]);
            sig |= self.signatures[w];
        }
        ix.min_normalized[node] = min_normalized;
        ix.signature[node] = sig;
    }

    #[inline]
    fn fits(&self, w: usize, query: &Query<'_>, ever: bool) -> bool {
        let values = if ever { &self.capacity } else { &self.free };
        self.active(w)
            && self.row(values, w).iter().zip(query.amounts).all(|(&f, &d)| d <= f)
            && self.has_labels(w, query)
    }

    /// The leftmost worker of the index that `query` fits on (now, or ever): in id order, the
    /// lowest-numbered one.
    fn first_fit(&self, node: usize, query: &Query<'_>, ever: bool) -> Option<usize> {
        let ix = &self.index;
        if !ix.may_fit(node, query, ever, self.r()) {
            return None;
        }
        if node >= ix.leaves {
            return ix.workers_of(node, self.tasks.len()).find(|&w| self.fits(w, query, ever));
        }
        self.first_fit(2 * node, query, ever).or_else(|| self.first_fit(2 * node + 1, query, ever))
    }

    /// Best fit (or spread, `spread`) below `node`: the worker with the lowest
    /// score, ties to the lowest id, where the score is the slack after taking `query` (negated
    /// to spread).
    fn best_fit(
        &self,
        node: usize,
        query: &Query<'_>,
        spread: bool,
        best: &mut Option<(f64, usize)>,
    ) {
        let (ix, r) = (&self.index, self.r());
        if !ix.may_fit(node, query, false, r) {
            return;
        }
        if node >= ix.leaves {
            for w in ix.workers_of(node, self.tasks.len()) {
                if !self.fits(w, query, false) {
                    continue;
                }
                let slack = self.slack_after(w, query.amounts);
                let score = if spread { -slack } else { slack };
                if best.is_none_or(|(s, b)| score < s || (score == s && w < b)) {
                    *best = Some((score, w));
                }
            }
            return;
        }
        let (mut a, mut b) = (2 * node, 2 * node + 1);
        if spread {
            self.best_fit(a, query, spread, best);
            self.best_fit(b, query, spread, best);
            return;
        }
        let (mut bound_a, mut bound_b) = (ix.slack_bound(a, query, r), ix.slack_bound(b, query, r));
        if bound_b < bound_a {
            std::mem::swap(&mut a, &mut b);
            std::mem::swap(&mut bound_a, &mut bound_b);
        }
        for (child, bound) in [(a, bound_a), (b, bound_b)] {
            if best.is_none_or(|(s, _)| bound <= s) {
                self.best_fit(child, query, spread, best);
            }
        }
    }

    /// The worker the policy picks for `demand` among those it fits on now.
    fn choose(&self, query: &Query<'_>) -> Option<u32> {
        match self.policy {
            Policy::FirstFit => self.first_fit(1, query, false).map(|w| w as u32),
            Policy::BestFit | Policy::Spread => {
                let mut best = None;
                self.best_fit(1, query, self.policy == Policy::Spread, &mut best);
                best.map(|(_, w)| w as u32)
            }
        }
    }

    /// Places `demand` on the worker the policy picks and holds its capacity there.
    fn take(&mut self, demand: &Demand) -> Option<u32> {
        self.take_query(&Query::new(demand))
    }

    /// [`Placer::take`] for a demand already in the index's terms.
    fn take_query(&mut self, query: &Query<'_>) -> Option<u32> {
        if self.stale {
            self.rebuild();
        }
        if !self.index.may_fit(1, query, false, self.r()) || self.known_miss(query) {
            return None;
        }
        let Some(chosen) = self.choose(query) else {
            self.remember_miss(query);
            return None;
        };
        let (w, r) = (chosen as usize, self.r());
        for (f, &d) in self.free[w * r..(w + 1) * r].iter_mut().zip(query.amounts) {
            *f -= d;
        }
        self.tasks[w] += 1;
        self.refresh_free(w, query.amounts, false);
        Some(chosen)
    }

    // -- demands known to find no room ------------------------------------------------------------

    /// Whether entry `k` of the misses is at most `query` (so `query` finds no room either).
    #[inline]
    fn miss_covers(&self, k: usize, query: &Query<'_>) -> bool {
        let r = self.r();
        let m = &self.misses;
        m.signatures[k] & !query.signature == 0
            && m.amounts[k * r..(k + 1) * r].iter().zip(query.amounts).all(|(&a, &d)| a <= d)
            && m.labels[k].iter().all(|l| query.labels.binary_search(l).is_ok())
    }

    fn known_miss(&self, query: &Query<'_>) -> bool {
        (0..self.misses.signatures.len()).any(|k| self.miss_covers(k, query))
    }

    /// Records that `query` found no room, in place of the entries it covers.
    fn remember_miss(&mut self, query: &Query<'_>) {
        let r = self.r();
        let mut k = 0;
        while k < self.misses.signatures.len() {
            let m = &self.misses;
            let covered = query.signature & !m.signatures[k] == 0
                && m.amounts[k * r..(k + 1) * r].iter().zip(query.amounts).all(|(&a, &d)| d <= a)
                && query.labels.iter().all(|l| m.labels[k].binary_search(l).is_ok());
            if covered {
                self.drop_miss(k);
            } else {
                k += 1;
            }
        }
        let mut labels = query.labels.to_vec();
        labels.sort_unstable();
        let m = &mut self.misses;
        if m.signatures.len() < MISSES {
            m.amounts.extend_from_slice(query.amounts);
            m.labels.push(labels);
            m.signatures.push(query.signature);
        } else {
            let k = m.next % MISSES;
            m.next = k + 1;
            m.amounts[k * r..(k + 1) * r].copy_from_slice(query.amounts);
            m.labels[k] = labels;
            m.signatures[k] = query.signature;
        }
    }

    fn drop_miss(&mut self, k: usize) {
        let r = self.r();
        let m = &mut self.misses;
        let last = m.signatures.len() - 1;
        for i in 0..r {
            m.amounts[k * r + i] = m.amounts[last * r + i];
        }
        m.amounts.truncate(last * r);
        m.labels.swap_remove(k);
        m.signatures.swap_remove(k);
    }

    /// Worker `w` gained room: the misses it now has room for are no longer misses.
    fn forget_misses_fitting(&mut self, w: usize) {
        let r = self.r();
        let mut k = 0;
        while k < self.misses.signatures.len() {
            let m = &self.misses;
            let query = Query {
                amounts: &m.amounts[k * r..(k + 1) * r],
                labels: &m.labels[k],
                signature: m.signatures[k],
            };
            if self.fits(w, &query, false) {
                self.drop_miss(k);
            } else {
                k += 1;
            }
        }
    }

    // -- placing ----------------------------------------------------------------------------------

    /// Fails with [`CoreError::Unschedulable`] if no active worker could ever take `demand`.
    pub fn check_schedulable(&self, demand: &Demand) -> CoreResult<()> {
        self.check_amounts("task demand", &demand.amounts)?;
        self.check_labels(&demand.labels)?;
        let query = Query::new(demand);
        let witness = self.witness.0.load(Relaxed) as usize;
        if witness < self.tasks.len() && self.fits(witness, &query, true) {
            return Ok(());
        }
        let found = if self.stale {
            (0..self.tasks.len()).find(|&w| self.fits(w, &query, true))
        } else {
            self.first_fit(1, &query, true)
        };
        if let Some(w) = found {
            self.witness.0.store(w as u32, Relaxed);
            return Ok(());
        }
        Err(CoreError::Unschedulable { reason: self.unschedulable_reason(demand) })
    }

    /// Why no active worker could ever take `demand` (which is so).
    fn unschedulable_reason(&self, demand: &Demand) -> String {
        let candidates: Vec<usize> = (0..self.tasks.len()).filter(|&w| self.active(w)).collect();
        if candidates.is_empty() {
            return "no worker is registered".into();
        }
        for &label in &demand.labels {
            if !candidates.iter().any(|&w| self.labels[w].binary_search(&label).is_ok()) {
                return format!("no worker has label {}", self.label_name(label));
            }
        }
        let query = Query::new(demand);
        let labelled: Vec<usize> =
            candidates.into_iter().filter(|&w| self.has_labels(w, &query)).collect();
        let scope = if demand.labels.is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = demand.labels.iter().map(|&l| self.label_name(l)).collect();
            format!(" with label {}", names.join(", "))
        };
        if labelled.is_empty() {
            return format!("no single worker has every label{scope}");
        }
        for (i, name) in self.resources.iter().enumerate() {
            let largest = labelled.iter().map(|&w| self.row(&self.capacity, w)[i]).max();
            let largest = largest.unwrap_or(0);
            if demand.amounts[i] > largest {
                return format!(
                    "task needs {name}={} but the largest {name} any worker{scope} offers is \
                     {largest}",
                    demand.amounts[i]
                );
            }
        }
        let wanted: Vec<String> = self
            .resources
            .iter()
            .zip(&demand.amounts)
            .map(|(name, amount)| format!("{name}={amount}"))
            .collect();
        format!(
            "no single worker{scope} offers {} at once, though each is offered somewhere",
            wanted.join(", ")
        )
    }

    /// Places `task`: returns its worker, or `None` if it must wait for a release.
    ///
    /// Fails if the task id holds capacity already, or if no worker could ever take it.
    pub fn place(&mut self, task: u64, demand: &Demand) -> CoreResult<Option<u32>> {
        if self.placed.contains(task) {
            return Err(CoreError::DuplicateId { what: "task", id: task });
        }
        self.check_amounts("task demand", &demand.amounts)?;
        self.check_labels(&demand.labels)?;
        // A worker with room now could take it ever: only a task that finds none is checked.
        let placed = self.place_checked(task, demand);
        if placed.is_none() {
            self.check_schedulable(demand)?;
        }
        Ok(placed)
    }

    /// Places `task` if a worker has room now, without asking whether one ever could (for a
    /// task placed before whose worker went away: another may come).
    pub fn place_if_room(&mut self, task: u64, demand: &Demand) -> CoreResult<Option<u32>> {
        if self.placed.contains(task) {
            return Err(CoreError::DuplicateId { what: "task", id: task });
        }
        self.check_amounts("task demand", &demand.amounts)?;
        self.check_labels(&demand.labels)?;
        Ok(self.place_checked(task, demand))
    }

    fn place_checked(&mut self, task: u64, demand: &Demand) -> Option<u32> {
        let chosen = self.take(demand)?;
        self.placed.insert(task, chosen, &demand.amounts);
        Some(chosen)
    }

    /// Places tasks in order. All are checked first: if any is a duplicate or unschedulable,
    /// nothing is placed.
    pub fn place_many(&mut self, tasks: &[(u64, Demand)]) -> CoreResult<Vec<Option<u32>>> {
        let mut ids: Vec<u64> = tasks.iter().map(|(t, _)| *t).collect();
        ids.sort_unstable();
        for pair in ids.windows(2) {
            if pair[0] == pair[1] {
                return Err(CoreError::DuplicateId { what: "task", id: pair[0] });
            }
        }
        for (task, demand) in tasks {
            if self.placed.contains(*task) {
                return Err(CoreError::DuplicateId { what: "task", id: *task });
            }
            self.check_schedulable(demand)?;
        }
        Ok(tasks.iter().map(|(task, demand)| self.place_checked(*task, demand)).collect())
    }

    /// Returns a task's capacity to its worker; returns the worker.
    pub fn release(&mut self, task: u64) -> CoreResult<u32> {
        let r = self.r();
        let mut held = std::mem::take(&mut self.released);
        let worker = self.placed.remove(task, r, &mut held);
        let Some(worker) = worker else {
            self.released = held;
            return Err(CoreError::UnknownId { what: "placed task", id: task });
        };
        let w = worker as usize;
        if self.active(w) {
            for (f, d) in self.free[w * r..(w + 1) * r].iter_mut().zip(&held) {
                *f += d;
            }
            self.tasks[w] -= 1;
            self.refresh_free(w, &held, true);
            self.forget_misses_fitting(w);
        }
        self.released = held;
        Ok(worker)
    }

    /// For every worker the task does not fit on now, why not.
    pub fn explain(&self, demand: &Demand) -> CoreResult<Vec<(u32, Vec<Shortfall>)>> {
        self.check_amounts("task demand", &demand.amounts)?;
        self.check_labels(&demand.labels)?;
        let mut out = Vec::new();
        for w in 0..self.tasks.len() {
            let mut reasons = Vec::new();
            if self.active(w) {
                let (free, capacity) = (self.row(&self.free, w), self.row(&self.capacity, w));
                for (i, name) in self.resources.iter().enumerate() {
                    if demand.amounts[i] > free[i] {
                        reasons.push(Shortfall::Resource {
                            resource: name.clone(),
                            needed: demand.amounts[i],
                            free: free[i],
                            capacity: capacity[i],
                        });
                    }
                }
                for &label in &demand.labels {
                    if self.labels[w].binary_search(&label).is_err() {
                        reasons.push(Shortfall::Label { label: self.label_name(label).to_owned() });
                    }
                }
            } else {
                reasons.push(Shortfall::Removed);
            }
            if !reasons.is_empty() {
                out.push((w as u32, reasons));
            }
        }
        Ok(out)
    }
}

/// The result of [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The worker of each task, `None` where it did not fit.
    pub assignment: Vec<Option<u32>>,
    /// Tasks placed.
    pub placed: usize,
    /// Workers with at least one task.
    pub workers_used: usize,
    /// The heuristic that produced this plan.
    pub heuristic: &'static str,
}

impl Placer {
    /// Packs `tasks` offline onto this placer's workers, as if all were empty.
    ///
    /// Runs first-fit-decreasing, best-fit-decreasing, smallest-first first fit and smallest-first
    /// best fit, and keeps the plan that places the most tasks, then uses the fewest workers; so it
    /// is never worse than first-fit-decreasing or smallest-first. An unschedulable task is an error.
    ///
    /// # Panics
    ///
    /// Never: four heuristics always run, so a best plan always exists.
    pub fn plan(&self, tasks: &[Demand]) -> CoreResult<Plan> {
        for t in tasks {
            self.check_schedulable(t)?;
        }
        let mut base = self.clone();
        base.placed = Holdings::default();
        base.free.clone_from(&base.capacity);
        base.tasks.fill(0);
        for w in 0..base.tasks.len() {
            base.normalize(w);
        }
        base.rebuild();
        // Task size: its largest share of the largest active capacity of each resource.
        let r = base.r();
        let largest: Vec<f64> =
            base.index.max_capacity[r..2 * r].iter().map(|&top| top.max(1) as f64).collect();
        let size = |t: &Demand| {
            t.amounts.iter().zip(&largest).map(|(&a, &l)| a as f64 / l).fold(0.0, f64::max)
        };
        let sizes: Vec<f64> = tasks.iter().map(size).collect();
        let mut decreasing: Vec<usize> = (0..tasks.len()).collect();
        decreasing.sort_by(|&a, &b| sizes[b].total_cmp(&sizes[a]).then(a.cmp(&b)));
        // Every pass walks the demands in size order: a copy laid out in that order (amounts in
        // one flat array) is read front to back, where the tasks' own demands, scattered over the
        // heap and visited by a sort order, made each placement a cache miss or two.
        let amounts: Vec<u64> =
            decreasing.iter().flat_map(|&t| tasks[t].amounts.iter().copied()).collect();
        let queries: Vec<Query<'_>> = decreasing
            .iter()
            .enumerate()
            .map(|(k, &t)| Query {
                amounts: &amounts[k * r..(k + 1) * r],
                labels: &tasks[t].labels,
                signature: signature(&tasks[t].labels),
            })
            .collect();
        // Positions in `queries`. Ties keep submission order in both directions (not one the
        // reverse of the other), so each pass is exactly the classic heuristic it is named after.
        let down: Vec<usize> = (0..tasks.len()).collect();
        let mut up: Vec<usize> = down.iter().rev().copied().collect();
        for run in
            up.chunk_by_mut(|&a, &b| sizes[decreasing[a]].total_cmp(&sizes[decreasing[b]]).is_eq())
        {
            run.reverse(); // back to submission order among equal sizes
        }

        let heuristics: [(&'static str, &[usize], Policy); 4] = [
            ("first_fit_decreasing", &down, Policy::FirstFit),
            ("best_fit_decreasing", &down, Policy::BestFit),
            ("smallest_first", &up, Policy::FirstFit),
            ("smallest_first_best_fit", &up, Policy::BestFit),
        ];
        let mut best: Option<Plan> = None;
        for (name, order, policy) in heuristics {
            let mut placer = base.clone();
            placer.policy = policy;
            placer.rebuild();
            let mut assignment = vec![None; tasks.len()];
            let (mut count, mut used) = (0, 0);
            let mut hopeless = false;
            for (done, &position) in order.iter().enumerate() {
                // A pass is dropped as soon as it cannot beat the best one: it can place at most
                // every task left, and it never uses fewer workers than it does now.
                let most = (count + order.len() - done, std::cmp::Reverse(used));
                if best
                    .as_ref()
                    .is_some_and(|b| most <= (b.placed, std::cmp::Reverse(b.workers_used)))
                {
                    hopeless = true;
                    break;
                }
                let task = decreasing[position];
                assignment[task] = placer.take_query(&queries[position]);
                if let Some(w) = assignment[task] {
                    count += 1;
                    used += usize::from(placer.tasks[w as usize] == 1);
                }
            }
            if hopeless {
                continue;
            }
            let candidate = Plan { assignment, placed: count, workers_used: used, heuristic: name };
            let better = best.as_ref().is_none_or(|b| {
                (candidate.placed, std::cmp::Reverse(candidate.workers_used))
                    > (b.placed, std::cmp::Reverse(b.workers_used))
            });
            if better {
                best = Some(candidate);
            }
        }
        Ok(best.expect("four heuristics ran"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names() -> Vec<String> {
        vec!["cpu".into(), "ram".into(), "gpu".into()]
    }

    fn demand(amounts: &[u64]) -> Demand {
        Demand { amounts: amounts.to_vec(), labels: Vec::new() }
    }

    #[test]
    fn best_fit_packs_spread_spreads_first_fit_is_first() {
        for (policy, expected) in [(Policy::BestFit, 1), (Policy::Spread, 0), (Policy::FirstFit, 0)]
        {
            let mut p = Placer::new(names(), policy).unwrap();
            p.add_worker(&[8000, 32000, 0], &[]).unwrap();
            p.add_worker(&[2000, 4000, 0], &[]).unwrap();
            assert_eq!(
                p.place(1, &demand(&[1000, 1000, 0])).unwrap(),
                Some(expected),
                "{policy:?}"
            );
        }
    }

    #[test]
    fn capacity_is_held_until_release() {
        let mut p = Placer::new(names(), Policy::BestFit).unwrap();
        p.add_worker(&[2000, 4000, 0], &[]).unwrap();
        assert_eq!(p.place(1, &demand(&[2000, 1, 0])).unwrap(), Some(0));
        assert_eq!(p.place(2, &demand(&[1000, 1, 0])).unwrap(), None);
        let why = p.explain(&demand(&[1000, 1, 0])).unwrap();
        assert_eq!(why[0].1[0].to_string(), "cpu: needs 1000, 0 free of 2000 (short by 1000)");
        assert_eq!(p.release(1).unwrap(), 0);
        assert!(p.release(1).is_err());
        assert_eq!(p.place(2, &demand(&[1000, 1, 0])).unwrap(), Some(0));
        assert!(matches!(p.place(2, &demand(&[1, 1, 0])), Err(CoreError::DuplicateId { .. })));
    }

    #[test]
    fn unschedulable_names_resource_or_label_and_largest_offer() {
        let mut p = Placer::new(names(), Policy::BestFit).unwrap();
        let gpu = p.label("gpu=true");
        p.add_worker(&[8000, 32000, 1], &[gpu]).unwrap();
        p.add_worker(&[4000, 16000, 0], &[]).unwrap();
        let err = p.place(1, &demand(&[1000, 1000, 2])).unwrap_err();
        assert_eq!(err.to_string(), "task needs gpu=2 but the largest gpu any worker offers is 1");
        let ssd = p.label("ssd=true");
        let err = p.place(1, &Demand { amounts: vec![1, 1, 0], labels: vec![ssd] }).unwrap_err();
        assert_eq!(err.to_string(), "no worker has label ssd=true");
        let err = p.place(1, &Demand { amounts: vec![9000, 1, 0], labels: vec![gpu] }).unwrap_err();
        assert_eq!(
            err.to_string(),
            "task needs cpu=9000 but the largest cpu any worker with label gpu=true offers is 8000"
        );
        assert_eq!(p.placed_count(), 0);
    }

    #[test]
    fn bad_workers_and_demands_are_refused() {
        assert!(Placer::new(vec![], Policy::BestFit).is_err());
        assert!(Placer::new(vec!["cpu".into(), "cpu".into()], Policy::BestFit).is_err());
        let mut p = Placer::new(names(), Policy::BestFit).unwrap();
        assert!(p.add_worker(&[0, 0, 0], &[]).is_err());
        assert!(p.add_worker(&[1, 1], &[]).is_err());
        assert!(p.add_worker(&[1, 1, 1], &[42]).is_err());
        assert_eq!(p.worker_count(), 0);
        assert!(Policy::parse("fastest").is_err());
    }

    #[test]
    fn many_resources_are_held_and_given_back() {
        let names: Vec<String> = (0..6).map(|i| format!("r{i}")).collect();
        let mut p = Placer::new(names, Policy::BestFit).unwrap();
        p.add_worker(&[6, 5, 4, 3, 2, 1], &[]).unwrap();
        assert_eq!(p.place(1, &demand(&[1, 1, 1, 1, 1, 1])).unwrap(), Some(0));
        assert_eq!(p.free(0).unwrap(), vec![5, 4, 3, 2, 1, 0]);
        assert_eq!(p.place(2, &demand(&[0, 0, 0, 0, 0, 1])).unwrap(), None);
        assert_eq!(p.release(1).unwrap(), 0);
        assert_eq!(p.free(0).unwrap(), vec![6, 5, 4, 3, 2, 1]);
        assert_eq!(p.place(2, &demand(&[0, 0, 0, 0, 0, 1])).unwrap(), Some(0));
    }

    #[test]
    fn place_many_is_all_or_nothing() {
        let mut p = Placer::new(names(), Policy::BestFit).unwrap();
        p.add_worker(&[4000, 4000, 0], &[]).unwrap();
        let tasks = vec![(1, demand(&[1000, 1, 0])), (2, demand(&[1, 1, 5]))];
        assert!(p.place_many(&tasks).is_err());
        assert_eq!(p.placed_count(), 0);
        let dup = vec![(1, demand(&[1, 1, 0])), (1, demand(&[1, 1, 0]))];
        assert!(p.place_many(&dup).is_err());
        let ok = vec![(1, demand(&[3000, 1, 0])), (2, demand(&[2000, 1, 0]))];
        assert_eq!(p.place_many(&ok).unwrap(), vec![Some(0), None]);
    }

    #[test]
    fn removing_a_worker_hands_back_its_tasks() {
        let mut p = Placer::new(names(), Policy::FirstFit).unwrap();
        p.add_worker(&[4000, 4000, 0], &[]).unwrap();
        p.add_worker(&[4000, 4000, 0], &[]).unwrap();
        p.place(7, &demand(&[1000, 1, 0])).unwrap();
        p.place(8, &demand(&[1000, 1, 0])).unwrap();
        assert_eq!(p.remove_worker(0).unwrap(), vec![7, 8]);
        assert_eq!(p.place(7, &demand(&[1000, 1, 0])).unwrap(), Some(1));
    }

    #[test]
    fn plan_keeps_submission_order_among_equal_sizes() {
        // Found by hypothesis: smallest-first must break size ties by submission order.
        let p = two_resources(&[[4, 1], [1, 2]], Policy::BestFit);
        let tasks: Vec<Demand> = [[2, 1], [0, 1], [2, 0], [3, 0]]
            .iter()
            .map(|t| Demand { amounts: t.to_vec(), labels: vec![] })
            .collect();
        assert_eq!(p.plan(&tasks).unwrap().placed, 3);
    }

    #[test]
    fn plan_beats_or_matches_ffd_and_smallest_first() {
        let mut p = Placer::new(names(), Policy::BestFit).unwrap();
        p.add_worker(&[10, 10, 0], &[]).unwrap();
        p.add_worker(&[10, 10, 0], &[]).unwrap();
        // Smallest-first places six (2+3+4 | 4+5), decreasing places five.
        let tasks: Vec<Demand> =
            [6, 5, 5, 4, 4, 3, 2].iter().map(|&c| demand(&[c, 1, 0])).collect();
        let plan = p.plan(&tasks).unwrap();
        assert!(plan.placed >= 5, "{plan:?}");
        assert!(p.plan(&[demand(&[11, 1, 0])]).is_err());
    }

    /// A placer over two resources (`a`, `b`) with these workers.
    fn two_resources(workers: &[[u64; 2]], policy: Policy) -> Placer {
        let mut p = Placer::new(vec!["a".into(), "b".into()], policy).unwrap();
        for w in workers {
            p.add_worker(w, &[]).unwrap();
        }
        p
    }

    /// The tasks some worker could ever take, as demands (the others are unschedulable).
    fn schedulable_tasks(workers: &[[u64; 2]], tasks: &[[u64; 2]]) -> Vec<Demand> {
        tasks
            .iter()
            .filter(|t| workers.iter().any(|w| w[0] >= t[0] && w[1] >= t[1]))
            .map(|t| Demand { amounts: t.to_vec(), labels: vec![] })
            .collect()
    }

    fn instance() -> impl Strategy<Value = (Vec<[u64; 2]>, Vec<[u64; 2]>, Vec<bool>)> {
        (
            proptest::collection::vec((1u64..100, 1u64..100).prop_map(|(a, b)| [a, b]), 1..8),
            proptest::collection::vec((0u64..60, 0u64..60).prop_map(|(a, b)| [a, b]), 0..60),
            proptest::collection::vec(any::<bool>(), 60),
        )
    }

    /// The placer as it was before the index: every call scans every worker. The oracle for
    /// the indexed placer's choices.
    struct Reference {
        policy: Policy,
        capacity: Vec<Vec<u64>>,
        free: Vec<Vec<u64>>,
        labels: Vec<Vec<u32>>,
        active: Vec<bool>,
    }

    impl Reference {
        fn choose(&self, amounts: &[u64], labels: &[u32]) -> Option<u32> {
            let fits = |w: usize| {
                self.active[w]
                    && self.free[w].iter().zip(amounts).all(|(&f, &d)| d <= f)
                    && labels.iter().all(|l| self.labels[w].contains(l))
            };
            if self.policy == Policy::FirstFit {
                return (0..self.free.len()).find(|&w| fits(w)).map(|w| w as u32);
            }
            let mut best: Option<(f64, u32)> = None;
            for w in (0..self.free.len()).filter(|&w| fits(w)) {
                let mut slack = 0.0;
                for ((&f, &d), &c) in self.free[w].iter().zip(amounts).zip(&self.capacity[w]) {
                    slack += (f - d) as f64 * if c == 0 { 0.0 } else { 1.0 / c as f64 };
                }
                let score = if self.policy == Policy::Spread { -slack } else { slack };
                if best.is_none_or(|(s, _)| score < s) {
                    best = Some((score, w as u32));
                }
            }
            best.map(|(_, w)| w)
        }

        fn schedulable(&self, amounts: &[u64], labels: &[u32]) -> bool {
            (0..self.capacity.len()).any(|w| {
                self.active[w]
                    && self.capacity[w].iter().zip(amounts).all(|(&c, &d)| d <= c)
                    && labels.iter().all(|l| self.labels[w].contains(l))
            })
        }
    }

    /// One step of a random session: add a worker, remove one, place a task, release one.
    #[derive(Debug, Clone)]
    enum Step {
        Add([u64; 3], Vec<u32>),
        Remove(usize),
        Place([u64; 3], Vec<u32>),
        Release(usize),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let amounts = || (0u64..5, 0u64..40, 0u64..3).prop_map(|(a, b, c)| [a * 500, b * 64, c]);
        let labels = || proptest::collection::vec(0u32..70, 0..2);
        let step = prop_oneof![
            2 => (amounts(), labels()).prop_map(|(a, l)| Step::Add(a, l)),
            1 => any::<usize>().prop_map(Step::Remove),
            8 => (amounts(), labels()).prop_map(|(a, l)| Step::Place(a, l)),
            3 => any::<usize>().prop_map(Step::Release),
        ];
        proptest::collection::vec(step, 1..300)
    }

    proptest! {
        /// No worker is ever over-committed, whatever order tasks come and go in.
        #[test]
        fn never_over_commits((workers, tasks, releases) in instance(), policy in 0u8..3) {
            let policy = [Policy::BestFit, Policy::Spread, Policy::FirstFit][policy as usize];
            let mut p = two_resources(&workers, policy);
            let mut held: Vec<(u64, u32, [u64; 2])> = Vec::new();
            for (i, t) in tasks.iter().enumerate() {
                match p.place(i as u64, &Demand { amounts: t.to_vec(), labels: vec![] }) {
                    Ok(Some(w)) => held.push((i as u64, w, *t)),
                    Ok(None) => {}
                    Err(CoreError::Unschedulable { .. }) => {
                        prop_assert!(workers.iter().all(|w| w[0] < t[0] || w[1] < t[1]));
                    }
                    Err(other) => prop_assert!(false, "{other}"),
                }
                if releases[i] && !held.is_empty() {
                    let (task, _, _) = held.remove(0);
                    p.release(task).unwrap();
                }
                for (w, cap) in workers.iter().enumerate() {
                    for (r, &capacity) in cap.iter().enumerate() {
                        let used: u64 =
                            held.iter().filter(|h| h.1 == w as u32).map(|h| h.2[r]).sum();
                        prop_assert!(used <= capacity);
                        prop_assert_eq!(p.free(w as u32).unwrap()[r], capacity - used);
                    }
                }
            }
        }

        /// Every choice is the one a scan over every worker makes, and so is every answer to
        /// "could any worker ever take this", across adds, removals, placements and releases
        /// (many workers share a capacity, so ties are common).
        #[test]
        fn same_choices_as_a_scan_of_every_worker(plan in steps(), policy in 0u8..3) {
            let policy = [Policy::BestFit, Policy::Spread, Policy::FirstFit][policy as usize];
            let names = vec!["cpu".into(), "ram".into(), "gpu".into()];
            let mut p = Placer::new(names, policy).unwrap();
            for l in 0..70 {
                p.label(&format!("l{l}"));
            }
            let mut r = Reference {
                policy,
                capacity: vec![],
                free: vec![],
                labels: vec![],
                active: vec![],
            };
            let mut held: Vec<(u64, u32, [u64; 3])> = Vec::new();
            for (task, step) in plan.into_iter().enumerate() {
                let task = task as u64;
                match step {
                    Step::Add(capacity, labels) => {
                        let added = p.add_worker(&capacity, &labels);
                        prop_assert_eq!(added.is_ok(), capacity.iter().any(|&c| c > 0));
                        if added.is_ok() {
                            r.capacity.push(capacity.to_vec());
                            r.free.push(capacity.to_vec());
                            r.labels.push(labels);
                            r.active.push(true);
                        }
                    }
                    Step::Remove(w) if !r.free.is_empty() => {
                        let w = w % r.free.len();
                        let mut lost = p.remove_worker(w as u32).unwrap();
                        let mut expected: Vec<u64> =
                            held.iter().filter(|h| h.1 == w as u32).map(|h| h.0).collect();
                        lost.sort_unstable();
                        expected.sort_unstable();
                        prop_assert_eq!(lost, expected);
                        held.retain(|h| h.1 != w as u32);
                        r.active[w] = false;
                        r.free[w].clone_from(&r.capacity[w]);
                    }
                    Step::Place(amounts, labels) => {
                        let demand = Demand { amounts: amounts.to_vec(), labels: labels.clone() };
                        let got = p.place(task, &demand);
                        if r.schedulable(&amounts, &labels) {
                            let expected = r.choose(&amounts, &labels);
                            prop_assert_eq!(got.as_ref().ok().copied(), Some(expected));
                            if let Some(w) = expected {
                                for (f, d) in r.free[w as usize].iter_mut().zip(amounts) {
                                    *f -= d;
                                }
                                held.push((task, w, amounts));
                            }
                        } else {
                            prop_assert!(
                                matches!(got, Err(CoreError::Unschedulable { .. })),
                                "{:?}", got
                            );
                        }
                    }
                    Step::Release(i) if !held.is_empty() => {
                        let (task, w, amounts) = held.remove(i % held.len());
                        prop_assert_eq!(p.release(task).unwrap(), w);
                        for (f, d) in r.free[w as usize].iter_mut().zip(amounts) {
                            *f += d;
                        }
                    }
                    Step::Remove(_) | Step::Release(_) => {}
                }
                for (w, free) in r.free.iter().enumerate() {
                    prop_assert_eq!(&p.free(w as u32).unwrap(), free);
                }
            }
        }

        /// Heterogeneous capacities (so scores rarely tie) over many workers: best fit still picks
        /// what a scan picks.
        #[test]
        fn best_fit_over_many_workers_matches_a_scan(
            workers in proptest::collection::vec((1u64..20_000, 1u64..70_000, 0u64..3), 1..300),
            tasks in proptest::collection::vec((0u64..5000, 0u64..9000, 0u64..2, any::<bool>()), 1..400),
        ) {
            let mut p = Placer::new(vec!["cpu".into(), "ram".into(), "gpu".into()], Policy::BestFit)
                .unwrap();
            let mut r = Reference {
                policy: Policy::BestFit,
                capacity: vec![],
                free: vec![],
                labels: vec![],
                active: vec![],
            };
            for &(c, m, g) in &workers {
                p.add_worker(&[c, m, g], &[]).unwrap();
                r.capacity.push(vec![c, m, g]);
                r.free.push(vec![c, m, g]);
                r.labels.push(vec![]);
                r.active.push(true);
            }
            let mut held = Vec::new();
            for (task, &(c, m, g, release)) in tasks.iter().enumerate() {
                let amounts = [c, m, g];
                let got = p.place(task as u64, &Demand { amounts: amounts.to_vec(), labels: vec![] });
                if !r.schedulable(&amounts, &[]) {
                    prop_assert!(got.is_err());
                    continue;
                }
                let expected = r.choose(&amounts, &[]);
                prop_assert_eq!(got.unwrap(), expected);
                if let Some(w) = expected {
                    for (f, d) in r.free[w as usize].iter_mut().zip(amounts) {
                        *f -= d;
                    }
                    held.push((task as u64, w, amounts));
                }
                if release && held.len() > 3 {
                    let (t, w, amounts) = held.swap_remove(held.len() / 2);
                    p.release(t).unwrap();
                    for (f, d) in r.free[w as usize].iter_mut().zip(amounts) {
                        *f += d;
                    }
                }
            }
        }

        /// The plan is the best of the four passes run in full, one placer each (dropping a pass
        /// early once it cannot win changes nothing).
        #[test]
        fn plan_is_the_best_of_four_full_passes((workers, tasks, _) in instance()) {
            let p = two_resources(&workers, Policy::BestFit);
            let tasks = schedulable_tasks(&workers, &tasks);
            let largest: Vec<f64> = (0..2)
                .map(|i| workers.iter().map(|w| w[i]).max().unwrap().max(1) as f64)
                .collect();
            let size = |t: &Demand| (t.amounts[0] as f64 / largest[0]).max(t.amounts[1] as f64 / largest[1]);
            let mut decreasing: Vec<usize> = (0..tasks.len()).collect();
            decreasing.sort_by(|&a, &b| size(&tasks[b]).total_cmp(&size(&tasks[a])).then(a.cmp(&b)));
            let mut increasing: Vec<usize> = (0..tasks.len()).collect();
            increasing.sort_by(|&a, &b| size(&tasks[a]).total_cmp(&size(&tasks[b])).then(a.cmp(&b)));
            let mut best: Option<(usize, usize, Vec<Option<u32>>, &str)> = None;
            for (name, order, policy) in [
                ("first_fit_decreasing", &decreasing, Policy::FirstFit),
                ("best_fit_decreasing", &decreasing, Policy::BestFit),
                ("smallest_first", &increasing, Policy::FirstFit),
                ("smallest_first_best_fit", &increasing, Policy::BestFit),
            ] {
                let mut q = two_resources(&workers, policy);
                let mut assignment = vec![None; tasks.len()];
                for &t in order {
                    assignment[t] = q.place(t as u64, &tasks[t]).unwrap();
                }
                let placed = assignment.iter().filter(|a| a.is_some()).count();
                let used = (0..workers.len() as u32).filter(|&w| q.task_count(w).unwrap() > 0).count();
                if best.as_ref().is_none_or(|b| (placed, std::cmp::Reverse(used)) > (b.0, std::cmp::Reverse(b.1))) {
                    best = Some((placed, used, assignment, name));
                }
            }
            let (placed, used, assignment, name) = best.unwrap();
            let plan = p.plan(&tasks).unwrap();
            prop_assert_eq!(plan, Plan { assignment, placed, workers_used: used, heuristic: name });
        }

        /// The plan never over-commits and places at least as many as first-fit-decreasing.
        #[test]
        fn plan_is_valid((workers, tasks, _) in instance()) {
            let p = two_resources(&workers, Policy::BestFit);
            let tasks = schedulable_tasks(&workers, &tasks);
            let result = p.plan(&tasks).unwrap();
            for (w, cap) in workers.iter().enumerate() {
                for (r, &capacity) in cap.iter().enumerate() {
                    let used: u64 = result.assignment.iter().zip(&tasks)
                        .filter(|(a, _)| **a == Some(w as u32)).map(|(_, t)| t.amounts[r]).sum();
                    prop_assert!(used <= capacity);
                }
            }
            prop_assert_eq!(result.placed, result.assignment.iter().filter(|a| a.is_some()).count());
        }
    }
}
