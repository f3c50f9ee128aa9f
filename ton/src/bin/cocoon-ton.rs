//! `cocoon-ton`: offline tool for Cocoon's TON messages (decode, sign vouchers, derive addresses).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ed25519_dalek::SigningKey;
use ton::address::{Addr, Coins, FriendlyFlags};
use ton::boc;
use ton::contracts::{ClientData, ContractKind, ProxyData, WorkerData};
use ton::messages::signed::{build_signed, SignedOp, SignedPayload};
use ton::params::{Multipliers, ParamsV3};

/// Exit codes of `cocoon-ton`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum TonExitCode {
    /// Success.
    Ok = 0,
    /// Bad input (argument, hex, BOC or unknown layout); the message says which.
    BadInput = 2,
}

/// Offline tool for Cocoon's TON payment messages. Prints results on stdout; errors on stderr
/// with exit code 2.
#[derive(Debug, Parser)]
#[command(name = "cocoon-ton", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Explain a cocoon message body, contract data cell, params cell or contract code (BOC hex)
    /// as JSON; the "layout" field says which layout matched.
    Decode {
        /// The BOC, hex.
        hex_boc: String,
    },
    /// Sign a voucher with the proxy key and print the message body as BOC hex.
    Voucher {
        /// Voucher kind.
        kind: VoucherKind,
        /// Proxy key seed (Ed25519 secret key), 64 hex digits.
        #[arg(long, value_parser = parse_seed)]
        seed: [u8; 32],
        /// The receiving contract (client for charge/grant-refund, worker for payouts), raw or
        /// user-friendly.
        #[arg(long, value_parser = parse_addr)]
        to: Addr,
        /// Cumulative token count.
        #[arg(long)]
        tokens: u64,
        /// Query id.
        #[arg(long)]
        qid: u64,
        /// Where the contract sends excess value.
        #[arg(long, value_parser = parse_addr)]
        excess: Addr,
    },
    /// Derive a contract address from its initial data (with the embedded, hash-pinned code).
    Address {
        #[command(subcommand)]
        kind: AddressKind,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum VoucherKind {
    /// 0xbb63ff93, to a client contract.
    Charge,
    /// 0xa040ad28, to a worker contract.
    Payout,
    /// 0xefd711e1, to a client contract (closes it).
    GrantRefund,
    /// 0xf5f26a36, to a worker contract (closes it).
    LastPayout,
}

#[derive(Debug, Subcommand)]
enum AddressKind {
    /// Proxy contract: owner, proxy public key, root; params embed worker and client code.
    Proxy {
        /// Proxy owner address.
        #[arg(long, value_parser = parse_addr)]
        owner: Addr,
        /// Proxy public key Kp, 64 hex digits.
        #[arg(long, value_parser = parse_seed)]
        pubkey: [u8; 32],
        /// Root contract address.
        #[arg(long, value_parser = parse_addr)]
        root: Addr,
        #[command(flatten)]
        params: ParamsArgs,
    },
    /// Client contract: owner, proxy contract, proxy public key, stake (default
    /// min_client_stake); params without code.
    Client {
        /// Client owner address.
        #[arg(long, value_parser = parse_addr)]
        owner: Addr,
        /// Proxy contract address.
        #[arg(long, value_parser = parse_addr)]
        proxy: Addr,
        /// Proxy public key Kp, 64 hex digits.
        #[arg(long, value_parser = parse_seed)]
        pubkey: [u8; 32],
        /// Initial stake in nanotons (default: --min-client-stake).
        #[arg(long)]
        stake: Option<u128>,
        #[command(flatten)]
        params: ParamsArgs,
    },
    /// Worker contract: owner, proxy contract, proxy public key; params without code.
    Worker {
        /// Worker owner address.
        #[arg(long, value_parser = parse_addr)]
        owner: Addr,
        /// Proxy contract address.
        #[arg(long, value_parser = parse_addr)]
        proxy: Addr,
        /// Proxy public key Kp, 64 hex digits.
        #[arg(long, value_parser = parse_seed)]
        pubkey: [u8; 32],
        #[command(flatten)]
        params: ParamsArgs,
    },
}

/// Params v3 fields (defaults are those of the reference flow in testdata/ton/reference/flow.js).
#[derive(Debug, Args)]
struct ParamsArgs {
    /// params_version.
    #[arg(long, default_value_t = 1)]
    params_version: u32,
    /// unique_id.
    #[arg(long, default_value_t = 12345)]
    unique_id: u32,
    /// is_test flag.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    is_test: bool,
    /// Price per token, nanotons.
    #[arg(long, default_value_t = 1000)]
    price_per_token: u128,
    /// Worker fee per token, nanotons.
    #[arg(long, default_value_t = 400)]
    worker_fee_per_token: u128,
    /// Prompt multiplier (10000 = 1.0).
    #[arg(long, default_value_t = 10000)]
    prompt_multiplier: u32,
    /// Cached-prompt multiplier.
    #[arg(long, default_value_t = 1000)]
    cached_multiplier: u32,
    /// Completion multiplier.
    #[arg(long, default_value_t = 10000)]
    completion_multiplier: u32,
    /// Reasoning multiplier.
    #[arg(long, default_value_t = 10000)]
    reasoning_multiplier: u32,
    /// Seconds.
    #[arg(long, default_value_t = 3600)]
    proxy_delay_before_close: u32,
    /// Seconds.
    #[arg(long, default_value_t = 86400)]
    client_delay_before_close: u32,
    /// Nanotons.
    #[arg(long, default_value_t = 1_000_000_000)]
    min_proxy_stake: u128,
    /// Nanotons.
    #[arg(long, default_value_t = 1_000_000_000)]
    min_client_stake: u128,
}

impl ParamsArgs {
    fn params(&self) -> ParamsV3 {
        ParamsV3 {
            params_version: self.params_version,
            unique_id: self.unique_id,
            is_test: self.is_test,
            price_per_token: Coins::from_nano(self.price_per_token),
            worker_fee_per_token: Coins::from_nano(self.worker_fee_per_token),
            multipliers: Multipliers {
                prompt: self.prompt_multiplier,
                cached: self.cached_multiplier,
                completion: self.completion_multiplier,
                reasoning: self.reasoning_multiplier,
            },
            proxy_delay_before_close: self.proxy_delay_before_close,
            client_delay_before_close: self.client_delay_before_close,
            min_proxy_stake: Coins::from_nano(self.min_proxy_stake),
            min_client_stake: Coins::from_nano(self.min_client_stake),
            proxy_code: None,
            worker_code: None,
            client_code: None,
        }
    }
}

fn parse_seed(s: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|e| format!("expected 64 hex digits: {e}"))?;
    Ok(out)
}

fn parse_addr(s: &str) -> Result<Addr, String> {
    Addr::parse_any(s).map_err(|e| e.to_string())
}

fn run(cli: Cli) -> Result<String, String> {
    match cli.cmd {
        Cmd::Decode { hex_boc } => {
            let cell = boc::decode_hex(&hex_boc).map_err(|e| e.to_string())?;
            let v = ton::explain::explain(&cell).ok_or_else(|| {
                format!(
                    "cell {}: matches no known cocoon layout",
                    hex::encode(cell.hash())
                )
            })?;
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())
        }
        Cmd::Voucher {
            kind,
            seed,
            to,
            tokens,
            qid,
            excess,
        } => {
            let op = match kind {
                VoucherKind::Charge => SignedOp::Charge,
                VoucherKind::Payout => SignedOp::Payout,
                VoucherKind::GrantRefund => SignedOp::GrantRefund,
                VoucherKind::LastPayout => SignedOp::LastPayout,
            };
            let key = SigningKey::from_bytes(&seed);
            let p = SignedPayload {
                op,
                qid,
                tokens: Some(tokens),
                expected_address: to,
            };
            let body = build_signed(&key, &p, &excess).map_err(|e| e.to_string())?;
            Ok(boc::encode_hex(&body))
        }
        Cmd::Address { kind } => {
            let addr = match kind {
                AddressKind::Proxy {
                    owner,
                    pubkey,
                    root,
                    params,
                } => {
                    let pp = params
                        .params()
                        .for_proxy(ContractKind::Worker.code(), ContractKind::Client.code());
                    ProxyData::initial(owner, pubkey, root, pp)
                        .state_init()
                        .and_then(|s| s.address())
                }
                AddressKind::Client {
                    owner,
                    proxy,
                    pubkey,
                    stake,
                    params,
                } => {
                    let p = params.params();
                    let stake = stake.map(Coins::from_nano).unwrap_or(p.min_client_stake);
                    ClientData::initial(owner, proxy, pubkey, stake, p)
                        .state_init()
                        .and_then(|s| s.address())
                }
                AddressKind::Worker {
                    owner,
                    proxy,
                    pubkey,
                    params,
                } => WorkerData::initial(owner, proxy, pubkey, params.params())
                    .state_init()
                    .and_then(|s| s.address()),
            }
            .map_err(|e| e.to_string())?;
            let f = |bounceable, testnet| {
                addr.to_friendly(FriendlyFlags {
                    bounceable,
                    testnet,
                })
            };
            let v = serde_json::json!({ "raw": addr.to_string(), "bounceable": f(true, false),
                "non_bounceable": f(false, false), "bounceable_testnet": f(true, true), "non_bounceable_testnet": f(false, true) });
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(TonExitCode::BadInput as u8)
            } else {
                ExitCode::from(TonExitCode::Ok as u8)
            };
        }
    };
    match run(cli) {
        Ok(out) => {
            println!("{out}");
            ExitCode::from(TonExitCode::Ok as u8)
        }
        Err(e) => {
            eprintln!("cocoon-ton: {e}");
            ExitCode::from(TonExitCode::BadInput as u8)
        }
    }
}
