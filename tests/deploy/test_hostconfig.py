"""host-config: the tree a host needs (systemd 257 runs it in tests/e2e/test_fleet.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from portable_service.deploy import hostconfig
from portable_service.deploy.hostconfig import HostConfigError, settings_for
from tests.conftest import require_tool


def image(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"x")
    return folder / name


def tree_of(dest: Path) -> dict[str, str]:
    out = {}
    for p in sorted(dest.rglob("*")):
        rel = str(p.relative_to(dest))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = f"{p.stat().st_mode & 0o777:o}"
    return out


def test_the_tree_for_an_image(tmp_path: Path) -> None:
    img = image(tmp_path / "result", "demo_1.0.raw")
    s = settings_for(img, "https://updates.example.org/demo/")
    dest = tmp_path / "host"
    hostconfig.write_tree(hostconfig.host_files(s), dest)
    assert tree_of(dest) == {
        "etc/sysupdate.demo.d/50-demo.transfer": "644",
        "etc/systemd/system/demo-update.service": "644",
        "etc/systemd/system/demo-update.timer": "644",
        "etc/systemd/system/timers.target.wants/demo-update.timer":
            "-> /etc/systemd/system/demo-update.timer",
        "usr/lib/portable-service/update-demo": "755",
    }
    transfer = (dest / "etc/sysupdate.demo.d/50-demo.transfer").read_text()
    for line in ("[Transfer]", "Verify=yes", "[Source]", "Type=url-file",
                 "Path=https://updates.example.org/demo/", "MatchPattern=demo_@v.raw",
                 "[Target]", "Type=regular-file", "Path=/var/lib/portables", "InstancesMax=2"):
        assert line in transfer.splitlines(), line
    assert transfer.count("MatchPattern=demo_@v.raw") == 2
    service = (dest / "etc/systemd/system/demo-update.service").read_text()
    assert "ExecStart=/usr/lib/portable-service/update-demo" in service
    assert "Type=oneshot" in service
    timer = (dest / "etc/systemd/system/demo-update.timer").read_text()
    assert "OnUnitInactiveSec=1h" in timer and "WantedBy=timers.target" in timer


def test_the_script_is_valid_sh_and_names_the_component(tmp_path: Path) -> None:
    s = settings_for(image(tmp_path, "demo_1.raw"), "http://127.0.0.1:8000/", settle=7,
                     profile="trusted")
    script = hostconfig.update_script(s)
    for shell in ("sh", "dash", "bash"):
        path = require_tool(shell)
        proc = subprocess.run([path, "-n"], input=script, text=True, capture_output=True,
                              check=False)
        assert proc.returncode == 0, (shell, proc.stderr)
    assert '--component="$pname" --json=short check-new' in script
    assert "settle=7" in script and "profile=trusted" in script
    assert 'portablectl reattach --now --enable --profile="$profile"' in script
    assert "gpg" in script  # Verify=yes: the host needs gpg


def test_sidecars_beside_the_image_get_transfers_installed_first(tmp_path: Path) -> None:
    img = image(tmp_path, "demo_2.raw")
    image(tmp_path, "demo_2.verity")
    image(tmp_path, "demo_2.roothash")
    names = [f.path.name for f in hostconfig.transfer_files(settings_for(img, "http://h/"))]
    assert names == ["40-demo-verity.transfer", "40-demo-roothash.transfer", "50-demo.transfer"]
    assert sorted(names) == ["40-demo-roothash.transfer", "40-demo-verity.transfer",
                             "50-demo.transfer"]  # the image, attached, is installed last


def test_from_a_spec_and_byte_reproducible(tmp_path: Path) -> None:
    spec = tmp_path / "portable.toml"
    spec.write_text('pname = "web"\nversion = "3"\nunits = ["web.service"]\n')
    (tmp_path / "web.service").write_text("[Service]\nExecStart=/bin/true\n")
    files = hostconfig.host_files(settings_for(spec, "http://h/a%20b/", verify=False))
    again = hostconfig.host_files(settings_for(tmp_path, "http://h/a%20b/", verify=False))
    assert files == again
    transfer = next(f for f in files if f.path.name == "50-web.transfer").data.decode()
    assert "Path=http://h/a%%20b/" in transfer  # % is a specifier in sysupdate.d
    assert "Verify=no" in transfer
    assert not any(b"gpg" in f.data for f in files if f.path.name == "update-web")


@pytest.mark.parametrize("kwargs,says", [
    ({"url": "ftp://h/"}, "not an http"),
    ({"instances_max": 1}, "keeps at least 2"),
    ({"every": "soon"}, "time span"),
    ({"settle": 0}, "some time"),
    ({"profile": "../x"}, "profile name"),
])
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], says: str) -> None:
    args: dict[str, object] = {"url": "http://h/", **kwargs}
    url = str(args.pop("url"))
    with pytest.raises(HostConfigError, match=says):
        settings_for(image(tmp_path, "demo_1.raw"), url, **args)  # type: ignore[arg-type]


def test_keyring_armored_is_stored_binary(tmp_path: Path) -> None:
    require_tool("gpg")
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "",
                    "--quick-gen-key", "k <k@example.org>", "ed25519", "sign", "never"],
                   check=True, capture_output=True)
    binary = subprocess.run(["gpg", "--homedir", str(home), "--export"], check=True,
                            capture_output=True).stdout
    armored = tmp_path / "key.asc"
    armored.write_bytes(subprocess.run(["gpg", "--homedir", str(home), "--export", "--armor"],
                                       check=True, capture_output=True).stdout)
    s = settings_for(image(tmp_path, "demo_1.raw"), "http://h/", keyring=armored)
    assert s.keyring == binary
    ring = next(f for f in hostconfig.host_files(s)
                if f.path.as_posix() == "etc/systemd/import-pubring.gpg")
    assert ring.data == binary
    with pytest.raises(HostConfigError, match="never be used"):
        settings_for(image(tmp_path, "demo_1.raw"), "http://h/", keyring=armored, verify=False)
    junk = tmp_path / "junk"
    junk.write_text("hello")
    with pytest.raises(HostConfigError, match="no OpenPGP keys"):
        settings_for(image(tmp_path, "demo_1.raw"), "http://h/", keyring=junk)


def test_cli_prints_the_tree(cli, tmp_path: Path) -> None:
    img = image(tmp_path / "result", "demo_1.0.raw")
    proc = cli("host-config", str(img), "--url", "http://h/", "--to", str(tmp_path / "host"),
               "--no-verify")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"{tmp_path / 'host'}/",
        "├── etc/",
        "│   ├── systemd/",
        "│   │   └── system/",
        "│   │       ├── demo-update.service",
        "│   │       ├── demo-update.timer",
        "│   │       └── timers.target.wants/",
        "│   │           └── demo-update.timer -> /etc/systemd/system/demo-update.timer",
        "│   └── sysupdate.demo.d/",
        "│       └── 50-demo.transfer",
        "└── usr/",
        "    └── lib/",
        "        └── portable-service/",
        "            └── update-demo (755)",
    ]
    # run again: same tree, replaced in place
    again = cli("host-config", str(img), "--url", "http://h/", "--to", str(tmp_path / "host"),
                "--no-verify")
    assert again.stdout == proc.stdout
    bad = cli("host-config", str(img), "--url", "nope", "--to", str(tmp_path / "h2"))
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.count("\n") == 1
    assert not (tmp_path / "h2").exists()
