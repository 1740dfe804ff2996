"""The build: spec -> units -> closure -> image tree -> writer -> image, written atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from portable_service.builder import layout
from portable_service.builder import units as units_mod
from portable_service.builder.atomic import write_atomically
from portable_service.builder.closure import Closure
from portable_service.builder.closure.secrets import check_no_secrets
from portable_service.builder.closure.walk import resolve
from portable_service.builder.repo import Pinned
from portable_service.builder.spec import Spec, check_spec
from portable_service.builder.writers import Writer, select_writer
from portable_service.builder.writers.options import PackOptions
from portable_service.errors import PortableServiceError, SpecError, ToolError
from portable_service.fs.tree import ImageTree
from portable_service.progress import QUIET, Reporter

if TYPE_CHECKING:
    from portable_service.builder.extension import Base


@dataclass(frozen=True)
class Plan:
    """Everything decided before a byte is written."""

    spec: Spec
    units: list[units_mod.Unit]
    closure: Closure
    tree: ImageTree
    writer: Writer
    options: PackOptions
    base: Base | None = None  # an extension's base (spec key base)
    pinned: Pinned | None = None  # a build from a repository (builder/repo)
    sbom: bytes = b""  # the SPDX document, also in the image (builder/sbom.py)


def source_date_epoch() -> int:
    raw = os.environ.get("SOURCE_DATE_EPOCH", "0")
    try:
        value = int(raw)
    except ValueError:
        raise SpecError(f"SOURCE_DATE_EPOCH={raw!r} is not a whole number of seconds",
                        "unset it or set it to e.g. 0") from None
    if not 0 <= value < 2**32:
        raise SpecError(f"SOURCE_DATE_EPOCH={raw} is out of range", "use 0 to 4294967295")
    return value


def check_features(spec: Spec) -> None:
    """The checks of the settings that bring a feature of their own (each module states its
    rules): a pinned repository, erofs compression, verity keys."""
    if spec.distribution is not None or spec.release is not None:
        from portable_service.builder.repo import check_pinned

        check_pinned(spec)
    if spec.writer == "erofs":
        from portable_service.builder.writers.erofs import parse_erofs_compression

        parse_erofs_compression(str(spec.squash_compression))
    from portable_service.builder.verity import check_verity_spec

    check_verity_spec(spec)


def plan(spec: Spec, reporter: Reporter = QUIET, workdir: Path | None = None,
         update: bool = False) -> Plan:
    """Check everything and lay out the image tree; nothing is written.

    A pinned spec (``release`` set) unpacks its packages into ``workdir``, which must
    outlive the plan (the tree reads its files from there).
    """
    check_spec(spec)  # a Spec built in code has not been through the parser's checks
    check_features(spec)
    # options and tools first: a bad setting or a missing tool is reported before any work
    options = PackOptions(
        compression=spec.squash_compression,  # checked for its writer by check_spec
        block_size=spec.squash_block_size,
        mtime=source_date_epoch(),
    )
    writer = select_writer(spec.writer, spec.squashfs_tools, seed=spec.image_name,
                           compression=spec.squash_compression)
    with reporter.step(f"reading {len(spec.units)} unit source(s)"):
        units = units_mod.load_units(spec)
    for unit in units:
        if unit.drop_ins:
            reporter.info(f"merged {', '.join(unit.drop_ins)} into {unit.name}: portabled does "
                          "not read drop-ins inside an image")
    pinned = None
    built = spec
    if spec.release is not None:
        from portable_service.builder import repo

        if workdir is None:
            raise SpecError("a pinned build needs a work folder", "build it with build_image")
        pinned = repo.prepare(spec, workdir, update, reporter)
        spec = pinned.spec
    with reporter.step("resolving the closure"):
        closure = resolve(spec, units, root=pinned.root if pinned else None)
        check_no_secrets(closure)
    if not reporter.quiet:
        for note in closure.notes:  # one line each, like warnings: they are about the image
            reporter.note(note)
    for warning in closure.warnings:
        reporter.warn(warning)
    with reporter.step("laying out the image tree"):
        tree = layout.assemble(spec, units, closure)
    base = None
    if spec.base is not None:
        from portable_service.builder import extension

        base = extension.open_base(spec.base, lambda s: plan(s, reporter).tree, reporter)
        with reporter.step(f"keeping what the base {base.name} lacks"):
            tree, warnings = extension.extension_tree(spec, tree, base)
        for warning in warnings:
            reporter.warn(warning)
    from portable_service.builder import sbom

    with reporter.step("writing the SBOM"):
        if base is None:
            document = sbom.add_to_tree(tree, built, closure, pinned, options.mtime)
        else:  # beside the image only: in it, it would hide the base's (one path, overlaid)
            document = sbom.build_document(tree, built, closure, pinned, options.mtime)
    return Plan(built, units, closure, tree, writer, options, base=base, pinned=pinned,
                sbom=document)


# reads a written image back before it replaces the old one (look.verify.check_written):
# (written file, image name, warn, allow-missing)
# the read side's check of a written image (file, image name, the plan, a line printer)
Checker = Callable[[Path, str, Plan, Callable[[str], None]], None]


def build_image(spec: Spec, output_dir: Path, reporter: Reporter = QUIET,
                inspect: Callable[[Plan], None] | None = None, *,
                check: Checker | None, update: bool = False) -> Path:
    """Build ``output_dir/<pname>_<version>.raw``; on any failure the old image stays as it was.

    ``inspect`` sees the plan before anything is written (``--print-closure``). ``check``
    (the read side's, given by the caller: the builder sits below it) reads the written
    file before it replaces the old image, so an image portabled would refuse never lands;
    None writes unchecked. :func:`portable_service.api.build_image` passes it.
    """
    if check is not None:
        _check_verifiable(spec)
    from portable_service.builder.verity import check_signing_inputs

    check_signing_inputs(spec)
    with tempfile.TemporaryDirectory(prefix="portable-service-") as workdir:
        return _build(spec, output_dir, reporter, inspect, check, update, Path(workdir))


def _build(spec: Spec, output_dir: Path, reporter: Reporter, inspect: Callable[[Plan], None] | None,
           check: Checker | None, update: bool, workdir: Path) -> Path:
    from portable_service.builder.ddi import no_sidecars
    from portable_service.builder.verity import sidecar_step

    p = plan(spec, reporter, workdir, update)
    if inspect is not None:
        inspect(p)
    out = output_dir / spec.image_name
    _prepare_dir(output_dir)

    def check_tmp(tmp: Path) -> None:
        assert check is not None

        def say(line: str) -> None:  # shown even when quiet, like warnings
            reporter.note(f"verify: {line}")

        with reporter.step("verifying the image"):
            check(tmp, out.name, p, say)

    def write(tmp: Path) -> None:
        if spec.format != "ddi":
            p.writer.write(p.tree, tmp, p.options, reporter)
            return
        from portable_service.builder.ddi import write_ddi_image

        write_ddi_image(spec, lambda fs: p.writer.write(p.tree, fs, p.options, reporter), tmp,
                        reporter)

    what = "a GPT disk image" if spec.format == "ddi" else ""
    with reporter.step(f"writing {out}{' as ' + what if what else ''} with {p.writer.name} "
                       f"({len(p.tree)} entries)"):
        # a DDI carries its verity in partitions: sidecars an earlier raw build left go
        sidecars = sidecar_step(spec, out, reporter) if spec.format != "ddi" else no_sidecars(out)
        write_atomically(out, write, check_tmp if check is not None else None, sidecars)
    from portable_service.builder import sbom

    document = out.with_name(sbom.document_name(spec))
    write_atomically(document, lambda tmp: _write_bytes(tmp, p.sbom))
    return out


def _write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _check_verifiable(spec: Spec) -> None:
    """The written image is read back to be verified: its compressor must be readable here."""
    from portable_service.squashfs import compressor

    if spec.writer == "erofs":
        return  # read back through fsck.erofs, which comes with mkfs.erofs
    name = spec.squash_compression.name
    if not compressor.readable(name):
        raise ToolError(f"{name} images are verified by reading them back, which this "
                        "installation cannot do",
                        f"{compressor.install_hint(name)}; or build with --no-verify")


def _prepare_dir(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PortableServiceError(f"cannot create output folder {output_dir}: {e.strerror}",
                                   "choose another with -o") from None
    if not os.access(output_dir, os.W_OK):
        raise PortableServiceError(f"output folder {output_dir} is not writable",
                                   "choose another with -o")


