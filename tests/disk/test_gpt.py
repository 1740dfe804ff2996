"""The native GPT writer and reader, checked against util-linux's partx (libblkid)."""

from __future__ import annotations

import io
import subprocess
import uuid
from pathlib import Path

import pytest

from portable_service.disk import gpt
from portable_service.errors import ImageError
from tests.conftest import require_tool

TYPE = uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")
DISK = uuid.UUID("0f38dbe9-17a5-4f28-a38a-2e64bf299bf9")


def contents() -> list[gpt.Content]:
    return [
        gpt.Content(TYPE, uuid.UUID(int=1), "first", io.BytesIO(b"a" * 5000), 5000, 1 << 60),
        gpt.Content(TYPE, uuid.UUID(int=2), "zweite-ß", io.BytesIO(b"b" * 4096), 4096),
    ]


def write_disk(path: Path, min_size: int = 0) -> gpt.Table:
    parts = contents()
    table = gpt.layout(parts, DISK, min_size)
    with open(path, "wb") as f:
        gpt.write(f, table, parts)
    return table


def test_layout_is_4k_aligned_and_the_file_has_the_table_size(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    table = write_disk(disk)
    assert [p.offset % 4096 for p in table.partitions] == [0, 0]
    assert [p.size for p in table.partitions] == [8192, 4096]
    assert table.partitions[1].offset == table.partitions[0].offset + 8192
    assert disk.stat().st_size == table.disk_size and table.disk_size % 4096 == 0
    data = disk.read_bytes()
    first = table.partitions[0]
    assert data[first.offset:first.offset + 5000] == b"a" * 5000
    assert data[first.offset + 5000:first.offset + first.size] == b"\0" * (8192 - 5000)
    assert data[510:512] == b"\x55\xaa" and data[450] == 0xEE  # protective MBR


def test_min_size_pads_the_disk(tmp_path: Path) -> None:
    table = write_disk(tmp_path / "disk.raw", min_size=1440 * 1024 + 1)
    assert table.disk_size == (tmp_path / "disk.raw").stat().st_size >= 1440 * 1024 + 1


def test_read_gives_back_what_was_written(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    table = write_disk(disk)
    with open(disk, "rb") as f:
        assert gpt.read(f) == table


def test_partx_reads_the_same_table(tmp_path: Path) -> None:
    """util-linux (libblkid) parses our GPT: sectors, types, UUIDs, names, flags."""
    partx = require_tool("partx")
    disk = tmp_path / "disk.raw"
    table = write_disk(disk)
    out = subprocess.run([partx, "--raw", "--noheadings", "-o",
                          "NR,START,END,TYPE,UUID,NAME,FLAGS", str(disk)],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split(" ") for line in out.splitlines()]
    assert rows == [
        [str(i + 1), str(p.first_lba), str(p.last_lba), str(p.type_uuid), str(p.uuid),
         p.name.replace("ß", "\\xc3\\x9f"), f"0x{p.attributes:x}" if p.attributes else "0x0"]
        for i, p in enumerate(table.partitions)
    ], out


def test_a_damaged_primary_table_falls_back_to_the_backup(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    table = write_disk(disk)
    data = bytearray(disk.read_bytes())
    data[1024 + 100] ^= 0xFF  # an entry byte: the primary entries' CRC32 no longer matches
    with pytest.raises(ImageError, match="wrong CRC32"):
        gpt._read_at(io.BytesIO(bytes(data)), 1, len(data))
    assert gpt.read(io.BytesIO(bytes(data))) == table
    last = len(data) - 512
    data[last + 20] ^= 0xFF  # and the backup header: nothing valid is left
    with pytest.raises(ImageError, match="no valid GPT"):
        gpt.read(io.BytesIO(bytes(data)))


def test_not_a_gpt(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no valid GPT"):
        gpt.read(io.BytesIO(b"\0" * 100_000))
    with pytest.raises(ImageError, match="too small"):
        gpt.read(io.BytesIO(b"\0" * 1000))


def test_names_longer_than_36_characters_are_refused() -> None:
    with pytest.raises(ValueError, match="longer than 36"):
        gpt.layout([gpt.Content(TYPE, uuid.UUID(int=1), "x" * 37, io.BytesIO(b""), 0)], DISK)


def test_damaged_tables_are_image_errors_never_crashes(tmp_path: Path) -> None:
    """Random bytes over the MBR, headers and entries: a table, or one ImageError."""
    import random

    disk = tmp_path / "disk.raw"
    write_disk(disk)
    good = disk.read_bytes()
    rng = random.Random(11)
    regions = [(0, 512), (512, 1024), (1024, 1024 + 16384), (len(good) - 512, len(good)),
               (len(good) - 512 - 16384, len(good) - 512)]
    outcomes = {"table": 0, "error": 0}
    for _ in range(400):
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            lo, hi = rng.choice(regions)
            data[rng.randrange(lo, hi)] = rng.randrange(256)
        try:
            table = gpt.read(io.BytesIO(bytes(data)))
        except ImageError:
            outcomes["error"] += 1
            continue
        outcomes["table"] += 1
        for p in table.partitions:
            assert p.offset > 0 and p.offset + p.size <= len(data)
    assert outcomes["table"] and outcomes["error"], outcomes
