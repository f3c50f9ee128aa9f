//! Text rendering of a [`ManifestDiff`].

use super::{ManifestDiff, RegisterDiff, RoleStatus};
use crate::registers::ImageHash;

/// Hex strings longer than 16 characters are shortened for text output; other text is not.
fn short(s: &str) -> String {
    if s.len() > 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("{}…", &s[..16])
    } else {
        s.to_string()
    }
}

fn opt_short(s: &Option<String>) -> String {
    s.as_deref().map_or_else(|| "(none)".into(), short)
}

fn explain_register(r: &RegisterDiff, out: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "  {} differs: {} → {}",
        r.register,
        short(&r.old),
        short(&r.new)
    );
    let _ = writeln!(out, "    measures: {}", r.measures);
    for b in &r.bits {
        let _ = writeln!(
            out,
            "    bit {} ({}): {} → {}",
            b.bit,
            b.name,
            u8::from(b.old),
            u8::from(b.new)
        );
    }
    if r.bits.iter().any(|b| b.bit == 0 && b.new) {
        let _ = writeln!(
            out,
            "    warning: debug set in NEW: the host can read the TD's memory; policy rejects it"
        );
    }
    if !r.builds_compared {
        let _ = writeln!(
            out,
            "    cause: unknown without build records on both sides"
        );
        return;
    }
    let mut parts: Vec<String> = r
        .causes
        .iter()
        .map(|c| match (&c.old, &c.new) {
            (Some(o), Some(n)) => format!("{} changed {} → {}", c.input, short(o), short(n)),
            (None, Some(n)) => format!("{} added ({})", c.input, short(n)),
            (Some(o), None) => format!("{} removed (was {})", c.input, short(o)),
            (None, None) => c.input.clone(),
        })
        .collect();
    if !r.unchanged.is_empty() {
        parts.push(format!("{} unchanged", r.unchanged.join(", ")));
    }
    if r.causes.is_empty() {
        parts.push(format!(
            "no recorded input changed; not recorded: {}",
            r.not_recorded
        ));
    }
    let _ = writeln!(out, "    cause: {}", parts.join("; "));
}

/// A human-readable explanation, one finding per line.
pub fn explain(d: &ManifestDiff) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if let Some(c) = &d.source_commit {
        let _ = writeln!(out, "source commit differs: {} → {}", c.old, c.new);
    }
    for r in &d.roles {
        let hash = |h: &Option<ImageHash>| h.map_or_else(|| "-".into(), |h| short(&h.to_string()));
        match r.status {
            RoleStatus::Added => {
                let _ = writeln!(
                    out,
                    "role {}: added (image {})",
                    r.role,
                    hash(&r.new_image_hash)
                );
            }
            RoleStatus::Removed => {
                let _ = writeln!(
                    out,
                    "role {}: removed (image {})",
                    r.role,
                    hash(&r.old_image_hash)
                );
            }
            RoleStatus::Unchanged => {
                let _ = writeln!(
                    out,
                    "role {}: unchanged (image {})",
                    r.role,
                    hash(&r.new_image_hash)
                );
            }
            RoleStatus::Changed => {
                if r.old_image_hash == r.new_image_hash {
                    let _ = writeln!(
                        out,
                        "role {}: changed, same image {}",
                        r.role,
                        hash(&r.new_image_hash)
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "role {}: image {} → {}",
                        r.role,
                        hash(&r.old_image_hash),
                        hash(&r.new_image_hash)
                    );
                }
            }
        }
        for reg in &r.registers {
            explain_register(reg, &mut out);
        }
        if let Some(s) = &r.rtmr3 {
            for a in &s.added {
                let _ = writeln!(out, "  rtmr3 value added: {}", short(a));
            }
            for a in &s.removed {
                let _ = writeln!(out, "  rtmr3 value removed: {}", short(a));
            }
        }
        for m in &r.models {
            let _ = writeln!(
                out,
                "  model {:?}: {} → {}",
                m.input,
                opt_short(&m.old),
                opt_short(&m.new)
            );
        }
        if r.status == RoleStatus::Unchanged || r.registers.is_empty() {
            for c in &r.build_inputs {
                let _ = writeln!(
                    out,
                    "  build input {}: {} → {}",
                    c.input,
                    opt_short(&c.old),
                    opt_short(&c.new)
                );
            }
        }
        for n in &r.notes {
            let _ = writeln!(out, "  note: {n}");
        }
    }
    if let Some(c) = &d.publisher {
        let f = |v: &Option<String>| {
            v.as_deref()
                .map_or_else(|| "(none)".into(), |s| format!("{s:?}"))
        };
        let _ = writeln!(out, "publisher: {} → {}", f(&c.old), f(&c.new));
    }
    if let Some(c) = &d.issued_at {
        let f = |v: Option<u64>| v.map_or_else(|| "(none)".into(), |v| v.to_string());
        let _ = writeln!(out, "issued_at: {} → {}", f(c.old), f(c.new));
    }
    let _ = writeln!(
        out,
        "{}",
        if d.is_identical() {
            "identical"
        } else {
            "different"
        }
    );
    out
}
