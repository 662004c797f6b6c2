#!/usr/bin/env bash
# Set up (first run only) and train the embedded default: PPO on CartPole-v1.
set -euo pipefail
root="$(cd "$(dirname "$0")" && pwd)"
"$root/scripts/bootstrap.sh"
exec "$root/.venv/bin/policyopt" train ppo --env CartPole-v1 "$@"
