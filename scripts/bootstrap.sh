#!/bin/bash
# Install what building and testing need on a fresh Debian-like machine (idempotent).
#   scripts/bootstrap.sh          the package in .venv, plus squashfs-tools
#   scripts/bootstrap.sh --test   also the test tools: debootstrap, systemd-nspawn, udev,
#                                 lighttpd, gcc, nix-bin and the Python test extras, and the
#                                 services of the corpus (tests/corpus/) with the
#                                 virtualenv its Python app is built from
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=${1:-}

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }
have mksquashfs || need_pkgs+=(squashfs-tools)
if [[ $want_test == --test ]]; then
  have debootstrap || need_pkgs+=(debootstrap)
  have systemd-nspawn || need_pkgs+=(systemd-container)
  [[ -x /lib/systemd/systemd-udevd ]] || need_pkgs+=(udev)
  have lighttpd || [[ -x /usr/sbin/lighttpd ]] || need_pkgs+=(lighttpd)
  have gcc || need_pkgs+=(gcc libc6-dev)
  have nix-store || need_pkgs+=(nix-bin)
  have unshare || need_pkgs+=(util-linux)
  [[ -x /usr/bin/python3 ]] || need_pkgs+=(python3)        # closure tests ship Debian's python3
  have mkfs.ext4 || need_pkgs+=(e2fsprogs)                 # verify names ext4 images
  [[ -e /usr/include/lzo/lzo1x.h ]] || need_pkgs+=(liblzo2-dev)  # python-lzo builds against it
  # the end-to-end harness: signed Debian roots, and statically linked test servers
  [[ -e /usr/share/keyrings/debian-archive-keyring.gpg ]] || need_pkgs+=(debian-archive-keyring)
  { have gcc && [[ $(gcc -print-file-name=libc.a) == /* ]]; } || need_pkgs+=(libc6-dev)
  # the corpus (tests/corpus/): real services packaged from Debian, built into images
  for pkg in nginx redis-server postgresql-15 caddy dnsmasq-base libnss-systemd python3-venv; do
    installed "$pkg" || need_pkgs+=("$pkg")
  done
  have node || need_pkgs+=(nodejs)
fi
if ((${#need_pkgs[@]})); then
  if [[ $(id -u) != 0 ]]; then
    echo "bootstrap: need root to install: ${need_pkgs[*]} (sudo apt-get install ${need_pkgs[*]})" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # installing a server package must not start it on the build machine
  made_policy=
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  [[ -z $made_policy ]] || rm -f /usr/sbin/policy-rc.d
fi

# the corpus's Python app: a virtualenv of Debian's python3 with waitress from PyPI, made
# where its image carries it, as its users make it
corpus_venv=/opt/portable-service-corpus/pyapp
if [[ $want_test == --test && ! -x $corpus_venv/bin/waitress-serve && $(id -u) == 0 ]]; then
  /usr/bin/python3 -m venv "$corpus_venv"
  "$corpus_venv/bin/pip" install -q --disable-pip-version-check waitress
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
extras=""
[[ $want_test == --test ]] && extras="[test]"
.venv/bin/pip install -q --disable-pip-version-check -e ".${extras}"
