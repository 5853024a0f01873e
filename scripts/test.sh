#!/usr/bin/env bash
# README command 2: set up, then run the test suite. Extra args go to pytest.
source "$(dirname "$0")/setup.sh"
# The report's browser test needs Chromium: install it once where apt-get can (~1 min); elsewhere that test skips.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
    echo "test: installing chromium for tests/test_report_browser.py (once, ~1 min)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
        || echo "test: could not install chromium (not root? offline?); the browser test will skip"
fi
python -m pytest "$@"
