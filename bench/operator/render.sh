#!/usr/bin/env bash
# Render benchmark (docs/performance.md): 50,000 TransferUsers with an ed25519 key each,
# resolved and split into users.yaml shards, in release mode. Fails above 2 s.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo test --release -q -p sluice-operator --lib render_50000 -- --ignored --nocapture
