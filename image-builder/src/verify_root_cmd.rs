//! `cocoon-image verify-root --image DIR`: checks, without booting, that an image's `root.img`
//! is the disk its measured command line names (`cocoon.root=`): every filesystem block under
//! the dm-verity root hash, the hash device intact. For auditors and publishers; cocoon-init and
//! the kernel enforce the same at boot (exit 22).

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use protocol::guest::{RootDisk, ROOT_DISK_FILE};

/// Arguments of `cocoon-image verify-root`.
#[derive(clap::Args, Debug)]
pub struct VerifyRootArgs {
    /// An image directory written by `cocoon-image build --root-disk` (`cmdline`, `root.img`).
    #[arg(long)]
    pub image: PathBuf,
}

pub fn run(args: &VerifyRootArgs) -> anyhow::Result<()> {
    let cmdline_path = args.image.join("cmdline");
    let cmdline = std::fs::read_to_string(&cmdline_path)
        .with_context(|| format!("read {}", cmdline_path.display()))?;
    let params = RootDisk::from_cmdline(&cmdline)
        .with_context(|| cmdline_path.display().to_string())?
        .ok_or_else(|| {
            anyhow!(
                "{}: names no root disk (not an image built with --root-disk)",
                cmdline_path.display()
            )
        })?;
    let disk_path = args.image.join(ROOT_DISK_FILE);
    let disk =
        std::fs::read(&disk_path).with_context(|| format!("read {}", disk_path.display()))?;
    image::root_disk::verify(&disk, &params).with_context(|| disk_path.display().to_string())?;
    println!(
        "{}: matches the command line ({} blocks of filesystem, root hash {})",
        disk_path.display(),
        params.data_blocks,
        hex::encode(params.root_hash)
    );
    Ok(())
}
