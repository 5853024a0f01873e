#!/usr/bin/env bash
# README command 2: set up, then run the test suite. Extra args go to pytest.
source "$(dirname "$0")/setup.sh"
# The browser test needs Chromium and the terminal chat test tmux: install them once where apt-get can
# (~1 min); elsewhere those tests skip.
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/tmux ]; } && command -v apt-get >/dev/null; then
    echo "test: installing chromium and tmux for the browser and terminal tests (once, ~1 min)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium tmux; } >/dev/null 2>&1 \
        || echo "test: could not install chromium/tmux (not root? offline?); those tests will skip"
fi
# Two workers, one per core of the 2-core CI machine, each given whole modules in file order, the long e2e ones
# first (tests/conftest.py schedules them).
python -m pytest -n 2 "$@"
