"""``portable-service sign IMAGE``: sign an image's root hash after the build.

The build machine need not hold the key (mkosi's ``Verity=defer``): build with
``verity = true``, carry IMAGE, IMAGE's .verity and .roothash to where the key is, and sign
there with a PEM key, a PKCS#11 URI (an HSM, through openssl) or any command that signs its
stdin (a cloud KMS). An image built without verity gets its hash tree and root hash first,
exactly as a build would make them. The hash tree is checked against the image before
anything is signed: a modified image is never signed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from portable_service.builder.verity import SidecarSet
from portable_service.disk import signing, verity
from portable_service.errors import ImageError, SpecError, VerityError
from portable_service.rules import verity as rules

GPT_SIGNATURE_OFFSET, GPT_SIGNATURE = 512, b"EFI PART"


def sign_image(image: Path, *, key: str | None = None, certificate: Path | None = None,
               command: str | None = None) -> Path:
    """Write IMAGE's .roothash.p7s (and .verity/.roothash when missing); returns its path."""
    if (key is None) == (command is None):
        raise SpecError("give either --key or --sign-command", "--key KEY --certificate CERT")
    if key is not None and certificate is None:
        raise SpecError("--key needs --certificate", "give the key's X.509 certificate (PEM)")
    try:
        with open(image, "rb") as f:
            f.seek(GPT_SIGNATURE_OFFSET)
            head = f.read(len(GPT_SIGNATURE))
    except OSError as e:
        raise ImageError(f"cannot read image {image}: {e.strerror}", "give a built .raw image") from None
    if head == GPT_SIGNATURE:
        # a DDI's signature goes into its root-<arch>-verity-sig partition (builder/ddi.py)
        from portable_service.builder.ddi import sign_ddi

        if certificate is None:
            raise SpecError("signing a GPT disk image needs --certificate",
                            "its signature partition names the certificate's fingerprint")
        if command is not None:
            cmd = command
            return sign_ddi(image, lambda h: signing.sign_with_command(h, cmd, certificate),
                            certificate)
        assert key is not None
        pem = key
        return sign_ddi(image, lambda h: signing.sign_root_hash(h, pem, certificate), certificate)
    paths = rules.sidecars(image)
    tree_path, hash_path = paths[rules.VERITY_SUFFIX], paths[rules.ROOTHASH_SUFFIX]
    files: dict[Path, bytes | None] = {}
    if tree_path.exists() and hash_path.exists():
        root_hash = signing.read_root_hash(hash_path)
        verity.verify_hash_tree(image, tree_path.read_bytes(), bytes.fromhex(root_hash))
    elif tree_path.exists() or hash_path.exists():
        have, lack = (tree_path, hash_path) if tree_path.exists() else (hash_path, tree_path)
        raise VerityError(f"{have.name} is beside the image but {lack.name} is not",
                          "rebuild with verity = true, or remove it to have sign make both")
    else:
        verity.check_whole_blocks(image, "rebuild it with portable-service build")
        tree = verity.tree_for_image(image)
        root_hash = tree.root_hash_hex
        files[tree_path] = tree.hash_tree
        files[hash_path] = (root_hash + "\n").encode()
    if command is not None:
        p7s = signing.sign_with_command(root_hash, command, certificate)
    else:
        assert key is not None and certificate is not None
        p7s = signing.sign_root_hash(root_hash, key, certificate)
    files[paths[rules.SIGNATURE_SUFFIX]] = p7s
    sidecars = SidecarSet(files)
    try:
        sidecars.stage()
        sidecars.commit()
    finally:
        sidecars.discard()
    return paths[rules.SIGNATURE_SUFFIX]


def cmd_sign(args: argparse.Namespace) -> int:
    out = sign_image(Path(args.image), key=args.key, certificate=args.certificate,
                     command=args.sign_command)
    print(out)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("sign", help="sign an image's dm-verity root hash (IMAGE.roothash.p7s)",
                       description="Sign the root hash of a built image: write "
                       "NAME.roothash.p7s beside it (and NAME.verity and NAME.roothash when "
                       "the image was built without verity). The hash tree is checked against "
                       "the image first.")
    p.add_argument("image", help="a portable image (.raw)")
    p.add_argument("--key", metavar="KEY", help="PEM private key, or a pkcs11: URI (through "
                   "openssl's pkcs11 provider or engine)")
    p.add_argument("--certificate", type=Path, metavar="CERT",
                   help="the key's X.509 certificate (PEM); with --sign-command, the result is "
                   "checked against it")
    p.add_argument("--sign-command", metavar="CMD",
                   help="a command that reads the data to sign on stdin and writes a DER PKCS#7 "
                   "signature (detached, no certificates, no attributes) on stdout")
    p.set_defaults(func=cmd_sign)
