//! `cocoon-measure manifest from-images|diff`: turn `cocoon-image build` records into a manifest
//! to sign, and explain how two releases differ.
//!
//! * `from-images`: build directories (their `manifest.json`) → unsigned manifest JSON, ready
//!   for `manifest sign`. Exit 0, or 2 if an input is unusable or inconsistent.
//! * `diff OLD NEW`: exit 0 if the two describe the same release, 1 if they differ (the
//!   differences are printed), 2 if an input is unusable. See `measurements::manifest_diff` for
//!   what counts as a difference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use measurements::manifest::{Hex32, Manifest, RoleMeasurement};
use measurements::manifest_diff::{self, BuildRecord, Document};
use measurements::runtime_log::{RuntimeEvent, RuntimeLog};
use measurements::Sha384;

use crate::{read, Exit, Unusable};

/// `ROLE=VALUE`, parsed early.
#[derive(Clone, Debug)]
pub struct RoleValue<T> {
    role: String,
    value: T,
}

fn split_role(s: &str) -> Result<(&str, &str), String> {
    match s.split_once('=') {
        Some((r, v)) if !r.is_empty() && !v.is_empty() => Ok((r, v)),
        _ => Err(format!("{s:?}: expected ROLE=VALUE")),
    }
}

fn role_hex48(s: &str) -> Result<RoleValue<Sha384>, String> {
    let (role, v) = split_role(s)?;
    let value = measurements::parse_hex_array::<48>(v, "rtmr3").map_err(|e| e.to_string())?;
    Ok(RoleValue {
        role: role.into(),
        value,
    })
}

fn role_hex32(s: &str) -> Result<RoleValue<[u8; 32]>, String> {
    let (role, v) = split_role(s)?;
    let value =
        measurements::parse_hex_array::<32>(v, "config sha256").map_err(|e| e.to_string())?;
    Ok(RoleValue {
        role: role.into(),
        value,
    })
}

fn role_path(s: &str) -> Result<RoleValue<PathBuf>, String> {
    let (role, v) = split_role(s)?;
    Ok(RoleValue {
        role: role.into(),
        value: v.into(),
    })
}

#[derive(Args, Debug)]
pub struct FromImagesArgs {
    /// A `cocoon-image build --out` directory (or its manifest.json). Repeatable, one per role.
    #[arg(long = "image", value_name = "DIR", required = true)]
    images: Vec<PathBuf>,
    /// Publisher name written into the manifest.
    #[arg(long)]
    publisher: String,
    /// Issue time, Unix seconds (default: now). Each release needs a later one than the last:
    /// clients refuse an older manifest (rollback) and another one with the same time (swap).
    #[arg(long, value_name = "SECS")]
    issued_at: Option<u64>,
    /// An accepted RTMR3 value for a role (96 hex characters). Repeatable.
    #[arg(long, value_name = "ROLE=HEX", value_parser = role_hex48)]
    rtmr3: Vec<RoleValue<Sha384>>,
    /// A config disk SHA-256 for a role; its RTMR3 (a runtime log of one config event, as
    /// `eventlog expect-config` prints it) is added to the role's RTMR3 values. Repeatable.
    #[arg(long = "config-sha256", value_name = "ROLE=HEX", value_parser = role_hex32)]
    config_sha256: Vec<RoleValue<[u8; 32]>>,
    /// A model a role serves: the `model.json` written by `cocoon-image model` (name →
    /// image_sha256: the digest of the model disk, which is what a worker serving the model
    /// from its dm-verity disk registers and a proxy pins). Repeatable.
    #[arg(long, value_name = "ROLE=MODEL_JSON", value_parser = role_path)]
    model: Vec<RoleValue<PathBuf>>,
    /// Output file (default: stdout).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The old release: a signed manifest, an unsigned manifest, or a build record
    /// (`manifest.json` of `cocoon-image build`, or its directory).
    old: PathBuf,
    /// The new release (same shapes).
    new: PathBuf,
    /// Build directory (or manifest.json) of one of OLD's roles, to name changed artifacts.
    /// Repeatable.
    #[arg(long = "old-image", value_name = "DIR")]
    old_images: Vec<PathBuf>,
    /// Build directory (or manifest.json) of one of NEW's roles. Repeatable.
    #[arg(long = "new-image", value_name = "DIR")]
    new_images: Vec<PathBuf>,
    /// Print the diff as one JSON object (with "identical": bool) instead of text.
    #[arg(long)]
    json: bool,
}

/// The fields of `cocoon-image model`'s `model.json` used here (others are ignored).
#[derive(Deserialize)]
struct ModelRecord {
    format: String,
    name: String,
    #[serde(with = "measurements::registers::hex32")]
    image_sha256: [u8; 32],
}

const MODEL_RECORD_FORMAT: &str = "cocoon-model/v1";

/// A build directory's `manifest.json`, or the file itself.
fn record_path(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join("manifest.json")
    } else {
        p.to_path_buf()
    }
}

fn read_record(p: &Path) -> Result<BuildRecord, Unusable> {
    let path = record_path(p);
    BuildRecord::from_json(&read(&path)?).map_err(|e| Unusable(format!("{}: {e}", path.display())))
}

fn read_document(p: &Path) -> Result<Document, Unusable> {
    let path = record_path(p);
    Document::from_json(&read(&path)?).map_err(|e| Unusable(format!("{}: {e}", path.display())))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RTMR3 after a runtime log holding only the config event for `sha256`.
fn rtmr3_for_config(sha256: [u8; 32]) -> Sha384 {
    let mut log = RuntimeLog::default();
    log.append(RuntimeEvent::config(sha256));
    log.replay()
}

fn role_mut<'a>(
    m: &'a mut Manifest,
    name: &str,
    flag: &str,
) -> Result<&'a mut RoleMeasurement, Unusable> {
    let known: Vec<&String> = m.roles.keys().collect();
    let err = Unusable(format!(
        "{flag} {name}=…: no image for role {name:?} (roles: {known:?})"
    ));
    m.roles.get_mut(name).ok_or(err)
}

pub fn from_images(args: FromImagesArgs) -> Result<Exit, Unusable> {
    let records = args
        .images
        .iter()
        .map(|p| read_record(p))
        .collect::<Result<Vec<_>, _>>()?;
    let commits: Vec<String> = records
        .iter()
        .map(|r| {
            let c = r.source_commit.as_deref().unwrap_or("(none)");
            format!("{}={c}", r.role)
        })
        .collect();
    if records
        .iter()
        .any(|r| r.source_commit != records[0].source_commit)
    {
        return Err(Unusable(format!(
            "images come from different source commits: {}",
            commits.join(", ")
        )));
    }
    let mut manifest = Manifest::new(args.publisher, args.issued_at.unwrap_or_else(unix_now));
    manifest.source_commit = records[0].source_commit.clone();
    for r in records {
        if manifest.roles.contains_key(&r.role) {
            return Err(Unusable(format!("two images for role {:?}", r.role)));
        }
        manifest.roles.insert(
            r.role.clone(),
            RoleMeasurement {
                image_hash: r.image_hash,
                registers: r.registers,
                rtmr3: Vec::new(),
                models: BTreeMap::new(),
                gpu: None,
            },
        );
    }
    for v in &args.rtmr3 {
        role_mut(&mut manifest, &v.role, "--rtmr3")?
            .rtmr3
            .push(v.value);
    }
    for v in &args.config_sha256 {
        role_mut(&mut manifest, &v.role, "--config-sha256")?
            .rtmr3
            .push(rtmr3_for_config(v.value));
    }
    for v in &args.model {
        let text = read(&v.value)?;
        let m: ModelRecord = serde_json::from_slice(&text)
            .map_err(|e| Unusable(format!("{}: {e}", v.value.display())))?;
        if m.format != MODEL_RECORD_FORMAT {
            return Err(Unusable(format!(
                "{}: format {:?}, expected {MODEL_RECORD_FORMAT:?}",
                v.value.display(),
                m.format
            )));
        }
        let models = &mut role_mut(&mut manifest, &v.role, "--model")?.models;
        if models
            .insert(m.name.clone(), Hex32(m.image_sha256))
            .is_some()
        {
            return Err(Unusable(format!(
                "--model {}=…: model {:?} given twice",
                v.role, m.name
            )));
        }
    }
    for r in manifest.roles.values_mut() {
        r.rtmr3.sort_unstable();
        r.rtmr3.dedup();
    }
    manifest.validate()?;
    let text = serde_json::to_string_pretty(&manifest)? + "\n";
    match &args.out {
        Some(p) => {
            std::fs::write(p, text)
                .map_err(|e| Unusable(format!("cannot write {}: {e}", p.display())))?;
            println!("wrote {}", p.display());
            for (name, r) in &manifest.roles {
                println!(
                    "  {name}: image {} ({} rtmr3 values, {} models)",
                    r.image_hash,
                    r.rtmr3.len(),
                    r.models.len()
                );
            }
        }
        None => print!("{text}"),
    }
    Ok(Exit::Accepted)
}

pub fn diff(args: DiffArgs) -> Result<Exit, Unusable> {
    let mut old = read_document(&args.old)?;
    let mut new = read_document(&args.new)?;
    for (doc, images, side) in [
        (&mut old, &args.old_images, "--old-image"),
        (&mut new, &args.new_images, "--new-image"),
    ] {
        for p in images {
            doc.attach_build(read_record(p)?)
                .map_err(|e| Unusable(format!("{side} {}: {e}", p.display())))?;
        }
    }
    let d = manifest_diff::diff(&old, &new);
    if args.json {
        let mut v = serde_json::to_value(&d)?;
        v["identical"] = d.is_identical().into();
        println!("{}", serde_json::to_string(&v)?);
    } else {
        print!("{}", manifest_diff::explain(&d));
    }
    Ok(if d.is_identical() {
        Exit::Accepted
    } else {
        Exit::Rejected
    })
}
