//! One memory budget for every upstream body ferry reads whole (manifests, token answers,
//! referrers pages, tag lists): together they stay under it. A body that would go past it
//! waits briefly for room, then fails as ferry's own overload, not the upstream's fault.
//! Pulls and lists have separate halves.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget when none is configured.
pub(crate) const DEFAULT_MEMORY_BUDGET_BYTES: u64 = 48 * 1024 * 1024;
/// How long a body waits for room before its request gets 503.
const WAIT_FOR_ROOM: Duration = Duration::from_secs(2);
/// Bytes per semaphore permit.
const UNIT: usize = 1024;

/// What a body is, for the budget: pulls' manifests and token answers have half of it, lists
/// (referrers, tag lists) the other half, so hostile lists never starve a pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyClass {
    Pull,
    List,
}

#[derive(Clone)]
pub struct MemoryBudget {
    pull: Arc<Semaphore>,
    list: Arc<Semaphore>,
    /// Units in each half.
    units: usize,
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryBudget({} bytes)", self.bytes())
    }
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget::new(DEFAULT_MEMORY_BUDGET_BYTES)
    }
}

/// Room taken from the budget; given back when dropped.
#[derive(Default)]
pub struct BudgetLease {
    permits: Vec<OwnedSemaphorePermit>,
    units: usize,
}

impl BudgetLease {
    /// Bytes this lease covers.
    pub fn bytes(&self) -> usize {
        self.units * UNIT
    }

    /// Takes over `other`'s room (so one lease covers a list built from several bodies).
    #[cfg(test)]
    fn absorb(&mut self, mut other: BudgetLease) {
        self.permits.append(&mut other.permits);
        self.units += std::mem::take(&mut other.units);
    }
}

/// The budget had no room within the wait.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "ferry's memory budget for buffered upstream bodies ({budget} bytes for this kind) is in use; the request may be retried"
)]
pub struct BudgetExhausted {
    pub budget: usize,
}

impl MemoryBudget {
    /// A budget of `bytes` in all, half for each [`BodyClass`].
    pub fn new(bytes: u64) -> Self {
        let units = usize::try_from(bytes / 2 / UNIT as u64)
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        MemoryBudget {
            pull: Arc::new(Semaphore::new(units)),
            list: Arc::new(Semaphore::new(units)),
            units,
        }
    }

    /// The whole budget, both halves.
    pub fn bytes(&self) -> usize {
        2 * self.units * UNIT
    }

    /// Bytes leased right now, both halves.
    #[cfg(test)]
    fn in_use(&self) -> usize {
        let free = self.pull.available_permits() + self.list.available_permits();
        (2 * self.units - free) * UNIT
    }

    /// Grows `lease` to cover `bytes` in all, from `class`'s half. An empty lease waits up to
    /// a bound for room; one that holds anything takes room only if it is free now (waiting
    /// while holding would let requests starve each other). A lease is for one class only.
    pub(crate) async fn cover(
        &self,
        lease: &mut BudgetLease,
        bytes: usize,
        class: BodyClass,
    ) -> Result<(), BudgetExhausted> {
        let wanted = bytes.div_ceil(UNIT);
        if wanted <= lease.units {
            return Ok(());
        }
        let more = wanted - lease.units;
        let exhausted = || BudgetExhausted {
            budget: self.units * UNIT,
        };
        // More than the whole half can never fit: fail now rather than after the wait.
        let Ok(more_u32) = u32::try_from(more) else {
            return Err(exhausted());
        };
        if wanted > self.units {
            return Err(exhausted());
        }
        let semaphore = match class {
            BodyClass::Pull => &self.pull,
            BodyClass::List => &self.list,
        };
        let permit = if lease.units == 0 {
            let acquire = semaphore.clone().acquire_many_owned(more_u32);
            match tokio::time::timeout(WAIT_FOR_ROOM, acquire).await {
                Ok(Ok(permit)) => permit,
                // The semaphore is never closed; a closed one means no room either way.
                Ok(Err(_)) | Err(_) => return Err(exhausted()),
            }
        } else {
            semaphore
                .clone()
                .try_acquire_many_owned(more_u32)
                .map_err(|_| exhausted())?
        };
        lease.permits.push(permit);
        lease.units += more;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn leases_share_one_bound_and_give_room_back() {
        use BodyClass::{List, Pull};
        let budget = MemoryBudget::new(128 * 1024);
        let mut first = BudgetLease::default();
        budget.cover(&mut first, 40 * 1024, List).await.unwrap();
        budget.cover(&mut first, 48 * 1024, List).await.unwrap();
        assert_eq!(budget.in_use(), 48 * 1024);
        let mut second = BudgetLease::default();
        assert!(
            budget.cover(&mut second, 20 * 1024, List).await.is_err(),
            "waits, then fails"
        );
        assert!(
            budget.cover(&mut second, 65 * 1024, List).await.is_err(),
            "never fits"
        );
        let mut pull = BudgetLease::default();
        budget.cover(&mut pull, 64 * 1024, Pull).await.unwrap();
        assert_eq!(
            budget.in_use(),
            112 * 1024,
            "lists never take the pulls' half"
        );
        drop(pull);
        budget.cover(&mut second, 16 * 1024, List).await.unwrap();
        drop(first);
        assert_eq!(budget.in_use(), 16 * 1024);
        let mut third = BudgetLease::default();
        budget.cover(&mut third, 48 * 1024, List).await.unwrap();
        second.absorb(third);
        assert_eq!(second.bytes(), 64 * 1024);
        drop(second);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_that_holds_room_never_waits_for_more() {
        use BodyClass::List;
        let budget = MemoryBudget::new(64 * 1024);
        let mut first = BudgetLease::default();
        let mut second = BudgetLease::default();
        budget.cover(&mut first, 16 * 1024, List).await.unwrap();
        budget.cover(&mut second, 16 * 1024, List).await.unwrap();
        // Both want more than is left: neither waits for the other (before, both waited 2 s).
        let started = tokio::time::Instant::now();
        assert!(budget.cover(&mut first, 32 * 1024, List).await.is_err());
        assert!(budget.cover(&mut second, 32 * 1024, List).await.is_err());
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
