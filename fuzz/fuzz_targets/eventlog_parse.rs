//! CCEL event logs, the ACPI CCEL table and cocoon RTMR3 runtime logs on arbitrary bytes: never
//! panics; a parsed event log re-encodes to exactly the bytes it was parsed from, and a parsed
//! runtime log survives a JSON round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use measurements::eventlog::{self, CcelTable};
use measurements::runtime_log::RuntimeLog;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = eventlog::parse(data) {
        let _ = log.replay();
        for ev in &log.events {
            let _ = (ev.describe(), ev.check_digest(), ev.type_name());
        }
        assert_eq!(log.encode(), data[..log.end.offset()]);
    }
    if let Ok(table) = CcelTable::parse(data) {
        let _ = eventlog::parse_with_table(data, &table);
    }
    if let Ok(log) = RuntimeLog::from_json(data) {
        let again = RuntimeLog::from_json(log.to_json().as_bytes());
        assert_eq!(again.as_ref(), Ok(&log));
        let _ = log.check(&log.replay());
    }
});
