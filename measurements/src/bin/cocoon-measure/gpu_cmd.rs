//! `cocoon-measure gpu …`: NVIDIA GPU (Hopper) attestation evidence.
//!
//! * `verify`: an SPDM report + certificate chain (+ OCSP responses) against a nonce, a time,
//!   the pinned NVIDIA root and reference values. Exit 0 accepted, 1 rejected, 2 unusable.
//! * `refs`: NVIDIA RIM XML files → `cocoon-gpu-refs/v1` reference values, after verifying
//!   each RIM's XML signature and signer chain to NVIDIA's CoRIM root at `--at` (and OCSP if
//!   given). Exit 0, 1 if a signature, chain or OCSP check fails, 2 if unusable.
//! * `sim`: simulated evidence under a simulated root (NOT NVIDIA), for development and CI.

use std::path::{Path, PathBuf};

use base64::Engine;
use clap::{Args, Subcommand};
use serde_json::json;

use measurements::gpu::ocsp::check_rim_chain_ocsp;
use measurements::gpu::report::{decode_report_input, GpuReport};
use measurements::gpu::rim::{self, Rim};
use measurements::gpu::sim::{SimGpu, SimNvidiaRoot};
use measurements::gpu::xmldsig;
use measurements::gpu::{
    self, verify_gpu, DriverVersion, GpuEvidence, GpuPolicy, GpuReferenceValues, GpuRejection,
    OcspEvidence,
};
use measurements::TrustRoot;

use crate::{read, Exit, Unusable};

#[derive(Subcommand, Debug)]
pub enum GpuCmd {
    /// Verify a GPU attestation report and its certificate chain at a given time.
    Verify(GpuVerifyArgs),
    /// Turn NVIDIA RIM files (one driver RIM, one VBIOS RIM) into reference values (JSON),
    /// after verifying their XML signatures to NVIDIA's CoRIM signing root.
    Refs(RefsArgs),
    /// Write simulated evidence (report.hex, chain.pem, root.pem, refs.json) signed under a
    /// simulated root (NOT NVIDIA): accepted only with `verify --root DIR/root.pem`.
    Sim {
        /// 32-byte seed (64 hex characters) of the simulated root.
        #[arg(long, value_parser = |s: &str| measurements::parse_hex_array::<32>(s, "seed"))]
        seed: [u8; 32],
        /// Nonce the report answers (64 hex characters).
        #[arg(long, value_parser = |s: &str| measurements::parse_hex_array::<32>(s, "nonce"))]
        nonce: [u8; 32],
        /// Driver version the simulated GPU reports.
        #[arg(long, default_value = "570.133.20")]
        driver: String,
        /// VBIOS version the simulated GPU reports.
        #[arg(long, default_value = "96.00.CF.00.01")]
        vbios: String,
        /// Directory to write into (created if missing).
        #[arg(long)]
        out_dir: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct RefsArgs {
    /// RIM XML file. Give the driver RIM and the VBIOS RIM.
    #[arg(long, required = true)]
    rim: Vec<PathBuf>,
    /// Time at which the RIM signatures and signer chains are verified, Unix seconds.
    #[arg(long, required_unless_present = "unverified")]
    at: Option<u64>,
    /// Skip the signature check (the reference values then carry "unverified" in `sources`).
    #[arg(long, conflicts_with_all = ["at", "ocsp"])]
    unverified: bool,
    /// Trust this root (PEM) instead of the NVIDIA CoRIM signing Root CA.
    #[arg(long)]
    corim_root: Option<PathBuf>,
    /// OCSP response (DER or base64) for the RIM signer chains; when given, every signer
    /// certificate except the root must be covered. Repeatable.
    #[arg(long)]
    ocsp: Vec<PathBuf>,
    /// Time at which the OCSP responses are judged (default: --at).
    #[arg(long)]
    ocsp_at: Option<u64>,
    /// Output file (default: stdout).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct GpuVerifyArgs {
    /// The report: SPDM GET_MEASUREMENTS request + response, raw bytes or hex text.
    #[arg(long)]
    report: PathBuf,
    /// The certificate chain, PEM, leaf first.
    #[arg(long)]
    chain: PathBuf,
    /// The nonce the verifier put into the request (64 hex characters).
    #[arg(long, value_parser = |s: &str| measurements::parse_hex_array::<32>(s, "nonce"))]
    nonce: [u8; 32],
    /// Verification time for the certificate chain, Unix seconds.
    #[arg(long)]
    at: u64,
    /// Reference values (`cocoon-gpu-refs/v1` JSON, e.g. from `gpu refs`). Without it no
    /// measurement is compared and any versions pass: inspection only.
    #[arg(long)]
    refs: Option<PathBuf>,
    /// OCSP response for a certificate of the chain (DER or base64). Repeatable.
    #[arg(long)]
    ocsp: Vec<PathBuf>,
    /// Time at which the OCSP responses are judged, Unix seconds (default: --at).
    #[arg(long)]
    ocsp_at: Option<u64>,
    /// Refuse OCSP responses older than this many seconds at --ocsp-at.
    #[arg(long)]
    ocsp_max_age: Option<u64>,
    /// Reject when no OCSP response is given.
    #[arg(long)]
    require_ocsp: bool,
    /// Minimum driver version (compared numerically, e.g. 550.127.05).
    #[arg(long, value_parser = DriverVersion::parse)]
    min_driver: Option<DriverVersion>,
    /// Trust this root (PEM) instead of the NVIDIA Device Identity CA. Repeatable.
    #[arg(long)]
    root: Vec<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: GpuCmd) -> Result<Exit, Unusable> {
    match cmd {
        GpuCmd::Verify(args) => verify(&args),
        GpuCmd::Refs(args) => refs(&args),
        GpuCmd::Sim {
            seed,
            nonce,
            driver,
            vbios,
            out_dir,
        } => sim(seed, &nonce, &driver, &vbios, &out_dir),
    }
}

fn unusable_at(path: &Path) -> impl Fn(String) -> Unusable + '_ {
    move |e| Unusable(format!("{}: {e}", path.display()))
}

fn read_ocsp(path: &Path) -> Result<Vec<u8>, Unusable> {
    let bytes = read(path)?;
    if bytes.first() == Some(&0x30) {
        return Ok(bytes);
    }
    let text: String = String::from_utf8(bytes)
        .map_err(|_| Unusable(format!("{}: neither der nor base64", path.display())))?
        .split_whitespace()
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| Unusable(format!("{}: base64: {e}", path.display())))
}

fn verify(args: &GpuVerifyArgs) -> Result<Exit, Unusable> {
    let report = decode_report_input(&read(&args.report)?)
        .map_err(|e| unusable_at(&args.report)(e.to_string()))?;
    let parsed = GpuReport::parse(&report).map_err(|e| unusable_at(&args.report)(e.to_string()))?;
    let mut policy = match &args.refs {
        Some(p) => {
            GpuPolicy::production(GpuReferenceValues::from_json(&read(p)?).map_err(unusable_at(p))?)
        }
        None => GpuPolicy::inspect(),
    };
    if !args.root.is_empty() {
        policy.roots = args
            .root
            .iter()
            .map(|p| {
                let der = gpu::pem_to_der(&read(p)?).map_err(|e| unusable_at(p)(e.to_string()))?;
                Ok(TrustRoot::new(p.display().to_string(), der))
            })
            .collect::<Result<_, Unusable>>()?;
    }
    policy.min_driver = args.min_driver.clone();
    policy.require_ocsp = args.require_ocsp;
    policy.ocsp_max_age_secs = args.ocsp_max_age;
    let ocsp = if args.ocsp.is_empty() {
        None
    } else {
        Some(OcspEvidence {
            responses: args
                .ocsp
                .iter()
                .map(|p| read_ocsp(p))
                .collect::<Result<_, _>>()?,
            at: args.ocsp_at.unwrap_or(args.at),
        })
    };
    let evidence = GpuEvidence {
        report,
        chain_pem: read(&args.chain)?,
        ocsp,
    };
    let verdict = verify_gpu(&evidence, &args.nonce, args.at, &policy);
    if let Err(e) = &verdict {
        if e.is_malformed_input() {
            return Err(Unusable(e.to_string()));
        }
    }
    let (checked, mismatches) = match &verdict {
        Ok(v) => (v.measurements_checked, Vec::new()),
        Err(GpuRejection::MeasurementMismatch {
            checked,
            mismatches,
        }) => (*checked, mismatches.clone()),
        Err(_) => (0, Vec::new()),
    };
    let out = json!({
        "verdict": if verdict.is_ok() { "accepted" } else { "rejected" },
        "reason": verdict.as_ref().err().map(ToString::to_string),
        "reason_code": verdict.as_ref().err().map(GpuRejection::code),
        "driver": parsed.driver_version,
        "vbios": parsed.vbios_version,
        "fwid": hex::encode(&parsed.fwid),
        "measurements_checked": checked,
        "mismatches": mismatches.iter().map(|m| json!({
            "index": m.index, "got": m.got, "expected": m.expected,
        })).collect::<Vec<_>>(),
        "skipped": verdict.as_ref().map(|v| v.skipped.iter().map(|(i, r)| json!({
            "index": i, "reason": r.code(),
        })).collect::<Vec<_>>()).unwrap_or_default(),
        "root": verdict.as_ref().ok().map(|v| v.root_name.clone()),
        "ocsp_checked": verdict.as_ref().map(|v| v.ocsp.len()).unwrap_or(0),
        "references": policy.references.is_some(),
    });
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        match &verdict {
            Ok(v) => println!(
                "accepted: gpu driver {} vbios {}, {} measurements checked, root {}",
                v.driver_version, v.vbios_version, v.measurements_checked, v.root_name
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

fn write_out(out: Option<&Path>, text: &str) -> Result<(), Unusable> {
    match out {
        Some(p) => std::fs::write(p, text)
            .map_err(|e| Unusable(format!("cannot write {}: {e}", p.display()))),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

fn refs(args: &RefsArgs) -> Result<Exit, Unusable> {
    let root = match &args.corim_root {
        Some(p) => TrustRoot::new(
            p.display().to_string(),
            gpu::pem_to_der(&read(p)?).map_err(|e| unusable_at(p)(e.to_string()))?,
        ),
        None => xmldsig::nvidia_corim_root(),
    };
    let ocsp = OcspEvidence {
        responses: args
            .ocsp
            .iter()
            .map(|p| read_ocsp(p))
            .collect::<Result<_, _>>()?,
        at: args.ocsp_at.or(args.at).unwrap_or_default(),
    };
    let mut rims = Vec::new();
    let mut notes = Vec::new();
    for p in &args.rim {
        let text = String::from_utf8(read(p)?).map_err(|e| unusable_at(p)(e.to_string()))?;
        let rim = Rim::parse(&text).map_err(|e| unusable_at(p)(e.to_string()))?;
        match args.at {
            Some(at) if !args.unverified => {
                let checked = xmldsig::verify_rim_signature(&text, at, std::slice::from_ref(&root))
                    .map_err(|e| e.to_string())
                    .and_then(|signer| {
                        if !ocsp.responses.is_empty() {
                            check_rim_chain_ocsp(&signer.chain, &ocsp, None)
                                .map_err(|e| e.to_string())?;
                        }
                        Ok(signer)
                    });
                match checked {
                    Ok(signer) => notes.push(format!(
                        "{} signed by {} (root {}) verified at {at}{}",
                        rim.tag_id,
                        signer.subject,
                        signer.root_name,
                        if ocsp.responses.is_empty() {
                            ""
                        } else {
                            ", ocsp good"
                        }
                    )),
                    Err(e) => {
                        println!("rejected: {}: {e}", p.display());
                        return Ok(Exit::Rejected);
                    }
                }
            }
            _ => notes.push(format!("{} signature unverified", rim.tag_id)),
        }
        rims.push(rim);
    }
    let mut set = rim::reference_set(&rims)?;
    set.sources.extend(notes);
    let doc = GpuReferenceValues {
        format: gpu::refs::GPU_REFS_FORMAT_V1.into(),
        sets: vec![set],
    };
    write_out(
        args.out.as_deref(),
        &(serde_json::to_string_pretty(&doc)? + "\n"),
    )?;
    Ok(Exit::Accepted)
}

fn sim(
    seed: [u8; 32],
    nonce: &[u8; 32],
    driver: &str,
    vbios: &str,
    dir: &Path,
) -> Result<Exit, Unusable> {
    let root = SimNvidiaRoot::from_seed(seed)?;
    let gpu = SimGpu::new(driver, vbios, "cocoon-measure gpu sim");
    let (report, chain) = root.evidence(&gpu, nonce)?;
    let root_pem =
        der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &root.root_der()?)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Unusable(format!("cannot create {}: {e}", dir.display())))?;
    let refs = serde_json::to_string_pretty(&gpu.reference_values())? + "\n";
    for (name, text) in [
        ("report.hex", hex::encode(&report) + "\n"),
        ("chain.pem", chain),
        ("root.pem", root_pem),
        ("refs.json", refs),
    ] {
        write_out(Some(&dir.join(name)), &text)?;
    }
    Ok(Exit::Accepted)
}
