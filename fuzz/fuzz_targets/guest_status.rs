//! The guest's serial console as the host reads it ([`protocol::guest::status`]): arbitrary
//! bytes, split into lines, through `parse_line` and `terminal_safe`. Nothing may panic; what
//! the host would echo or quote (an escaped line, an unknown stage, a reason) holds no control
//! character but tab, is unchanged when it needed no escaping, and stays within its bound. The
//! same bytes as a stage and a reason in a line written by `cocoon-init`
//! ([`init::status::Status`]) parse back to that stage, code and reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::guest::status::{parse_line, terminal_safe, Stage, StatusError, MAX_LINE};

fn safe(s: &str) -> bool {
    !s.chars().any(|c| c.is_control() && c != '\t')
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        let shown = terminal_safe(line);
        assert!(safe(&shown), "{shown:?}");
        if safe(line) {
            assert_eq!(shown, line);
        }
        if let Some(Ok(s)) = parse_line(line) {
            assert!(safe(s.stage.as_str()));
            if let Stage::Other(o) = &s.stage {
                assert!(o.chars().count() <= 64);
            }
            if let Some(r) = &s.reason {
                assert!(safe(r) && r.chars().count() <= 1024, "{r:?}");
            }
        }
    }

    // cocoon-init's side: the input, cut at its first NUL, as a stage and a reason.
    let (stage, reason) = match text.split_once('\0') {
        Some((a, b)) => (a, b),
        None => (text.as_ref(), ""),
    };
    let line = init::status::Status::new(stage)
        .with("code", 7)
        .with("reason", reason)
        .line();
    match parse_line(&line) {
        Some(Ok(s)) => {
            assert_eq!(s.code, Some(7));
            let want: String = terminal_safe(reason).chars().take(1024).collect();
            assert_eq!(s.reason.as_deref(), Some(want.as_str()));
            let want_stage: String = terminal_safe(stage).chars().take(64).collect();
            assert_eq!(s.stage.as_str(), want_stage);
        }
        Some(Err(StatusError::TooLong)) => {
            assert!(line.len() > MAX_LINE, "{} bytes refused", line.len());
        }
        other => panic!("cocoon-init's own line did not parse: {other:?} from {line:?}"),
    }
});
