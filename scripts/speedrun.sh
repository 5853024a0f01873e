#!/usr/bin/env bash
# README command 1: set up, then run the whole pipeline on the current params.yaml.
source "$(dirname "$0")/setup.sh"
dvc repro "$@"
echo "report: $PWD/reports/index.html  (card: reports/report.md)"
