//! Finding the host's disks by their virtio serial (`/sys/block/vdX/serial`), never by order.

use std::path::{Path, PathBuf};

pub use protocol::guest::{
    CONFIG_DISK_SERIAL as CONFIG_SERIAL, MODEL_DISK_SERIAL as MODEL_SERIAL,
    VERITY_DISK_SERIAL as VERITY_SERIAL,
};

/// A block device found in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name, e.g. `vda`.
    pub name: String,
    /// `major:minor`.
    pub dev: String,
}

impl BlockDevice {
    /// Its node under `dev_root` (normally `/dev`).
    pub fn node(&self, dev_root: &Path) -> PathBuf {
        dev_root.join(&self.name)
    }
}

/// Finds the block device whose `serial` attribute is `serial` under `sys_root`/block.
pub fn find_by_serial(sys_root: &Path, serial: &str) -> std::io::Result<Option<BlockDevice>> {
    let mut found = None;
    let mut entries: Vec<_> = std::fs::read_dir(sys_root.join("block"))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    for name in entries {
        let dir = sys_root.join("block").join(&name);
        let Ok(s) = std::fs::read_to_string(dir.join("serial")) else {
            continue;
        };
        if s.trim_end() != serial {
            continue;
        }
        if found.is_some() {
            return Err(std::io::Error::other(format!(
                "two disks have serial {serial:?}"
            )));
        }
        let dev = std::fs::read_to_string(dir.join("dev"))?.trim().to_string();
        found = Some(BlockDevice { name, dev });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(root: &Path, name: &str, serial: &str, dev: &str) {
        let d = root.join("block").join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("serial"), format!("{serial}\n")).unwrap();
        std::fs::write(d.join("dev"), format!("{dev}\n")).unwrap();
    }

    #[test]
    fn finds_by_serial_not_order() {
        let root = std::env::temp_dir().join(format!("cocoon-init-disks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        disk(&root, "vda", MODEL_SERIAL, "254:0");
        disk(&root, "vdb", CONFIG_SERIAL, "254:16");
        std::fs::create_dir_all(root.join("block/loop0")).unwrap();
        let c = find_by_serial(&root, CONFIG_SERIAL).unwrap().unwrap();
        assert_eq!(c.name, "vdb");
        assert_eq!(c.dev, "254:16");
        assert_eq!(find_by_serial(&root, VERITY_SERIAL).unwrap(), None);
        disk(&root, "vdc", CONFIG_SERIAL, "254:32");
        assert!(find_by_serial(&root, CONFIG_SERIAL).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
