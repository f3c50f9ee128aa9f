//! Generation slots (the worker's `capacity`), shared fairly between the proxy connections
//! that wait for them.
//!
//! A free slot is taken at once. When none is free, a request waits (at most the caller's
//! deadline); a slot given back goes to the waiter whose connection holds the **fewest**
//! slots, the longest-waiting among equals — not simply to the oldest waiter. With one proxy
//! this is first come, first served. With several, one proxy's burst (or a hostile proxy
//! resetting each stream as soon as it starts, `worker/tests/service_floods.rs`) queues behind
//! its own running generations instead of in front of another proxy's requests.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

/// Who waits for or holds a slot: a proxy connection's number (0: no connection).
pub(crate) type Owner = u64;

#[derive(Debug)]
struct State {
    free: usize,
    held: HashMap<Owner, usize>,
    waiting: VecDeque<(Owner, oneshot::Sender<Slot>)>,
}

/// The slots of one worker.
#[derive(Clone, Debug)]
pub(crate) struct Slots {
    state: Arc<Mutex<State>>,
}

/// One slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    state: Arc<Mutex<State>>,
    /// `None` once given back (or never handed out).
    owner: Option<Owner>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// Counts a slot of `state` (this state's lock) as `owner`'s.
    fn grant(&mut self, state: &Arc<Mutex<State>>, owner: Owner) -> Slot {
        *self.held.entry(owner).or_default() += 1;
        Slot {
            state: state.clone(),
            owner: Some(owner),
        }
    }

    /// Stops counting one slot as `owner`'s.
    fn ungrant(&mut self, owner: Owner) {
        if let Some(n) = self.held.get_mut(&owner) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&owner);
            }
        }
    }
}

impl Slots {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                free: capacity,
                held: HashMap::new(),
                waiting: VecDeque::new(),
            })),
        }
    }

    /// A free slot for `owner`, if there is one now (tests).
    #[cfg(test)]
    fn try_take(&self, owner: Owner) -> Option<Slot> {
        let mut st = lock(&self.state);
        if st.free == 0 {
            return None;
        }
        st.free -= 1;
        Some(st.grant(&self.state, owner))
    }

    /// A slot for `owner`: a free one at once (no timer), or else waiting at most `wait` for
    /// one to be given back.
    pub(crate) async fn take(&self, owner: Owner, wait: Duration) -> Option<Slot> {
        let rx = {
            let mut st = lock(&self.state);
            if st.free > 0 {
                st.free -= 1;
                return Some(st.grant(&self.state, owner));
            }
            let (tx, rx) = oneshot::channel();
            st.waiting.push_back((owner, tx));
            rx
        };
        // A slot sent just as the time runs out is dropped with the receiver: given back.
        tokio::time::timeout(wait, rx).await.ok()?.ok()
    }

    /// Slots held by `owner` (tests).
    #[cfg(test)]
    fn held(&self, owner: Owner) -> usize {
        lock(&self.state).held.get(&owner).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(owner) = self.owner.take() else {
            return;
        };
        let mut st = lock(&self.state);
        st.ungrant(owner);
        loop {
            st.waiting.retain(|(_, tx)| !tx.is_closed());
            // The waiter whose owner holds the fewest slots; the first (oldest) among equals.
            let next = st
                .waiting
                .iter()
                .enumerate()
                .min_by_key(|(i, (o, _))| (st.held.get(o).copied().unwrap_or(0), *i))
                .map(|(i, _)| i);
            let Some((to, tx)) = next.and_then(|i| st.waiting.remove(i)) else {
                st.free += 1;
                return;
            };
            let slot = st.grant(&self.state, to);
            match tx.send(slot) {
                Ok(()) => return,
                // The waiter gave up in between: undo, without re-entering this lock.
                Err(mut slot) => {
                    slot.owner = None;
                    st.ungrant(to);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_given_back_slot_goes_to_the_owner_holding_fewest() {
        let slots = Slots::new(2);
        let a1 = slots.try_take(1).unwrap();
        let a2 = slots.try_take(1).unwrap();
        assert!(slots.try_take(2).is_none());
        // Owner 1 queues three more, then owner 2 one.
        let mut waiters = Vec::new();
        for o in [1, 1, 1, 2] {
            let s = slots.clone();
            waiters.push(tokio::spawn(async move { s.take(o, LONG).await }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(a1);
        // Owner 2 holds none, owner 1 one: owner 2's waiter goes first although it came last.
        let s2 = waiters
            .pop()
            .unwrap()
            .await
            .unwrap()
            .expect("owner 2 served");
        assert_eq!((slots.held(1), slots.held(2)), (1, 1));
        drop((a2, s2));
        // Then owner 1's waiters, oldest first.
        let first = waiters.remove(0).await.unwrap().expect("served");
        let second = waiters.remove(0).await.unwrap().expect("served");
        assert_eq!((slots.held(1), slots.held(2)), (2, 0));
        drop(first);
        let third = waiters.remove(0).await.unwrap().expect("served");
        drop((second, third));
        assert_eq!(slots.held(1), 0);
    }

    #[tokio::test]
    async fn waiting_ends_at_the_deadline_and_a_late_slot_is_not_lost() {
        let slots = Slots::new(1);
        let held = slots.try_take(1).unwrap();
        assert!(slots.take(2, Duration::from_millis(20)).await.is_none());
        drop(held);
        // The waiter that gave up is skipped; the slot is free again.
        assert_eq!(slots.held(1) + slots.held(2), 0);
        let again = slots.try_take(3).expect("free");
        drop(again);
        assert!(slots.try_take(3).is_some());
    }

    #[tokio::test]
    async fn slots_are_never_more_than_capacity() {
        let slots = Slots::new(3);
        let mut tasks = Vec::new();
        let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for i in 0..40u64 {
            let (s, busy, peak) = (slots.clone(), busy.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let Some(_slot) = s.take(i % 4, LONG).await else {
                    return false;
                };
                let now = busy.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                busy.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                true
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap(), "a request got no slot");
        }
        assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 3);
        for o in 0..4 {
            assert_eq!(slots.held(o), 0);
        }
        assert_eq!(lock(&slots.state).free, 3);
    }
}
