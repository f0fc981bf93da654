//! What several runs share: the process-wide cap ([`Gate`]) and a worker pool's placement queue
//! ([`Pool`]).
//!
//! Each run's [`crate::scheduler::Scheduler`] consults both while it admits, so a node leaves the
//! core already holding its run slot, its global slot and its worker. A slot or a worker freed by
//! one run is granted here to a waiting node of *any* run; the run that receives it is recorded as
//! woken, and its scheduler collects the grant at its next [`crate::scheduler::Scheduler::poll`].
//!
//! Fairness between runs is round-robin: a run with nodes blocked on the global cap joins one FIFO
//! of waiting runs (once, however many nodes it has blocked); every freed slot goes to the run at
//! the front, which rejoins at the back if it still has blocked nodes. With `k` runs waiting, each
//! gets one of every `k` freed slots, whatever their sizes.
//!
//! Placement never lets a task that does not fit block one that does: waiting tasks are scanned in
//! arrival order and every one that fits is placed. A task passed over by [`Pool::max_bypass`]
//! placements ages into a barrier: from then on nothing behind it is placed until it is, so capacity
//! drains towards it and it runs too.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{CoreError, CoreResult};
use crate::limiter::Cap;
use crate::packing::{Demand, Placer};

/// A run's id in a [`Gate`] or a [`Pool`].
pub type RunId = u32;

/// A shared handle: every run's scheduler holds one.
pub type Shared<T> = Arc<Mutex<T>>;

/// Locks a shared part; a panic in another holder does not poison the data for everyone else
/// (every mutation below leaves the counts consistent before it can panic).
pub fn lock<T>(shared: &Shared<T>) -> MutexGuard<'_, T> {
    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug, Clone, Copy, Default)]
struct GateRun {
    live: bool,
    /// Slots the run's nodes hold.
    held: u32,
    /// Slots handed to the run by a release elsewhere, not yet taken by one of its nodes.
    granted: u32,
    /// In the waiting FIFO.
    waiting: bool,
}

/// The process-wide cap over the nodes of every run (`set_max_parallel_tasks`).
#[derive(Debug)]
pub struct Gate {
    cap: Cap,
    /// Slots held or granted.
    used: u32,
    runs: Vec<GateRun>,
    free_ids: Vec<RunId>,
    waiting: VecDeque<RunId>,
    woken: Vec<RunId>,
}

impl Gate {
    /// A gate of `cap` slots (`None`: unbounded).
    pub fn new(cap: Option<u64>) -> CoreResult<Self> {
        let cap = Cap::new("max_parallel", cap)?;
        Ok(Self {
            cap,
            used: 0,
            runs: Vec::new(),
            free_ids: Vec::new(),
            waiting: VecDeque::new(),
            woken: Vec::new(),
        })
    }

    /// The cap.
    pub fn cap(&self) -> Cap {
        self.cap
    }

    /// Slots held or granted.
    pub fn in_use(&self) -> u32 {
        self.used
    }

    /// Runs waiting for a slot.
    pub fn waiting_runs(&self) -> usize {
        self.waiting.iter().filter(|&&r| self.runs[r as usize].waiting).count()
    }

    /// Slots held by one run's nodes.
    pub fn held_by(&self, run: RunId) -> u32 {
        self.runs.get(run as usize).map_or(0, |r| r.held)
    }

    /// Changes the cap. Lowering it lets what holds slots finish; raising it grants the new slots
    /// to waiting runs at once.
    pub fn set_cap(&mut self, cap: Option<u64>) -> CoreResult<()> {
        self.cap = Cap::new("max_parallel", cap)?;
        while self.cap.admits(self.used) && self.grant_next() {
            self.used += 1;
        }
        Ok(())
    }

    /// Sets the cap to exactly `slots`, zero allowed: for a gate whose slots are leases taken
    /// elsewhere (a cap shared through Redis), `slots` is the number of leases held. New slots go
    /// to waiting runs at once; slots above it disappear as they are released.
    pub fn set_leased(&mut self, slots: u32) {
        self.cap = Cap::exactly(slots);
        while self.cap.admits(self.used) && self.grant_next() {
            self.used += 1;
        }
    }

    /// A new run.
    pub fn register(&mut self) -> RunId {
        let run = GateRun { live: true, ..GateRun::default() };
        if let Some(id) = self.free_ids.pop() {
            self.runs[id as usize] = run;
            id
        } else {
            self.runs.push(run);
            (self.runs.len() - 1) as RunId
        }
    }

    /// Forgets a run: every slot it holds or was granted goes to the next waiting run.
    pub fn unregister(&mut self, run: RunId) {
        let Some(state) = self.runs.get_mut(run as usize).filter(|r| r.live) else { return };
        let back = state.held + state.granted;
        *state = GateRun::default();
        self.waiting.retain(|&r| r != run);
        self.free_ids.push(run);
        for _ in 0..back {
            self.hand_off();
        }
    }

    fn run(&mut self, run: RunId) -> CoreResult<&mut GateRun> {
        self.runs
            .get_mut(run as usize)
            .filter(|r| r.live)
            .ok_or(CoreError::UnknownId { what: "run", id: run.into() })
    }

    /// Whether a node of `run` can take a slot now (a grant of its own, or a free slot that no
    /// other run is waiting for).
    pub fn can_take(&self, run: RunId) -> bool {
        let state = &self.runs[run as usize];
        state.granted > 0 || (self.cap.admits(self.used) && self.waiting.is_empty())
    }

    /// Takes a slot for a node of `run`; call only after [`Gate::can_take`] said yes.
    pub fn take(&mut self, run: RunId) -> CoreResult<()> {
        let (cap, used, waiting) = (self.cap, self.used, self.waiting.is_empty());
        let state = self.run(run)?;
        if state.granted > 0 {
            state.granted -= 1;
            state.held += 1;
            return Ok(());
        }
        if cap.admits(used) && waiting {
            state.held += 1;
            self.used += 1;
            return Ok(());
        }
        Err(CoreError::invalid("slot", "free when taken", "none free"))
    }

    /// `run` has a node that could not take a slot: it waits its turn.
    pub fn wait(&mut self, run: RunId) -> CoreResult<()> {
        let state = self.run(run)?;
        if !state.waiting {
            state.waiting = true;
            self.waiting.push_back(run);
        }
        Ok(())
    }

    /// `run` has no node waiting for a slot any more: grants it did not use go to others.
    pub fn settle(&mut self, run: RunId) -> CoreResult<()> {
        let state = self.run(run)?;
        let was_waiting = std::mem::take(&mut state.waiting);
        let spare = std::mem::take(&mut state.granted);
        if was_waiting {
            self.waiting.retain(|&r| r != run);
        }
        for _ in 0..spare {
            self.hand_off();
        }
        Ok(())
    }

    /// A node of `run` gave its slot back; the slot goes to the next waiting run, if any.
    pub fn release(&mut self, run: RunId) -> CoreResult<()> {
        let state = self.run(run)?;
        if state.held == 0 {
            return Err(CoreError::NotHeld { what: "release()" });
        }
        state.held -= 1;
        self.hand_off();
        Ok(())
    }

    /// One slot (counted in `used`) became free: it goes to the next waiting run, or back to the
    /// gate (always back while a lowered cap is exceeded).
    fn hand_off(&mut self) {
        if self.cap.exceeded_by(self.used) || !self.grant_next() {
            self.used -= 1;
        }
    }

    /// Grants one slot to the run at the front of the FIFO; the caller accounts for it.
    fn grant_next(&mut self) -> bool {
        while let Some(run) = self.waiting.pop_front() {
            let state = &mut self.runs[run as usize];
            if !(state.live && state.waiting) {
                continue;
            }
            state.waiting = false;
            state.granted += 1;
            if !self.woken.contains(&run) {
                self.woken.push(run);
            }
            return true;
        }
        false
    }

    /// Runs granted a slot since the last call (their schedulers should poll).
    pub fn take_woken(&mut self) -> Vec<RunId> {
        std::mem::take(&mut self.woken)
    }
}

/// The placement id of a node of a run: unique across every run sharing a [`Pool`].
pub fn placement_id(run: RunId, node: u32) -> u64 {
    (u64::from(run) << 32) | u64::from(node)
}

/// The run and node of a placement id.
pub fn split_placement(id: u64) -> (RunId, u32) {
    ((id >> 32) as RunId, id as u32)
}

#[derive(Debug, Clone, Copy)]
struct Waiting {
    run: RunId,
    node: u32,
    class: u32,
    /// Placements made while this task waited ahead of them.
    bypassed: u32,
}

/// A worker pool shared by every run placing tasks on it: a [`Placer`] and the queue of tasks
/// that were admitted but find no worker with room yet.
#[derive(Debug)]
pub struct Pool {
    placer: Placer,
    classes: Vec<Demand>,
    /// Each class's id, by demand.
    class_ids: HashMap<Demand, u32>,
    waiting: VecDeque<Waiting>,
    max_bypass: u32,
    /// Waiting tasks that aged into barriers.
    aged: usize,
    /// Per run: `Some(nodes placed from the queue, not collected yet)` while it is registered.
    runs: Vec<Option<Vec<u32>>>,
    free_ids: Vec<RunId>,
    woken: Vec<RunId>,
}

/// How many placements may pass a waiting task before it blocks the queue behind it.
pub const DEFAULT_MAX_BYPASS: u32 = 32; // keep in step with the bindings' default

impl Pool {
    /// A pool placing with `placer`; a waiting task ages into a barrier after `max_bypass`
    /// placements passed it.
    pub fn new(placer: Placer, max_bypass: u32) -> Self {
        Self {
            placer,
            classes: Vec::new(),
            class_ids: HashMap::new(),
            waiting: VecDeque::new(),
            max_bypass,
            aged: 0,
            runs: Vec::new(),
            free_ids: Vec::new(),
            woken: Vec::new(),
        }
    }

    /// The placer (workers, capacities, labels).
    pub fn placer(&self) -> &Placer {
        &self.placer
    }

    /// The placer, to add labels; add and remove workers through the pool.
    pub fn placer_mut(&mut self) -> &mut Placer {
        &mut self.placer
    }

    /// Tasks waiting for a worker.
    pub fn waiting_count(&self) -> usize {
        self.waiting.len()
    }

    /// A demand that nodes refer to by the returned class id.
    ///
    /// Fails with [`CoreError::Unschedulable`] if no worker could ever meet it.
    pub fn add_class(&mut self, demand: Demand) -> CoreResult<u32> {
        self.placer.check_schedulable(&demand)?;
        if let Some(&id) = self.class_ids.get(&demand) {
            return Ok(id);
        }
        let id = self.classes.len() as u32;
        self.class_ids.insert(demand.clone(), id);
        self.classes.push(demand);
        Ok(id)
    }

    /// Number of demand classes.
    pub fn class_count(&self) -> u32 {
        self.classes.len() as u32
    }

    /// A new run.
    pub fn register(&mut self) -> RunId {
        if let Some(id) = self.free_ids.pop() {
            self.runs[id as usize] = Some(Vec::new());
            id
        } else {
            self.runs.push(Some(Vec::new()));
            (self.runs.len() - 1) as RunId
        }
    }

    /// Forgets a run: its waiting tasks leave the queue and what its tasks hold is released.
    pub fn unregister(&mut self, run: RunId) {
        if self.runs.get(run as usize).is_none_or(Option::is_none) {
            return;
        }
        self.cancel_waiting(run);
        let mine: Vec<u64> =
            self.placer.placed_tasks().filter(|&t| split_placement(t).0 == run).collect();
        for task in &mine {
            let _ = self.placer.release(*task);
        }
        self.runs[run as usize] = None;
        self.free_ids.push(run);
        if !mine.is_empty() {
            self.scan();
        }
    }

    fn check_run(&self, run: RunId) -> CoreResult<()> {
        match self.runs.get(run as usize) {
            Some(Some(_)) => Ok(()),
            _ => Err(CoreError::UnknownId { what: "run", id: run.into() }),
        }
    }

    /// Places a node of `run` needing demand `class`: its worker, or `None` when it waits in the
    /// queue (it then comes out of [`Pool::take_placed`] once placed).
    pub fn place(&mut self, run: RunId, node: u32, class: u32) -> CoreResult<Option<u32>> {
        self.place_or(run, node, class, true)
    }

    /// [`Pool::place`], but a node that finds no room now is not queued when `wait` is false.
    pub fn place_or(
        &mut self,
        run: RunId,
        node: u32,
        class: u32,
        wait: bool,
    ) -> CoreResult<Option<u32>> {
        self.place_with(run, node, class, wait, true)
    }

    /// Places now, or queues (when `wait`); with `schedulable`, a demand no live worker could
    /// ever take is refused.
    fn place_with(
        &mut self,
        run: RunId,
        node: u32,
        class: u32,
        wait: bool,
        schedulable: bool,
    ) -> CoreResult<Option<u32>> {
        self.check_run(run)?;
        let demand = self
            .classes
            .get(class as usize)
            .ok_or(CoreError::UnknownId { what: "demand class", id: class.into() })?;
        if self.aged == 0 {
            let task = placement_id(run, node);
            let placed = if schedulable {
                self.placer.place(task, demand)?
            } else {
                self.placer.place_if_room(task, demand)?
            };
            if let Some(worker) = placed {
                self.passed_over(self.waiting.len());
                return Ok(Some(worker));
            }
        }
        if wait {
            self.waiting.push_back(Waiting { run, node, class, bypassed: 0 });
            if self.max_bypass == 0 {
                self.aged += 1; // strict arrival order: every waiting task is a barrier
            }
        }
        Ok(None)
    }

    /// The first `count` waiting tasks were passed over by a placement.
    fn passed_over(&mut self, count: usize) {
        let limit = self.max_bypass;
        for w in self.waiting.iter_mut().take(count) {
            w.bypassed += 1;
            if w.bypassed == limit {
                self.aged += 1;
            }
        }
    }

    /// Places waiting tasks that fit now, in arrival order, stopping at an aged one that does not.
    fn scan(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        // Capacity only shrinks during a scan, so a class that did not fit is not tried again.
        let mut misfit = vec![false; self.classes.len()];
        let mut i = 0;
        while i < self.waiting.len() {
            let w = self.waiting[i];
            let fits = !misfit[w.class as usize]
                && self
                    .placer
                    .place(placement_id(w.run, w.node), &self.classes[w.class as usize])
                    .ok()
                    .flatten()
                    .is_some();
            if fits {
                self.waiting.remove(i);
                if w.bypassed >= self.max_bypass {
                    self.aged -= 1;
                }
                if let Some(Some(placed)) = self.runs.get_mut(w.run as usize) {
                    placed.push(w.node);
                }
                if !self.woken.contains(&w.run) {
                    self.woken.push(w.run);
                }
                self.passed_over(i);
                continue;
            }
            misfit[w.class as usize] = true;
            if w.bypassed >= self.max_bypass || misfit.iter().all(|&m| m) {
                break;
            }
            i += 1;
        }
    }

    /// A node of `run` finished (or stopped waiting): its capacity goes to waiting tasks.
    ///
    /// # Panics
    ///
    /// Never: the index comes from a search of the same queue.
    pub fn release(&mut self, run: RunId, node: u32) -> CoreResult<()> {
        self.check_run(run)?;
        if self.placer.release(placement_id(run, node)).is_ok() {
            self.scan();
        } else if let Some(i) = self.waiting.iter().position(|w| w.run == run && w.node == node) {
            let w = self.waiting.remove(i).expect("index from position");
            if w.bypassed >= self.max_bypass {
                self.aged -= 1;
                self.scan();
            }
        } else {
            return Err(CoreError::UnknownId { what: "placed task", id: node.into() });
        }
        Ok(())
    }

    /// Places again a node whose worker went away: like [`Pool::place`], but it waits in the
    /// queue even when no live worker could take it now (a worker with what it needs may join).
    pub fn place_again(&mut self, run: RunId, node: u32, class: u32) -> CoreResult<Option<u32>> {
        self.place_with(run, node, class, true, false)
    }

    /// Removes every waiting task of `run` from the queue; returns their nodes.
    pub fn cancel_waiting(&mut self, run: RunId) -> Vec<u32> {
        let mut nodes = Vec::new();
        let limit = self.max_bypass;
        let mut unaged = 0;
        self.waiting.retain(|w| {
            if w.run == run {
                nodes.push(w.node);
                if w.bypassed >= limit {
                    unaged += 1;
                }
                false
            } else {
                true
            }
        });
        self.aged -= unaged;
        if unaged > 0 {
            self.scan();
        }
        nodes
    }

    /// Nodes of `run` placed from the queue since the last call.
    pub fn take_placed(&mut self, run: RunId) -> Vec<u32> {
        match self.runs.get_mut(run as usize) {
            Some(Some(placed)) => std::mem::take(placed),
            _ => Vec::new(),
        }
    }

    /// Whether some run had nodes placed from the queue since [`Pool::take_woken`] was last
    /// called.
    pub fn has_woken(&self) -> bool {
        !self.woken.is_empty()
    }

    /// Runs that had nodes placed from the queue since the last call.
    pub fn take_woken(&mut self) -> Vec<RunId> {
        std::mem::take(&mut self.woken)
    }

    /// The worker a node of `run` is placed on.
    pub fn worker_of(&self, run: RunId, node: u32) -> Option<u32> {
        self.placer.worker_of(placement_id(run, node))
    }

    /// Adds a worker; waiting tasks that fit on it are placed.
    pub fn add_worker(&mut self, capacity: &[u64], labels: &[u32]) -> CoreResult<u32> {
        let id = self.placer.add_worker(capacity, labels)?;
        self.scan();
        Ok(id)
    }

    /// Removes a worker; returns the `(run, node)` placed on it, which hold nothing any more.
    pub fn remove_worker(&mut self, worker: u32) -> CoreResult<Vec<(RunId, u32)>> {
        Ok(self.placer.remove_worker(worker)?.into_iter().map(split_placement).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::Graph;
    use crate::packing::Policy;
    use crate::scheduler::Scheduler;

    fn wide(n: u32) -> Scheduler {
        Scheduler::new(Graph::from_edges(n, &[], &[]).unwrap(), None, &[], None, None).unwrap()
    }

    #[test]
    fn gate_grants_freed_slots_round_robin_between_runs() {
        let gate: Shared<Gate> = Arc::new(Mutex::new(Gate::new(Some(2)).unwrap()));
        let mut a = wide(10);
        let mut b = wide(10);
        let mut c = wide(10);
        for s in [&mut a, &mut b, &mut c] {
            s.attach_gate(gate.clone()).unwrap();
        }
        assert_eq!(a.start(0.0).unwrap(), vec![0, 1]);
        assert!(b.start(0.0).unwrap().is_empty());
        assert!(c.start(0.0).unwrap().is_empty());
        // In line: a, b, c. Each freed slot goes to the front run, which rejoins at the back.
        assert_eq!(a.complete(0, 0.0).unwrap(), vec![2]);
        assert!(a.complete(1, 0.0).unwrap().is_empty()); // to b
        assert!(a.complete(2, 0.0).unwrap().is_empty()); // to c
        let (b_run, c_run) = (b.gate_run().unwrap(), c.gate_run().unwrap());
        let woken = lock(&gate).take_woken();
        assert!(woken.contains(&b_run) && woken.contains(&c_run));
        assert_eq!(b.poll(0.0).unwrap(), vec![0]);
        assert_eq!(c.poll(0.0).unwrap(), vec![0]);
        assert_eq!(lock(&gate).in_use(), 2);
        // In line now: a, b, c again.
        b.complete(0, 0.0).unwrap();
        c.complete(0, 0.0).unwrap();
        assert_eq!(a.poll(0.0).unwrap(), vec![3]);
        assert_eq!(b.poll(0.0).unwrap(), vec![1]);
        assert!(c.poll(0.0).unwrap().is_empty());
        assert_eq!(lock(&gate).in_use(), 2);
    }

    #[test]
    fn dropped_run_gives_its_slots_to_the_waiting_one() {
        let gate: Shared<Gate> = Arc::new(Mutex::new(Gate::new(Some(1)).unwrap()));
        let mut a = wide(3);
        let mut b = wide(3);
        a.attach_gate(gate.clone()).unwrap();
        b.attach_gate(gate.clone()).unwrap();
        assert_eq!(a.start(0.0).unwrap(), vec![0]);
        assert!(b.start(0.0).unwrap().is_empty());
        drop(a);
        assert_eq!(b.poll(0.0).unwrap(), vec![0]);
        assert_eq!(lock(&gate).in_use(), 1);
    }

    #[test]
    fn raising_the_cap_grants_waiting_runs_and_lowering_lets_running_finish() {
        let gate: Shared<Gate> = Arc::new(Mutex::new(Gate::new(Some(1)).unwrap()));
        let mut a = wide(4);
        a.attach_gate(gate.clone()).unwrap();
        assert_eq!(a.start(0.0).unwrap(), vec![0]);
        lock(&gate).set_cap(Some(3)).unwrap();
        assert_eq!(a.poll(0.0).unwrap(), vec![1, 2]);
        lock(&gate).set_cap(Some(1)).unwrap();
        assert!(a.complete(0, 0.0).unwrap().is_empty());
        assert!(a.complete(1, 0.0).unwrap().is_empty());
        assert_eq!(a.complete(2, 0.0).unwrap(), vec![3]);
    }

    #[test]
    fn a_release_without_a_slot_is_a_state_error() {
        let mut gate = Gate::new(None).unwrap();
        let run = gate.register();
        assert_eq!(gate.release(run), Err(CoreError::NotHeld { what: "release()" }));
        assert!(gate.can_take(run));
        gate.take(run).unwrap();
        gate.release(run).unwrap();
        assert_eq!(gate.in_use(), 0);
    }

    fn pool_of(cpus: &[u64]) -> Shared<Pool> {
        let mut placer = Placer::new(vec!["cpu".into()], Policy::BestFit).unwrap();
        for &c in cpus {
            placer.add_worker(&[c], &[]).unwrap();
        }
        Arc::new(Mutex::new(Pool::new(placer, 3)))
    }

    fn demand(cpu: u64) -> Demand {
        Demand { amounts: vec![cpu], labels: vec![] }
    }

    #[test]
    fn a_big_task_does_not_block_small_ones_and_still_runs() {
        // One 4-core worker; node 0 needs 4 cores, nodes 1.. need 2 (one 2-core task runs first).
        let pool = pool_of(&[4]);
        let (big, small) = {
            let mut p = lock(&pool);
            (p.add_class(demand(4)).unwrap(), p.add_class(demand(2)).unwrap())
        };
        let mut s = Scheduler::new(
            Graph::from_edges(9, &[], &[]).unwrap(),
            None,
            &[],
            Some(vec![5, 10, 1, 1, 1, 1, 1, 1, 1]),
            None,
        )
        .unwrap();
        let mut classes = vec![small; 9];
        classes[0] = big;
        s.attach_pool(pool.clone(), classes).unwrap();
        // Node 1 (priority 10) takes 2 cores; node 0 (big, next in line) waits; small node 2 fits
        // beside node 1 and passes it.
        let first = s.start(0.0).unwrap();
        assert_eq!(first, vec![1, 2]);
        assert_eq!(s.placing(), 7);
        // Small tasks keep passing the big one until it has aged (3 bypasses here).
        let mut order = first;
        let mut running: Vec<u32> = order.clone();
        while let Some(node) = running.first().copied() {
            running.remove(0);
            let out = s.complete(node, 0.0).unwrap();
            running.extend(&out);
            order.extend(out);
        }
        assert!(s.is_finished());
        // Passed three times (max_bypass), it blocks the queue until the worker drains for it.
        assert_eq!(order, vec![1, 2, 3, 4, 0, 5, 6, 7, 8]);
        assert_eq!(lock(&pool).placer().placed_count(), 0);
    }

    #[test]
    fn cancel_takes_nodes_out_of_the_placement_queue() {
        let pool = pool_of(&[1]);
        let one = lock(&pool).add_class(demand(1)).unwrap();
        let mut s = wide(3);
        s.attach_pool(pool.clone(), vec![one; 3]).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![0]);
        assert_eq!(s.cancel(), vec![1, 2]);
        assert_eq!(lock(&pool).waiting_count(), 0);
        s.complete(0, 0.0).unwrap();
        assert!(s.is_finished());
    }

    /// Polls each run that the shared gate or pool woke (`woken`: their ids there, which `id`
    /// reads off a run) and adds what it admits to that run's running nodes.
    fn poll_woken(
        runs: &mut [Scheduler],
        running: &mut [Vec<u32>],
        woken: &[RunId],
        id: fn(&Scheduler) -> Option<RunId>,
    ) {
        for &r in woken {
            let i = runs.iter().position(|s| id(s) == Some(r)).unwrap();
            let out = runs[i].poll(0.0).unwrap();
            running[i].extend(out);
        }
    }

    /// Completes the oldest running node of one busy run (`choice` picks which) and adds what
    /// that admits; `false` once no run has a node running.
    fn complete_one(runs: &mut [Scheduler], running: &mut [Vec<u32>], choice: u16) -> bool {
        let busy: Vec<usize> = (0..runs.len()).filter(|&i| !running[i].is_empty()).collect();
        if busy.is_empty() {
            return false;
        }
        let i = busy[choice as usize % busy.len()];
        let node = running[i].remove(0);
        let out = runs[i].complete(node, 0.0).unwrap();
        running[i].extend(out);
        true
    }

    proptest::proptest! {
        /// Several runs under one gate: the nodes running across all runs never exceed the cap,
        /// the gate's count matches them, a waiting run is always eventually served, and every
        /// run finishes.
        #[test]
        fn runs_sharing_a_gate_never_exceed_it_and_all_finish(
            sizes in proptest::collection::vec(1u32..12, 1..5),
            cap in 1u64..6,
            choices in proptest::collection::vec(proptest::prelude::any::<u16>(), 1..64),
        ) {
            let gate: Shared<Gate> = Arc::new(Mutex::new(Gate::new(Some(cap)).unwrap()));
            let mut runs: Vec<Scheduler> = sizes.iter().map(|&n| wide(n)).collect();
            let mut running: Vec<Vec<u32>> = Vec::new();
            for s in &mut runs {
                s.attach_gate(gate.clone()).unwrap();
            }
            for s in &mut runs {
                running.push(s.start(0.0).unwrap());
            }
            let mut step = 0usize;
            loop {
                let total: usize = running.iter().map(Vec::len).sum();
                proptest::prop_assert!(total as u64 <= cap);
                let woken = lock(&gate).take_woken();
                poll_woken(&mut runs, &mut running, &woken, Scheduler::gate_run);
                let total: usize = running.iter().map(Vec::len).sum();
                proptest::prop_assert!(total as u64 <= cap);
                proptest::prop_assert_eq!(lock(&gate).in_use() as usize, total);
                if !complete_one(&mut runs, &mut running, choices[step % choices.len()]) {
                    break;
                }
                step += 1;
            }
            for s in &runs {
                proptest::prop_assert!(s.is_finished());
            }
        }
    }

    proptest::proptest! {
        /// Runs sharing a pool: whatever the demands and the completion order, every node is
        /// placed at last (nothing starves, however often it is passed), and nothing is left
        /// holding capacity.
        #[test]
        fn every_node_is_placed_at_last(
            demands in proptest::collection::vec(
                proptest::collection::vec(1u64..=4, 1..10), 1..4),
            bypass in 0u32..4,
            choices in proptest::collection::vec(proptest::prelude::any::<u16>(), 1..64),
        ) {
            let pool = {
                let mut placer = Placer::new(vec!["cpu".into()], Policy::BestFit).unwrap();
                placer.add_worker(&[4], &[]).unwrap();
                placer.add_worker(&[3], &[]).unwrap();
                Arc::new(Mutex::new(Pool::new(placer, bypass)))
            };
            let mut runs = Vec::new();
            let mut running: Vec<Vec<u32>> = Vec::new();
            for d in &demands {
                let classes: Vec<u32> =
                    d.iter().map(|&c| lock(&pool).add_class(demand(c)).unwrap()).collect();
                let mut s = wide(d.len() as u32);
                s.attach_pool(pool.clone(), classes).unwrap();
                runs.push(s);
            }
            for s in &mut runs {
                running.push(s.start(0.0).unwrap());
            }
            let mut step = 0usize;
            loop {
                let woken = lock(&pool).take_woken();
                poll_woken(&mut runs, &mut running, &woken, Scheduler::pool_run);
                if !complete_one(&mut runs, &mut running, choices[step % choices.len()]) {
                    break;
                }
                step += 1;
            }
            for s in &runs {
                proptest::prop_assert!(s.is_finished(), "a node never got a worker");
            }
            proptest::prop_assert_eq!(lock(&pool).placer().placed_count(), 0);
            proptest::prop_assert_eq!(lock(&pool).waiting_count(), 0);
        }
    }

    #[test]
    fn a_node_whose_worker_left_waits_for_one_that_joins() {
        let pool = pool_of(&[2]);
        let two = lock(&pool).add_class(demand(2)).unwrap();
        let mut s = wide(1);
        s.attach_pool(pool.clone(), vec![two]).unwrap();
        assert_eq!(s.start(0.0).unwrap(), vec![0]);
        let run = s.pool_run().unwrap();
        assert_eq!(lock(&pool).remove_worker(0).unwrap(), vec![(run, 0)]);
        // No live worker could take it now: it waits instead of failing.
        assert!(!s.replace(0).unwrap());
        assert_eq!(s.explain(0).unwrap().reason, crate::scheduler::Reason::Placement);
        lock(&pool).add_worker(&[2], &[]).unwrap();
        assert_eq!(lock(&pool).take_woken(), vec![run]);
        assert_eq!(s.poll(0.0).unwrap(), vec![0]);
        assert_eq!(s.worker_of(0), Some(1));
    }

    #[test]
    fn unschedulable_demand_is_refused_when_declared() {
        let pool = pool_of(&[2]);
        assert!(matches!(lock(&pool).add_class(demand(3)), Err(CoreError::Unschedulable { .. })));
    }
}
