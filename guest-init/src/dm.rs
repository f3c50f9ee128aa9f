//! Device-mapper ioctl buffers (linux/dm-ioctl.h, interface version 4), built and decoded as
//! bytes so the encoding is tested on any machine; [`crate::sys`] issues the ioctls.
//!
//! `struct dm_ioctl` is 312 bytes: version[3] u32, data_size, data_start, target_count,
//! open_count, flags, event_nr, padding (u32 each), dev u64 at 40, name[128] at 48, uuid[129]
//! at 176, data[7]. A table load appends one `struct dm_target_spec` (sector_start u64,
//! length u64, status i32, next u32, target_type[16]; 40 bytes) followed by the NUL-terminated
//! parameter string, padded to 8 bytes.

/// sizeof(struct dm_ioctl).
pub const DM_IOCTL_SIZE: usize = 312;
const SPEC_SIZE: usize = 40;
/// Bytes handed to every ioctl (room for the kernel's reply).
pub const BUFFER_SIZE: usize = 16 * 1024;

pub const DM_READONLY_FLAG: u32 = 1 << 0;

/// `_IOWR(0xfd, nr, struct dm_ioctl)`.
pub const fn request(nr: u32) -> u32 {
    (3 << 30) | ((DM_IOCTL_SIZE as u32) << 16) | (0xfd << 8) | nr
}
pub const DM_DEV_CREATE: u32 = request(3);
pub const DM_DEV_SUSPEND: u32 = request(6);
pub const DM_TABLE_LOAD: u32 = request(9);

/// Errors building a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmError {
    #[error("device-mapper name {0:?} must be 1..=127 bytes of [a-z0-9_-]")]
    Name(String),
    #[error("device-mapper table parameters too long ({0} bytes)")]
    Params(usize),
}

fn header(name: &str, flags: u32) -> Result<Vec<u8>, DmError> {
    let ok = !name.is_empty()
        && name.len() < 128
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok {
        return Err(DmError::Name(name.chars().take(64).collect()));
    }
    let mut b = vec![0u8; BUFFER_SIZE];
    put32(&mut b, 0, 4);
    put32(&mut b, 4, 0);
    put32(&mut b, 8, 0);
    put32(&mut b, 12, BUFFER_SIZE as u32);
    put32(&mut b, 16, DM_IOCTL_SIZE as u32);
    put32(&mut b, 28, flags);
    b[48..48 + name.len()].copy_from_slice(name.as_bytes());
    Ok(b)
}

/// DM_DEV_CREATE for `name`.
pub fn dev_create(name: &str) -> Result<Vec<u8>, DmError> {
    header(name, 0)
}

/// DM_DEV_SUSPEND without the suspend flag: resume (activates the loaded table).
pub fn dev_resume(name: &str) -> Result<Vec<u8>, DmError> {
    header(name, 0)
}

/// DM_TABLE_LOAD of one read-only target.
pub fn table_load(
    name: &str,
    sectors: u64,
    target_type: &str,
    params: &str,
) -> Result<Vec<u8>, DmError> {
    let mut b = header(name, DM_READONLY_FLAG)?;
    let room = BUFFER_SIZE - DM_IOCTL_SIZE - SPEC_SIZE - 8;
    if params.len() > room || params.contains('\0') || target_type.len() >= 16 {
        return Err(DmError::Params(params.len()));
    }
    put32(&mut b, 20, 1);
    let s = DM_IOCTL_SIZE;
    b[s..s + 8].copy_from_slice(&0u64.to_ne_bytes());
    b[s + 8..s + 16].copy_from_slice(&sectors.to_ne_bytes());
    let spec_len = (SPEC_SIZE + params.len() + 1).div_ceil(8) * 8;
    put32(&mut b, s + 20, spec_len as u32);
    b[s + 24..s + 24 + target_type.len()].copy_from_slice(target_type.as_bytes());
    b[s + SPEC_SIZE..s + SPEC_SIZE + params.len()].copy_from_slice(params.as_bytes());
    Ok(b)
}

/// The `dev` field of a reply, decoded (`huge_encode_dev`) as (major, minor).
pub fn reply_dev(buf: &[u8]) -> Option<(u32, u32)> {
    let dev = u64::from_ne_bytes(buf.get(40..48)?.try_into().ok()?);
    let major = ((dev & 0xfff00) >> 8) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    Some((major, minor))
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_kernel_header() {
        // Values from linux/dm-ioctl.h on x86_64 (sizeof(struct dm_ioctl) == 312).
        assert_eq!(DM_DEV_CREATE, 0xc138_fd03);
        assert_eq!(DM_DEV_SUSPEND, 0xc138_fd06);
        assert_eq!(DM_TABLE_LOAD, 0xc138_fd09);
    }

    #[test]
    fn table_load_layout() {
        let b = table_load("cocoon-model", 96, "verity", "1 254:0 254:16").unwrap();
        assert_eq!(&b[0..4], &4u32.to_ne_bytes());
        assert_eq!(&b[16..20], &312u32.to_ne_bytes());
        assert_eq!(&b[20..24], &1u32.to_ne_bytes());
        assert_eq!(&b[28..32], &DM_READONLY_FLAG.to_ne_bytes());
        assert_eq!(&b[48..60], b"cocoon-model");
        assert_eq!(b[60], 0);
        assert_eq!(&b[312 + 8..312 + 16], &96u64.to_ne_bytes());
        assert_eq!(&b[312 + 24..312 + 30], b"verity");
        assert_eq!(&b[352..366], b"1 254:0 254:16");
        assert_eq!(b[366], 0);
    }

    #[test]
    fn names_are_checked() {
        assert!(dev_create("").is_err());
        assert!(dev_create("../x").is_err());
        assert!(dev_create(&"a".repeat(128)).is_err());
        assert!(table_load("m", 8, "verity", "a\0b").is_err());
    }

    #[test]
    fn dev_decoding() {
        let mut b = vec![0u8; 48];
        // major 254, minor 0x123: (minor & 0xff) | major << 8 | (minor & ~0xff) << 12
        let dev: u64 = 0x23 | (254 << 8) | (0x100 << 12);
        b[40..48].copy_from_slice(&dev.to_ne_bytes());
        assert_eq!(reply_dev(&b), Some((254, 0x123)));
        assert_eq!(reply_dev(&b[..10]), None);
    }
}
