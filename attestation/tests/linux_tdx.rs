//! `LinuxTdx` against fake trees: a fake configfs-tsm kernel on an ordinary directory, and
//! plain files standing in for the `tdx_guest` measurement sysfs attributes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use attestation::linux_tdx::{ConfigFs, LinuxTdx, OsConfigFs, TDX_PROVIDER};
use attestation::{TeeDevice, TeeError};
use measurements::quote::ParsedQuote;
use measurements::TdRegisters;

/// A directory under the cargo target tmpdir, removed on drop.
struct TempTree(PathBuf);

impl TempTree {
    fn new(name: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "linux_tdx-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Registers the fake TD reports in its quotes.
fn sample_registers() -> TdRegisters {
    TdRegisters {
        mrtd: [0x11; 48],
        rtmr: [[0x20; 48], [0x21; 48], [0x22; 48], [0x23; 48]],
        td_attributes: 0x1000_0000u64.to_le_bytes(),
        xfam: 0x0006_02e7u64.to_le_bytes(),
        mrconfigid: [0x31; 48],
        mrowner: [0x32; 48],
        mrownerconfig: [0x33; 48],
    }
}

/// A v4 quote with a TDX 1.0 body and empty signature data, built field by field.
fn quote_bytes(registers: &TdRegisters, report_data: &[u8]) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&4u16.to_le_bytes()); // version
    q.extend_from_slice(&2u16.to_le_bytes()); // attestation key type: ECDSA P-256
    q.extend_from_slice(&0x81u32.to_le_bytes()); // tee type: TDX
    q.extend_from_slice(&[0; 40]); // reserved, qe vendor id, user data
    q.extend_from_slice(&[0x01; 16]); // tee_tcb_svn
    q.extend_from_slice(&[0x02; 48]); // mrseam
    q.extend_from_slice(&[0x03; 48]); // mrsigner_seam
    q.extend_from_slice(&[0; 8]); // seam_attributes
    q.extend_from_slice(&registers.td_attributes);
    q.extend_from_slice(&registers.xfam);
    q.extend_from_slice(&registers.mrtd);
    q.extend_from_slice(&registers.mrconfigid);
    q.extend_from_slice(&registers.mrowner);
    q.extend_from_slice(&registers.mrownerconfig);
    for rtmr in &registers.rtmr {
        q.extend_from_slice(rtmr);
    }
    let mut data = [0u8; 64];
    data[..report_data.len()].copy_from_slice(report_data);
    q.extend_from_slice(&data);
    q.extend_from_slice(&0u32.to_le_bytes()); // signature data length
    assert_eq!(q.len(), 48 + 584 + 4);
    q
}

/// What the fake kernel does when `inblob` is written.
#[derive(Debug, Clone, Copy)]
enum Outblob {
    /// A quote over the written report_data.
    QuoteOverInblob,
    /// A quote whose report_data is 0xee bytes, whatever was written.
    QuoteOverOtherData,
    /// Nothing.
    Empty,
}

/// Plays the kernel's part of configfs-tsm on an ordinary directory.
#[derive(Debug, Clone)]
struct FakeKernel {
    provider: &'static str,
    outblob: Outblob,
    /// Generation bumps from a concurrent writer on each of our `inblob` writes.
    racing_writes: u64,
    /// Errors `mkdir` with this raw OS error instead of creating the entry.
    mkdir_errno: Option<i32>,
    /// Every `mkdir` and `rmdir`, in order.
    log: Arc<Mutex<Vec<String>>>,
}

impl FakeKernel {
    fn tdx() -> Self {
        Self {
            provider: TDX_PROVIDER,
            outblob: Outblob::QuoteOverInblob,
            racing_writes: 0,
            mkdir_errno: None,
            log: Arc::default(),
        }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl ConfigFs for FakeKernel {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        if let Some(errno) = self.mkdir_errno {
            return Err(io::Error::from_raw_os_error(errno));
        }
        fs::create_dir(path)?;
        self.log
            .lock()
            .unwrap()
            .push(format!("mkdir {}", path.display()));
        fs::write(path.join("provider"), format!("{}\n", self.provider))?;
        fs::write(path.join("generation"), "0\n")?;
        fs::write(path.join("inblob"), b"")?;
        fs::write(path.join("outblob"), b"")?;
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(format!("rmdir {}", path.display()));
        // configfs removes the attribute files together with the item.
        fs::remove_dir_all(path)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        fs::write(path, data)?;
        if path.file_name().and_then(|n| n.to_str()) != Some("inblob") {
            return Ok(());
        }
        let dir = path.parent().unwrap();
        let outblob = match self.outblob {
            Outblob::QuoteOverInblob => quote_bytes(&sample_registers(), data),
            Outblob::QuoteOverOtherData => quote_bytes(&sample_registers(), &[0xee; 64]),
            Outblob::Empty => Vec::new(),
        };
        fs::write(dir.join("outblob"), outblob)?;
        let generation: u64 = fs::read_to_string(dir.join("generation"))?
            .trim()
            .parse()
            .unwrap();
        let generation = generation + 1 + self.racing_writes;
        fs::write(dir.join("generation"), format!("{generation}\n"))
    }
}

fn entries(root: &Path) -> Vec<PathBuf> {
    fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// A device with a report root (with `kernel`) and a measurement tree of plain files.
fn device(tree: &TempTree, kernel: &FakeKernel) -> (LinuxTdx, PathBuf, PathBuf) {
    let report_root = tree.path().join("tsm/report");
    let mr_root = tree.path().join("measurements");
    fs::create_dir_all(&report_root).unwrap();
    fs::create_dir_all(&mr_root).unwrap();
    fs::write(mr_root.join("mrtd:sha384"), [0x11; 48]).unwrap();
    for i in 0..4u8 {
        fs::write(mr_root.join(format!("rtmr{i}:sha384")), [0x20 + i; 48]).unwrap();
    }
    let tdx = LinuxTdx::with_roots(&report_root, &mr_root).with_configfs(kernel.clone());
    (tdx, report_root, mr_root)
}

fn assert_created_and_removed_once(kernel: &FakeKernel, report_root: &Path) {
    let log = kernel.log();
    assert_eq!(log.len(), 2, "{log:?}");
    let created = log[0].strip_prefix("mkdir ").unwrap();
    assert_eq!(log[1], format!("rmdir {created}"));
    assert_eq!(Path::new(created).parent().unwrap(), report_root);
    assert!(entries(report_root).is_empty(), "entry left behind");
}

#[test]
fn quote_round_trip() {
    let tree = TempTree::new("quote");
    let kernel = FakeKernel::tdx();
    let (tdx, report_root, _) = device(&tree, &kernel);
    let mut report_data = [0u8; 64];
    for (i, b) in report_data.iter_mut().enumerate() {
        *b = i as u8;
    }
    let quote = tdx.quote(&report_data).unwrap();
    assert_eq!(quote, quote_bytes(&sample_registers(), &report_data));
    let parsed = ParsedQuote::parse(&quote).unwrap();
    assert_eq!(parsed.report.report_data, report_data);
    assert_created_and_removed_once(&kernel, &report_root);
}

#[test]
fn quotes_use_distinct_entries() {
    let tree = TempTree::new("distinct");
    let kernel = FakeKernel::tdx();
    let (tdx, report_root, _) = device(&tree, &kernel);
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let tdx = &tdx;
            s.spawn(move || {
                for _ in 0..5 {
                    let quote = tdx.quote(&[t; 64]).unwrap();
                    let parsed = ParsedQuote::parse(&quote).unwrap();
                    assert_eq!(parsed.report.report_data, [t; 64]);
                }
            });
        }
    });
    let log = kernel.log();
    let mut created: Vec<&String> = log.iter().filter(|l| l.starts_with("mkdir ")).collect();
    assert_eq!(created.len(), 20);
    created.sort();
    created.dedup();
    assert_eq!(created.len(), 20, "entry names repeated");
    assert!(entries(&report_root).is_empty());
}

#[test]
fn provider_mismatch_is_an_error_and_removes_the_entry() {
    let tree = TempTree::new("provider");
    let kernel = FakeKernel {
        provider: "sev_guest",
        ..FakeKernel::tdx()
    };
    let (tdx, report_root, _) = device(&tree, &kernel);
    let err = tdx.quote(&[7; 64]).unwrap_err();
    match &err {
        TeeError::Quote(msg) => assert!(msg.contains("\"sev_guest\""), "{msg}"),
        other => panic!("expected Quote error, got {other:?}"),
    }
    assert_created_and_removed_once(&kernel, &report_root);
}

#[test]
fn generation_race_is_an_error_and_removes_the_entry() {
    let tree = TempTree::new("race");
    let kernel = FakeKernel {
        racing_writes: 1,
        ..FakeKernel::tdx()
    };
    let (tdx, report_root, _) = device(&tree, &kernel);
    let err = tdx.quote(&[7; 64]).unwrap_err();
    match &err {
        TeeError::Quote(msg) => assert!(msg.contains("generation 0") && msg.contains("2"), "{msg}"),
        other => panic!("expected Quote error, got {other:?}"),
    }
    assert_created_and_removed_once(&kernel, &report_root);
}

#[test]
fn empty_outblob_is_an_error_and_removes_the_entry() {
    let tree = TempTree::new("empty");
    let kernel = FakeKernel {
        outblob: Outblob::Empty,
        ..FakeKernel::tdx()
    };
    let (tdx, report_root, _) = device(&tree, &kernel);
    let err = tdx.quote(&[7; 64]).unwrap_err();
    assert!(
        matches!(&err, TeeError::Quote(msg) if msg.contains("empty outblob")),
        "{err}"
    );
    assert_created_and_removed_once(&kernel, &report_root);
}

#[test]
fn missing_report_root_is_unavailable() {
    let tree = TempTree::new("noroot");
    let kernel = FakeKernel::tdx();
    let tdx = LinuxTdx::with_roots(tree.path().join("absent"), tree.path().join("absent-mr"))
        .with_configfs(kernel.clone());
    let err = tdx.quote(&[0; 64]).unwrap_err();
    assert!(
        matches!(&err, TeeError::Unavailable(msg) if msg.contains("absent")),
        "{err}"
    );
    assert!(matches!(tdx.registers(), Err(TeeError::Unavailable(_))));
    assert!(kernel.log().is_empty());

    // The production file-system operations give the same answer.
    let tdx = LinuxTdx::with_roots(tree.path().join("absent"), tree.path().join("absent-mr"));
    assert!(matches!(tdx.quote(&[0; 64]), Err(TeeError::Unavailable(_))));
}

#[test]
fn no_provider_registered_is_unavailable() {
    let tree = TempTree::new("enxio");
    let kernel = FakeKernel {
        mkdir_errno: Some(6), // ENXIO
        ..FakeKernel::tdx()
    };
    let (tdx, _, _) = device(&tree, &kernel);
    let err = tdx.quote(&[0; 64]).unwrap_err();
    assert!(
        matches!(&err, TeeError::Unavailable(msg) if msg.contains("provider")),
        "{err}"
    );
}

#[test]
fn other_mkdir_failure_is_io() {
    let tree = TempTree::new("eacces");
    let kernel = FakeKernel {
        mkdir_errno: Some(13), // EACCES
        ..FakeKernel::tdx()
    };
    let (tdx, report_root, _) = device(&tree, &kernel);
    match tdx.quote(&[0; 64]).unwrap_err() {
        TeeError::Io { op, path, .. } => {
            assert_eq!(op, "mkdir");
            assert_eq!(path.parent().unwrap(), report_root);
        }
        other => panic!("expected Io error, got {other:?}"),
    }
}

/// The production `OsConfigFs` on a plain directory: mkdir creates no attribute files, so the
/// first read fails; the (empty) entry is still removed.
#[test]
fn os_configfs_on_plain_directory_fails_cleanly() {
    let tree = TempTree::new("osfs");
    let report_root = tree.path().join("report");
    fs::create_dir(&report_root).unwrap();
    let tdx = LinuxTdx::with_roots(&report_root, tree.path().join("mr")).with_configfs(OsConfigFs);
    match tdx.quote(&[0; 64]).unwrap_err() {
        TeeError::Io { op, path, source } => {
            assert_eq!(op, "read");
            assert_eq!(path.file_name().unwrap(), "provider");
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        other => panic!("expected Io error, got {other:?}"),
    }
    assert!(entries(&report_root).is_empty());
}

#[test]
fn registers_come_from_a_fresh_quote() {
    let tree = TempTree::new("registers");
    let kernel = FakeKernel::tdx();
    let (tdx, report_root, _) = device(&tree, &kernel);
    assert_eq!(tdx.registers().unwrap(), sample_registers());
    assert_created_and_removed_once(&kernel, &report_root);
}

#[test]
fn registers_reject_a_quote_over_other_report_data() {
    let tree = TempTree::new("registers-other");
    let kernel = FakeKernel {
        outblob: Outblob::QuoteOverOtherData,
        ..FakeKernel::tdx()
    };
    let (tdx, _, _) = device(&tree, &kernel);
    assert!(matches!(tdx.registers(), Err(TeeError::Registers(_))));
}

#[test]
fn registers_reject_an_outblob_that_is_not_a_quote() {
    #[derive(Debug)]
    struct Garbage(FakeKernel);
    impl ConfigFs for Garbage {
        fn create_dir(&self, path: &Path) -> io::Result<()> {
            self.0.create_dir(path)
        }
        fn remove_dir(&self, path: &Path) -> io::Result<()> {
            self.0.remove_dir(path)
        }
        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            self.0.read(path)
        }
        fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
            self.0.write(path, data)?;
            fs::write(path.parent().unwrap().join("outblob"), b"not a quote")
        }
    }
    let tree = TempTree::new("registers-garbage");
    let (_, report_root, mr_root) = device(&tree, &FakeKernel::tdx());
    let tdx =
        LinuxTdx::with_roots(&report_root, &mr_root).with_configfs(Garbage(FakeKernel::tdx()));
    let err = tdx.registers().unwrap_err();
    assert!(
        matches!(&err, TeeError::Registers(msg) if msg.contains("quote")),
        "{err}"
    );
    assert!(entries(&report_root).is_empty());
}

#[test]
fn rtmr3_extension_writes_exactly_the_digest() {
    let tree = TempTree::new("extend3");
    let (tdx, _, mr_root) = device(&tree, &FakeKernel::tdx());
    let digest = [0xab; 48];
    tdx.extend_rtmr(3, &digest, b"event").unwrap();
    assert_eq!(fs::read(mr_root.join("rtmr3:sha384")).unwrap(), digest);
    tdx.extend_rtmr(2, &[0xcd; 48], b"").unwrap();
    assert_eq!(fs::read(mr_root.join("rtmr2:sha384")).unwrap(), [0xcd; 48]);
}

#[test]
fn boot_rtmrs_and_out_of_range_indices_are_refused() {
    let tree = TempTree::new("refuse");
    let (tdx, _, mr_root) = device(&tree, &FakeKernel::tdx());
    for index in [0u8, 1, 4, 255] {
        match tdx.extend_rtmr(index, &[0xab; 48], b"") {
            Err(TeeError::RtmrIndex(i)) => assert_eq!(i, index),
            other => panic!("rtmr {index}: expected RtmrIndex, got {other:?}"),
        }
    }
    assert_eq!(fs::read(mr_root.join("rtmr0:sha384")).unwrap(), [0x20; 48]);
    assert_eq!(fs::read(mr_root.join("rtmr1:sha384")).unwrap(), [0x21; 48]);
}

#[test]
fn registers_read_from_sysfs_files() {
    let tree = TempTree::new("sysfs");
    let (tdx, _, _) = device(&tree, &FakeKernel::tdx());
    assert_eq!(tdx.read_mrtd().unwrap(), [0x11; 48]);
    for i in 0..4u8 {
        assert_eq!(tdx.read_rtmr(i).unwrap(), [0x20 + i; 48]);
    }
    assert!(matches!(tdx.read_rtmr(4), Err(TeeError::Registers(_))));
}

#[test]
fn sysfs_register_of_wrong_length_is_an_error() {
    let tree = TempTree::new("sysfs-len");
    let (tdx, _, mr_root) = device(&tree, &FakeKernel::tdx());
    fs::write(mr_root.join("rtmr1:sha384"), [0x21; 47]).unwrap();
    let err = tdx.read_rtmr(1).unwrap_err();
    assert!(
        matches!(&err, TeeError::Registers(msg) if msg.contains("got 47")),
        "{err}"
    );
}

#[test]
fn missing_measurement_root_is_unavailable() {
    let tree = TempTree::new("nomr");
    let tdx = LinuxTdx::with_roots(tree.path().join("report"), tree.path().join("absent"));
    assert!(matches!(tdx.read_mrtd(), Err(TeeError::Unavailable(_))));
    assert!(matches!(tdx.read_rtmr(3), Err(TeeError::Unavailable(_))));
    let err = tdx.extend_rtmr(3, &[0; 48], b"").unwrap_err();
    assert!(
        matches!(&err, TeeError::Unavailable(msg) if msg.contains("6.16")),
        "{err}"
    );
}

#[test]
fn missing_register_file_under_existing_root_is_io() {
    let tree = TempTree::new("nofile");
    let (tdx, _, mr_root) = device(&tree, &FakeKernel::tdx());
    fs::remove_file(mr_root.join("rtmr3:sha384")).unwrap();
    match tdx.extend_rtmr(3, &[0; 48], b"").unwrap_err() {
        TeeError::Io { op, path, source } => {
            assert_eq!(op, "write");
            assert_eq!(path, mr_root.join("rtmr3:sha384"));
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        other => panic!("expected Io error, got {other:?}"),
    }
}

#[test]
fn default_paths_are_the_kernel_abi_paths() {
    let tdx = LinuxTdx::new();
    assert_eq!(
        tdx.report_root(),
        Path::new("/sys/kernel/config/tsm/report")
    );
    assert_eq!(
        tdx.measurements_root(),
        Path::new("/sys/class/misc/tdx_guest/measurements")
    );
}
