#!/usr/bin/env bash
# Installs what `make bench` needs beyond the Python environment, on a fresh Debian 12 machine: the C++
# toolchain and gRPC/protobuf development packages for the stand-in Hubble server (bench/standin/).
# Not used by `make test`. Idempotent: does nothing once every tool is present.
set -euo pipefail
have_all() {
  command -v g++ >/dev/null && command -v protoc >/dev/null && command -v grpc_cpp_plugin >/dev/null \
    && pkg-config --exists grpc++ protobuf
}
if have_all; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
echo "install-bench-deps: installing g++, pkg-config, libgrpc++-dev, protobuf-compiler-grpc (Debian)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
  g++ make pkg-config libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc >/dev/null
have_all
