#!/usr/bin/env bash
# promtool check config on the shipped fleet scrape config, with everything
# it names: the rules, the file_sd targets, and stand-ins for the two
# secrets an operator provides (the read token and the API's CA).
# Usage: check_scrape_config.sh PROMTOOL CONFIG_DIR
set -euo pipefail
promtool=$1 src=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cp "$src"/*.yml "$dir"/
cp -r "$src"/kvmid-targets "$dir"/
echo "a-read-token" > "$dir"/kvmid-read.token
: > "$dir"/kvmid-ca.pem
"$promtool" check config "$dir"/prometheus.yml
