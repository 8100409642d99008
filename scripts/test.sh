#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent), then runs pytest offline.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# A real browser for the web page test (Debian's chromium; never a downloaded one).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
    >/dev/null 2>&1 || echo "warning: could not install chromium; browser tests will fail" >&2
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 ANONYMIZED_TELEMETRY=False
export LANGGRAPH_CLI_NO_ANALYTICS=1 LANGGRAPH_NO_VERSION_CHECK=1 LANGSMITH_TRACING=false
export TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check graph nodes store api bench tests
exec .venv/bin/python -m pytest -q "$@"
