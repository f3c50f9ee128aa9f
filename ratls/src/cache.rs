//! A cache of cryptographically verified evidence, so repeated handshakes with the same peer
//! certificate skip the quote and collateral signature checks.
//!
//! Key: SHA-256 of the quote. Value: [`Evidence`] from
//! [`measurements::verify::verify_evidence`] plus a hash of the collateral it was verified
//! against. An entry is used only while `now < min(inserted_at + ttl, evidence.valid_until)`
//! and, when the caller has collateral at hand, only if that collateral hashes the same (other
//! collateral ⇒ verify again). What a hit skips is policy-independent: the verifier still
//! runs [`measurements::Policy::check`] and the report_data binding on every use, so a policy
//! change applies to cached evidence at once. Size is bounded: inserting beyond the capacity
//! evicts the oldest insertion. Thread-safe (one mutex; the critical sections are short).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use measurements::verify::Evidence;
use sha2::{Digest, Sha256};

/// Default entry lifetime: 10 minutes.
pub const DEFAULT_TTL_SECS: u64 = 600;
/// Default capacity.
pub const DEFAULT_CAPACITY: usize = 1024;

/// Counters, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups with no usable entry (absent, expired or other collateral).
    pub misses: u64,
    /// Entries found but expired (also counted as misses).
    pub expired: u64,
    /// Entries found but verified against other collateral (also counted as misses).
    pub collateral_changed: u64,
    /// Entries stored.
    pub inserts: u64,
    /// Entries evicted for capacity.
    pub evictions: u64,
    /// Entries currently held.
    pub len: usize,
}

#[derive(Debug)]
struct Entry {
    evidence: Evidence,
    collateral_hash: [u8; 32],
    inserted_at: u64,
    expires_at: u64,
    seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<[u8; 32], Entry>,
    /// Insertion sequence number → key, oldest first.
    order: BTreeMap<u64, [u8; 32]>,
    next_seq: u64,
}

/// The attestation cache (see the module docs).
#[derive(Debug)]
pub struct AttestationCache {
    inner: Mutex<Inner>,
    ttl_secs: u64,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    expired: AtomicU64,
    collateral_changed: AtomicU64,
    inserts: AtomicU64,
    evictions: AtomicU64,
}

impl Default for AttestationCache {
    fn default() -> Self {
        Self::new(DEFAULT_TTL_SECS, DEFAULT_CAPACITY)
    }
}

/// SHA-256, the cache's key and collateral digest.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl AttestationCache {
    /// A cache keeping entries at most `ttl_secs` and at most `capacity` entries (at least 1).
    pub fn new(ttl_secs: u64, capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            ttl_secs,
            capacity: capacity.max(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            collateral_changed: AtomicU64::new(0),
            inserts: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks up evidence for `quote_hash` usable at `now`. With `collateral_hash`, an entry
    /// verified against other collateral is not used. Expired entries are removed.
    pub fn get(
        &self,
        quote_hash: &[u8; 32],
        collateral_hash: Option<&[u8; 32]>,
        now: u64,
    ) -> Option<Evidence> {
        let mut inner = self.lock();
        let found = match inner.entries.get(quote_hash) {
            None => None,
            Some(e) if now >= e.expires_at || now < e.inserted_at => {
                self.expired.fetch_add(1, Ordering::Relaxed);
                let seq = e.seq;
                inner.entries.remove(quote_hash);
                inner.order.remove(&seq);
                None
            }
            Some(e) if collateral_hash.is_some_and(|h| *h != e.collateral_hash) => {
                self.collateral_changed.fetch_add(1, Ordering::Relaxed);
                None
            }
            Some(e) => Some(e.evidence.clone()),
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Stores evidence verified at `now` against collateral hashing to `collateral_hash`,
    /// replacing an entry for the same quote. Evidence already stale is not stored.
    pub fn insert(
        &self,
        quote_hash: [u8; 32],
        collateral_hash: [u8; 32],
        evidence: Evidence,
        now: u64,
    ) {
        let expires_at = now.saturating_add(self.ttl_secs).min(evidence.valid_until);
        if expires_at <= now {
            return;
        }
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        if let Some(old) = inner.entries.remove(&quote_hash) {
            inner.order.remove(&old.seq);
        }
        inner.entries.insert(
            quote_hash,
            Entry {
                evidence,
                collateral_hash,
                inserted_at: now,
                expires_at,
                seq,
            },
        );
        inner.order.insert(seq, quote_hash);
        self.inserts.fetch_add(1, Ordering::Relaxed);
        while inner.entries.len() > self.capacity {
            let Some((_, key)) = inner.order.pop_first() else {
                break;
            };
            inner.entries.remove(&key);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes every entry (counters are kept).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.order.clear();
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let len = self.lock().entries.len();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            collateral_changed: self.collateral_changed.load(Ordering::Relaxed),
            inserts: self.inserts.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use measurements::{TcbStatus, TdRegisters, TdReport};

    fn evidence(valid_until: u64) -> Evidence {
        Evidence {
            quote_version: 4,
            report: TdReport {
                tee_tcb_svn: [0; 16],
                mrseam: [0; 48],
                mrsigner_seam: [0; 48],
                seam_attributes: [0; 8],
                registers: TdRegisters::ZERO,
                report_data: [0; 64],
            },
            tcb_status: TcbStatus::UpToDate,
            advisory_ids: Vec::new(),
            root_fingerprint: [0; 32],
            root_name: "test".into(),
            valid_until,
            collateral_issued_at: 0,
        }
    }

    #[test]
    fn hit_miss_and_collateral_hash() {
        let c = AttestationCache::new(100, 4);
        let (q, h) = ([1u8; 32], [2u8; 32]);
        assert!(c.get(&q, None, 10).is_none());
        c.insert(q, h, evidence(1000), 10);
        assert!(c.get(&q, None, 10).is_some());
        assert!(c.get(&q, Some(&h), 109).is_some());
        assert!(c.get(&q, Some(&[3u8; 32]), 50).is_none());
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.collateral_changed), (2, 2, 1));
    }

    #[test]
    fn expiry_is_min_of_ttl_and_evidence() {
        let c = AttestationCache::new(100, 4);
        c.insert([1; 32], [0; 32], evidence(50), 10);
        assert!(c.get(&[1; 32], None, 49).is_some());
        assert!(c.get(&[1; 32], None, 50).is_none());
        assert_eq!(c.stats().len, 0, "expired entry removed");
        c.insert([2; 32], [0; 32], evidence(1000), 10);
        assert!(c.get(&[2; 32], None, 110).is_none());
        // Stale evidence is not stored; a clock that went backwards does not hit.
        c.insert([3; 32], [0; 32], evidence(5), 10);
        assert_eq!(c.stats().len, 0);
        c.insert([4; 32], [0; 32], evidence(1000), 10);
        assert!(c.get(&[4; 32], None, 9).is_none());
        assert_eq!(c.stats().expired, 3);
    }

    #[test]
    fn eviction_removes_oldest_insert() {
        let c = AttestationCache::new(100, 2);
        c.insert([1; 32], [0; 32], evidence(1000), 10);
        c.insert([2; 32], [0; 32], evidence(1000), 10);
        // Re-inserting 1 makes 2 the oldest.
        c.insert([1; 32], [0; 32], evidence(1000), 11);
        c.insert([3; 32], [0; 32], evidence(1000), 12);
        assert!(c.get(&[2; 32], None, 12).is_none());
        assert!(c.get(&[1; 32], None, 12).is_some());
        assert!(c.get(&[3; 32], None, 12).is_some());
        let s = c.stats();
        assert_eq!((s.len, s.evictions, s.inserts), (2, 1, 4));
        c.clear();
        assert_eq!(c.stats().len, 0);
    }
}
