#!/usr/bin/env bash
# Installs everything the test suite needs when it is missing, then runs all of it:
# ruff, mypy, and pytest (unit, integration with real servers, promtool). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages providing real components the tests use (command -> package).
declare -A APT_FOR=(
    [promtool]=prometheus
    [prometheus]=prometheus
    [prometheus-alertmanager]=prometheus-alertmanager
    [haproxy]=haproxy
    # The Docker source and the container image tests: a real engine, busybox for the target
    # containers, debootstrap for the stand-in python base image, docker-compose to validate the
    # README's compose file.
    [dockerd]=docker.io
    [busybox]=busybox-static
    [debootstrap]=debootstrap
    [docker-compose]=docker-compose
    [dnsmasq]=dnsmasq-base
    [chromium]=chromium
)

install_debian_packages() {
    local missing=() cmd sudo=""
    for cmd in "${!APT_FOR[@]}"; do
        # /usr/sbin is not on every user's PATH (haproxy lives there).
        PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 || missing+=("${APT_FOR[$cmd]}")
    done
    # A package named twice (prometheus, promtool) is installed once.
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "need root (or sudo) to apt-get install ${missing[*]}" >&2; return 1; }
        sudo="sudo -n"
    fi
    echo "installing Debian packages: ${missing[*]}" >&2
    # Keep the packages' services from starting (we run our own instances on loopback).
    local policy=/usr/sbin/policy-rc.d added_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod +x "$policy" && added_policy=1
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ -n "$added_policy" ] && $sudo rm -f "$policy"
    return 0
}

install_debian_packages

if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

.venv/bin/ruff check exporter tests bench
.venv/bin/ruff format --check exporter tests bench
.venv/bin/mypy
exec .venv/bin/pytest "$@"
