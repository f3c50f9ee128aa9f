#!/usr/bin/env bash
# Trust-core demo: attestation end to end on this machine, without the model.
#  1. cocoon-measure verifies real Intel TDX quotes from ../shared/testdata with their collateral.
#  2. A worker TD and a proxy TD on the simulated TDX platform connect over mutual RA-TLS on
#     loopback; a debug worker, an unknown image and a production-policy peer are refused with
#     named reasons.

set -euo pipefail
cd "$(dirname "$0")/.."
T=../shared/testdata/tdx
[ -d "$T" ] || { echo "demo: $T not found (the shared test data sits beside the repository)"; exit 2; }

# COCOON_PREBUILT=1: ci/test.sh built both already (with the workspace's feature set).
if [ "${COCOON_PREBUILT:-0}" != 1 ]; then
  cargo build -q --release -p cocoon-measurements --bin cocoon-measure
  cargo build -q --release -p cocoon-ratls --example attested_loopback
fi
M=target/x86_64-unknown-linux-gnu/release/cocoon-measure

verify() { # name quote collateral at [flags...]
  local name=$1 quote=$2 coll=$3 at=$4; shift 4
  local hexflag=(); case "$quote" in *.hex) hexflag=(--hex);; esac
  printf '%-44s ' "$name"
  "$M" quote verify --quote "$T/quotes/$quote" "${hexflag[@]}" --collateral "$T/collateral/$coll" --at "$at" "$@" || true
}

echo "== real Intel TDX quotes (production policy: Intel root, UpToDate only) =="
verify "v4 quote, UpToDate platform" dcapqvl_v4_uptodate.quote dcapqvl_v4_uptodate.collateral.json 1752919234
verify "v4 quote (hex), UpToDate platform" near_v4_uptodate.quote.hex near_v4_uptodate.collateral.json 1759388630
verify "OutOfDate platform, default policy" automata_v4_outofdate.quote fmspc_00806f050000_2025-07-07.collateral.json 1754471202
verify "OutOfDate platform, --allow-tcb-status" automata_v4_outofdate.quote fmspc_00806f050000_2025-07-07.collateral.json 1754471202 --allow-tcb-status OutOfDate
verify "platform below every TCB level" gotdx_spr_e4_v4_notcblevel.quote fmspc_50806f000000_2023-06-18.collateral.json 1688173200
verify "UpToDate quote, 60 days later" dcapqvl_v4_uptodate.quote dcapqvl_v4_uptodate.collateral.json 1758103234

echo
echo "== mutual RA-TLS on loopback, simulated TDX platform =="
target/x86_64-unknown-linux-gnu/release/examples/attested_loopback
