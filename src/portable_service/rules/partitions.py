"""What systemd's image dissection asks of a Discoverable Disk Image, stated once.

Partition type UUIDs are the UAPI group's Discoverable Partitions Specification
(the table systemd itself knows: ``systemd-id128 show`` on systemd 252 lists these
very values); the DDI rules are the UAPI Discoverable Disk Image specification and
systemd's dissect-image.c / repart.c:

- a portable service DDI holds one root partition of the image's architecture, with
  its ``root-<arch>-verity`` hash partition and ``root-<arch>-verity-sig`` signature
  partition when protected;
- the root partition's UUID is the first 128 bits of the verity root hash, the verity
  partition's the last 128 bits (dissect-image.c refuses other pairs);
- the signature partition holds a JSON object ``{"rootHash", "certificateFingerprint",
  "signature"}`` padded with NUL bytes;
- systemd-repart names partitions after their type (``root-x86-64``) unless told
  otherwise, and marks the root and verity partitions read-only.
"""

from __future__ import annotations

import platform
import uuid
from dataclasses import dataclass

# (root, root-verity, root-verity-sig) type UUIDs per systemd architecture name
ROOT_TYPES: dict[str, tuple[str, str, str]] = {
    "alpha": ("6523f8ae-3eb1-4e2a-a05a-18b695ae656f", "fc56d9e9-e6e5-4c06-be32-e74407ce09a5",
              "d46495b7-a053-414f-80f7-700c99921ef8"),
    "arm": ("69dad710-2ce4-4e3c-b16c-21a1d49abed3", "7386cdf2-203c-47a9-a498-f2ecce45a2d6",
            "42b0455f-eb11-491d-98d3-56145ba9d037"),
    "arm64": ("b921b045-1df0-41c3-af44-4c6f280d3fae", "df3300ce-d69f-4c92-978c-9bfb0f38d820",
              "6db69de6-29f4-4758-a7a5-962190f00ce3"),
    "ia64": ("993d8d3d-f80e-4225-855a-9daf8ed7ea97", "86ed10d5-b607-45bb-8957-d350f23d0571",
             "e98b36ee-32ba-4882-9b12-0ce14655f46a"),
    "loongarch64": ("77055800-792c-4f94-b39a-98c91b762bb6",
                    "f3393b22-e9af-4613-a948-9d3bfbd0c535",
                    "5afb67eb-ecc8-4f85-ae8e-ac1e7c50e7d0"),
    "mips-le": ("37c58c8a-d913-4156-a25f-48b1b64e07f0", "d7d150d2-2a04-4a33-8f12-16651205ff7b",
                "c919cc1f-4456-4eff-918c-f75e94525ca5"),
    "mips64-le": ("700bda43-7a34-4507-b179-eeb93d7a7ca3", "16b417f8-3e06-4f57-8dd2-9b5232f41aa6",
                  "904e58ef-5c65-4a31-9c57-6af5fc7c5de7"),
    "parisc": ("1aacdb3b-5444-4138-bd9e-e5c2239b2346", "d212a430-fbc5-49f9-a983-a7feef2b8d0e",
               "15de6170-65d3-431c-916e-b0dcd8393f25"),
    "ppc": ("1de3f1ef-fa98-47b5-8dcd-4a860a654d78", "98cfe649-1588-46dc-b2f0-add147424925",
            "1b31b5aa-add9-463a-b2ed-bd467fc857e7"),
    "ppc64": ("912ade1d-a839-4913-8964-a10eee08fbd2", "9225a9a3-3c19-4d89-b4f6-eeff88f17631",
              "f5e2c20c-45b2-4ffa-bce9-2a60737e1aaf"),
    "ppc64-le": ("c31c45e6-3f39-412e-80fb-4809c4980599", "906bd944-4589-4aae-a4e4-dd983917446a",
                 "d4a236e7-e873-4c07-bf1d-bf6cf7f1c3c6"),
    "riscv32": ("60d5a7fe-8e7d-435c-b714-3dd8162144e1", "ae0253be-1167-4007-ac68-43926c14c5de",
                "3a112a75-8729-4380-b4cf-764d79934448"),
    "riscv64": ("72ec70a6-cf74-40e6-bd49-4bda08e8f224", "b6ed5582-440b-4209-b8da-5ff7c419ea3d",
                "efe0f087-ea8d-4469-821a-4c2a96a8386a"),
    "s390": ("08a7acea-624c-4a20-91e8-6e0fa67d23f9", "7ac63b47-b25c-463b-8df8-b4a94e6c90e1",
             "3482388e-4254-435a-a241-766a065f9960"),
    "s390x": ("5eead9a9-fe09-4a1e-a1d7-520d00531306", "b325bfbe-c7be-4ab8-8357-139e652d2f6b",
              "c80187a5-73a3-491a-901a-017c3fa953e9"),
    "x86": ("44479540-f297-41b2-9af7-d131d5f0458a", "d13c5d3b-b5d1-422a-b29f-9454fdc89d76",
            "5996fc05-109c-48de-808b-23fa0830b676"),
    "x86-64": ("4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",
               "41092b05-9fc8-4523-994f-2def0408b176"),
}

# uname's machine names as systemd's architecture names (src/basic/architecture.c)
MACHINE_ARCH = {
    "x86_64": "x86-64", "amd64": "x86-64", "i386": "x86", "i486": "x86", "i586": "x86",
    "i686": "x86", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm", "armv6l": "arm",
    "armv8l": "arm", "riscv64": "riscv64", "riscv32": "riscv32", "loongarch64": "loongarch64",
    "ppc64le": "ppc64-le", "ppc64": "ppc64", "ppc": "ppc", "s390x": "s390x", "s390": "s390",
    "ia64": "ia64", "alpha": "alpha", "parisc": "parisc", "parisc64": "parisc",
    "mips": "mips-le", "mips64": "mips64-le",
}

# GPT attribute bit 60: read-only (systemd mounts the partition read-only). systemd-repart
# 257's --make-ddi=portable sets it on the root (verity data) and root-verity partitions, not
# on root-verity-sig (seen with sfdisk -d on its output)
FLAG_READ_ONLY = 1 << 60
FLAGS = {"root": FLAG_READ_ONLY, "root-verity": FLAG_READ_ONLY, "root-verity-sig": 0}

# repart.c: the signature partition it writes is this large, the JSON padded with NULs;
# dissect-image.c refuses a signature partition larger than 4 MiB
VERITY_SIG_SIZE = 16 * 1024
VERITY_SIG_MAX = 4 * 1024 * 1024

# libblkid (util-linux 2.36, Debian 11's, which systemd 247 probes with) skips the GPT
# prober on a device of 1440 KiB or less ("ignore floppies"): a smaller DDI is then "no
# suitable partition table". Disks are padded to just above that.
MIN_DISK_SIZE = 1440 * 1024 + 1

# the kinds of partition a portable DDI carries, in the order repart writes them
ROOT, VERITY, VERITY_SIG = "root", "root-verity", "root-verity-sig"
KINDS = (ROOT, VERITY, VERITY_SIG)


@dataclass(frozen=True)
class PartitionType:
    arch: str
    kind: str  # ROOT, VERITY or VERITY_SIG
    uuid: uuid.UUID

    @property
    def name(self) -> str:
        """systemd's name for the type, also the label repart gives by default: root-x86-64."""
        return f"root-{self.arch}{self.kind[len(ROOT):]}"


def host_arch() -> str:
    machine = platform.machine()
    try:
        return MACHINE_ARCH[machine]
    except KeyError:
        raise ValueError(f"no Discoverable Partitions type for machine {machine!r}") from None


def partition_type(arch: str, kind: str) -> PartitionType:
    return PartitionType(arch, kind, uuid.UUID(ROOT_TYPES[arch][KINDS.index(kind)]))


def identify(type_uuid: uuid.UUID) -> PartitionType | None:
    """The root-partition type a GPT type UUID stands for, or None (another partition)."""
    for arch, uuids in ROOT_TYPES.items():
        for kind, text in zip(KINDS, uuids, strict=True):
            if uuid.UUID(text) == type_uuid:
                return PartitionType(arch, kind, type_uuid)
    return None


def verity_uuids(root_hash: bytes) -> tuple[uuid.UUID, uuid.UUID]:
    """(root partition UUID, verity partition UUID): the two halves of a sha256 root hash."""
    if len(root_hash) != 32:
        raise ValueError(f"a sha256 root hash has 32 bytes, not {len(root_hash)}")
    return uuid.UUID(bytes=root_hash[:16]), uuid.UUID(bytes=root_hash[16:])
