//! The image builder's ELF reader (`image::elf`), which reads the service binary and every
//! program and library a root disk's pinned packages bring: never panics, and agrees with
//! itself (a dynamically linked object is never reported static).
#![no_main]

use image::elf::{check_static, dynamic, ElfError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let info = dynamic(data);
    match check_static(data) {
        Err(ElfError::Dynamic) => {
            // PT_INTERP present: dynamic() either names it or says why it cannot.
            if let Ok(Some(d)) = &info {
                assert!(d.interpreter.is_some());
            } else {
                assert!(info.is_err());
            }
        }
        Ok(()) => {
            if let Ok(Some(d)) = &info {
                assert!(d.interpreter.is_none());
            }
        }
        Err(_) => assert!(info.is_err()),
    }
});
