"""The Python API: ``build(pname=..., version=..., units=[...])`` returns the image's path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from portable_service.builder import pipeline
from portable_service.builder.spec import Spec, spec_from_mapping
from portable_service.progress import QUIET, Reporter


def build_image(spec: Spec, output_dir: Path, reporter: Reporter = QUIET,
                inspect: Callable[[pipeline.Plan], None] | None = None,
                verify: bool = True, update: bool = False) -> Path:
    """The build, with ``verify``'s check of the written image (the read side's rules)."""
    return pipeline.build_image(spec, output_dir, reporter, inspect,
                                check=check_written_image if verify else None, update=update)


def check_written_image(image: Path, name: str, plan: pipeline.Plan,
                        say: Callable[[str], None]) -> None:
    """The read side's check of a written image: an extension on its base, any other alone."""
    if plan.base is not None:
        from portable_service.look.extension import Layer, check_written_extension

        check_written_extension(image, name, Layer(plan.base.fs, plan.base.name), say)
    else:
        from portable_service.look.verify import check_written  # loaded when a build runs

        check_written(image, name, say, plan.spec.allow_missing)


def build(
    spec: Spec | None = None,
    *,
    output_dir: str | Path = "result",
    base_dir: str | Path | None = None,
    quiet: bool = True,
    verify: bool = True,
    **settings: Any,
) -> Path:
    """Build an image and return its path.

    Either pass a :class:`Spec`, or the spec's keys as keyword arguments in
    snake_case (``pname``, ``version``, ``units``, ``squash_compression``, ...).
    Relative paths in them are relative to ``base_dir`` (default: the working
    directory). With ``verify`` (the default) an image that systemd would refuse, or whose
    units would fail to start, raises instead of replacing the old image.
    """
    if spec is None:
        spec = spec_from_mapping(settings, Path(base_dir or Path.cwd()).resolve())
    elif settings:
        raise TypeError("pass either a Spec or keyword settings, not both")
    # a reporter of its own: warnings are collected per build (Reporter.warnings)
    reporter = Reporter(quiet=True, live=False) if quiet else Reporter()
    return build_image(spec, Path(output_dir), reporter, verify=verify)
