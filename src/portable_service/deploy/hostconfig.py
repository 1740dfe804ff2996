"""host-config: the files a host needs to follow a download folder that ``publish`` keeps.

Written as a tree under a folder, for any configuration management to copy to ``/``:

- ``etc/sysupdate.<pname>.d/50-<pname>.transfer`` (and one per verity sidecar): systemd's own
  updater fetches ``<pname>_@v.raw`` from the URL into /var/lib/portables, checks it against
  SHA256SUMS (and SHA256SUMS.gpg with Verify=yes) and keeps ``InstancesMax=`` versions, the
  one before the newest being the rollback. A component of its own, because all transfers of
  one folder move to one version together: the host's /etc/sysupdate.d (its OS) is not ours.
- ``usr/lib/portable-service/update-<pname>``: asks sysupdate for a new version, fetches it,
  ``portablectl reattach --now --enable``s it (attach, the first time), watches the attached
  units for a while, and reattaches the version before when they do not come up; the broken
  version is remembered and never taken again.
- ``etc/systemd/system/<pname>-update.service`` and ``.timer`` (enabled by a link in
  ``timers.target.wants``) that run it.
- with ``--keyring``: ``etc/systemd/import-pubring.gpg``, the keyring systemd-pull verifies
  SHA256SUMS.gpg with (it replaces /usr/lib/systemd/import-pubring.gpg for every download).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from portable_service.errors import PortableServiceError
from portable_service.rules import sysupdate
from portable_service.rules.portabled import image_prefix
from portable_service.rules.verity import SIDECAR_SUFFIXES as VERITY_SIDECARS
from portable_service.rules.verity import sidecar_names
from portable_service.run import find_tool, run

IMAGES_DIR = "/var/lib/portables"  # where portablectl finds images by name
SCRIPT_DIR = "/usr/lib/portable-service"
STATE_DIR = "/var/lib/portable-service"
# the drop-in portabled writes beside each attached unit: RootImage= names the image
PORTABLE_DROP_IN = "20-portable.conf"
_URL = re.compile(r"https?://[^\s/]+(/\S*)?")
_TIME = re.compile(r"[0-9]+(us|ms|s|sec|m|min|h|hr|d|w)?( ?[0-9]+(us|ms|s|sec|m|min|h|hr|d|w)?)*")
_PROFILE = re.compile(r"[A-Za-z0-9_-]+")


class HostConfigError(PortableServiceError):
    """The host configuration cannot be written as asked."""


@dataclass(frozen=True)
class HostFile:
    """One file of the tree: a path below DIR, its bytes and mode, or a symlink target."""

    path: PurePosixPath
    data: bytes = b""
    mode: int = 0o644
    link: str | None = None


@dataclass(frozen=True)
class HostSettings:
    pname: str
    url: str
    verify: bool = sysupdate.VERIFY_DEFAULT
    instances_max: int = 2
    every: str = "1h"
    settle: int = 10
    profile: str = "default"
    sidecars: tuple[str, ...] = ()  # suffixes from VERITY_SIDECARS the images come with
    keyring: bytes | None = None  # binary OpenPGP public keys


def _systemd_escape(value: str) -> str:
    # Path= and MatchPattern= expand specifiers: a literal % is %%
    return value.replace("%", "%%")


def transfer_text(s: HostSettings, suffix: str) -> str:
    pattern = sysupdate.match_pattern(s.pname, suffix)
    return (
        f"# portable-service host-config: {s.pname} images ({suffix}) from {s.url}\n"
        "[Transfer]\n"
        f"Verify={'yes' if s.verify else 'no'}\n"
        "\n[Source]\n"
        "Type=url-file\n"
        f"Path={_systemd_escape(s.url)}\n"
        f"MatchPattern={_systemd_escape(pattern)}\n"
        "\n[Target]\n"
        "Type=regular-file\n"
        f"Path={IMAGES_DIR}\n"
        f"MatchPattern={_systemd_escape(pattern)}\n"
        "Mode=0644\n"
        # the newest and the one before it: what a rollback needs
        f"InstancesMax={s.instances_max}\n"
    )


def transfer_files(s: HostSettings) -> list[HostFile]:
    folder = PurePosixPath(sysupdate.component_dir(s.pname).lstrip("/"))
    # transfers install in file name order: sidecars first, the image (what is attached) last
    files = [HostFile(folder / f"40-{s.pname}{suffix.replace('.', '-')}{sysupdate.TRANSFER_SUFFIX}",
                      transfer_text(s, suffix).encode())
             for suffix in VERITY_SIDECARS if suffix in s.sidecars]
    files.append(HostFile(folder / f"50-{s.pname}{sysupdate.TRANSFER_SUFFIX}",
                          transfer_text(s, ".raw").encode()))
    return files


def script_path(pname: str) -> str:
    return f"{SCRIPT_DIR}/update-{pname}"


def update_script(s: HostSettings) -> str:
    sidecar_list = " ".join(VERITY_SIDECARS)
    needs_gpg = (
        'command -v gpg >/dev/null 2>&1 || command -v gpg2 >/dev/null 2>&1 || \\\n'
        '    die "Verify=yes needs gpg to check SHA256SUMS.gpg: apt-get install gpg"\n'
        if s.verify else "")
    return f"""#!/bin/sh
# portable-service host-config: keeps the portable service {s.pname} on the newest version
# published at {s.url}.
# systemd-sysupdate fetches and checks it (/etc/sysupdate.{s.pname}.d), portablectl
# reattaches it; when its units are not up after {s.settle} s, the version before comes back
# and the new one is listed in {STATE_DIR}/{s.pname}/bad, never to be taken again.
set -u
pname={s.pname}
images={IMAGES_DIR}
state={STATE_DIR}/{s.pname}
settle={s.settle}
profile={s.profile}
sysupdate={sysupdate.SYSUPDATE_BINARY}

say() {{ echo "$*"; }}
die() {{ echo "$*" >&2; exit 1; }}

[ -x "$sysupdate" ] || die "$sysupdate is missing: systemd-sysupdate comes with systemd \\
{sysupdate.MIN_SYSTEMD} (Debian 13: package systemd-container); Debian 12 (systemd 252) has none"
{needs_gpg}mkdir -p "$state" && touch "$state/bad" || die "cannot write $state"

is_bad() {{ grep -qxF -- "$1" "$state/bad"; }}

# the version of $pname that is attached now, if any: the image portabled's drop-in mounts
# ("portablectl is-attached" says "running" for every image that carries a running unit name)
current() {{
    for f in /etc/systemd/system.attached/*.d/{PORTABLE_DROP_IN} \\
             /run/systemd/system.attached/*.d/{PORTABLE_DROP_IN}; do
        [ -f "$f" ] || continue
        v=$(sed -n "s|^RootImage=$images/${{pname}}_\\(.*\\)\\.raw\\$|\\1|p" "$f" | head -n 1)
        if [ -n "$v" ]; then
            echo "$v"
            return
        fi
    done
}}

# the unit files portabled attached for $pname (templates start only as instances)
units() {{
    for f in /etc/systemd/system.attached/* /run/systemd/system.attached/*; do
        [ -f "$f" ] || continue
        u=${{f##*/}}
        case $u in "$pname".*|"$pname"-*|"$pname"@*) ;; *) continue ;; esac
        case $u in *@.*) continue ;; esac
        echo "$u"
    done
}}

# the units our sockets, timers and paths start (read from their Triggers=: a service whose
# socket refused to start shows no TriggeredBy=)
triggered() {{
    for t in $(units); do
        case $t in *.socket|*.timer|*.path) systemctl show -P Triggers "$t" | tr ' ' '\\n' ;; esac
    done
}}

# portablectl --now restarts a socket (timer, path) and the service it starts at the same
# time: the service may win, start without its socket and fail, and the socket refuses to
# start beside it ("Socket service ... already active"). A service something triggers runs
# on demand: stop it, then restart what triggers it.
restart_triggers() {{
    # portablectl only queues the jobs: let them run first (up to 30 s)
    all=$(units)
    [ -n "$all" ] || return 0
    i=0
    # shellcheck disable=SC2086
    while [ $i -lt 300 ] && [ -n "$(systemctl list-jobs --no-legend $all)" ]; do
        sleep 0.1
        i=$((i + 1))
    done
    for u in $(triggered); do
        systemctl stop "$u"
        systemctl reset-failed "$u" 2>/dev/null
    done
    for t in $all; do
        case $t in *.socket|*.timer|*.path) systemctl restart "$t" || return 1 ;; esac
    done
}}

# up: no unit failed within $settle s, and then every unit nothing else triggers is active
# (a oneshot service: finished with success)
healthy() {{
    end=$(( $(date +%s) + settle ))
    while [ "$(date +%s)" -lt "$end" ]; do
        for u in $(units); do
            if [ "$(systemctl is-active "$u")" = failed ]; then
                say "$u failed"
                return 1
            fi
        done
        sleep 1
    done
    found=
    on_demand=$(triggered)
    for u in $(units); do
        found=1
        st=$(systemctl is-active "$u")
        [ "$st" = active ] && continue
        if [ "$st" != failed ] && printf '%s\\n' "$on_demand" | grep -qxF -- "$u"; then
            continue
        fi
        if [ "$(systemctl show -P Type "$u")" = oneshot ] && \\
           [ "$(systemctl show -P Result "$u")" = success ]; then continue; fi
        say "$u is $st after $settle s"
        return 1
    done
    [ -n "$found" ] || {{ say "no unit of $pname is attached"; return 1; }}
}}

# remove a version's files (a bad one, so that InstancesMax= does not remove the running one
# to make room)
drop() {{
    for suffix in .raw {sidecar_list}; do rm -f "$images/${{pname}}_$1$suffix"; done
}}

cur=$(current)
out=$("$sysupdate" --component="$pname" --json=short check-new) || \\
    die "systemd-sysupdate could not read the published versions (see above);" \\
        "${{cur:-nothing}} stays attached"
new=$(printf '%s\\n' "$out" | sed -n 's/.*"available":"\\([^"]*\\)".*/\\1/p')
if [ -n "$new" ] && is_bad "$new"; then
    say "$pname $new did not start before: not taking it"
    new=
fi
if [ -n "$new" ]; then
    while read -r v; do
        [ -n "$v" ] && [ "$v" != "$cur" ] && drop "$v"
    done < "$state/bad"
    # a version an interrupted run fetched but never attached is newer than the running one:
    # InstancesMax= would remove the running one (the oldest) to make room
    if [ -s "$state/fetched" ]; then
        v=$(cat "$state/fetched")
        [ "$v" != "$cur" ] && [ "$v" != "$new" ] && drop "$v"
    fi
    "$sysupdate" --component="$pname" update "$new" || \\
        die "systemd-sysupdate could not install $pname $new (see above); ${{cur:-nothing}} stays attached"
    echo "$new" > "$state/fetched"
elif [ -z "$cur" ] && [ -s "$state/fetched" ]; then
    new=$(cat "$state/fetched")  # fetched by an earlier run that stopped before attaching
    if is_bad "$new" || [ ! -e "$images/${{pname}}_$new.raw" ]; then new=; fi
fi
if [ -z "$new" ] || [ "$new" = "$cur" ]; then
    say "$pname is up to date (${{cur:-nothing attached}})"
    exit 0
fi

image="$images/${{pname}}_$new.raw"
if [ -n "$cur" ]; then
    say "reattaching $pname: $cur -> $new"
    portablectl reattach --now --enable --profile="$profile" "$image"
else
    say "attaching $pname $new"
    portablectl attach --now --enable --profile="$profile" "$image"
fi
if [ $? -eq 0 ] && restart_triggers && healthy; then
    say "$pname $new is up (was ${{cur:-nothing}})"
    exit 0
fi

echo "$new" >> "$state/bad"
if [ -z "$cur" ]; then
    portablectl detach --now --enable "${{pname}}_$new"
    die "$pname $new did not start; nothing to roll back to"
fi
say "$pname $new did not start: rolling back to $cur"
portablectl reattach --now --enable --profile="$profile" "$images/${{pname}}_$cur.raw" || \\
    die "rolling back to $pname $cur failed"
restart_triggers
healthy || die "$pname $cur does not start either after the rollback"
die "$pname $new did not start; rolled back to $cur, which is up"
"""


def unit_files(s: HostSettings) -> list[HostFile]:
    units = PurePosixPath("etc/systemd/system")
    service = (
        "[Unit]\n"
        f"Description=Update the portable service {s.pname} from {_systemd_escape(s.url)}\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n[Service]\n"
        "Type=oneshot\n"
        f"ExecStart={script_path(s.pname)}\n"
    )
    timer = (
        "[Unit]\n"
        f"Description=Update the portable service {s.pname} regularly\n"
        "\n[Timer]\n"
        "OnBootSec=2min\n"
        f"OnUnitInactiveSec={s.every}\n"
        "RandomizedDelaySec=1min\n"
        "\n[Install]\n"
        "WantedBy=timers.target\n"
    )
    timer_name = f"{s.pname}-update.timer"
    return [
        HostFile(units / f"{s.pname}-update.service", service.encode()),
        HostFile(units / timer_name, timer.encode()),
        HostFile(units / "timers.target.wants" / timer_name, link=f"/{units / timer_name}"),
    ]


def host_files(s: HostSettings) -> list[HostFile]:
    files = [*transfer_files(s), *unit_files(s),
             HostFile(PurePosixPath(script_path(s.pname).lstrip("/")),
                      update_script(s).encode(), 0o755)]
    if s.keyring is not None:
        files.append(HostFile(PurePosixPath(sysupdate.KEYRING_PATHS[0].lstrip("/")),
                              s.keyring))
    return sorted(files, key=lambda f: f.path.as_posix().encode())


def settings_for(source: Path, url: str, *, verify: bool = True, instances_max: int = 2,
                 every: str = "1h", settle: int = 10, profile: str = "default",
                 keyring: Path | None = None) -> HostSettings:
    """Check the arguments (all before anything is written) and read pname from the source."""
    pname, sidecars = _source_facts(source)
    if "@" in pname:
        raise HostConfigError(f"the pname {pname!r} holds '@', which sysupdate patterns read as "
                              "a wildcard", "use a pname without '@'")
    if not _URL.fullmatch(url):
        raise HostConfigError(f"--url {url!r} is not an http:// or https:// URL",
                              "give the URL the download folder is served at")
    if instances_max < sysupdate.INSTANCES_MAX_MIN:
        raise HostConfigError(f"--instances-max {instances_max}: systemd-sysupdate keeps at "
                              f"least {sysupdate.INSTANCES_MAX_MIN}",
                              "give 2 (the running version and the one to roll back to) or more")
    if not _TIME.fullmatch(every):
        raise HostConfigError(f"--every {every!r} is not a systemd time span",
                              "give e.g. 15min, 1h or 1d")
    if settle < 1:
        raise HostConfigError(f"--settle {settle}: the units need some time to start",
                              "give 1 second or more")
    if not _PROFILE.fullmatch(profile):
        raise HostConfigError(f"--profile {profile!r} is not a profile name",
                              "give default, nonetwork, strict or trusted")
    ring = _read_keyring(keyring) if keyring is not None else None
    if ring is not None and not verify:
        raise HostConfigError("--keyring with --no-verify: the key would never be used",
                              "drop one of them")
    return HostSettings(pname, url, verify, instances_max, every, settle,
                        profile, sidecars, ring)


def _source_facts(source: Path) -> tuple[str, tuple[str, ...]]:
    """pname (and the sidecars beside an image) from an image or a spec."""
    if source.suffix == ".raw" and source.is_file():
        pname = image_prefix(source.name)
        if not pname or "_" not in source.name:
            raise HostConfigError(f"{source.name} is not named <pname>_<version>.raw",
                                  "give an image 'portable-service build' wrote, or its spec")
        present = {n for n in sidecar_names(source.name) if source.with_name(n).is_file()}
        suffixes = tuple(s for s in VERITY_SIDECARS
                         if source.name.removesuffix(".raw") + s in present)
        return pname, suffixes
    from portable_service.builder.spec import load_spec

    return load_spec(source).pname, ()


def _read_keyring(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise HostConfigError(f"cannot read --keyring {path}: {e.strerror}",
                              "give a file of exported public keys (gpg --export KEY)") from None
    if data.lstrip().startswith(b"-----BEGIN PGP"):
        # gpg --keyring reads binary keys only
        gpg = find_tool("gpg", reason="to turn the armored --keyring into binary keys")
        data = run([gpg, "--batch", "--dearmor"], input=data).stdout
    if not data or data[0] & 0x80 == 0:
        raise HostConfigError(f"--keyring {path} holds no OpenPGP keys",
                              "export the public key: gpg --export KEY > keyring.gpg")
    return data


def write_tree(files: Sequence[HostFile], dest: Path) -> None:
    """Each file written beside its place and renamed over it: a rerun replaces, atomically."""
    for f in files:
        target = dest / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".#{target.name}.{os.getpid()}")
        try:
            if f.link is not None:
                temp.unlink(missing_ok=True)
                os.symlink(f.link, temp)
            else:
                temp.write_bytes(f.data)
                os.chmod(temp, f.mode)
            os.replace(temp, target)
        finally:
            if temp.is_symlink() or temp.exists():
                temp.unlink()


def render_tree(files: Sequence[HostFile], dest: Path) -> list[str]:
    """The tree as ``tree`` draws it, with modes other than 0644 and link targets."""
    tree: dict[str, Any] = {}
    for f in files:
        node = tree
        for part in f.path.parts[:-1]:
            node = node.setdefault(part + "/", {})
        label = f.path.name
        if f.link is not None:
            label += f" -> {f.link}"
        elif f.mode != 0o644:
            label += f" ({f.mode:o})"
        node[label] = None
    lines = [f"{dest}/"]

    def walk(node: dict[str, Any], indent: str) -> None:
        names = sorted(node, key=lambda n: n.encode())
        for i, name in enumerate(names):
            last = i == len(names) - 1
            lines.append(f"{indent}{'└── ' if last else '├── '}{name}")
            if node[name] is not None:
                walk(node[name], indent + ("    " if last else "│   "))

    walk(tree, "")
    return lines


def cmd_host_config(args: Any) -> int:
    settings = settings_for(Path(args.source), args.url, verify=args.verify,
                            instances_max=args.instances_max, every=args.every,
                            settle=args.settle, profile=args.profile,
                            keyring=Path(args.keyring) if args.keyring else None)
    dest = Path(args.to)
    if dest.exists() and not dest.is_dir():
        raise HostConfigError(f"{dest} is not a folder", "give --to a folder (made if missing)")
    files = host_files(settings)
    write_tree(files, dest)
    print("\n".join(render_tree(files, dest)))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("host-config", help="write the files a host needs to follow a "
                       "published download folder (systemd-sysupdate, update unit and timer)",
                       description="Write sysupdate.d transfer files, an update script, unit "
                       "and timer under DIR (a tree to copy to a host's /), so that the host "
                       "fetches new versions published with 'publish', reattaches them and "
                       "rolls back when they do not start. Needs systemd 257 on the host.")
    p.add_argument("source", metavar="SPEC-or-IMAGE",
                   help="the service's spec (file or folder) or one of its images")
    p.add_argument("--url", required=True, help="where the download folder is served")
    p.add_argument("--to", required=True, metavar="DIR", help="where to write the tree")
    p.add_argument("--keyring", metavar="FILE", help="public key(s) SHA256SUMS.gpg is signed "
                   "with (gpg --export); becomes etc/systemd/import-pubring.gpg")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="Verify=no: take an unsigned SHA256SUMS (the files are still checked "
                   "against it)")
    p.add_argument("--instances-max", type=int, default=2, metavar="N",
                   help="versions kept on the host (InstancesMax=, default 2: the running one "
                   "and the one to roll back to)")
    p.add_argument("--every", default="1h", metavar="TIME",
                   help="how often the host looks for a new version (default 1h)")
    p.add_argument("--settle", type=int, default=10, metavar="SECONDS",
                   help="how long the new version's units must stay up (default 10)")
    p.add_argument("--profile", default="default", help="portablectl --profile (default: default)")
    p.set_defaults(func=cmd_host_config)
