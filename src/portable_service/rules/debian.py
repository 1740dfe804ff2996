"""Facts about the Debian archive and its packages that pinned builds rely on, stated once."""

from __future__ import annotations

# The archive's signing keys, as the debian-archive-keyring package installs them.
ARCHIVE_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# Releases without -updates and -security suites (everything else has both, since 11)
NO_UPDATES = ("sid", "unstable", "experimental", "rc-buggy")


def suites(release: str, mirror: str, security_mirror: str) -> list[tuple[str, str]]:
    """(archive URL, suite) a release's packages come from: the release, its stable
    updates and its security updates (as a Debian system's sources.list has them)."""
    if release in NO_UPDATES:
        return [(mirror, release)]
    return [(mirror, release), (mirror, f"{release}-updates"),
            (security_mirror, f"{release}-security")]
COMPONENTS = ("main",)

# Debian 12 and later are merged-/usr (debootstrap's default since 11): these top folders
# are links into /usr, and a package's /lib/x lands in /usr/lib/x.
MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")

# dpkg's architecture name -> systemd's (os-release ARCHITECTURE=, systemd-analyze
# architectures) and the ELF e_machine its programs carry.
SYSTEMD_ARCH = {
    "amd64": "x86-64", "arm64": "arm64", "armhf": "arm", "i386": "x86", "riscv64": "riscv64",
    "ppc64el": "ppc64-le", "s390x": "s390x", "loong64": "loongarch64",
}
ELF_MACHINE = {
    "amd64": 62, "arm64": 183, "armhf": 40, "i386": 3, "riscv64": 243, "ppc64el": 21,
    "s390x": 22, "loong64": 258,
}
# os.uname().machine -> dpkg's name
DPKG_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "i386", "i386": "i386",
             "armv7l": "armhf", "riscv64": "riscv64", "ppc64le": "ppc64el", "s390x": "s390x",
             "loongarch64": "loong64"}


def host_dpkg_arch() -> str:
    import os

    machine = os.uname().machine
    return DPKG_ARCH.get(machine, machine)

# The package that ships libnss_systemd.so.2 (closure.runtime.NSS_SYSTEMD): a pinned build
# of a service resolves it with the spec's packages, as the host build takes the host's.
NSS_PACKAGE = "libnss-systemd"
# The package that ships C.UTF-8 (/usr/lib/locale/C.utf8, closure.runtime's locale rule).
LOCALE_PACKAGE = "libc-bin"
# The package that ships /usr/share/zoneinfo: a pinned build whose units name a time zone
# (Environment=TZ=, PassEnvironment=TZ) resolves it, as the host build takes the host's.
TZ_PACKAGE = "tzdata"
# Every locale compiled (/usr/lib/locale): what a pinned build names for another locale
# than C.UTF-8 (nothing runs locale-gen in its root).
LOCALES_PACKAGE = "locales-all"
# The CA certificates: every pinned build resolves them, and its root gets the store the
# package's maintainer script would make (builder/repo/cacerts.py); the host's never counts.
CA_PACKAGE = "ca-certificates"
