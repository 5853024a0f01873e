#!/usr/bin/env bash
# README command 2: set up, then run the test suite. Extra args go to pytest.
source "$(dirname "$0")/setup.sh"
python -m pytest "$@"
