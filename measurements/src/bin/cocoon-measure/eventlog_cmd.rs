//! `cocoon-measure eventlog …`: replay and explain event logs.
//!
//! * `replay`: a TDX CCEL event log → RTMR0..3. Exit 0, or 2 if the log is unusable.
//! * `show`: every CCEL event with its decoded payload and digest check, then the RTMRs. Exit 0;
//!   1 if an event's digest contradicts its data (the log describes something other than what
//!   was measured); 2 if unusable.
//! * `runtime`: a cocoon RTMR3 runtime log (JSON). With `--quote`: exit 0 when the log replays
//!   to the quote's RTMR3, 1 when not (the reason is printed), 2 if unusable.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;

use measurements::eventlog::{self, CcelTable, DigestCheck, EventLog, CC_TYPE_TDX};
use measurements::runtime_log::RuntimeLog;
use measurements::Sha384;

use crate::{read, read_quote, Exit, Unusable};

#[derive(Subcommand, Debug)]
pub enum EventlogCmd {
    /// Replay a TDX CCEL event log (TCG2 crypto-agile) into RTMR0..3.
    Replay {
        #[command(flatten)]
        src: CcelArgs,
        /// Print one JSON object ({"rtmr": [4 × hex], "events": N}) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List every CCEL event (MR index, type, digest, decoded payload, digest check), then the
    /// replayed RTMRs. Exits 1 if an event's digest contradicts its data.
    Show {
        #[command(flatten)]
        src: CcelArgs,
    },
    /// Replay a cocoon RTMR3 runtime log (JSON); with --quote, compare it with the quote's RTMR3.
    Runtime(RuntimeArgs),
    /// The RTMR3 (and its log) a guest reports after cocoon-init measured this config disk:
    /// the value a verifier's policy `rtmr3 = [...]` pins for that configuration.
    ExpectConfig {
        /// The config disk exactly as the guest sees it (e.g. STATE_DIR/instance-N/config.tar).
        #[arg(long, value_name = "FILE", required_unless_present = "config_sha256")]
        config_disk: Option<PathBuf>,
        /// Or its SHA-256 (hex), as `cocoon-host launch --print` shows it.
        #[arg(long, value_name = "HEX", conflicts_with = "config_disk")]
        config_sha256: Option<String>,
        /// Print JSON ({"config_sha256", "rtmr3", "log"}) instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct CcelArgs {
    /// Event-log area, binary (in a TD: /sys/firmware/acpi/tables/data/CCEL).
    #[arg(long)]
    log: PathBuf,
    /// ACPI CCEL table (in a TD: /sys/firmware/acpi/tables/CCEL); bounds the area to its LAML.
    #[arg(long)]
    acpi_table: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RuntimeArgs {
    /// cocoon RTMR3 log, JSON (in a TD: /run/cocoon/rtmr3-log.json).
    #[arg(long)]
    log: PathBuf,
    /// Quote whose RTMR3 the log must replay to (binary, or hex text with --hex). Not verified
    /// here: use `quote verify` for that.
    #[arg(long)]
    quote: Option<PathBuf>,
    /// The quote file is hex text.
    #[arg(long, requires = "quote")]
    hex: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: EventlogCmd) -> Result<Exit, Unusable> {
    match cmd {
        EventlogCmd::Replay { src, json } => replay(&src, json),
        EventlogCmd::Show { src } => show(&src),
        EventlogCmd::Runtime(args) => runtime(&args),
        EventlogCmd::ExpectConfig {
            config_disk,
            config_sha256,
            json,
        } => {
            let sha256 = match (config_disk, config_sha256) {
                (Some(path), _) => {
                    use sha2::Digest as _;
                    sha2::Sha256::digest(read(&path)?).into()
                }
                (None, Some(hex)) => measurements::parse_hex_array::<32>(&hex, "config sha256")?,
                (None, None) => {
                    return Err(Unusable("give --config-disk or --config-sha256".into()))
                }
            };
            expect_config(sha256, json)
        }
    }
}

fn expect_config(sha256: [u8; 32], as_json: bool) -> Result<Exit, Unusable> {
    let mut log = RuntimeLog::default();
    log.append(measurements::runtime_log::RuntimeEvent::config(sha256));
    let rtmr3 = hex::encode(log.replay());
    if as_json {
        let log_json: serde_json::Value = serde_json::from_str(&log.to_json())?;
        println!(
            "{}",
            json!({"config_sha256": hex::encode(sha256), "rtmr3": rtmr3, "log": log_json})
        );
    } else {
        println!("config sha256  {}", hex::encode(sha256));
        println!("rtmr3          {rtmr3}");
    }
    Ok(Exit::Accepted)
}

fn load_ccel(src: &CcelArgs) -> Result<(EventLog, Option<CcelTable>), Unusable> {
    let area = read(&src.log)?;
    let table = match &src.acpi_table {
        Some(p) => Some(CcelTable::parse(&read(p)?).map_err(|e| at(p, e))?),
        None => None,
    };
    let log = match &table {
        Some(t) => eventlog::parse_with_table(&area, t),
        None => eventlog::parse(&area),
    }
    .map_err(|e| at(&src.log, e))?;
    Ok((log, table))
}

fn at(path: &Path, e: impl std::fmt::Display) -> Unusable {
    Unusable(format!("{}: {e}", path.display()))
}

/// Writes the output; a closed pipe (`… | head`) is not an error.
fn emit(text: &str) -> Result<(), Unusable> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Unusable(format!("cannot write output: {e}")))
        }
        _ => Ok(()),
    }
}

fn rtmr_lines(rtmr: &[Sha384; 4]) -> String {
    rtmr.iter()
        .enumerate()
        .map(|(i, r)| format!("rtmr{i}: {}\n", hex::encode(r)))
        .collect()
}

fn replay(src: &CcelArgs, as_json: bool) -> Result<Exit, Unusable> {
    let (log, _) = load_ccel(src)?;
    let rtmr = log.replay();
    let mut o = String::new();
    if as_json {
        let out = json!({
            "rtmr": rtmr.iter().map(hex::encode).collect::<Vec<_>>(),
            "events": log.events.len(),
        });
        writeln!(o, "{}", serde_json::to_string(&out)?)?;
    } else {
        writeln!(o, "events: {}", log.events.len())?;
        o.push_str(&rtmr_lines(&rtmr));
    }
    emit(&o)?;
    Ok(Exit::Accepted)
}

fn show(src: &CcelArgs) -> Result<Exit, Unusable> {
    let (log, table) = load_ccel(src)?;
    let mut o = String::new();
    if let Some(t) = &table {
        let kind = if t.cc_type == CC_TYPE_TDX {
            "tdx"
        } else {
            "not tdx"
        };
        writeln!(
            o,
            "ccel table: cc type {} ({kind}), subtype {}, log area {:#x} bytes at {:#x}",
            t.cc_type, t.cc_subtype, t.laml, t.lasa
        )?;
    }
    let s = &log.spec_id;
    let algs: Vec<String> = s
        .algorithms
        .iter()
        .map(|a| format!("{:#06x}/{}", a.alg_id, a.digest_size))
        .collect();
    writeln!(
        o,
        "spec id event: version {}.{} errata {}, algorithms {}, vendor info {:?}",
        s.spec_version_major,
        s.spec_version_minor,
        s.spec_errata,
        algs.join(" "),
        String::from_utf8_lossy(&s.vendor_info)
    )?;
    let mut mismatches = 0;
    for (i, ev) in log.events.iter().enumerate() {
        let target = match ev.rtmr_index() {
            Some(r) => format!("rtmr{r}"),
            None => "-".to_owned(),
        };
        let check = ev.check_digest();
        if matches!(check, DigestCheck::Mismatch { .. }) {
            mismatches += 1;
        }
        writeln!(
            o,
            "{i:>3} mr{} {target:<5} {:<33} {}… {} [{check}]",
            ev.mr_index,
            ev.type_name(),
            &hex::encode(ev.sha384)[..16],
            ev.describe(),
        )?;
    }
    writeln!(
        o,
        "events: {}, log ends at offset {:#x}",
        log.events.len(),
        log.end.offset()
    )?;
    o.push_str(&rtmr_lines(&log.replay()));
    if mismatches > 0 {
        writeln!(
            o,
            "rejected: {mismatches} event digest(s) contradict their data"
        )?;
    }
    emit(&o)?;
    Ok(if mismatches > 0 {
        Exit::Rejected
    } else {
        Exit::Accepted
    })
}

fn runtime(args: &RuntimeArgs) -> Result<Exit, Unusable> {
    let log = RuntimeLog::from_json(&read(&args.log)?).map_err(|e| at(&args.log, e))?;
    let rtmr3 = log.replay();
    let quote_rtmr3 = match &args.quote {
        Some(q) => Some(read_quote(q, args.hex)?.1.report.registers.rtmr[3]),
        None => None,
    };
    let verdict = quote_rtmr3.map(|q| log.check(&q));
    let mut o = String::new();
    if args.json {
        let out = json!({
            "rtmr3": hex::encode(rtmr3),
            "events": log.events.len(),
            "config": log.config_digest().map(hex::encode),
            "quote_rtmr3": quote_rtmr3.map(hex::encode),
            "verdict": verdict.as_ref().map(|v| if v.is_ok() { "match" } else { "mismatch" }),
            "reason": verdict.as_ref().and_then(|v| v.as_ref().err()).map(|e| e.to_string()),
        });
        writeln!(o, "{}", serde_json::to_string(&out)?)?;
    } else {
        for (i, ev) in log.events.iter().enumerate() {
            let payload = if ev.payload.len() <= 48 {
                hex::encode(&ev.payload)
            } else {
                format!("{} bytes", ev.payload.len())
            };
            writeln!(
                o,
                "{i:>3} {:<20} digest {}… payload {payload}",
                ev.name,
                &hex::encode(ev.digest())[..16]
            )?;
        }
        writeln!(o, "events: {}", log.events.len())?;
        if let Some(c) = log.config_digest() {
            writeln!(o, "config sha256: {}", hex::encode(c))?;
        }
        writeln!(o, "rtmr3: {}", hex::encode(rtmr3))?;
        match &verdict {
            Some(Ok(())) => writeln!(o, "match: the quote's rtmr3 equals the replayed log")?,
            Some(Err(e)) => writeln!(o, "rejected: {e}")?,
            None => {}
        }
    }
    emit(&o)?;
    Ok(match verdict {
        Some(Err(_)) => Exit::Rejected,
        _ => Exit::Accepted,
    })
}
