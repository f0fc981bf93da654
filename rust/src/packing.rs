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

use crate::error::{CoreError, CoreResult};

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

#[derive(Debug, Clone)]
struct Worker {
    capacity: Vec<u64>,
    free: Vec<u64>,
    /// `1 / capacity` per resource (0 where the capacity is 0), for scoring.
    inverse: Vec<f64>,
    /// Sorted label ids.
    labels: Vec<u32>,
    active: bool,
    tasks: u32,
}

impl Worker {
    #[inline]
    fn has_labels(&self, required: &[u32]) -> bool {
        required.iter().all(|l| self.labels.binary_search(l).is_ok())
    }

    #[inline]
    fn fits_now(&self, demand: &[u64]) -> bool {
        self.free.iter().zip(demand).all(|(&f, &d)| d <= f)
    }

    #[inline]
    fn fits_ever(&self, demand: &[u64]) -> bool {
        self.capacity.iter().zip(demand).all(|(&c, &d)| d <= c)
    }

    /// Spare capacity left after taking `demand`, as a sum of fractions of capacity.
    #[inline]
    fn slack_after(&self, demand: &[u64]) -> f64 {
        let mut slack = 0.0;
        for ((&free, &want), &inverse) in self.free.iter().zip(demand).zip(&self.inverse) {
            slack += (free - want) as f64 * inverse;
        }
        slack
    }
}

/// A task's demand: an amount of each resource, and labels the worker must carry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Demand {
    pub amounts: Vec<u64>,
    pub labels: Vec<u32>,
}

/// Online placement over a set of workers.
#[derive(Debug, Clone)]
pub struct Placer {
    resources: Vec<String>,
    label_names: Vec<String>,
    label_ids: HashMap<String, u32>,
    workers: Vec<Worker>,
    placed: HashMap<u64, (u32, Vec<u64>)>,
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
        Ok(Self {
            resources,
            label_names: Vec::new(),
            label_ids: HashMap::new(),
            workers: Vec::new(),
            placed: HashMap::new(),
            policy,
        })
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
        let inverse = capacity.iter().map(|&c| if c == 0 { 0.0 } else { 1.0 / c as f64 }).collect();
        self.workers.push(Worker {
            capacity: capacity.to_vec(),
            free: capacity.to_vec(),
            inverse,
            labels,
            active: true,
            tasks: 0,
        });
        Ok((self.workers.len() - 1) as u32)
    }

    fn worker(&self, id: u32) -> CoreResult<&Worker> {
        self.workers.get(id as usize).ok_or(CoreError::UnknownId { what: "worker", id: id.into() })
    }

    /// Removes a worker (it died or left). Returns the tasks that were placed on it, which are
    /// released; they must be placed again.
    pub fn remove_worker(&mut self, id: u32) -> CoreResult<Vec<u64>> {
        self.worker(id)?;
        let mut orphans: Vec<u64> =
            self.placed.iter().filter(|(_, (w, _))| *w == id).map(|(&t, _)| t).collect();
        orphans.sort_unstable();
        for t in &orphans {
            self.placed.remove(t);
        }
        let w = &mut self.workers[id as usize];
        w.active = false;
        w.free.clone_from(&w.capacity);
        w.tasks = 0;
        Ok(orphans)
    }

    /// Ids of the tasks holding capacity now, in no particular order.
    pub fn placed_tasks(&self) -> impl Iterator<Item = u64> + '_ {
        self.placed.keys().copied()
    }

    /// Number of registered workers (removed ones included: ids are never reused).
    pub fn worker_count(&self) -> u32 {
        self.workers.len() as u32
    }

    /// Free capacity of a worker.
    pub fn free(&self, id: u32) -> CoreResult<Vec<u64>> {
        Ok(self.worker(id)?.free.clone())
    }

    /// Number of tasks placed on a worker.
    pub fn task_count(&self, id: u32) -> CoreResult<u32> {
        Ok(self.worker(id)?.tasks)
    }

    /// Number of tasks holding capacity.
    pub fn placed_count(&self) -> usize {
        self.placed.len()
    }

    /// The worker a placed task holds capacity on.
    pub fn worker_of(&self, task: u64) -> Option<u32> {
        self.placed.get(&task).map(|&(w, _)| w)
    }

    /// Fails with [`CoreError::Unschedulable`] if no active worker could ever take `demand`.
    pub fn check_schedulable(&self, demand: &Demand) -> CoreResult<()> {
        self.check_amounts("task demand", &demand.amounts)?;
        self.check_labels(&demand.labels)?;
        let candidates: Vec<&Worker> = self.workers.iter().filter(|w| w.active).collect();
        if candidates.iter().any(|w| w.has_labels(&demand.labels) && w.fits_ever(&demand.amounts)) {
            return Ok(());
        }
        if candidates.is_empty() {
            return Err(CoreError::Unschedulable { reason: "no worker is registered".into() });
        }
        for &label in &demand.labels {
            if !candidates.iter().any(|w| w.labels.binary_search(&label).is_ok()) {
                return Err(CoreError::Unschedulable {
                    reason: format!("no worker has label {}", self.label_name(label)),
                });
            }
        }
        let labelled: Vec<&Worker> =
            candidates.into_iter().filter(|w| w.has_labels(&demand.labels)).collect();
        let scope = if demand.labels.is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = demand.labels.iter().map(|&l| self.label_name(l)).collect();
            format!(" with label {}", names.join(", "))
        };
        if labelled.is_empty() {
            return Err(CoreError::Unschedulable {
                reason: format!("no single worker has every label{scope}"),
            });
        }
        for (i, name) in self.resources.iter().enumerate() {
            let largest = labelled.iter().map(|w| w.capacity[i]).max().unwrap_or(0);
            if demand.amounts[i] > largest {
                return Err(CoreError::Unschedulable {
                    reason: format!(
                        "task needs {name}={} but the largest {name} any worker{scope} offers is \
                         {largest}",
                        demand.amounts[i]
                    ),
                });
            }
        }
        let wanted: Vec<String> = self
            .resources
            .iter()
            .zip(&demand.amounts)
            .map(|(name, amount)| format!("{name}={amount}"))
            .collect();
        Err(CoreError::Unschedulable {
            reason: format!(
                "no single worker{scope} offers {} at once, though each is offered somewhere",
                wanted.join(", ")
            ),
        })
    }

    /// The worker the policy picks for `demand` among those it fits on now.
    fn choose(&self, demand: &Demand) -> Option<u32> {
        let fits =
            |w: &Worker| w.active && w.fits_now(&demand.amounts) && w.has_labels(&demand.labels);
        match self.policy {
            Policy::FirstFit => self.workers.iter().position(fits).map(|i| i as u32),
            Policy::BestFit | Policy::Spread => {
                let mut best: Option<(f64, u32)> = None;
                for (i, w) in self.workers.iter().enumerate() {
                    if !fits(w) {
                        continue;
                    }
                    let slack = w.slack_after(&demand.amounts);
                    let score = if self.policy == Policy::Spread { -slack } else { slack };
                    if best.is_none_or(|(s, _)| score < s) {
                        best = Some((score, i as u32));
                    }
                }
                best.map(|(_, i)| i)
            }
        }
    }

    /// Places `task`: returns its worker, or `None` if it must wait for a release.
    ///
    /// Fails if the task id holds capacity already, or if no worker could ever take it.
    pub fn place(&mut self, task: u64, demand: &Demand) -> CoreResult<Option<u32>> {
        if self.placed.contains_key(&task) {
            return Err(CoreError::DuplicateId { what: "task", id: task });
        }
        self.check_schedulable(demand)?;
        Ok(self.place_checked(task, demand))
    }

    fn place_checked(&mut self, task: u64, demand: &Demand) -> Option<u32> {
        let chosen = self.choose(demand)?;
        let w = &mut self.workers[chosen as usize];
        for (f, &d) in w.free.iter_mut().zip(&demand.amounts) {
            *f -= d;
        }
        w.tasks += 1;
        self.placed.insert(task, (chosen, demand.amounts.clone()));
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
            if self.placed.contains_key(task) {
                return Err(CoreError::DuplicateId { what: "task", id: *task });
            }
            self.check_schedulable(demand)?;
        }
        Ok(tasks.iter().map(|(task, demand)| self.place_checked(*task, demand)).collect())
    }

    /// Returns a task's capacity to its worker; returns the worker.
    pub fn release(&mut self, task: u64) -> CoreResult<u32> {
        let (worker, amounts) = self
            .placed
            .remove(&task)
            .ok_or(CoreError::UnknownId { what: "placed task", id: task })?;
        let w = &mut self.workers[worker as usize];
        if w.active {
            for (f, d) in w.free.iter_mut().zip(amounts) {
                *f += d;
            }
            w.tasks -= 1;
        }
        Ok(worker)
    }

    /// For every worker the task does not fit on now, why not.
    pub fn explain(&self, demand: &Demand) -> CoreResult<Vec<(u32, Vec<Shortfall>)>> {
        self.check_amounts("task demand", &demand.amounts)?;
        self.check_labels(&demand.labels)?;
        let mut out = Vec::new();
        for (id, w) in self.workers.iter().enumerate() {
            let mut reasons = Vec::new();
            if w.active {
                for (i, name) in self.resources.iter().enumerate() {
                    if demand.amounts[i] > w.free[i] {
                        reasons.push(Shortfall::Resource {
                            resource: name.clone(),
                            needed: demand.amounts[i],
                            free: w.free[i],
                            capacity: w.capacity[i],
                        });
                    }
                }
                for &label in &demand.labels {
                    if w.labels.binary_search(&label).is_err() {
                        reasons.push(Shortfall::Label { label: self.label_name(label).to_owned() });
                    }
                }
            } else {
                reasons.push(Shortfall::Removed);
            }
            if !reasons.is_empty() {
                out.push((id as u32, reasons));
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
        base.placed.clear();
        for w in &mut base.workers {
            w.free.clone_from(&w.capacity);
            w.tasks = 0;
        }
        // Task size: its largest share of the largest active capacity of each resource.
        let largest: Vec<f64> = (0..base.resources.len())
            .map(|i| {
                let top = base.workers.iter().filter(|w| w.active).map(|w| w.capacity[i]).max();
                top.unwrap_or(1).max(1) as f64
            })
            .collect();
        let size = |t: &Demand| {
            t.amounts.iter().zip(&largest).map(|(&a, &l)| a as f64 / l).fold(0.0, f64::max)
        };
        let sizes: Vec<f64> = tasks.iter().map(size).collect();
        let mut decreasing: Vec<usize> = (0..tasks.len()).collect();
        decreasing.sort_by(|&a, &b| sizes[b].total_cmp(&sizes[a]).then(a.cmp(&b)));
        // Ties keep submission order in both directions (not one the reverse of the other), so
        // each pass is exactly the classic heuristic it is named after.
        let mut increasing: Vec<usize> = (0..tasks.len()).collect();
        increasing.sort_by(|&a, &b| sizes[a].total_cmp(&sizes[b]).then(a.cmp(&b)));

        let heuristics: [(&'static str, &[usize], Policy); 4] = [
            ("first_fit_decreasing", &decreasing, Policy::FirstFit),
            ("best_fit_decreasing", &decreasing, Policy::BestFit),
            ("smallest_first", &increasing, Policy::FirstFit),
            ("smallest_first_best_fit", &increasing, Policy::BestFit),
        ];
        let mut best: Option<Plan> = None;
        for (name, order, policy) in heuristics {
            let mut placer = base.clone();
            placer.policy = policy;
            let mut assignment = vec![None; tasks.len()];
            for &task in order {
                assignment[task] = placer.place_checked(task as u64, &tasks[task]);
            }
            let placed_count = assignment.iter().filter(|a| a.is_some()).count();
            let workers_used = placer.workers.iter().filter(|w| w.tasks > 0).count();
            let candidate =
                Plan { assignment, placed: placed_count, workers_used, heuristic: name };
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
        let mut p = Placer::new(vec!["a".into(), "b".into()], Policy::BestFit).unwrap();
        p.add_worker(&[4, 1], &[]).unwrap();
        p.add_worker(&[1, 2], &[]).unwrap();
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

    fn instance() -> impl Strategy<Value = (Vec<[u64; 2]>, Vec<[u64; 2]>, Vec<bool>)> {
        (
            proptest::collection::vec((1u64..100, 1u64..100).prop_map(|(a, b)| [a, b]), 1..8),
            proptest::collection::vec((0u64..60, 0u64..60).prop_map(|(a, b)| [a, b]), 0..60),
            proptest::collection::vec(any::<bool>(), 60),
        )
    }

    proptest! {
        /// No worker is ever over-committed, whatever order tasks come and go in.
        #[test]
        fn never_over_commits((workers, tasks, releases) in instance(), policy in 0u8..3) {
            let policy = [Policy::BestFit, Policy::Spread, Policy::FirstFit][policy as usize];
            let mut p = Placer::new(vec!["a".into(), "b".into()], policy).unwrap();
            for w in &workers {
                p.add_worker(w, &[]).unwrap();
            }
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

        /// The plan never over-commits and places at least as many as first-fit-decreasing.
        #[test]
        fn plan_is_valid((workers, tasks, _) in instance()) {
            let mut p = Placer::new(vec!["a".into(), "b".into()], Policy::BestFit).unwrap();
            for w in &workers {
                p.add_worker(w, &[]).unwrap();
            }
            let tasks: Vec<Demand> = tasks.iter()
                .filter(|t| workers.iter().any(|w| w[0] >= t[0] && w[1] >= t[1]))
                .map(|t| Demand { amounts: t.to_vec(), labels: vec![] })
                .collect();
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
