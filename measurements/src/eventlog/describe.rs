//! Human descriptions of event payloads and digest checks.
//!
//! Decodes the PFP (section 10.4) event data structures that are easy to show:
//! `UEFI_VARIABLE_DATA`, `UEFI_IMAGE_LOAD_EVENT` (file-path nodes of its device path),
//! `UEFI_PLATFORM_FIRMWARE_BLOB(2)`, `UEFI_HANDOFF_TABLE_POINTERS(2)`, `UEFI_GPT_DATA`,
//! `TCG_PCClientTaggedEvent`, and text events. All of it is untrusted: every read is
//! bounds-checked and every string is escaped and capped before it is shown.

use std::fmt::Write as _;

use sha2::Digest;

use super::*;

/// Whether an event's digest could be recomputed from its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestCheck {
    /// The SHA-384 digest is the hash of the event data, as the event type prescribes.
    Verified,
    /// The digest covers something not in the log (an image, a table, a file).
    NotCheckable,
    /// `EV_NO_ACTION`: informational, never extended.
    NotExtended,
    /// The event type prescribes the hash of its data, and the digest is something else.
    Mismatch { computed: Sha384 },
}

impl std::fmt::Display for DigestCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Verified => f.write_str("digest verified"),
            Self::NotCheckable => f.write_str("not checkable"),
            Self::NotExtended => f.write_str("not extended"),
            Self::Mismatch { computed } => {
                write!(f, "MISMATCH (data hashes to {})", hex::encode(computed))
            }
        }
    }
}

fn sha384(data: &[u8]) -> Sha384 {
    sha2::Sha384::digest(data).into()
}

impl Event {
    /// The RTMR (0..=3) this event extends, `None` for `EV_NO_ACTION`.
    pub fn rtmr_index(&self) -> Option<usize> {
        if self.event_type == EV_NO_ACTION || !(1..=4).contains(&self.mr_index) {
            return None;
        }
        Some(self.mr_index as usize - 1)
    }

    /// The event type's TCG name (or `EV_UNKNOWN(0x…)`).
    pub fn type_name(&self) -> String {
        event_type_label(self.event_type)
    }

    /// Checks the SHA-384 digest against the event data where the PFP specification says the
    /// digest is the hash of the data (separators, actions, variables, GPT). For `EV_IPL` and
    /// other loader-defined events a hash of the data (with or without a trailing NUL) counts
    /// as verified, anything else as not checkable.
    pub fn check_digest(&self) -> DigestCheck {
        let data = &self.data[..];
        let whole = sha384(data);
        match self.event_type {
            EV_NO_ACTION => DigestCheck::NotExtended,
            _ if whole == self.sha384 => DigestCheck::Verified,
            EV_EFI_VARIABLE_BOOT => match efi_variable(data) {
                // PFP: EV_EFI_VARIABLE_BOOT measures only VariableData.
                Some(v) if sha384(v.data) == self.sha384 => DigestCheck::Verified,
                Some(v) => DigestCheck::Mismatch {
                    computed: sha384(v.data),
                },
                None => DigestCheck::Mismatch { computed: whole },
            },
            EV_SEPARATOR
            | EV_ACTION
            | EV_EFI_ACTION
            | EV_EFI_VARIABLE_DRIVER_CONFIG
            | EV_EFI_VARIABLE_BOOT2
            | EV_EFI_VARIABLE_AUTHORITY
            | EV_EFI_GPT_EVENT
            | EV_EFI_GPT_EVENT2 => DigestCheck::Mismatch { computed: whole },
            _ => match data.strip_suffix(&[0]) {
                Some(d) if sha384(d) == self.sha384 => DigestCheck::Verified,
                _ => DigestCheck::NotCheckable,
            },
        }
    }

    /// A one-line description of the event data for humans (untrusted text is escaped).
    pub fn describe(&self) -> String {
        let data = &self.data[..];
        let decoded = match self.event_type {
            EV_EFI_VARIABLE_DRIVER_CONFIG
            | EV_EFI_VARIABLE_BOOT
            | EV_EFI_VARIABLE_BOOT2
            | EV_EFI_VARIABLE_AUTHORITY => efi_variable(data).map(|v| v.describe()),
            EV_EFI_BOOT_SERVICES_APPLICATION
            | EV_EFI_BOOT_SERVICES_DRIVER
            | EV_EFI_RUNTIME_SERVICES_DRIVER => describe_image_load(data),
            EV_EFI_PLATFORM_FIRMWARE_BLOB => describe_blob(data, false),
            EV_EFI_PLATFORM_FIRMWARE_BLOB2 => describe_blob(data, true),
            EV_EFI_HANDOFF_TABLES => describe_handoff(data, false),
            EV_EFI_HANDOFF_TABLES2 => describe_handoff(data, true),
            EV_EFI_GPT_EVENT | EV_EFI_GPT_EVENT2 => describe_gpt(data),
            EV_EVENT_TAG => describe_tagged(data),
            EV_NO_ACTION => describe_no_action(data),
            EV_SEPARATOR => Some(match data {
                [0, 0, 0, 0] => "separator".to_owned(),
                [0xFF, 0xFF, 0xFF, 0xFF] => "separator (error)".to_owned(),
                _ => format!("separator {}", hex_short(data)),
            }),
            _ => None,
        };
        decoded
            .or_else(|| text(data).map(|t| format!("\"{t}\"")))
            .or_else(|| leading_tag(data).map(|t| format!("\"{t}\" + {} bytes", data.len())))
            .unwrap_or_else(|| format!("{} bytes", data.len()))
    }
}

/// A cursor for decoding event payloads; every read is bounds-checked.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn len_u64(&mut self, unit: usize) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?.checked_mul(unit)?;
        self.take(n)
    }
}

/// `UEFI_VARIABLE_DATA`: GUID, name length (CHAR16s), data length, name, data.
struct EfiVariable<'a> {
    guid: &'a [u8],
    name: &'a [u8],
    data: &'a [u8],
}

fn efi_variable(data: &[u8]) -> Option<EfiVariable<'_>> {
    let mut c = Cur(data);
    let guid = c.take(16)?;
    let name_len = usize::try_from(c.u64()?).ok()?.checked_mul(2)?;
    let data_len = usize::try_from(c.u64()?).ok()?;
    let name = c.take(name_len)?;
    let data = c.take(data_len)?;
    Some(EfiVariable { guid, name, data })
}

impl EfiVariable<'_> {
    fn describe(&self) -> String {
        let name = utf16(self.name);
        let owner = guid_label(self.guid);
        let value = match (name.as_str(), self.data.len()) {
            ("BootOrder", n) if n.is_multiple_of(2) && n <= 64 => self
                .data
                .chunks_exact(2)
                .map(|c| format!("{:04X}", u16::from_le_bytes([c[0], c[1]])))
                .collect::<Vec<_>>()
                .join(","),
            (_, n) if n <= 8 => hex::encode(self.data),
            (_, n) => format!("{n} bytes"),
        };
        format!("{owner}:{name} = {value}")
    }
}

fn describe_image_load(data: &[u8]) -> Option<String> {
    let mut c = Cur(data);
    let location = c.u64()?;
    let length = c.u64()?;
    let _link_time_address = c.u64()?;
    let path = c.len_u64(1)?;
    let files = device_path_files(path);
    let mut s = format!(
        "image at {location:#x}, {length} bytes, device path {} bytes",
        path.len()
    );
    if !files.is_empty() {
        let _ = write!(s, " ({})", files.join(", "));
    }
    Some(s)
}

/// Media file-path nodes (type 4, subtype 4) and firmware-volume file nodes (4, 6) of a UEFI
/// device path.
fn device_path_files(mut path: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while path.len() >= 4 && out.len() < 8 {
        let (ty, sub) = (path[0], path[1]);
        let len = usize::from(u16::from_le_bytes([path[2], path[3]]));
        if len < 4 || len > path.len() || ty == 0x7f {
            break;
        }
        let body = &path[4..len];
        match (ty, sub) {
            (4, 4) => out.push(utf16(body)),
            (4, 6) if body.len() == 16 => out.push(format!("FvFile({})", guid_string(body))),
            _ => {}
        }
        path = &path[len..];
    }
    out
}

fn describe_blob(data: &[u8], v2: bool) -> Option<String> {
    let mut c = Cur(data);
    let desc = if v2 {
        let n = c.u8()?;
        Some(c.take(usize::from(n))?)
    } else {
        None
    };
    let base = c.u64()?;
    let length = c.u64()?;
    let desc = desc
        .map(|d| format!("\"{}\" ", ascii(d)))
        .unwrap_or_default();
    Some(format!(
        "firmware blob {desc}at {base:#x}, {length:#x} bytes"
    ))
}

fn describe_handoff(data: &[u8], v2: bool) -> Option<String> {
    let mut c = Cur(data);
    let desc = if v2 {
        let n = c.u8()?;
        Some(c.take(usize::from(n))?)
    } else {
        None
    };
    let count = c.u64()?;
    let mut tables = Vec::new();
    while let (Some(guid), true) = (c.take(16), tables.len() < 4) {
        let ptr = c.u64()?;
        tables.push(format!("{} at {ptr:#x}", guid_string(guid)));
    }
    let desc = desc
        .map(|d| format!("\"{}\" ", ascii(d)))
        .unwrap_or_default();
    Some(format!(
        "handoff tables {desc}{count}: {}",
        tables.join(", ")
    ))
}

fn describe_gpt(data: &[u8]) -> Option<String> {
    let mut c = Cur(data);
    let header = c.take(92)?;
    if &header[..8] != b"EFI PART" {
        return None;
    }
    let count = c.u64()?;
    Some(format!(
        "gpt disk {}, {count} partitions",
        guid_string(&header[56..72])
    ))
}

/// `EV_NO_ACTION` structures are named by a 16-byte signature (PFP section 10.4.5).
fn describe_no_action(data: &[u8]) -> Option<String> {
    let sig = data.get(..16)?;
    let what = match sig {
        b"SP800-155 Event3" | b"SP800-155 Event\0" => "reference manifest information",
        b"StartupLocality\0" => "startup locality",
        b"Spec ID Event03\0" => "spec id",
        b"NvIndexInstance\0" | b"NvIndexDynamic\0\0" => "nv index",
        _ => return None,
    };
    let name = std::str::from_utf8(sig).unwrap_or_default();
    Some(format!(
        "{} ({what}), {} bytes",
        name.trim_end_matches('\0'),
        data.len()
    ))
}

fn describe_tagged(data: &[u8]) -> Option<String> {
    let mut c = Cur(data);
    let id = c.u32()?;
    let size = c.u32()?;
    let body = c.take(size as usize)?;
    let what = text(body)
        .map(|t| format!("\"{t}\""))
        .unwrap_or_else(|| format!("{} bytes", body.len()));
    Some(format!("tag {id:#010x}: {what}"))
}

const MAX_TEXT: usize = 120;

/// Makes untrusted text safe to print: control characters escaped, length capped.
fn clean(chars: impl Iterator<Item = char>) -> String {
    let mut out = String::new();
    for (i, ch) in chars.enumerate() {
        if i == MAX_TEXT {
            out.push('…');
            break;
        }
        if ch.is_control() {
            out.extend(ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    out
}

fn ascii(b: &[u8]) -> String {
    let b = b.strip_suffix(&[0]).unwrap_or(b);
    clean(
        b.iter()
            .map(|&c| if c.is_ascii() { c as char } else { '?' }),
    )
}

fn utf16(b: &[u8]) -> String {
    let units = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0);
    clean(char::decode_utf16(units).map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER)))
}

fn printable(b: u8) -> bool {
    (0x20..0x7f).contains(&b) || b == b'\t' || b == b'\n'
}

/// The data as text: printable ASCII, or UTF-16LE of printable ASCII, with trailing NULs.
fn text(data: &[u8]) -> Option<String> {
    let mut t = data;
    while let Some(s) = t.strip_suffix(&[0]) {
        t = s;
    }
    if !t.is_empty() && t.iter().all(|&b| printable(b)) {
        return Some(ascii(t));
    }
    if data.len() >= 4 && data.len().is_multiple_of(2) {
        let units: Vec<[u8; 2]> = data.chunks_exact(2).map(|c| [c[0], c[1]]).collect();
        let len = units.iter().rposition(|u| *u != [0, 0])? + 1;
        if units[..len].iter().all(|u| u[1] == 0 && printable(u[0])) {
            return Some(utf16(data));
        }
    }
    None
}

/// A NUL-terminated ASCII tag at the start of the data (td-shim: `td_hob\0…`).
fn leading_tag(data: &[u8]) -> Option<String> {
    let end = data.iter().position(|&b| b == 0)?;
    let tag = &data[..end];
    (tag.len() >= 3 && tag.iter().all(|&b| printable(b))).then(|| ascii(tag))
}

fn hex_short(b: &[u8]) -> String {
    let mut s = hex::encode(&b[..b.len().min(16)]);
    if b.len() > 16 {
        s.push('…');
    }
    s
}

/// A GUID in registry format (first three fields little-endian).
fn guid_string(g: &[u8]) -> String {
    if g.len() != 16 {
        return hex::encode(g);
    }
    format!(
        "{:08x}-{:04x}-{:04x}-{}-{}",
        u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
        u16::from_le_bytes([g[4], g[5]]),
        u16::from_le_bytes([g[6], g[7]]),
        hex::encode(&g[8..10]),
        hex::encode(&g[10..16])
    )
}

fn guid_label(g: &[u8]) -> String {
    let s = guid_string(g);
    match s.as_str() {
        "8be4df61-93ca-11d2-aa0d-00e098032b8c" => "EFI_GLOBAL_VARIABLE".to_owned(),
        "d719b2cb-3d3a-4596-a3bc-dad00e67656f" => "EFI_IMAGE_SECURITY_DATABASE".to_owned(),
        "605dab50-e046-4300-abb6-3dd810dd8b23" => "SHIM_LOCK".to_owned(),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_guid_helpers() {
        assert_eq!(text(b"ACPI DATA").as_deref(), Some("ACPI DATA"));
        assert_eq!(text(b"abc\0").as_deref(), Some("abc"));
        assert_eq!(text(b".\0l\0i\0n\0u\0x\0\0\0").as_deref(), Some(".linux"));
        assert_eq!(text(&[1, 2, 3]), None);
        assert_eq!(clean("a\u{1b}[31m".chars()), "a\\u{1b}[31m");
        let g = [
            0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03,
            0x2b, 0x8c,
        ];
        assert_eq!(guid_label(&g), "EFI_GLOBAL_VARIABLE");
        assert_eq!(leading_tag(b"td_hob\0\x01"), Some("td_hob".to_owned()));
        assert_eq!(
            describe_no_action(b"NvIndexDynamic\0\0").as_deref(),
            Some("NvIndexDynamic (nv index), 16 bytes")
        );
        assert_eq!(describe_no_action(b"short"), None);
    }
}
