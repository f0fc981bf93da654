//! Admission primitives: a concurrency cap and an exact token-bucket rate limit.
//!
//! Neither reads a clock: time comes in as `now` (seconds, any monotonic origin) and the answer is
//! "granted" or "not before t". The async wrappers in Python supply `anyio.current_time()`; tests
//! supply numbers.

use crate::error::{CoreError, CoreResult};

/// What every cap and burst must be: [`check_cap`]'s rule, in words.
pub const CAP_RANGE: &str = "an integer from 1 to 4294967295";

/// Validates a concurrency cap or a burst: an integer from 1 to `u32::MAX`. The one rule for every
/// `max_parallel` (a step's, a run's, the process-wide one) and every `burst`.
pub fn check_cap(what: &str, cap: u64) -> CoreResult<u32> {
    match u32::try_from(cap) {
        Ok(cap) if cap >= 1 => Ok(cap),
        _ => Err(CoreError::invalid(what, CAP_RANGE, cap)),
    }
}

/// Validates a rate limit: `rate` tokens per second (finite, > 0, with a representable interval
/// between tokens) and bursts of up to `burst` ([`check_cap`]). The one rule for every rate.
pub fn check_rate(rate: f64, burst: u64) -> CoreResult<(f64, u32)> {
    if !(rate.is_finite() && rate > 0.0) {
        return Err(CoreError::invalid("rate", "a finite number > 0", rate));
    }
    let burst = check_cap("burst", burst)?;
    let interval = 1.0 / rate;
    if !(interval.is_finite() && interval > 0.0) {
        return Err(CoreError::invalid("rate", "a rate whose interval is representable", rate));
    }
    Ok((rate, burst))
}

/// How many may be in flight at once: at most a count, or no cap at all.
///
/// Built from a caller's `max_parallel` by [`Cap::new`] ([`check_cap`]'s rule, `None` for no
/// cap), or from a number of slots held elsewhere by [`Cap::exactly`] (zero allowed). Checking a
/// count against it is one comparison: no cap is kept as a limit that no count reaches (counts
/// are of node ids, which stay below [`crate::dag::MAX_IDS`]), and a flag says which it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    limit: u32,
    bounded: bool,
}

impl Default for Cap {
    fn default() -> Self {
        Self::NONE
    }
}

impl Cap {
    /// No cap.
    pub const NONE: Cap = Cap { limit: u32::MAX, bounded: false };

    /// `None`: no cap; otherwise at most `cap`, validated by [`check_cap`] (`what` names it in
    /// the error).
    pub fn new(what: &str, cap: Option<u64>) -> CoreResult<Self> {
        match cap {
            None => Ok(Self::NONE),
            Some(cap) => Ok(Self::exactly(check_cap(what, cap)?)),
        }
    }

    /// At most `slots`, zero allowed: for slots leased elsewhere.
    pub const fn exactly(slots: u32) -> Self {
        Cap { limit: slots, bounded: true }
    }

    /// The count, or `None` for no cap.
    pub fn get(self) -> Option<u32> {
        self.bounded.then_some(self.limit)
    }

    /// Whether one more may start while `count` are in flight.
    #[inline]
    pub fn admits(self, count: u32) -> bool {
        count < self.limit
    }

    /// Whether `count` is over the cap (it was lowered under what is in flight).
    #[inline]
    pub fn exceeded_by(self, count: u32) -> bool {
        count > self.limit
    }

    /// How many more may start while `count` are in flight.
    #[inline]
    pub fn room(self, count: u32) -> u32 {
        self.limit.saturating_sub(count)
    }
}

/// Validates a time passed in by the caller: finite.
pub fn check_now(now: f64) -> CoreResult<()> {
    if now.is_finite() {
        Ok(())
    } else {
        Err(CoreError::invalid("now", "a finite time", now))
    }
}

/// A counted concurrency cap (`max_parallel`).
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit {
    cap: u32,
    in_use: u32,
}

impl ConcurrencyLimit {
    /// A cap of `cap` slots (at least 1).
    pub fn new(cap: u64) -> CoreResult<Self> {
        Ok(Self { cap: check_cap("max_parallel", cap)?, in_use: 0 })
    }

    /// Slots in all.
    pub fn cap(&self) -> u32 {
        self.cap
    }

    /// Slots held.
    pub fn in_use(&self) -> u32 {
        self.in_use
    }

    /// Slots free (0 while over a lowered cap).
    pub fn available(&self) -> u32 {
        self.cap.saturating_sub(self.in_use)
    }

    /// Changes the cap. Holders above a lowered cap keep their slots; nobody new gets one until
    /// the count is below it.
    pub fn set_cap(&mut self, cap: u64) -> CoreResult<()> {
        self.cap = check_cap("max_parallel", cap)?;
        Ok(())
    }

    /// Takes a slot if one is free.
    #[inline]
    pub fn try_acquire(&mut self) -> bool {
        if self.in_use < self.cap {
            self.in_use += 1;
            true
        } else {
            false
        }
    }

    /// Returns a slot. Fails when no slot is held.
    #[inline]
    pub fn release(&mut self) -> CoreResult<()> {
        self.release_or_hand_off(false).map(|_| ())
    }

    /// Returns a slot, or, when someone is waiting (`waiter`) and the cap allows, hands it straight
    /// to them: returns `true` if the slot passed to the waiter (it stays in use).
    #[inline]
    pub fn release_or_hand_off(&mut self, waiter: bool) -> CoreResult<bool> {
        if self.in_use == 0 {
            return Err(CoreError::NotHeld { what: "release()" });
        }
        if waiter && self.in_use <= self.cap {
            return Ok(true);
        }
        self.in_use -= 1;
        Ok(false)
    }
}

/// Slack when comparing times: a token due within a nanosecond of `now` is granted, so sums of
/// float intervals (0.1 + 0.1 + 0.1 > 0.3) never refuse a token that is exactly due.
const EPSILON: f64 = 1e-9;

/// A token bucket of `burst` tokens refilled at `rate` per second, kept as a theoretical arrival
/// time (the generic cell rate algorithm), which is exact: no refill loop, no drift.
///
/// Grants at most `burst + rate * t` requests in any window of length `t`.
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// Seconds per token.
    interval: f64,
    /// How far ahead of `now` the arrival time may run: `(burst - 1) * interval`.
    tolerance: f64,
    rate: f64,
    burst: u32,
    /// Theoretical arrival time of the next request.
    tat: f64,
}

impl RateLimit {
    /// `rate` tokens per second (finite, > 0), bursts of up to `burst` (≥ 1).
    pub fn new(rate: f64, burst: u64) -> CoreResult<Self> {
        let (rate, burst) = check_rate(rate, burst)?;
        let interval = 1.0 / rate;
        Ok(Self {
            interval,
            tolerance: f64::from(burst - 1) * interval,
            rate,
            burst,
            tat: f64::NEG_INFINITY,
        })
    }

    /// Tokens per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Bucket size.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Takes a token if one is there at `now`; otherwise returns the time one will be.
    pub fn try_acquire(&mut self, now: f64) -> CoreResult<Result<(), f64>> {
        check_now(now)?;
        let tat = self.tat.max(now);
        let allowed_at = tat - self.tolerance;
        if allowed_at <= now + EPSILON {
            self.tat = tat + self.interval;
            Ok(Ok(()))
        } else {
            Ok(Err(allowed_at))
        }
    }

    /// Reserves the next token and returns how long the caller must wait before using it (0 when
    /// one is there now). Reservations are served in call order, exactly `interval` apart.
    pub fn reserve(&mut self, now: f64) -> CoreResult<f64> {
        check_now(now)?;
        let tat = self.tat.max(now);
        self.tat = tat + self.interval;
        let wait = tat - self.tolerance - now;
        Ok(if wait <= EPSILON { 0.0 } else { wait })
    }

    /// Gives back the most recent reservation's token (a waiter that was cancelled).
    pub fn refund(&mut self, now: f64) -> CoreResult<()> {
        check_now(now)?;
        // Never let a refund bank more than the bucket can hold.
        self.tat = (self.tat - self.interval).max(now - self.tolerance);
        Ok(())
    }

    /// The earliest time, not before `now`, at which a token is available.
    pub fn next_token_at(&self, now: f64) -> f64 {
        (self.tat - self.tolerance).max(now)
    }

    /// Whole tokens available at `now`.
    pub fn available(&self, now: f64) -> u32 {
        let tat = self.tat.max(now);
        let spare = (now + EPSILON + self.tolerance - tat) / self.interval;
        // One token more than the spare tolerance: the request at `tat` itself is allowed.
        let whole = (spare + 1.0).floor();
        whole.clamp(0.0, f64::from(self.burst)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bad_caps_and_rates_are_refused() {
        assert!(ConcurrencyLimit::new(0).is_err());
        assert!(ConcurrencyLimit::new(1 << 40).is_err());
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(RateLimit::new(rate, 1).is_err(), "{rate}");
        }
        assert!(RateLimit::new(1.0, 0).is_err());
        let mut r = RateLimit::new(1.0, 1).unwrap();
        assert!(r.try_acquire(f64::NAN).is_err());
    }

    #[test]
    fn concurrency_cap_counts() {
        let mut c = ConcurrencyLimit::new(2).unwrap();
        assert!(c.try_acquire() && c.try_acquire() && !c.try_acquire());
        c.release().unwrap();
        assert_eq!(c.available(), 1);
        assert!(c.release_or_hand_off(true).unwrap());
        assert_eq!(c.in_use(), 1);
        c.set_cap(1).unwrap();
        assert!(!c.try_acquire());
        c.try_acquire();
        c.cap = 2;
        assert!(c.try_acquire());
        c.set_cap(1).unwrap();
        // Over a lowered cap a release never hands off.
        assert!(!c.release_or_hand_off(true).unwrap());
        c.release().unwrap();
        assert_eq!(c.release(), Err(CoreError::NotHeld { what: "release()" }));
    }

    #[test]
    fn caps_check_once_and_compare_in_one_place() {
        assert_eq!(Cap::new("max_parallel", None), Ok(Cap::NONE));
        assert_eq!(Cap::new("x", Some(3)).unwrap().get(), Some(3));
        // The largest cap is a cap, not "no cap".
        assert_eq!(Cap::new("x", Some(u64::from(u32::MAX))).unwrap().get(), Some(u32::MAX));
        for bad in [0, u64::from(u32::MAX) + 1] {
            let err = Cap::new("max_parallel", Some(bad)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("max_parallel must be an integer from 1 to 4294967295, got {bad}")
            );
        }
        let three = Cap::exactly(3);
        assert!(three.admits(2) && !three.admits(3));
        assert_eq!((three.room(1), three.room(5)), (2, 0));
        assert!(three.exceeded_by(4) && !three.exceeded_by(3));
        assert!(!Cap::exactly(0).admits(0));
        let max = crate::dag::MAX_IDS as u32;
        assert!(Cap::NONE.admits(max) && !Cap::NONE.exceeded_by(max));
        assert_eq!(Cap::NONE.get(), None);
    }

    #[test]
    fn burst_then_one_per_interval() {
        let mut r = RateLimit::new(10.0, 3).unwrap();
        for _ in 0..3 {
            assert_eq!(r.try_acquire(0.0).unwrap(), Ok(()));
        }
        let retry = r.try_acquire(0.0).unwrap().unwrap_err();
        assert!((retry - 0.1).abs() < 1e-12);
        assert_eq!(r.try_acquire(0.1).unwrap(), Ok(()));
        assert_eq!(r.available(10.0), 3);
    }

    #[test]
    fn reservations_are_spaced_exactly() {
        let mut r = RateLimit::new(4.0, 1).unwrap();
        let waits: Vec<f64> = (0..5).map(|_| r.reserve(0.0).unwrap()).collect();
        assert_eq!(waits, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        r.refund(0.0).unwrap();
        assert_eq!(r.reserve(0.0).unwrap(), 1.0);
    }

    proptest! {
        #[test]
        fn never_more_than_burst_plus_rate_times_window(
            rate in 1.0f64..1000.0,
            burst in 1u64..20,
            gaps in proptest::collection::vec(0.0f64..0.05, 1..300),
        ) {
            let mut r = RateLimit::new(rate, burst).unwrap();
            let mut now = 0.0;
            let mut granted = Vec::new();
            for gap in gaps {
                now += gap;
                if r.try_acquire(now).unwrap().is_ok() {
                    granted.push(now);
                }
            }
            for (i, &start) in granted.iter().enumerate() {
                for (j, &end) in granted.iter().enumerate().skip(i) {
                    let count = (j - i + 1) as f64;
                    prop_assert!(count <= burst as f64 + rate * (end - start) + 1e-6);
                }
            }
        }
    }
}
