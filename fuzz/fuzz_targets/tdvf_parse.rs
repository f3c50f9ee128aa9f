//! TDVF metadata parsing and MRTD computation on arbitrary firmware bytes: never panics, and
//! whatever parses can be measured in both page-add orders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use measurements::tdvf::{compute_mrtd, parse_metadata, PageAddOrder, MAX_PAGES};

fuzz_target!(|data: &[u8]| {
    let parsed = parse_metadata(data);
    if let Ok(md) = &parsed {
        assert!(md.added_pages() <= MAX_PAGES);
        assert!(md.extended_pages() <= md.added_pages());
    }
    for order in [PageAddOrder::SinglePass, PageAddOrder::TwoPass] {
        match (&parsed, compute_mrtd(data, order)) {
            (Ok(_), Ok(_)) => {}
            (Err(a), Err(b)) => assert_eq!(a, &b),
            (p, m) => panic!("parse {p:?} but measure {m:?}"),
        }
    }
});
