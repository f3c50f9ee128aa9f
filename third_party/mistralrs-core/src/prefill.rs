//! cocoon patch: chunked prefill settings (see `Pipeline::step`).
//!
//! A prompt longer than one chunk is processed one chunk per engine step. The chunk size
//! follows the measured prefill speed so that a chunk takes about the target time: that bounds
//! how long a cancelled request keeps the engine and how long other requests wait behind a
//! long prompt. Off until [`set_chunk_target`] is called.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Smallest chunk (prompts of at most this many tokens always run in one pass).
pub const MIN_CHUNK: usize = 64;
/// Chunk size before the first measurement.
pub const FIRST_CHUNK: usize = 256;
/// Largest chunk.
pub const MAX_CHUNK: usize = 8192;

/// Target time per chunk in microseconds; 0 = chunking off.
static TARGET_MICROS: AtomicU64 = AtomicU64::new(0);
/// Measured prefill speed in tokens per second × 1000 (0 = not measured yet).
static RATE_MILLI: AtomicU64 = AtomicU64::new(0);

/// Turns chunked prefill on with `target` time per chunk (`None` or zero: off).
pub fn set_chunk_target(target: Option<Duration>) {
    let micros = target.map_or(0, |t| u64::try_from(t.as_micros()).unwrap_or(u64::MAX));
    TARGET_MICROS.store(micros, Ordering::Relaxed);
}

/// The target time per chunk, if chunked prefill is on.
pub fn chunk_target() -> Option<Duration> {
    match TARGET_MICROS.load(Ordering::Relaxed) {
        0 => None,
        m => Some(Duration::from_micros(m)),
    }
}

/// The size of the next chunk: what the last measured speed processes in the target time,
/// within [`MIN_CHUNK`]..=[`MAX_CHUNK`].
pub fn chunk_len() -> usize {
    let Some(target) = chunk_target() else {
        return MAX_CHUNK;
    };
    match RATE_MILLI.load(Ordering::Relaxed) {
        0 => FIRST_CHUNK,
        r => ((r as f64 / 1000.0 * target.as_secs_f64()) as usize).clamp(MIN_CHUNK, MAX_CHUNK),
    }
}

/// Records that a chunk of `tokens` took `took`.
pub fn record(tokens: usize, took: Duration) {
    let rate = tokens as f64 / took.as_secs_f64().max(1e-6);
    RATE_MILLI.store((rate * 1000.0) as u64, Ordering::Relaxed);
}
