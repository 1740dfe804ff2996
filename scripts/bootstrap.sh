#!/bin/bash
# Install what building and testing need on a fresh Debian-like machine (idempotent).
#   scripts/bootstrap.sh          the package in .venv, plus squashfs-tools
#   scripts/bootstrap.sh --test   also the test tools: debootstrap, systemd-nspawn, udev,
#                                 gcc, nix-bin, erofs-utils, libnss-systemd, ca-certificates, tzdata, perl,
#                                 squashfs-tools-ng (gensquashfs, for the benchmarks),
#                                 ruby, python3-venv, the Python test extras, the Debian
#                                 servers the packaged tests build (lighttpd, nginx,
#                                 redis-server, dnsmasq, unbound, postgresql), installed
#                                 stopped and disabled, and the services of the corpus
#                                 (tests/corpus/) with the virtualenv its Python app uses
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=${1:-}

need_pkgs=()
servers=()  # Debian servers the packaged tests build from
have() { command -v "$1" >/dev/null 2>&1; }
installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }
have mksquashfs || need_pkgs+=(squashfs-tools)
if [[ $want_test == --test ]]; then
  have debootstrap || need_pkgs+=(debootstrap)
  have systemd-nspawn || need_pkgs+=(systemd-container)
  [[ -x /lib/systemd/systemd-udevd ]] || need_pkgs+=(udev)
  [[ -x /usr/sbin/lighttpd ]] || servers+=(lighttpd)
  [[ -x /usr/sbin/nginx ]] || servers+=(nginx)
  [[ -e /usr/bin/redis-server ]] || servers+=(redis-server)
  [[ -x /usr/sbin/dnsmasq ]] || servers+=(dnsmasq)
  [[ -x /usr/sbin/unbound ]] || servers+=(unbound)
  compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || servers+=(postgresql)
  need_pkgs+=("${servers[@]}")
  have gcc || need_pkgs+=(gcc libc6-dev)
  have nix-store || need_pkgs+=(nix-bin)
  have patchelf || need_pkgs+=(patchelf)                   # the loader property test sets RPATH/RUNPATH
  have gensquashfs || need_pkgs+=(squashfs-tools-ng)       # benchmarks/squashfs_bench.py compares with it
  have unshare || need_pkgs+=(util-linux)
  [[ -x /usr/bin/python3 ]] || need_pkgs+=(python3)        # closure tests ship Debian's python3
  have mkfs.ext4 || need_pkgs+=(e2fsprogs)                 # verify names ext4 images
  have mkfs.erofs || need_pkgs+=(erofs-utils)  # writer = "erofs"; fsck.erofs reads erofs back
  [[ -x /usr/sbin/veritysetup ]] || need_pkgs+=(cryptsetup-bin)  # hash trees are checked against it
  have softhsm2-util || need_pkgs+=(softhsm2)                # a PKCS#11 token for the signing tests
  installed libengine-pkcs11-openssl || need_pkgs+=(libengine-pkcs11-openssl)  # openssl reaches it
  [[ -e /usr/include/lzo/lzo1x.h ]] || need_pkgs+=(liblzo2-dev)  # python-lzo builds against it
  # run-time needs (closure/runtime.py): dynamic users, CA certificates, time zones, perl
  ls /usr/lib/*/libnss_systemd.so.2 >/dev/null 2>&1 || need_pkgs+=(libnss-systemd)
  [[ -e /etc/ssl/certs/ca-certificates.crt ]] || need_pkgs+=(ca-certificates)
  have openssl || need_pkgs+=(openssl)
  have gpg || need_pkgs+=(gpg)        # publish --gpg-key signs SHA256SUMS (tests/deploy, e2e/test_fleet.py)
  [[ -e /usr/share/zoneinfo/Europe/Berlin ]] || need_pkgs+=(tzdata)
  [[ -x /usr/bin/perl ]] || need_pkgs+=(perl)
  [[ -x /usr/bin/ruby ]] || need_pkgs+=(ruby)
  dpkg -s python3-venv >/dev/null 2>&1 || need_pkgs+=(python3-venv)       # the virtualenv test
  # the end-to-end harness: signed Debian roots, and statically linked test servers
  [[ -e /usr/share/keyrings/debian-archive-keyring.gpg ]] || need_pkgs+=(debian-archive-keyring)
  # pinned builds (builder/repo): apt resolves, gpgv checks the archive's signature
  have gpgv || need_pkgs+=(gpgv)
  have apt-get || need_pkgs+=(apt)
  { have gcc && [[ $(gcc -print-file-name=libc.a) == /* ]]; } || need_pkgs+=(libc6-dev)
  # the corpus (tests/corpus/): real services packaged from Debian, built into images
  for pkg in postgresql-15 caddy; do  # the rest is installed above
    installed "$pkg" || need_pkgs+=("$pkg")
  done
  have node || need_pkgs+=(nodejs)
  have groff || need_pkgs+=(groff-base)                   # the man page renders without warnings
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
  # the servers are build inputs only: not started at the next boot either (dnsmasq and
  # unbound would take port 53)
  for unit in "${servers[@]}"; do
    systemctl disable --quiet "$unit" 2>/dev/null || true
  done
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
