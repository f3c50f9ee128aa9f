//! GPU listing and vfio-pci binding on a fake sysfs tree in a temporary directory: plain files
//! and symlinks stand in for kernel attributes, and a fake kernel records every write (and
//! reacts to `drivers_probe` as the driver core would) so the tests check exactly what was
//! written.

mod common;

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};

use host::gpu::{self, Bdf, GpuError, HostSysfs, Sysfs};

/// A fake sysfs root with PCI devices, drivers and IOMMU groups.
struct Tree {
    root: PathBuf,
}

impl Tree {
    fn new(name: &str) -> Self {
        let root = common::temp(name);
        for d in ["nvidia", "snd_hda_intel", "vfio-pci", "nvme", "pcieport"] {
            std::fs::create_dir_all(root.join("sys/bus/pci/drivers").join(d)).unwrap();
            common::write(&root.join("sys/bus/pci/drivers").join(d).join("unbind"), "");
        }
        common::write(&root.join("sys/bus/pci/drivers_probe"), "");
        Self { root }
    }

    fn dev_dir(&self, bdf: &str) -> PathBuf {
        self.root.join("sys/bus/pci/devices").join(bdf)
    }

    fn device(
        &self,
        bdf: &str,
        vendor: u16,
        device: u16,
        class: u32,
        driver: Option<&str>,
        group: &str,
    ) {
        let d = self.dev_dir(bdf);
        common::write(&d.join("vendor"), format!("0x{vendor:04x}\n"));
        common::write(&d.join("device"), format!("0x{device:04x}\n"));
        common::write(&d.join("class"), format!("0x{class:06x}\n"));
        common::write(&d.join("driver_override"), "(null)\n");
        self.set_driver(bdf, driver);
        let g = self.root.join("sys/kernel/iommu_groups").join(group);
        std::fs::create_dir_all(g.join("devices")).unwrap();
        std::os::unix::fs::symlink(
            format!("../../../../kernel/iommu_groups/{group}"),
            d.join("iommu_group"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            format!("../../../../devices/pci0000:00/{bdf}"),
            g.join("devices").join(bdf),
        )
        .unwrap();
    }

    fn set_driver(&self, bdf: &str, driver: Option<&str>) {
        let link = self.dev_dir(bdf).join("driver");
        let _ = std::fs::remove_file(&link);
        if let Some(drv) = driver {
            std::os::unix::fs::symlink(format!("../../../../bus/pci/drivers/{drv}"), link).unwrap();
        }
    }

    /// A GPU with its audio function in group 13, an NVMe disk in group 14.
    fn standard(name: &str) -> Self {
        let t = Self::new(name);
        t.device(
            "0000:17:00.0",
            0x10de,
            0x2331,
            0x030200,
            Some("nvidia"),
            "13",
        );
        t.device(
            "0000:17:00.1",
            0x10de,
            0x22a3,
            0x040300,
            Some("snd_hda_intel"),
            "13",
        );
        t.device(
            "0000:16:01.0",
            0x8086,
            0x352a,
            0x060400,
            Some("pcieport"),
            "13",
        );
        t.device("0000:18:00.0", 0x144d, 0xa80a, 0x010802, Some("nvme"), "14");
        t.device("0000:00:02.0", 0x1af4, 0x1050, 0x030000, None, "2");
        t
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Records writes; on `drivers_probe` binds the device to its `driver_override`, or back to
/// its native driver when the override is cleared.
struct FakeKernel<'a> {
    tree: &'a Tree,
    files: HostSysfs,
    writes: RefCell<Vec<(String, String)>>,
    /// When false, probing does nothing (a kernel that refuses).
    probe_binds: bool,
}

impl<'a> FakeKernel<'a> {
    fn new(tree: &'a Tree) -> Self {
        Self {
            tree,
            files: HostSysfs::new(&tree.root),
            writes: RefCell::new(Vec::new()),
            probe_binds: true,
        }
    }

    fn writes(&self) -> Vec<(String, String)> {
        self.writes.borrow().clone()
    }

    fn native(bdf: &str) -> Option<&'static str> {
        match bdf {
            "0000:17:00.0" => Some("nvidia"),
            "0000:17:00.1" => Some("snd_hda_intel"),
            "0000:18:00.0" => Some("nvme"),
            _ => None,
        }
    }
}

impl Sysfs for FakeKernel<'_> {
    fn read(&self, path: &str) -> io::Result<String> {
        self.files.read(path)
    }
    fn link_name(&self, path: &str) -> io::Result<Option<String>> {
        self.files.link_name(path)
    }
    fn list(&self, path: &str) -> io::Result<Vec<String>> {
        self.files.list(path)
    }
    fn exists(&self, path: &str) -> bool {
        self.files.exists(path)
    }
    fn write(&self, path: &str, value: &str) -> io::Result<()> {
        self.writes
            .borrow_mut()
            .push((path.to_string(), value.to_string()));
        self.files.write(path, value)?;
        if let Some(rest) = path.strip_prefix("sys/bus/pci/drivers/") {
            if rest.ends_with("/unbind") {
                self.tree.set_driver(value, None);
            }
        }
        if path == "sys/bus/pci/drivers_probe" && self.probe_binds {
            let over = self
                .files
                .read(&format!("sys/bus/pci/devices/{value}/driver_override"))?;
            let over = over.trim();
            if over.is_empty() || over == "(null)" {
                self.tree.set_driver(value, Self::native(value));
            } else {
                self.tree.set_driver(value, Some(over));
            }
        }
        Ok(())
    }
}

fn bdf(s: &str) -> Bdf {
    s.parse().unwrap()
}

fn w(path: &str, value: &str) -> (String, String) {
    (path.to_string(), value.to_string())
}

#[test]
fn list_shows_display_and_nvidia_devices_with_driver_and_group() {
    let t = Tree::standard("gpu-list");
    let sysfs = HostSysfs::new(&t.root);
    let devs = gpu::list(&sysfs).unwrap();
    let got: Vec<(&str, Option<&str>, Option<&str>)> = devs
        .iter()
        .map(|d| {
            (
                d.bdf.as_str(),
                d.driver.as_deref(),
                d.iommu_group.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("0000:00:02.0", None, Some("2")),
            ("0000:17:00.0", Some("nvidia"), Some("13")),
            ("0000:17:00.1", Some("snd_hda_intel"), Some("13")),
        ]
    );
    assert_eq!(devs[1].vendor, 0x10de);
    assert_eq!(devs[1].class, 0x030200);
    assert!(devs[1].is_display() && devs[1].is_nvidia());
    let table = gpu::render_list(&sysfs, &devs);
    assert!(table.starts_with("ADDRESS"), "{table}");
    assert!(
        table.contains("0000:17:00.0  10de:2331  030200  nvidia      13 with 0000:16:01.0 (pcieport), 0000:17:00.1 (snd_hda_intel)"),
        "{table}"
    );
}

#[test]
fn bind_writes_unbind_override_probe_for_the_gpu_and_its_audio_function() {
    let t = Tree::standard("gpu-bind");
    let k = FakeKernel::new(&t);
    let changes = gpu::bind(&k, &bdf("0000:17:00.0"), false).unwrap();
    assert_eq!(
        k.writes(),
        vec![
            w("sys/bus/pci/drivers/nvidia/unbind", "0000:17:00.0"),
            w(
                "sys/bus/pci/devices/0000:17:00.0/driver_override",
                "vfio-pci"
            ),
            w("sys/bus/pci/drivers_probe", "0000:17:00.0"),
            w("sys/bus/pci/drivers/snd_hda_intel/unbind", "0000:17:00.1"),
            w(
                "sys/bus/pci/devices/0000:17:00.1/driver_override",
                "vfio-pci"
            ),
            w("sys/bus/pci/drivers_probe", "0000:17:00.1"),
        ]
    );
    let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "0000:17:00.0: nvidia -> vfio-pci",
            "0000:17:00.1: snd_hda_intel -> vfio-pci"
        ]
    );
    // The bridge in the group keeps its driver.
    let bridge = gpu::device(&k, &bdf("0000:16:01.0")).unwrap();
    assert_eq!(bridge.driver.as_deref(), Some("pcieport"));
    gpu::check_bound(&k, &[bdf("0000:17:00.0"), bdf("0000:17:00.1")]).unwrap();

    // Binding again changes nothing.
    let k2 = FakeKernel::new(&t);
    let again = gpu::bind(&k2, &bdf("0000:17:00.0"), false).unwrap();
    assert!(k2.writes().is_empty());
    assert_eq!(again[0].to_string(), "0000:17:00.0: already vfio-pci");

    // Unbind reverses: leave vfio-pci, clear the override, probe; the host drivers return.
    let k3 = FakeKernel::new(&t);
    let back = gpu::unbind(&k3, &bdf("0000:17:00.0"), false).unwrap();
    assert_eq!(
        k3.writes(),
        vec![
            w("sys/bus/pci/drivers/vfio-pci/unbind", "0000:17:00.0"),
            w("sys/bus/pci/devices/0000:17:00.0/driver_override", "\n"),
            w("sys/bus/pci/drivers_probe", "0000:17:00.0"),
            w("sys/bus/pci/drivers/vfio-pci/unbind", "0000:17:00.1"),
            w("sys/bus/pci/devices/0000:17:00.1/driver_override", "\n"),
            w("sys/bus/pci/drivers_probe", "0000:17:00.1"),
        ]
    );
    assert_eq!(back[0].to_string(), "0000:17:00.0: vfio-pci -> nvidia");
    let e = gpu::check_bound(&k3, &[bdf("0000:17:00.0")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "0000:17:00.0 is bound to nvidia, not vfio-pci"
    );
}

#[test]
fn a_group_shared_with_another_device_needs_group() {
    let t = Tree::standard("gpu-group");
    // Poor ACS: the NVMe disk sits in the GPU's group.
    std::os::unix::fs::symlink(
        "../../../../devices/pci0000:00/0000:18:00.0",
        t.root
            .join("sys/kernel/iommu_groups/13/devices/0000:18:00.0"),
    )
    .unwrap();
    let k = FakeKernel::new(&t);
    let e = gpu::bind(&k, &bdf("0000:17:00.0"), false).unwrap_err();
    assert!(matches!(e, GpuError::SharedGroup { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("iommu group 13 of 0000:17:00.0 also holds 0000:18:00.0 (driver nvme)"),
        "{e}"
    );
    assert!(
        k.writes().is_empty(),
        "nothing may be written before the group is checked"
    );
    let changes = gpu::bind(&k, &bdf("0000:17:00.0"), true).unwrap();
    assert_eq!(changes.len(), 3);
    assert!(k
        .writes()
        .contains(&w("sys/bus/pci/drivers/nvme/unbind", "0000:18:00.0")));
}

#[test]
fn failures_name_the_device() {
    let t = Tree::standard("gpu-errors");
    let mut k = FakeKernel::new(&t);
    k.probe_binds = false;
    let e = gpu::bind(&k, &bdf("0000:17:00.0"), false).unwrap_err();
    assert_eq!(
        e.to_string(),
        "0000:17:00.0 is bound to no driver after probing, not vfio-pci"
    );
    let e = gpu::bind(&k, &bdf("0000:99:00.0"), false).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no PCI device 0000:99:00.0 (not in /sys/bus/pci/devices)"
    );

    // No IOMMU group: the IOMMU is off.
    let t2 = Tree::new("gpu-noiommu");
    t2.device(
        "0000:17:00.0",
        0x10de,
        0x2331,
        0x030200,
        Some("nvidia"),
        "13",
    );
    std::fs::remove_file(t2.dev_dir("0000:17:00.0").join("iommu_group")).unwrap();
    let e = gpu::bind(&HostSysfs::new(&t2.root), &bdf("0000:17:00.0"), false).unwrap_err();
    assert!(matches!(e, GpuError::NoIommuGroup(_)), "{e}");

    // vfio-pci not loaded.
    let t3 = Tree::standard("gpu-novfio");
    std::fs::remove_dir_all(t3.root.join("sys/bus/pci/drivers/vfio-pci")).unwrap();
    let e = gpu::bind(&HostSysfs::new(&t3.root), &bdf("0000:17:00.0"), false).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the vfio-pci driver is not loaded: modprobe vfio-pci"
    );

    // Garbage attribute.
    common::write(&t3.dev_dir("0000:17:00.0").join("class"), "display\n");
    let e = gpu::device(&HostSysfs::new(&t3.root), &bdf("0000:17:00.0")).unwrap_err();
    assert!(
        e.to_string()
            .contains("class: unexpected contents \"display\""),
        "{e}"
    );
}

#[test]
fn the_cli_lists_and_binds_on_a_fake_root() {
    let t = Tree::standard("gpu-cli");
    let root = t.root.to_str().unwrap();
    let out = std::process::Command::new(common::HOST)
        .args(["gpu", "list", "--sysfs-root", root])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("0000:17:00.1  10de:22a3"), "{stdout}");
    // The plain file tree has no kernel behind it: the verification reports the failure.
    let out = std::process::Command::new(common::HOST)
        .args(["gpu", "bind", "0000:17:00.0", "--sysfs-root", root])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("after probing, not vfio-pci"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(t.dev_dir("0000:17:00.0").join("driver_override")).unwrap(),
        "vfio-pci"
    );
    assert_eq!(
        std::fs::read_to_string(t.root.join("sys/bus/pci/drivers_probe")).unwrap(),
        "0000:17:00.0"
    );
    let out = std::process::Command::new(common::HOST)
        .args(["gpu", "bind", "17:00.0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = Path::new(root);
}
