"""Building portable extensions: only what the base lacks, the release file, the refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

from portable_service.builder.layout import parse_os_release
from portable_service.rules import extensions as ext_rules
from tests.conftest import unsquashfs_cat, unsquashfs_list
from tests.layer_projects import write_app, write_runtime


def _build(cli, tmp_path: Path, folder: Path) -> Path:
    proc = cli("build", "-q", str(folder), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1])


def test_extension_carries_only_what_the_base_lacks(cli, tmp_path: Path) -> None:
    base = _build(cli, tmp_path, write_runtime(tmp_path))
    ext = _build(cli, tmp_path, write_app(tmp_path))
    assert ext.name == "app_2.raw"
    entries = unsquashfs_list(ext)
    files = sorted(p for p, (mode, _, _) in entries.items() if not mode.startswith("d"))
    # the script, its unit (where /usr overlays), the release file: dash and libc stay in
    # the base, and so does the scaffold (/etc/os-release, /proc, ...)
    assert files == ["/opt/app/run", "/usr/lib/extension-release.d/extension-release.app_2",
                     "/usr/lib/systemd/system/app.service"]
    assert "/usr/bin/dash" in unsquashfs_list(base)
    fields = parse_os_release(unsquashfs_cat(ext, ext_rules.release_path(ext.name)).decode())
    base_fields = parse_os_release(unsquashfs_cat(base, "/etc/os-release").decode())
    assert fields["ID"] == base_fields["ID"]
    assert fields["VERSION_ID"] == base_fields["VERSION_ID"]
    assert fields["SYSEXT_SCOPE"] == "portable" and fields["PORTABLE_PREFIXES"] == "app"
    assert ext_rules.release_mismatch(base_fields, fields) is None
    # every image can be a base: /opt is there for an extension's /opt to overlay
    assert entries.get("/opt", ("",))[0].startswith("d")
    assert unsquashfs_list(base)["/opt"][0].startswith("d")


def test_base_as_image_or_as_spec_gives_the_same_bytes(cli, tmp_path: Path) -> None:
    base = _build(cli, tmp_path, write_runtime(tmp_path))
    from_spec = _build(cli, tmp_path, write_app(tmp_path)).read_bytes()
    write_app(tmp_path, base=str(base))
    from_image = _build(cli, tmp_path, tmp_path / "app-2").read_bytes()
    assert from_spec == from_image


def test_a_file_differing_from_the_base_is_kept(cli, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "same").write_text("shared\n")
    (data / "v1").write_text("old\n")
    (data / "v2").write_text("new\n")
    same = f'{{ source = "{data}/same", target = "/usr/share/demo/same" }}'
    write_runtime(tmp_path, contents=f'"/usr/bin/dash", {same}, '
                  f'{{ source = "{data}/v1", target = "/usr/share/demo/data" }}')
    _build(cli, tmp_path, tmp_path / "runtime")
    ext = _build(cli, tmp_path, write_app(tmp_path, contents=f'{same}, {{ source = '
                                          f'"{data}/v2", target = "/usr/share/demo/data" }}, '))
    entries = unsquashfs_list(ext)
    assert "/usr/share/demo/same" not in entries  # same bytes as the base's: left out
    assert unsquashfs_cat(ext, "/usr/share/demo/data") == b"new\n"  # differs: kept


def test_content_outside_usr_and_opt_is_refused(cli, tmp_path: Path) -> None:
    write_runtime(tmp_path)
    app = write_app(tmp_path)
    toml = app / "portable.toml"
    toml.write_text(toml.read_text().replace('target = "/opt/app"', 'target = "/srv/app"')
                    .replace("/opt/app/run", "/srv/app/run"))
    out = tmp_path / "out"
    proc = cli("build", str(app), "-o", str(out))
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "outside /usr and /opt" in line and "/srv/app/run" in line, line
    assert "place it under /opt/app/" in line
    assert not (out / "app_2.raw").exists()


def test_state_directory_must_exist_in_the_base(cli, tmp_path: Path) -> None:
    write_runtime(tmp_path)
    app = write_app(tmp_path, unit_extra="StateDirectory=app\\n")
    proc = cli("build", str(app), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "/var/lib/app" in line and "not in the base runtime_1.raw" in line, line
    # the base that has it (a unit of its own with the same directive): the build passes
    runtime = tmp_path / "runtime" / "portable.toml"
    runtime.write_text(runtime.read_text().replace(
        "ExecStart=/usr/bin/dash -c true\\n", "ExecStart=/usr/bin/dash -c true\\n"
        "StateDirectory=app\\n"))
    ext = _build(cli, tmp_path, app)
    assert "/var/lib/app" not in unsquashfs_list(ext)


def test_verify_extension_against_its_base(cli, tmp_path: Path) -> None:
    base = _build(cli, tmp_path, write_runtime(tmp_path))
    ext = _build(cli, tmp_path, write_app(tmp_path))
    ok = cli("verify", str(ext), "--base", str(base))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    alone = cli("verify", str(ext))  # recognised as an extension: its own rules only
    assert alone.returncode == 0, alone.stdout + alone.stderr
    renamed = tmp_path / "out" / "app_9.raw"
    shutil.copyfile(ext, renamed)
    bad = cli("verify", str(renamed), "--base", str(base))
    assert bad.returncode == 1
    lines = [ln for ln in bad.stdout.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "extension-release.app_2" in lines[0], bad.stdout
    assert "lacks extension-release data" in lines[0] and "rename the image to app_2.raw" in lines[0]
    on_extension = cli("verify", str(renamed), "--base", str(ext))
    assert on_extension.returncode == 1
    assert on_extension.stdout.startswith("error: app_2.raw: the base app_2.raw is itself an "
                                          "extension"), on_extension.stdout
    assert len(on_extension.stdout.strip().splitlines()) == 1
