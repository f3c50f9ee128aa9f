//! cocoon-measure: verify TDX quotes and NVIDIA GPU evidence, and build/sign/verify/diff
//! measurement manifests.
//!
//! Exit codes (stable, used by tests and auditors' scripts):
//! * 0 — accepted / success
//! * 1 — rejected (well-formed evidence that fails verification or policy)
//! * 2 — unusable input (unreadable file, malformed quote, collateral, key or manifest)

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::json;

use measurements::manifest::{Manifest, SignedManifest};
use measurements::policy::{parse_tcb_status, TcbStatus};
use measurements::quote::{decode_quote_input, ParsedQuote};
use measurements::verify::{verify_evidence, Evidence, Rejection};
use measurements::{Collateral, ImageHash, Policy, TrustRoot};

mod compute_cmd;
mod eventlog_cmd;
mod gpu_cmd;
mod manifest_cmd;

/// The documented exit codes: the same contract for every subcommand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Exit {
    /// Accepted (or the command did what it was asked).
    Accepted = 0,
    /// Evidence or manifests were read and rejected (or differ).
    Rejected = 1,
    /// An input was unusable.
    Unusable = 2,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// Verify Intel TDX evidence and cocoon measurement manifests.
#[derive(Parser, Debug)]
#[command(name = "cocoon-measure", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// TDX quotes.
    #[command(subcommand)]
    Quote(QuoteCmd),
    /// Signed measurement manifests.
    #[command(subcommand)]
    Manifest(ManifestCmd),
    /// TCG2 (CCEL) and cocoon RTMR3 event logs: replay and explain.
    #[command(subcommand)]
    Eventlog(eventlog_cmd::EventlogCmd),
    /// Expected TD registers computed from boot artifacts (firmware, kernel, initrd, cmdline).
    Compute(compute_cmd::ComputeArgs),
    /// NVIDIA GPU (Hopper) attestation: verify reports, build reference values from RIMs.
    #[command(subcommand)]
    Gpu(gpu_cmd::GpuCmd),
}

#[derive(Subcommand, Debug)]
enum QuoteCmd {
    /// Verify a quote against collateral at a given time and apply a policy.
    Verify(VerifyArgs),
    /// Parse a quote and print its registers without verifying anything.
    Show {
        /// Quote file (binary, or hex text with --hex).
        #[arg(long)]
        quote: PathBuf,
        /// The quote file is hex text.
        #[arg(long)]
        hex: bool,
    },
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// Quote file (binary, or hex text with --hex).
    #[arg(long)]
    quote: PathBuf,
    /// The quote file is hex text.
    #[arg(long)]
    hex: bool,
    /// Collateral JSON (dcap-qvl QuoteCollateralV3, e.g. from a PCCS).
    #[arg(long)]
    collateral: PathBuf,
    /// Verification time, Unix seconds.
    #[arg(long)]
    at: u64,
    /// Also accept these TCB statuses (comma-separated, e.g. OutOfDate,SWHardeningNeeded).
    #[arg(long, value_delimiter = ',', value_parser = parse_tcb_status)]
    allow_tcb_status: Vec<TcbStatus>,
    /// Accept debug TDs (development only).
    #[arg(long)]
    allow_debug: bool,
    /// Trust this root CA (DER) instead of Intel's SGX Root CA. Repeatable.
    #[arg(long)]
    root: Vec<PathBuf>,
    /// Accept only these image hashes (hex). Repeatable.
    #[arg(long)]
    image: Vec<ImageHash>,
    /// Require this report_data (128 hex characters).
    #[arg(long, value_parser = |s: &str| measurements::parse_hex_array::<64>(s, "report_data"))]
    report_data: Option<[u8; 64]>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum ManifestCmd {
    /// Generate an Ed25519 publisher key; writes the secret (hex) to --out, prints the public key.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a manifest (JSON of the manifest content) with a publisher key.
    Sign {
        /// Manifest content JSON (format, publisher, issued_at, roles).
        #[arg(long)]
        manifest: PathBuf,
        /// Secret key file (64 hex characters).
        #[arg(long)]
        key: PathBuf,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify a signed manifest against pinned publisher keys.
    Verify {
        /// Signed manifest JSON.
        #[arg(long)]
        signed: PathBuf,
        /// Pinned publisher public key (64 hex characters). Repeatable.
        #[arg(long = "publisher-key", required = true)]
        publisher_keys: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Build an unsigned manifest from `cocoon-image build` directories (then `manifest sign`).
    FromImages(manifest_cmd::FromImagesArgs),
    /// Compare two releases (signed/unsigned manifests or build records): which registers
    /// differ and which artifact caused it. Exit 0 identical, 1 different, 2 unusable.
    Diff(manifest_cmd::DiffArgs),
}

/// A failure that makes the input unusable (exit 2).
struct Unusable(String);

impl<E: std::fmt::Display> From<E> for Unusable {
    fn from(e: E) -> Self {
        Self(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Quote(QuoteCmd::Verify(args)) => quote_verify(&args),
        Cmd::Quote(QuoteCmd::Show { quote, hex }) => quote_show(&quote, hex),
        Cmd::Manifest(cmd) => manifest(cmd),
        Cmd::Eventlog(cmd) => eventlog_cmd::run(cmd),
        Cmd::Compute(args) => compute_cmd::run(&args),
        Cmd::Gpu(cmd) => gpu_cmd::run(cmd),
    };
    match result {
        Ok(code) => code.into(),
        Err(Unusable(msg)) => {
            eprintln!("cocoon-measure: {msg}");
            Exit::Unusable.into()
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Unusable> {
    std::fs::read(path).map_err(|e| Unusable(format!("cannot read {}: {e}", path.display())))
}

fn read_quote(path: &Path, hex: bool) -> Result<(Vec<u8>, ParsedQuote), Unusable> {
    let bytes = decode_quote_input(&read(path)?, hex)
        .map_err(|e| Unusable(format!("{}: {e}", path.display())))?;
    let parsed =
        ParsedQuote::parse(&bytes).map_err(|e| Unusable(format!("{}: {e}", path.display())))?;
    Ok((bytes, parsed))
}

fn quote_show(path: &Path, hex: bool) -> Result<Exit, Unusable> {
    let (_, parsed) = read_quote(path, hex)?;
    let mut out = registers_json(&parsed);
    out["quote_version"] = json!(parsed.version);
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(Exit::Accepted)
}

fn registers_json(parsed: &ParsedQuote) -> serde_json::Value {
    let r = &parsed.report.registers;
    json!({
        "mrtd": hex::encode(r.mrtd),
        "rtmr": r.rtmr.iter().map(hex::encode).collect::<Vec<_>>(),
        "report_data": hex::encode(parsed.report.report_data),
        "td_attributes": hex::encode(r.td_attributes),
        "xfam": hex::encode(r.xfam),
        "mrconfigid": hex::encode(r.mrconfigid),
        "mrowner": hex::encode(r.mrowner),
        "mrownerconfig": hex::encode(r.mrownerconfig),
        "image_hash": r.image_hash().to_string(),
    })
}

fn quote_verify(args: &VerifyArgs) -> Result<Exit, Unusable> {
    let (quote, parsed) = read_quote(&args.quote, args.hex)?;
    let collateral = Collateral::from_json(&read(&args.collateral)?)
        .map_err(|e| Unusable(format!("{}: {e}", args.collateral.display())))?;
    let mut policy = Policy::production();
    if !args.root.is_empty() {
        policy.roots = args
            .root
            .iter()
            .map(|p| Ok(TrustRoot::new(p.display().to_string(), read(p)?)))
            .collect::<Result<_, Unusable>>()?;
    }
    for s in &args.allow_tcb_status {
        policy = policy.allow_tcb_status(*s);
    }
    policy.allow_debug = args.allow_debug;
    if !args.image.is_empty() {
        policy = policy.with_images(args.image.iter().copied());
    }
    policy.required_report_data = args.report_data;

    let evidence = verify_evidence(&quote, &collateral, args.at, &policy.roots);
    let verdict: Result<&Evidence, Rejection> = match &evidence {
        Ok(ev) => policy.check(ev, args.at).map(|()| ev),
        Err(e) => Err(e.clone()),
    };
    if let Err(e) = &verdict {
        if e.is_malformed_input() {
            return Err(Unusable(e.to_string()));
        }
    }
    let ev = evidence.as_ref().ok();
    let mut out = registers_json(&parsed);
    out["verdict"] = json!(if verdict.is_ok() {
        "accepted"
    } else {
        "rejected"
    });
    out["reason"] = verdict.as_ref().err().map(|e| e.to_string()).into();
    out["reason_code"] = verdict.as_ref().err().map(|e| e.code()).into();
    out["quote_version"] = json!(parsed.version);
    out["tcb_status"] = ev.map(|e| e.tcb_status.to_string()).into();
    out["advisory_ids"] = json!(ev.map(|e| e.advisory_ids.clone()).unwrap_or_default());
    out["root"] = ev.map(|e| e.root_name.clone()).into();
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        match &verdict {
            Ok(ev) => println!(
                "accepted: tdx quote v{}, tcb {} {:?}, image {}",
                ev.quote_version,
                ev.tcb_status,
                ev.advisory_ids,
                ev.image_hash()
            ),
            Err(e) => println!("rejected: {e}"),
        }
    }
    Ok(if verdict.is_ok() {
        Exit::Accepted
    } else {
        Exit::Rejected
    })
}

fn read_key(path: &Path) -> Result<SigningKey, Unusable> {
    let text = String::from_utf8(read(path)?)?;
    let bytes = measurements::parse_hex_array::<32>(&text, "secret key")?;
    Ok(SigningKey::from_bytes(&bytes))
}

fn manifest(cmd: ManifestCmd) -> Result<Exit, Unusable> {
    match cmd {
        ManifestCmd::FromImages(args) => manifest_cmd::from_images(args),
        ManifestCmd::Diff(args) => manifest_cmd::diff(args),
        ManifestCmd::Keygen { out } => {
            let mut seed = [0u8; 32];
            getrandom::getrandom(&mut seed)?;
            let key = SigningKey::from_bytes(&seed);
            write_private(&out, &hex::encode(seed))?;
            println!("{}", hex::encode(key.verifying_key().as_bytes()));
            Ok(Exit::Accepted)
        }
        ManifestCmd::Sign { manifest, key, out } => {
            let content: Manifest = serde_json::from_slice(&read(&manifest)?)
                .map_err(|e| Unusable(format!("{}: {e}", manifest.display())))?;
            let signed = content.sign(&read_key(&key)?)?;
            let text = signed.to_json_pretty() + "\n";
            match out {
                Some(p) => std::fs::write(&p, text)
                    .map_err(|e| Unusable(format!("cannot write {}: {e}", p.display())))?,
                None => print!("{text}"),
            }
            Ok(Exit::Accepted)
        }
        ManifestCmd::Verify {
            signed,
            publisher_keys,
            json,
        } => {
            let keys = publisher_keys
                .iter()
                .map(|k| {
                    let b = measurements::parse_hex_array::<32>(k, "publisher key")?;
                    VerifyingKey::from_bytes(&b).map_err(Unusable::from)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let parsed = SignedManifest::from_json(&read(&signed)?)
                .map_err(|e| Unusable(format!("{}: {e}", signed.display())))?;
            let result = parsed.verify(&keys);
            if json {
                let out = match &result {
                    Ok((m, signers)) => json!({
                        "verdict": "accepted", "reason": null,
                        "publisher": m.publisher, "issued_at": m.issued_at,
                        "signers": signers.iter().map(|k| hex::encode(k.as_bytes())).collect::<Vec<_>>(),
                        "roles": m.roles.iter().map(|(r, v)| (r.clone(), json!(v.image_hash.to_string()))).collect::<serde_json::Map<_, _>>(),
                    }),
                    Err(e) => json!({"verdict": "rejected", "reason": e.to_string()}),
                };
                println!("{}", serde_json::to_string(&out)?);
            } else {
                match &result {
                    Ok((m, _)) => {
                        println!(
                            "accepted: manifest by {} issued at {}",
                            m.publisher, m.issued_at
                        );
                        for (role, v) in &m.roles {
                            println!("  {role}: image {}", v.image_hash);
                        }
                    }
                    Err(e) => println!("rejected: {e}"),
                }
            }
            Ok(if result.is_ok() {
                Exit::Accepted
            } else {
                Exit::Rejected
            })
        }
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), Unusable> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Unusable(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
