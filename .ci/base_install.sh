#!/usr/bin/env bash
# CI, second step: the base install (pip install mmsent: no PyTorch) predicts from an exported model folder as the
# run it came from does. The full environment (.venv, from 'make test') trains a tiny run on generated data, exports
# it and predicts; a fresh virtual environment with the base install only predicts from the export; the two agree.
set -euo pipefail
cd "$(dirname "$0")/.."
FULL="${VENV:-.venv}/bin"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export MMSENT_CACHE_DIR="$WORK/cache"
"$FULL/python" .ci/export_fixture.py "$WORK"
python3 -m venv "$WORK/base"
"$WORK/base/bin/pip" install --quiet --upgrade pip
"$WORK/base/bin/pip" install --quiet .
if "$WORK/base/bin/pip" show torch >/dev/null 2>&1; then
    echo "base install: pip pulled torch into it" >&2
    exit 1
fi
"$WORK/base/bin/mmsent" predict --run "$WORK/model" --data "$WORK/data" --out "$WORK/export.csv"
"$WORK/base/bin/mmsent" predict --run "$WORK/model" --text "what a great day" --json
"$FULL/python" .ci/export_fixture.py "$WORK" --compare "$WORK/run.csv" "$WORK/export.csv"
echo "base install: $(du -sh "$WORK/base" | cut -f1) (the full environment: $(du -sh "${VENV:-.venv}" | cut -f1))"
