//! The requests each account has at workers, by request id, so that a client can stop one:
//! `POST /cocoon/v1/cancel` with `cocoon-request-id` ([`protocol::paths::CANCEL`]). The
//! proxy passes the cancel on to each worker running a request of that account under that id,
//! naming the generation by the tag it was sent with; each such stream then ends with the
//! usage of the work done (and, encrypted, a receipt over it), billed and relayed to the
//! client like a completed one. A client that wants its receipt — or just its usage — for a
//! request it gives up on cancels it and reads the stream to its end, instead of resetting it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::registry::Worker;

/// Account and request id (both shared with the request's other parts: no copies).
type Key = (Arc<str>, Arc<str>);

/// The requests running at workers, by account and request id.
#[derive(Debug, Default)]
pub struct Running {
    next: AtomicU64,
    requests: Mutex<HashMap<Key, Vec<Entry>>>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    worker: Arc<Worker>,
    tag: u64,
    /// Its worker already stopped it on a client's cancel: a repeated cancel is answered
    /// without asking the worker again.
    stopped: bool,
}

/// One of the requests [`Running::of`] found.
#[derive(Debug)]
pub struct Found {
    /// Its entry (for [`Running::mark_stopped`]).
    pub id: u64,
    pub worker: Arc<Worker>,
    pub tag: u64,
    /// Already stopped on an earlier cancel.
    pub stopped: bool,
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<Entry>>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The requests of `account` with id `request_id` running at workers.
    pub fn of(&self, account: &str, request_id: &str) -> Vec<Found> {
        let key: Key = (Arc::from(account), Arc::from(request_id));
        self.lock().get(&key).map_or_else(Vec::new, |entries| {
            entries
                .iter()
                .map(|e| Found {
                    id: e.id,
                    worker: e.worker.clone(),
                    tag: e.tag,
                    stopped: e.stopped,
                })
                .collect()
        })
    }

    /// Notes that the worker of entry `id` stopped it.
    pub fn mark_stopped(&self, account: &str, request_id: &str, id: u64) {
        let key: Key = (Arc::from(account), Arc::from(request_id));
        if let Some(e) = self
            .lock()
            .get_mut(&key)
            .and_then(|entries| entries.iter_mut().find(|e| e.id == id))
        {
            e.stopped = true;
        }
    }
}

/// A request's entry in [`Running`], removed on drop.
#[derive(Debug)]
pub struct Registered {
    running: Arc<Running>,
    key: Key,
    id: u64,
}

impl Registered {
    /// Registers `account`'s request `request_id`, sent to `worker` with `tag`, in `running`.
    pub fn new(
        running: &Arc<Running>,
        account: &Arc<str>,
        request_id: &protocol::RequestId,
        worker: &Arc<Worker>,
        tag: u64,
    ) -> Self {
        let id = running.next.fetch_add(1, Ordering::Relaxed);
        let key: Key = (account.clone(), request_id.shared().clone());
        running.lock().entry(key.clone()).or_default().push(Entry {
            id,
            worker: worker.clone(),
            tag,
            stopped: false,
        });
        Self {
            running: running.clone(),
            key,
            id,
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut requests = self.running.lock();
        if let Some(entries) = requests.get_mut(&self.key) {
            entries.retain(|e| e.id != self.id);
            if entries.is_empty() {
                requests.remove(&self.key);
            }
        }
    }
}
