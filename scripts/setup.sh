#!/usr/bin/env bash
# Installs whatever the lab, the broker and the tests need and is not there yet.
# Idempotent: every step checks before it acts, so a second run is quick.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

DEBIAN_PACKAGES=(
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config gcc
  qemu-system-x86 qemu-utils
  slapd ldap-utils
  chromium fonts-noto-cjk
  busybox-static linux-image-amd64 cpio e2fsprogs debootstrap
  openssh-server openssl iproute2 procps
  postgresql haproxy
  tigervnc-standalone-server tigervnc-tools openbox xterm mousepad xclip ibus ibus-hangul locales
  x11-utils fonts-dejavu-core
  python3-apt python3-venv
  prometheus
  xfwm4 xfce4-panel xfce4-terminal ibus-gtk3 dbus-bin dbus-daemon libglib2.0-bin adwaita-icon-theme
)

missing_packages() {
  local pkg
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || echo "$pkg"
  done
  # Node.js may come from another source that bundles npm; only ask Debian for it when absent.
  command -v npm >/dev/null || echo "nodejs npm"
}

install_debian_packages() {
  local missing
  missing=$(missing_packages)
  if [ -z "$missing" ]; then
    log "Debian packages present"
    return
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "setup: these Debian packages are missing and installing them needs root: $missing" >&2
    exit 1
  fi
  log "installing Debian packages: $(echo $missing | tr '\n' ' ')"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  without_prometheus_service apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# The prometheus package is here for promtool (the alert rule tests); its server must not start or stay enabled.
without_prometheus_service() {
  local policy=/usr/sbin/policy-rc.d made_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n[ "$1" = prometheus ] && exit 101\nexit 0\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  "$@" || { [ -z "$made_policy" ] || rm -f "$policy"; return 1; }
  [ -z "$made_policy" ] || rm -f "$policy"
  if [ -d /run/systemd/system ] && systemctl is-enabled --quiet prometheus 2>/dev/null; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
}

prepare_libvirt_host() {
  # Debian's libvirt-daemon-system would create these; we install the daemon without systemd units.
  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
  getent passwd libvirt-qemu >/dev/null || useradd --system --gid libvirt-qemu --home-dir /var/lib/libvirt \
    --shell /usr/sbin/nologin libvirt-qemu
  getent group kvm >/dev/null && usermod -a -G kvm libvirt-qemu || true
  mkdir -p /var/log/libvirt /var/lib/libvirt /var/cache/smartwork-vdi
}

korean_locale() {
  # The session hosts' desktops run in ko_KR.UTF-8 (the lab's hosts share the machine's locale archive).
  if locale -a 2>/dev/null | grep -qix 'ko_KR\.utf-\?8'; then
    log "ko_KR.UTF-8 locale present"
    return
  fi
  log "generating the ko_KR.UTF-8 locale"
  sed -i 's/^# *ko_KR.UTF-8 UTF-8/ko_KR.UTF-8 UTF-8/' /etc/locale.gen
  grep -q '^ko_KR.UTF-8 UTF-8' /etc/locale.gen || echo 'ko_KR.UTF-8 UTF-8' >> /etc/locale.gen
  locale-gen >/dev/null
}

python_venv() {
  local key stamp
  # Exactly the locked set: requirements.lock pins every package with its hashes (docs/development.md).
  key=$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)
  stamp=".venv/.installed-$key"
  if [ -f "$stamp" ]; then
    log "Python environment up to date"
    return
  fi
  log "installing the locked Python dependencies into .venv (requirements.lock, hashes checked)"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --require-hashes --no-deps -r requirements.lock
  # The checkout itself, editable; its dependencies are the lock's, and it builds with the locked setuptools.
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  rm -f .venv/.installed-*
  touch "$stamp"
}

novnc() {
  local key stamp
  key=$(cat package.json package-lock.json | sha256sum | cut -c1-16)
  stamp="node_modules/.installed-$key"
  if [ -f "$stamp" ]; then
    log "noVNC present"
    return
  fi
  log "installing noVNC from the npm registry"
  npm ci --no-audit --no-fund --silent
  touch "$stamp"
}

install_debian_packages
prepare_libvirt_host
korean_locale
python_venv
novnc
log "building the demo desktop image (cached when unchanged)"
.venv/bin/vdi image build-demo
log "ready"
