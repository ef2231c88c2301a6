#!/bin/sh
# The `voucherstream` command of a development checkout: `make venv` installs it into the shared
# virtualenv (~/.cache/voucherstream/venv-*), which every clone links as .venv. Called through a
# clone's .venv (.venv/bin/voucherstream, or with .venv/bin on PATH), it runs that clone's CLI.
# (An installed package — the image, `pip install .` — has the console script from pyproject.toml.)
clone=$(cd "$(dirname "$0")/../.." && pwd)
if [ -f "$clone/voucherstream/cli.py" ]; then
  PYTHONPATH="$clone${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONPATH
fi
exec "$(dirname "$0")/python" -c 'import sys; sys.argv[0] = "voucherstream"; from voucherstream.cli import app; app()' "$@"
