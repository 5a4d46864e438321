#!/usr/bin/env bash
# Installs what m3embed needs on a fresh Debian 12 machine, idempotently:
#  - the build toolchain and the product's libraries, from Debian's packages (apt);
#  - a Python virtualenv with the test oracles from PyPI (requirements-test.txt).
# The virtualenv lives in ~/.cache/m3embed (keyed by the requirements' hash, so CI and
# every checkout on a machine share it) and is linked as .venv in the repository.
# Usage: scripts/setup.sh [--no-venv]
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  build-essential cmake pkg-config git curl
  libdnnl-dev              # oneDNN: GEMMs with fused epilogues (AMX/AVX-512 aware)
  libsentencepiece-dev     # the XLM-R tokenizer model
  libicu-dev               # grapheme clusters for the tokenizer's normalizer
  libzip-dev               # pytorch_model.bin / *.pt are zip archives
  libcurl4-openssl-dev     # hub downloads
  libsimdjson-dev          # config.json, safetensors headers, JSONL input
  libspdlog-dev libfmt-dev # logging, formatting
  libcli11-dev             # command line
  libboost1.81-dev         # Beast/Asio: the HTTP server
  nlohmann-json3-dev       # JSON string escaping in outputs
  libgtest-dev libgmock-dev  # C++ tests
  clang-14 libclang-rt-14-dev  # libFuzzer for the request-parsing fuzz test
  wrk                      # HTTP load generator for bench/
  python3 python3-venv python3-pip  # test oracles (virtualenv)
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

if [ "${1:-}" = "--no-venv" ]; then exit 0; fi

hash=$(sha256sum requirements-test.txt | cut -c1-12)
venv="${M3_VENV_DIR:-$HOME/.cache/m3embed/venv-$hash}"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "setup: creating the test virtualenv in $venv (torch, transformers, FlagEmbedding: this takes a few minutes once)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r requirements-test.txt
  touch "$venv/.complete"
fi
if [ "$(readlink .venv 2>/dev/null)" != "$venv" ]; then
  rm -rf .venv
  ln -s "$venv" .venv
fi
echo "setup: done (virtualenv: .venv -> $venv)"
