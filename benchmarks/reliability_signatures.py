"""Reliability cases for public-key signatures (``edge-cls sign``, ``EDGE_CLS_TRUSTED_KEYS``): a signed
artifact loads on a device that holds only the public key; unsigned, forged, swapped and changed ones
must not."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

from reliability_cases import Case, _flip, _rehash, _tampered, flip_positions

KIND = "tampered artifacts: public-key signatures (trusted key set)"
CONTROL = "signed artifacts, trusted key set (control: must load)"


def _key_pair(work: Path, name: str) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    secret, public = work / f"{name}.pem", work / f"{name}.pub.pem"
    secret.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    public.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    return secret, public


def _signed_copy(source: Path, work: Path, key: Path) -> Path:
    from edge_cls.export.signing import sign_artifact

    target = work / f"key-signed-{source.name}"
    if not target.exists():
        shutil.copytree(source, target)
        sign_artifact(target, key)
    return target


def _resign(key: Path) -> Callable[[Path], None]:
    from edge_cls.export.signing import sign_artifact

    return lambda d: sign_artifact(d, key)


def _with_hint(hint: str) -> Callable[[Path], None]:
    def change(directory: Path) -> None:
        bundle = json.loads((directory / "model.sig").read_text())
        bundle["verificationMaterial"]["publicKey"]["hint"] = hint
        (directory / "model.sig").write_text(json.dumps(bundle))

    return change


def _changes(model: str, other: Path, forger: Path, hint: str) -> dict[str, Callable[[Path], None]]:
    return {
        "unsigned": lambda d: (d / "model.sig").unlink(),
        "file changed, manifest re-hashed, not re-signed": _rehash(model),
        "file changed, manifest re-hashed, re-signed with a forged key":
            lambda d: (_rehash(model)(d), _resign(forger)(d)),
        "re-signed with a forged key that claims the trusted key's hint":
            lambda d: (_rehash(model)(d), _resign(forger)(d), _with_hint(hint)(d)),
        "signature of another artifact (same trusted key)": lambda d: shutil.copy(other / "model.sig", d / "model.sig"),
        "model.sig emptied": lambda d: (d / "model.sig").write_bytes(b""),
        "model.sig truncated": lambda d: (d / "model.sig").write_bytes((d / "model.sig").read_bytes()[:200]),
        "model.sig not JSON": lambda d: (d / "model.sig").write_bytes(b"\x00garbage"),
        "manifest.json byte flip (middle)": lambda d: _flip("manifest.json", (d / "manifest.json").stat().st_size // 2,
                                                            0x01)(d),
    }


def signature_cases(artifacts: dict[str, Path], work: Path, seed: int) -> list[Case]:
    from edge_cls.artifact.signatures import TRUSTED_KEYS_ENV, trusted_keys

    rng = random.Random(seed)
    release, public = _key_pair(work, "release")
    forger, _ = _key_pair(work, "forger")
    env = {TRUSTED_KEYS_ENV: str(public)}
    hint = trusted_keys([public])[0].hint
    cases = []
    for name, source in artifacts.items():
        signed = _signed_copy(source, work, release)
        other = _signed_copy(next(a for n, a in artifacts.items() if n != name), work, release)
        model = "model.onnx" if (source / "model.onnx").exists() else "model.bin"
        changes = _changes(model, other, forger, hint)
        for where, position in flip_positions((signed / "model.sig").stat().st_size, rng).items():
            changes[f"model.sig {where} ^0x01"] = _flip("model.sig", position, 0x01)
        cases.append(_tampered(CONTROL, f"{name}: signed, untouched", signed, work, lambda d: None, env=env))
        cases += [_tampered(KIND, f"{name}: {what}", signed, work, change, env=env) for what, change in changes.items()]
    return cases
