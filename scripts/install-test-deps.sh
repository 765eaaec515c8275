#!/usr/bin/env bash
# Installs the real tools the test suite runs against, on a fresh Debian 12 machine:
#   - prometheus, promtool and prometheus-alertmanager (Debian packages, bookworm),
#   - kubectl 1.32.3 (kustomize v5.5) from Debian trixie, unpacked into .tools/ (no system change),
#   - chromium (Debian package, bookworm) for the tests that look at pages as a person does,
#   - jq and valgrind (Debian packages), which the benchmarks' smoke runs use.
# Idempotent: a stamp file skips the work once everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="$PWD/.tools"
STAMP="$TOOLS/.deps-v2"
KUBECTL_VERSION="1.32.3+ds-2"

have_all() {
  command -v promtool >/dev/null && command -v prometheus >/dev/null \
    && command -v prometheus-alertmanager >/dev/null && [ -x "$TOOLS/bin/kubectl" ] \
    && command -v chromium >/dev/null && command -v jq >/dev/null && command -v valgrind >/dev/null
}

if [ -f "$STAMP" ] && have_all; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

if ! command -v promtool >/dev/null || ! command -v prometheus-alertmanager >/dev/null \
    || ! command -v chromium >/dev/null || ! command -v jq >/dev/null || ! command -v valgrind >/dev/null; then
  echo "install-test-deps: installing prometheus, prometheus-alertmanager, chromium, jq and valgrind (Debian)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-alertmanager chromium fonts-dejavu-core jq valgrind >/dev/null
fi

if [ ! -x "$TOOLS/bin/kubectl" ]; then
  echo "install-test-deps: fetching kubectl $KUBECTL_VERSION (Debian trixie) into .tools/"
  apt_dir="$TOOLS/apt"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/etc" "$TOOLS/bin" "$TOOLS/root"
  cat > "$apt_dir/etc/trixie.sources" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  apt_opts=(-o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Etc::SourceList=/dev/null"
            -o "Dir::Etc::SourceParts=$apt_dir/etc" -o "Dir::Cache::Archives=$apt_dir/archives"
            -o "Debug::NoLocking=1")
  apt-get "${apt_opts[@]}" update -qq
  (cd "$apt_dir/archives" && apt-get "${apt_opts[@]}" download "kubectl=$KUBECTL_VERSION" >/dev/null)
  dpkg-deb -x "$apt_dir"/archives/kubectl_*.deb "$TOOLS/root"
  ln -sf "$TOOLS/root/usr/bin/kubectl" "$TOOLS/bin/kubectl"
fi

"$TOOLS/bin/kubectl" version --client >/dev/null
mkdir -p "$TOOLS"
touch "$STAMP"
chromium --version >/dev/null
echo "install-test-deps: ready ($(promtool --version 2>&1 | head -1); kubectl $("$TOOLS/bin/kubectl" version --client 2>/dev/null | head -1); $(chromium --version 2>/dev/null))"
