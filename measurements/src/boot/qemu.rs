//! What QEMU's x86 direct kernel boot (`-kernel`, `-initrd`, `-append`) writes into the kernel
//! image before TDVF measures it.
//!
//! Source: QEMU `x86_load_linux` (hw/i386/x86.c up to 9.0, hw/i386/x86-common.c since), read
//! for QEMU 8.0 to 10.1. QEMU reads the first 8 KiB of the file as `header`, edits it, and —
//! unless the guest is confidential in the sense of the version at hand — copies it over the
//! setup part it serves through fw_cfg. OVMF's QemuKernelLoaderFsDxe concatenates the setup and
//! kernel blobs back into the file `kernel`, which `LoadImage` measures into RTMR1. So the
//! measured image is the file with these bytes replaced:
//!
//! | offset | field (Linux boot protocol) | value | when |
//! |---|---|---|---|
//! | 0x1fa | `vid_mode` (u16) | from the first `vga=` in the cmdline | cmdline contains `vga=` |
//! | 0x210 | `type_of_loader` (u8) | 0xb0 (QEMU) | protocol ≥ 2.00 |
//! | 0x211 | `loadflags` (u8) | `\|= 0x80` (CAN_USE_HEAP) | protocol ≥ 2.01 |
//! | 0x224 | `heap_end_ptr` (u16) | `cmdline_addr - real_addr - 0x200` | protocol ≥ 2.01 |
//! | 0x228 | `cmd_line_ptr` (u32) | `cmdline_addr` (0x20000 for a "high and recent" kernel) | protocol ≥ 2.02 |
//! | 0x20, 0x22 | `cl_magic`, `cl_offset` (u16) | 0xa33f, `cmdline_addr - real_addr` | protocol < 2.02 |
//! | 0x218 | `ramdisk_image` (u32) | `(initrd_max - initrd_size) & !0xfff` | with an initrd |
//! | 0x21c | `ramdisk_size` (u32) | initrd size | with an initrd |
//!
//! `initrd_max` is `u32::MAX` when protocol ≥ 2.12 and `xloadflags` has
//! XLF_CAN_BE_LOADED_ABOVE_4G (bit 1), else `initrd_addr_max` (0x22c) for protocol ≥ 2.03, else
//! 0x37ffffff; then it is capped to `below_4g_mem_size - acpi_data_size - 1`. On the q35 machine
//! (the one TDX uses) `below_4g_mem_size` is the RAM size when it is below the split point, else
//! 2 GiB, the split point being 2 GiB for RAM ≥ 0xb0000000 and 0xb0000000 below that; the ACPI
//! reservation is 0x28000 for every current machine type. So the kernel digest depends on the
//! memory size (below 0xb0000000 bytes), the initrd size and, through `vga=` and for old
//! protocols through its length, the cmdline.
//!
//! The setup header lies inside the PE headers (`SizeOfHeaders` is 0x1000 in the Debian
//! 6.12 bzImage checked in `tests/boot.rs`), so all of these bytes are covered by the
//! Authenticode digest; [`crate::boot::authenticode::hashed_ranges`] tells for any image.
//!
//! Versions: upstream QEMU gained TDX in 10.1, whose `x86_load_linux` leaves the header of
//! every confidential guest alone (`if (!MACHINE(x86ms)->cgs && protocol > 0)`), so the file is
//! measured unpatched: [`HeaderPatching::Unpatched`]. The TDX QEMU builds that came before
//! (downstream trees on QEMU 8.x/9.x, such as the QEMU 8.2.2 of the real vector) kept the
//! older condition `if (!sev_enabled())` and patch TDX guests: [`HeaderPatching::Patched`]. QEMU 7.1/7.2 could append a random RNG seed `setup_data`
//! to the kernel, which makes the digest unpredictable; they are not modelled. Device-tree
//! (`-dtb`), multiboot and ELF (PVH) kernels are not modelled either (the latter two are not PE
//! images and cannot be measured by TDVF as an EFI application).

/// ACPI data reservation QEMU's PC machine types pass to `x86_load_linux`
/// (`pcmc->acpi_data_size = 0x20000 + 0x8000`).
pub const QEMU_ACPI_DATA_SIZE: u64 = 0x28000;
/// The Linux setup-header magic "HdrS" at offset 0x202.
const HDRS_MAGIC: u32 = 0x5372_6448;
const MULTIBOOT_MAGIC: u32 = 0x1bad_b002;
const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
/// The smallest file QEMU accepts: setup is at least two 512-byte sectors.
const MIN_KERNEL_LEN: usize = 1024;

/// Whether QEMU patches the setup header of a TDX guest's kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderPatching {
    /// TDX QEMU trees based on QEMU 8.x/9.x (e.g. 8.2.2): only SEV guests are exempt.
    #[default]
    Patched,
    /// Upstream QEMU 10.1 and later: confidential guests get the file unchanged.
    Unpatched,
}

/// The QEMU command-line inputs that change the measured kernel image (q35 machine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuBootParams {
    /// Guest RAM in bytes (`-m`).
    pub memory_size: u64,
    /// Size of the `-initrd` file in bytes, `None` without `-initrd`.
    pub initrd_size: Option<u64>,
    /// The `-append` string (QEMU treats it as a C string: it ends at the first NUL).
    pub cmdline: String,
    /// ACPI reservation below 4 GiB; [`QEMU_ACPI_DATA_SIZE`] for current machine types.
    pub acpi_data_size: u64,
    /// Whether this QEMU version patches the header of a TDX guest.
    pub header_patching: HeaderPatching,
}

impl QemuBootParams {
    /// Parameters for a q35 TDX guest with the default ACPI reservation, patched header.
    pub fn new(memory_size: u64, initrd_size: Option<u64>, cmdline: impl Into<String>) -> Self {
        Self {
            memory_size,
            initrd_size,
            cmdline: cmdline.into(),
            acpi_data_size: QEMU_ACPI_DATA_SIZE,
            header_patching: HeaderPatching::Patched,
        }
    }

    /// RAM mapped below 4 GiB on q35 (`pc_q35_init`, default `max-ram-below-4g`).
    pub fn below_4g_mem_size(&self) -> u64 {
        let lowmem = if self.memory_size >= 0xb000_0000 {
            0x8000_0000
        } else {
            0xb000_0000
        };
        self.memory_size.min(lowmem)
    }

    fn c_cmdline(&self) -> &[u8] {
        let b = self.cmdline.as_bytes();
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        &b[..end]
    }
}

/// Why QEMU would refuse (exit) to direct-boot this kernel, or why it is not modelled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QemuPatchError {
    #[error("kernel image is {len} bytes; qemu needs at least {min}")]
    TooShort { len: usize, min: usize },
    #[error("kernel image is {0}, which qemu does not boot as a bzImage (not modelled)")]
    NotBzImage(&'static str),
    #[error("kernel setup of {setup_size} bytes exceeds the {len}-byte image (qemu: invalid kernel header)")]
    SetupTooLarge { setup_size: usize, len: usize },
    #[error("boot protocol {protocol:#06x} is too old to load a ram disk")]
    InitrdNeedsProtocol200 { protocol: u16 },
    #[error("initrd of {size} bytes does not fit below initrd_max {max:#x}")]
    InitrdTooLarge { size: u64, max: u32 },
    #[error("acpi data size {acpi:#x} exceeds the {below_4g:#x} bytes of ram below 4 GiB")]
    AcpiAboveLowMemory { acpi: u64, below_4g: u64 },
    #[error("invalid vga= kernel parameter {0:?} (qemu exits)")]
    InvalidVga(String),
}

/// One field QEMU wrote into the setup header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchedField {
    pub name: &'static str,
    pub offset: usize,
    pub bytes: Vec<u8>,
}

/// What [`qemu_patch_setup_header`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupPatch {
    /// Linux boot protocol version from the header (0 without the "HdrS" magic).
    pub protocol: u16,
    /// Fields written, in QEMU's order (empty for [`HeaderPatching::Unpatched`]).
    pub fields: Vec<PatchedField>,
    /// Guest-physical address QEMU chose for the initrd.
    pub initrd_addr: Option<u32>,
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// QEMU's multiboot detection: a magic at a 4-byte aligned offset in the first 8 KiB whose
/// checksum (magic + flags + checksum) is 0.
fn is_multiboot(header: &[u8]) -> bool {
    let limit = header.len().min(8192).saturating_sub(48);
    (0..limit).step_by(4).any(|i| {
        le32(header, i) == MULTIBOOT_MAGIC
            && le32(header, i + 8)
                .wrapping_add(le32(header, i + 4))
                .wrapping_add(MULTIBOOT_MAGIC)
                == 0
    })
}

/// Parses the value after `vga=` like QEMU: `normal`, `ext`, `ask`, or an unsigned integer
/// (`0x` hex, leading-0 octal, decimal) followed by the end of the string or a space.
fn vga_mode(cmdline: &[u8]) -> Result<Option<u16>, QemuPatchError> {
    let Some(pos) = cmdline.windows(4).position(|w| w == b"vga=") else {
        return Ok(None);
    };
    let v = &cmdline[pos + 4..];
    if v.starts_with(b"normal") {
        return Ok(Some(0xffff));
    }
    if v.starts_with(b"ext") {
        return Ok(Some(0xfffe));
    }
    if v.starts_with(b"ask") {
        return Ok(Some(0xfffd));
    }
    let word_end = v.iter().position(|&c| c == b' ').unwrap_or(v.len());
    let word = &v[..word_end];
    let invalid = || QemuPatchError::InvalidVga(String::from_utf8_lossy(word).into_owned());
    let text = std::str::from_utf8(word).map_err(|_| invalid())?;
    let (digits, radix) =
        if let Some(h) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            (h, 16)
        } else if text.len() > 1 && text.starts_with('0') {
            (&text[1..], 8)
        } else {
            (text, 10)
        };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(invalid());
    }
    let value = u32::from_str_radix(digits, radix).map_err(|_| invalid())?;
    // QEMU stores the mode with a 16-bit write.
    Ok(Some(value as u16))
}

/// Highest address for the initrd (QEMU computes it whether or not there is one; it only
/// matters, and its failure modes only bite, with `-initrd`).
fn initrd_max(
    kernel: &[u8],
    protocol: u16,
    params: &QemuBootParams,
) -> Result<u32, QemuPatchError> {
    let header_max: u32 =
        if protocol >= 0x20c && le16(kernel, 0x236) & XLF_CAN_BE_LOADED_ABOVE_4G != 0 {
            u32::MAX
        } else if protocol >= 0x203 {
            le32(kernel, 0x22c)
        } else {
            0x37ff_ffff
        };
    let below_4g = params.below_4g_mem_size();
    let avail = below_4g
        .checked_sub(params.acpi_data_size)
        .filter(|&a| a > 0)
        .ok_or(QemuPatchError::AcpiAboveLowMemory {
            acpi: params.acpi_data_size,
            below_4g,
        })?;
    Ok(if u64::from(header_max) >= avail {
        (avail - 1) as u32
    } else {
        header_max
    })
}

/// Applies QEMU's direct-boot edits to `kernel` (the `-kernel` file) in place.
pub fn qemu_patch_setup_header(
    kernel: &mut [u8],
    params: &QemuBootParams,
) -> Result<SetupPatch, QemuPatchError> {
    let len = kernel.len();
    if kernel.starts_with(b"\x7fELF") {
        return Err(QemuPatchError::NotBzImage("an elf (pvh) kernel"));
    }
    if len < MIN_KERNEL_LEN {
        return Err(QemuPatchError::TooShort {
            len,
            min: MIN_KERNEL_LEN,
        });
    }
    let protocol = if le32(kernel, 0x202) == HDRS_MAGIC {
        le16(kernel, 0x206)
    } else if is_multiboot(kernel) {
        return Err(QemuPatchError::NotBzImage("a multiboot kernel"));
    } else {
        0
    };
    let cmdline = params.c_cmdline();
    let cmdline_size = ((cmdline.len() + 16) & !15) as u32;
    let loaded_high = kernel[0x211] & 0x01 != 0;
    let (real_addr, cmdline_addr): (u32, u32) = if protocol < 0x202 || !loaded_high {
        (0x90000, 0x9a000u32.wrapping_sub(cmdline_size))
    } else {
        (0x10000, 0x20000)
    };

    let mut fields = Vec::new();
    let mut put = |name: &'static str, offset: usize, bytes: &[u8]| {
        fields.push(PatchedField {
            name,
            offset,
            bytes: bytes.to_vec(),
        });
    };
    if protocol >= 0x202 {
        put("cmd_line_ptr", 0x228, &cmdline_addr.to_le_bytes());
    } else {
        put("cl_magic", 0x20, &0xa33fu16.to_le_bytes());
        let off = cmdline_addr.wrapping_sub(real_addr) as u16;
        put("cl_offset", 0x22, &off.to_le_bytes());
    }
    if let Some(mode) = vga_mode(cmdline)? {
        put("vid_mode", 0x1fa, &mode.to_le_bytes());
    }
    if protocol >= 0x200 {
        put("type_of_loader", 0x210, &[0xb0]);
    }
    if protocol >= 0x201 {
        put("loadflags", 0x211, &[kernel[0x211] | 0x80]);
        let heap_end = cmdline_addr.wrapping_sub(real_addr).wrapping_sub(0x200) as u16;
        put("heap_end_ptr", 0x224, &heap_end.to_le_bytes());
    }
    let mut initrd_addr = None;
    if let Some(size) = params.initrd_size {
        if protocol < 0x200 {
            return Err(QemuPatchError::InitrdNeedsProtocol200 { protocol });
        }
        let initrd_max = initrd_max(kernel, protocol, params)?;
        if size >= u64::from(initrd_max) {
            return Err(QemuPatchError::InitrdTooLarge {
                size,
                max: initrd_max,
            });
        }
        let addr = (initrd_max - size as u32) & !4095;
        initrd_addr = Some(addr);
        put("ramdisk_image", 0x218, &addr.to_le_bytes());
        put("ramdisk_size", 0x21c, &(size as u32).to_le_bytes());
    }
    let setup_sects = match kernel[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let setup_size = (setup_sects + 1) * 512;
    if setup_size > len {
        return Err(QemuPatchError::SetupTooLarge { setup_size, len });
    }

    if params.header_patching == HeaderPatching::Unpatched {
        fields.clear();
    }
    for f in &fields {
        kernel[f.offset..f.offset + f.bytes.len()].copy_from_slice(&f.bytes);
    }
    Ok(SetupPatch {
        protocol,
        fields,
        initrd_addr,
    })
}
