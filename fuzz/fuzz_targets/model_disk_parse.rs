//! `model.json` (host-controlled in the guest) and dm-verity superblock parsing: never panics,
//! and whatever parses re-serializes to bytes that parse to the same value.
#![no_main]

use image::verity::{dm_table, ModelDisk, Superblock};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(disk) = ModelDisk::from_json(data) {
        let again = ModelDisk::from_json(disk.to_json().as_bytes()).expect("re-parses");
        assert_eq!(again, disk);
        let table = dm_table(&disk, "/dev/vdb", "/dev/vdc");
        // `0 <sectors> verity 1 <data> <hash> 4096 4096 <blocks> 1 sha256 <root> <salt>`:
        // 13 tokens, never optional arguments such as `ignore_corruption`.
        assert_eq!(table.split(' ').count(), 13);
        let _ = (disk.geometry(), disk.image_size(), disk.sectors());
    }
    if let Ok(sb) = Superblock::parse(data) {
        assert_eq!(Superblock::parse(&sb.to_bytes()).expect("re-parses"), sb);
    }
});
