"""``edge-cls sign``: a public-key signature over an artifact, in OpenSSF model-signing's format.

model-signing's private-key signer (EC P-256/384/521 keys; ``pip install 'edge-cls[sign]'``)
hashes every file of the artifact with sha256 and writes a Sigstore bundle; ``model.sig`` goes
into the artifact directory, where ``model_signing verify key ARTIFACT --signature
ARTIFACT/model.sig --public_key pub.pem`` accepts it and devices verify it with ``cryptography``
alone (:mod:`edge_cls.artifact.signatures`). The artifact is checked against its manifest first,
and the new signature is verified with the key's public half before it replaces anything.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edge_cls._fileio import write_bytes_atomic
from edge_cls.artifact.integrity import KEY_SIGNATURE_NAME, MANIFEST_NAME, SIGNATURE_NAME, read_bounded
from edge_cls.artifact.manifest import load_manifest
from edge_cls.artifact.signatures import (
    MAX_SIGNATURE_BYTES,
    TrustedKey,
    require_cryptography,
    verify_signature,
)
from edge_cls.errors import BackendUnavailableError, ConfigError

INSTALL = "pip install 'edge-cls[sign]'"


def sign_artifact(directory: str | os.PathLike[str], private_key: str | os.PathLike[str], *,
                  password: bytes | None = None) -> tuple[Path, TrustedKey]:
    """Sign ``directory`` with the PEM ``private_key``; returns the signature's path and the public key
    (its ``hint`` is what the bundle names)."""
    directory = Path(directory)
    manifest = load_manifest(directory, trusted_keys=[])  # intact (hashes); an old model.sig is not required
    public = _public_key(Path(private_key), password)
    try:
        from model_signing import hashing, signing
    except ImportError as e:
        raise BackendUnavailableError(f"signing needs OpenSSF model-signing ({e.name} is missing): {INSTALL}") from None
    target = directory / KEY_SIGNATURE_NAME
    config = hashing.Config().use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False) \
        .set_ignored_paths(paths=[KEY_SIGNATURE_NAME])  # relative to the artifact: an older signature
    with tempfile.TemporaryDirectory(prefix="edge-cls-sign-") as scratch:
        written = Path(scratch) / KEY_SIGNATURE_NAME
        try:
            signing.Config().use_elliptic_key_signer(private_key=Path(private_key), password=password) \
                .set_hashing_config(config).sign(directory, written)
        except ValueError as e:
            raise ConfigError(f"model-signing refused to sign {directory} with {private_key}: {e}") from e
        bundle = read_bounded(written, MAX_SIGNATURE_BYTES, "a signature bundle")
        staged = Path(scratch) / "check"  # the new signature, checked as a device would before it is published
        staged.mkdir()
        (staged / KEY_SIGNATURE_NAME).write_bytes(bundle)
        raw = read_bounded(directory / MANIFEST_NAME, 16 * 2**20, "a manifest")
        hmac_file = directory / SIGNATURE_NAME
        if hmac_file.is_file():
            (staged / hmac_file.name).write_bytes(hmac_file.read_bytes())
        verify_signature(staged, raw, manifest.files, [public])
    write_bytes_atomic(target, bundle)
    return target, public


def _public_key(path: Path, password: bytes | None) -> TrustedKey:
    """The public half of the private key, which must be one model-signing's key signer takes."""
    from cryptography.hazmat.primitives import serialization

    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password)
    except OSError as e:
        raise ConfigError(f"cannot read the private key {path}: {e.strerror}") from e
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path} is not a PEM private key ({e}); e.g. openssl ecparam -name prime256v1 -genkey "
                          "-noout -out key.pem") from e
    require_cryptography()
    return TrustedKey(private.public_key(), str(path))
