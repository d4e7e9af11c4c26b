#!/usr/bin/env bash
# Run every fuzz target for a fixed number of iterations, seeded from
# fuzz/corpus/<target>/ (copies of the golden fixtures). Found inputs go to a
# scratch dir, so the committed corpus stays as it is; a crash is saved under
# fuzz/artifacts/<target>/ and fails this script.
#
#   FUZZ_RUNS=N        iterations per target (default 20000)
#   FUZZ_SANITIZER=S   cargo-fuzz sanitizer (default none: tend-proto forbids
#                      unsafe code; use "address" for the dependencies' unsafe)
#
# Needs cargo-fuzz and a nightly toolchain; without them it says so and exits 0.
set -euo pipefail

cd "$(dirname "$0")/.."

runs="${FUZZ_RUNS:-20000}"
sanitizer="${FUZZ_SANITIZER:-none}"
targets=(frame_decoder exit_file spawn_config spawn_config_setuid policy_parse)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "skipped: cargo-fuzz needs nightly (cargo-fuzz is not installed: cargo install cargo-fuzz)"
    exit 0
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "skipped: cargo-fuzz needs nightly (no nightly toolchain: rustup toolchain install nightly)"
    exit 0
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

for t in "${targets[@]}"; do
    echo "== fuzz $t: $runs runs, sanitizer $sanitizer"
    mkdir -p "$scratch/$t"
    cargo +nightly fuzz run "$t" --sanitizer "$sanitizer" \
        "$scratch/$t" "fuzz/corpus/$t" -- -runs="$runs"
done
echo "fuzz: ${#targets[@]} targets, $runs runs each, no crash"
