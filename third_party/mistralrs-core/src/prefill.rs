//! cocoon patch: chunked prefill settings (see `Pipeline::step`).
//!
//! A prompt longer than one chunk is processed one chunk per engine step. The chunk size
//! follows the measured prefill speed so that a chunk takes about the target time: that bounds
//! how long a cancelled request keeps the engine and how long other requests wait behind a
//! long prompt. Off until [`set_chunk_target`] is called.
//!
//! Time sharing: while other sequences decode, a chunk runs only once they have had at least
//! as long as the previous chunk took ([`chunk_due`]), so a long prompt takes at most about
//! half of the engine's time from requests already generating.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Smallest chunk (prompts of at most this many tokens always run in one pass). Small: on a
/// slow CPU 16 tokens of a long prompt already take a good fraction of a second.
pub const MIN_CHUNK: usize = 16;
/// Chunk size before the first measurement: small, because until then nothing bounds how long
/// it takes (256 tokens took 5.9 s on a 2-core VM, and every request arriving meanwhile
/// waited for it).
pub const FIRST_CHUNK: usize = 64;
/// Prompt steps of fewer tokens are not measured (fixed costs dominate them).
pub const MIN_MEASURED: usize = 8;
/// Largest chunk.
pub const MAX_CHUNK: usize = 8192;

/// Target time per chunk in microseconds; 0 = chunking off.
static TARGET_MICROS: AtomicU64 = AtomicU64::new(0);
/// Measured prefill speed in tokens per second × 1000 (0 = not measured yet).
static RATE_MILLI: AtomicU64 = AtomicU64::new(0);
/// When the last recorded chunk ended, in microseconds since [`CLOCK`].
static LAST_END_MICROS: AtomicU64 = AtomicU64::new(0);
/// How long the last recorded chunk took, in microseconds (0 = none yet).
static LAST_TOOK_MICROS: AtomicU64 = AtomicU64::new(0);
static CLOCK: OnceLock<Instant> = OnceLock::new();

fn now_micros() -> u64 {
    u64::try_from(CLOCK.get_or_init(Instant::now).elapsed().as_micros()).unwrap_or(u64::MAX)
}

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

/// Records that a prompt step of `tokens` (all its sequences) took `took`: the measured
/// speed sizes the next chunks, and the time the next chunk waits next to decoding sequences.
pub fn record(tokens: usize, took: Duration) {
    if tokens < MIN_MEASURED {
        return;
    }
    let rate = tokens as f64 / took.as_secs_f64().max(1e-6);
    RATE_MILLI.store((rate * 1000.0) as u64, Ordering::Relaxed);
    LAST_TOOK_MICROS.store(
        u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    LAST_END_MICROS.store(now_micros(), Ordering::Relaxed);
}

/// Whether a chunk may run next to decoding sequences now: once they have had at least as
/// long as the last chunk took since it ended.
pub fn chunk_due() -> bool {
    let took = LAST_TOOK_MICROS.load(Ordering::Relaxed);
    took == 0 || now_micros().saturating_sub(LAST_END_MICROS.load(Ordering::Relaxed)) >= took
}
