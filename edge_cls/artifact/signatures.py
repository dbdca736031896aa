"""Public-key signatures of artifacts, verified on the device with ``cryptography`` alone.

``edge-cls sign`` (build side, :mod:`edge_cls.export.signing`) writes ``model.sig`` into the
artifact with OpenSSF model-signing's private-key signer: a Sigstore bundle (v0.3) holding a DSSE
envelope over an in-toto statement whose predicate lists every file of the artifact with its
sha256 (``manifest.json`` included), signed with an EC P-256/384/521 key. ``model_signing verify
key`` accepts it. A device does not need model-signing or sigstore for that: this module checks
the same bundle with ``cryptography`` (``pip install 'edge-cls[signatures]'``) and the public keys
it trusts (``load(..., trusted_keys=...)`` or ``$EDGE_CLS_TRUSTED_KEYS``, PEM files separated by
``:``; a directory stands for its ``*.pem`` files). It holds no private key, so it cannot sign.

What is checked: the bundle's media type; the ECDSA signature over the DSSE pre-authentication
encoding, under a trusted key (the one whose sha256 hint the bundle names); the statement's type,
predicate type and serialization (files, sha256); the subject digest (sha256 over the resources'
digests, model-signing's root digest); and that the resources are exactly the artifact's files:
``manifest.json`` with the sha256 of the bytes just read, each listed file with the sha256 the
manifest records (which the integrity check compares with the file), and ``manifest.json.hmac``
where present. With trusted keys set, an unsigned or wrongly signed artifact is refused.

Written here rather than imported: model-signing's verifier needs sigstore and its dependency
tree (tens of MB) on every device; the format is small and fixed, and cryptography does the maths.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_cls.errors import ArtifactError, BackendUnavailableError, ConfigError

from .integrity import KEY_SIGNATURE_NAME, MANIFEST_NAME, SIGNATURE_NAME, read_bounded

if TYPE_CHECKING:
    from .manifest import ArtifactFile

TRUSTED_KEYS_ENV = "EDGE_CLS_TRUSTED_KEYS"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
MAX_SIGNATURE_BYTES = 8 * 2**20  # a bundle listing 10,000 files is about 1.5 MB
INSTALL = "pip install 'edge-cls[signatures]' (the cryptography package)"
KeySource = Any  # a PEM file (str or PathLike), PEM bytes, or a cryptography EC public key


class TrustedKey:
    """An EC public key a device trusts, and model-signing's hint for it (sha256 of its PEM)."""

    def __init__(self, key: Any, source: str) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _HASHES:
            raise ConfigError(f"{source} is not an EC P-256, P-384 or P-521 public key: model-signing's key "
                              "signer, and so edge-cls sign, uses those")
        self.key, self.source = key, source
        pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.hint = hashlib.sha256(pem).hexdigest()

    def verifies(self, signature: bytes, message: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            self.key.verify(signature, message, ec.ECDSA(_HASHES[self.key.curve.name]()))
        except InvalidSignature:
            return False
        return True


_HASHES: dict[str, Any] = {}


def require_cryptography() -> None:
    """Import cryptography (once) or say how to install it."""
    if _HASHES:
        return
    try:
        from cryptography.hazmat.primitives import hashes
    except ImportError:
        raise BackendUnavailableError(f"verifying artifact signatures needs cryptography: {INSTALL}") from None
    _HASHES.update(secp256r1=hashes.SHA256, secp384r1=hashes.SHA384, secp521r1=hashes.SHA512)


def trusted_keys(keys: Iterable[KeySource] | KeySource | None = None) -> list[TrustedKey] | None:
    """The public keys to verify with: ``keys`` if given (paths, PEM bytes or key objects), else
    ``$EDGE_CLS_TRUSTED_KEYS``; None when neither is set, or ``keys`` is empty (signatures are then
    not required)."""
    if isinstance(keys, (list, tuple)) and not keys:
        return None
    if keys is None:
        setting = os.environ.get(TRUSTED_KEYS_ENV, "").strip()
        if not setting:
            return None
        keys = [Path(p) for p in setting.split(os.pathsep) if p.strip()]
    elif isinstance(keys, (str, os.PathLike, bytes)) or not isinstance(keys, Iterable):
        keys = [keys]
    require_cryptography()
    loaded = [_load_key(item, source) for given in keys for item, source in _expand(given)]
    if not loaded:
        raise ConfigError(f"no trusted public key was found in {keys!r}: give PEM files (or ${TRUSTED_KEYS_ENV})")
    return loaded


def _expand(given: KeySource) -> list[tuple[Any, str]]:
    if isinstance(given, (str, os.PathLike)):
        path = Path(given)
        if path.is_dir():
            return [(p, str(p)) for p in sorted(path.glob("*.pem"))]
        return [(path, str(path))]
    return [(given, "a trusted key")]


def _load_key(item: Any, source: str) -> TrustedKey:
    from cryptography.hazmat.primitives import serialization

    if isinstance(item, Path):
        try:
            item = item.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read the trusted public key {source}: {e.strerror}") from e
    if isinstance(item, bytes):
        try:
            item = serialization.load_pem_public_key(item)
        except ValueError as e:
            raise ConfigError(f"{source} is not a PEM public key ({e}); a private key never goes on a device") from e
    return TrustedKey(item, source)


def verify_signature(directory: Path, raw_manifest: bytes, files: Sequence[ArtifactFile],
                     keys: Sequence[TrustedKey]) -> TrustedKey:
    """Refuse an artifact that is unsigned, signed by an untrusted key, or changed since it was
    signed; return the key that signed it."""
    path = directory / KEY_SIGNATURE_NAME
    if not os.path.lexists(path):
        raise ArtifactError(f"{directory} is not signed (no {KEY_SIGNATURE_NAME}) but trusted keys are set: sign it "
                            f"with 'edge-cls sign', or unset {TRUSTED_KEYS_ENV} to load unsigned artifacts")
    bundle = _parse(read_bounded(path, MAX_SIGNATURE_BYTES, "a signature bundle"), path)
    payload, signature, hint = _envelope(bundle, path)
    key = _signing_key(keys, hint, signature, payload, path)
    _check_statement(payload, path, _expected_resources(directory, raw_manifest, files))
    return key


def _parse(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        bundle = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ArtifactError(f"{path} is not a signature bundle (not JSON: {e}); sign the artifact again") from None
    if not isinstance(bundle, dict) or bundle.get("mediaType") != BUNDLE_MEDIA_TYPE:
        raise ArtifactError(f"{path} is not a model-signing bundle (media type {BUNDLE_MEDIA_TYPE} expected)")
    return bundle


def _field(data: Any, *names: str | int) -> Any:
    for name in names:
        try:
            data = data[name]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _envelope(bundle: dict[str, Any], path: Path) -> tuple[bytes, bytes, str | None]:
    """The DSSE payload, its signature and the bundle's key hint."""
    envelope = bundle.get("dsseEnvelope")
    payload, signature = _field(envelope, "payload"), _field(envelope, "signatures", 0, "sig")
    if (_field(envelope, "payloadType") != PAYLOAD_TYPE or not isinstance(payload, str)
            or not isinstance(signature, str)):
        raise ArtifactError(f"{path} holds no DSSE envelope with an in-toto payload and a signature")
    try:
        return (base64.b64decode(payload, validate=True), base64.b64decode(signature, validate=True),
                _field(bundle, "verificationMaterial", "publicKey", "hint"))
    except (binascii.Error, ValueError):
        raise ArtifactError(f"{path}: the envelope's payload or signature is not base64") from None


def _signing_key(keys: Sequence[TrustedKey], hint: Any, signature: bytes, payload: bytes, path: Path) -> TrustedKey:
    message = b" ".join([f"DSSEv1 {len(PAYLOAD_TYPE)} {PAYLOAD_TYPE} {len(payload)}".encode(), payload])  # DSSE PAE
    candidates = [k for k in keys if k.hint == hint] if isinstance(hint, str) and hint else list(keys)
    for key in candidates:
        if key.verifies(signature, message):
            return key
    if not candidates:
        raise ArtifactError(f"{path} was signed by a key this device does not trust (key hint {str(hint)[:16]}...): "
                            f"add its public key to {TRUSTED_KEYS_ENV}, or sign with a trusted key")
    raise ArtifactError(f"{path} does not verify under the trusted key {candidates[0].source}: the signed statement "
                        "was changed, or the signature forged; sign the artifact again")


def _expected_resources(directory: Path, raw_manifest: bytes, files: Sequence[ArtifactFile]) -> dict[str, str]:
    expected = {MANIFEST_NAME: hashlib.sha256(raw_manifest).hexdigest()}
    expected.update({f.path: f.sha256 for f in files})
    if os.path.lexists(directory / SIGNATURE_NAME):
        expected[SIGNATURE_NAME] = hashlib.sha256(read_bounded(directory / SIGNATURE_NAME, 1024, "an HMAC")).hexdigest()
    return expected


def _check_statement(payload: bytes, path: Path, expected: dict[str, str]) -> None:
    try:
        statement = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ArtifactError(f"{path}: the signed payload is not JSON") from None
    serialization = _field(statement, "predicate", "serialization")
    if (_field(statement, "_type") != STATEMENT_TYPE or _field(statement, "predicateType") != PREDICATE_TYPE
            or _field(serialization, "method") != "files" or _field(serialization, "hash_type") != "sha256"):
        raise ArtifactError(f"{path}: the signed statement is not a model-signing v1.0 statement over files hashed "
                            "with sha256; sign the artifact with 'edge-cls sign'")
    resources = _field(statement, "predicate", "resources")
    if not isinstance(resources, list):
        raise ArtifactError(f"{path}: the signed statement lists no resources")
    signed: dict[str, str] = {}
    root = hashlib.sha256()
    for item in resources:
        name, digest = _field(item, "name"), _field(item, "digest")
        if _field(item, "algorithm") != "sha256" or not isinstance(name, str) or not isinstance(digest, str):
            raise ArtifactError(f"{path}: a signed resource is not a sha256 file digest")
        signed[name] = digest
        try:
            root.update(bytes.fromhex(digest))
        except ValueError:
            raise ArtifactError(f"{path}: signed digest of {name!r} is not hex") from None
    if _field(statement, "subject", 0, "digest", "sha256") != root.hexdigest() or len(statement["subject"]) != 1:
        raise ArtifactError(f"{path}: the statement's subject digest does not match its resources")
    _compare(signed, expected, path)


def _compare(signed: dict[str, str], expected: dict[str, str], path: Path) -> None:
    for name in sorted(set(signed) | set(expected)):
        if name not in expected:
            raise ArtifactError(f"{path} covers {name!r}, which the artifact no longer holds: it changed after it was "
                                "signed; rebuild or re-copy it")
        if name not in signed:
            raise ArtifactError(f"{path} does not cover {name!r}: the artifact changed after it was signed; sign it "
                                "again")
        if signed[name] != expected[name]:
            raise ArtifactError(f"{name} has another sha256 than the one signed in {path}: the artifact changed after "
                                "it was signed; rebuild or re-copy it")
