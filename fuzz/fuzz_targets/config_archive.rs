//! The guest's config disk (host-controlled bytes): cocoon-init's flat ustar parser and then
//! `init.toml` validation. Never panics; every accepted archive obeys the documented limits.
#![no_main]

use init::archive::{self, MAX_FILES, MAX_FILE_SIZE};
use init::config::{InitConfig, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(files) = archive::parse(data) {
        assert!(files.len() <= MAX_FILES);
        for (name, body) in &files {
            assert!(!name.contains('/') && name != "." && name != "..");
            assert!(body.len() as u64 <= MAX_FILE_SIZE);
        }
        if let Some(text) = files.get("init.toml").and_then(|b| std::str::from_utf8(b).ok()) {
            let _ = InitConfig::parse(text, Role::Worker);
            let _ = InitConfig::parse(text, Role::Proxy);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = InitConfig::parse(text, Role::Worker);
        let _ = init::config::role_from_cmdline(text);
    }
});
