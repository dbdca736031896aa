"""An artifact directory checked against its manifest, and read once.

What ``load`` trusts: the directory holds exactly the files the manifest lists (plus the
manifest and its optional signature), none of them a symbolic link or a special file, each of
the recorded size and sha256. The bytes that were hashed are the bytes handed to the backend
(:class:`ArtifactFiles`): nothing is opened again by path after the check.

The hashes detect corruption and tampering of the files, not a manifest rewritten to match
them. For that, sign manifests with a key (HMAC-SHA256, standard library only): set
``EDGE_CLS_MANIFEST_KEY_FILE`` (a file holding the key) or ``EDGE_CLS_MANIFEST_KEY`` when
building and when loading; a loader with a key refuses an artifact that is unsigned or signed
with another key. A shared key also lets every device sign; public-key signatures
(:mod:`edge_cls.artifact.signatures`, ``model.sig``) let devices verify without that power.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edge_cls.errors import ArtifactError, ConfigError

if TYPE_CHECKING:
    from edge_cls.artifact.manifest import ArtifactFile

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.json.hmac"
KEY_SIGNATURE_NAME = "model.sig"  # a public-key signature (edge_cls.artifact.signatures)
KEY_ENV = "EDGE_CLS_MANIFEST_KEY"
KEY_FILE_ENV = "EDGE_CLS_MANIFEST_KEY_FILE"
MIN_KEY_BYTES = 16
MAX_ENTRIES = 10_000  # files and directories walked in one artifact
_CHUNK = 1 << 20
_REBUILD = "rebuild or re-copy the artifact"


class ArtifactFiles(Mapping[str, bytes]):
    """The contents of an artifact's files (relative path -> bytes), read once.

    With ``verified`` each file had the size and sha256 its manifest records when it was read.
    Backends build their model from these bytes; drop the object once the model is loaded.
    """

    def __init__(self, directory: Path, model_file: str, contents: dict[str, bytes], *, verified: bool) -> None:
        self.directory = directory
        self.model_file = model_file
        self.verified = verified
        self._contents = contents

    def __getitem__(self, name: str) -> bytes:
        return self._contents[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._contents)

    def __len__(self) -> int:
        return len(self._contents)

    @property
    def model(self) -> bytes:
        """The model file's bytes."""
        return self._contents[self.model_file]

    @property
    def companions(self) -> dict[str, bytes]:
        """Every file but the model file: OpenVINO weights, ONNX external data."""
        return {name: data for name, data in self._contents.items() if name != self.model_file}

    def path(self, name: str | None = None) -> Path:
        """Where a file was read from (for messages; never to read it again)."""
        return self.directory / (name or self.model_file)


def check_layout(directory: Path, listed: Iterable[str]) -> None:
    """Refuse symbolic links, special files, and files or directories the manifest does not list."""
    expected = set(listed)
    parents = {str(parent) for name in expected for parent in Path(name).parents if str(parent) != "."}
    allowed = expected | {MANIFEST_NAME, SIGNATURE_NAME, KEY_SIGNATURE_NAME}
    walked, stack = 0, [("", directory)]
    while stack:
        prefix, folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                walked += 1
                if walked > MAX_ENTRIES:
                    raise ArtifactError(f"{directory} holds more than {MAX_ENTRIES} entries: not an artifact")
                name = prefix + entry.name
                if entry.is_symlink():
                    raise ArtifactError(
                        f"{entry.path} is a symbolic link: an artifact must hold its own files (copy them in, "
                        "e.g. cp -rL), so that what was checked is what runs"
                    )
                if entry.is_dir(follow_symlinks=False) and name in parents:
                    stack.append((name + "/", Path(entry.path)))
                elif entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False):
                    if name not in allowed:
                        raise ArtifactError(
                            f"{entry.path} is not listed in the manifest: an artifact holds only its listed files; "
                            f"remove it, or {_REBUILD}"
                        )
                else:
                    raise ArtifactError(f"{entry.path} is not a regular file: {_REBUILD}")


def open_regular(path: Path) -> int:
    """A read-only descriptor of a regular file; symlinks are not followed, FIFOs never block."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ArtifactError(
            f"{path} is listed in the manifest but missing: copy the whole artifact directory"
        ) from None
    except OSError as e:  # ELOOP: a symlink; EACCES; ...
        raise ArtifactError(f"{path} cannot be opened ({e.strerror}); it must be a regular file: {_REBUILD}") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ArtifactError(f"{path} is not a regular file: {_REBUILD}")
    return fd


def _check_size(path: Path, entry: ArtifactFile, size: int) -> None:
    if size != entry.bytes:
        raise ArtifactError(
            f"{path} has {size} bytes but its manifest records {entry.bytes}: the file was changed, truncated "
            f"or corrupted; {_REBUILD}"
        )


def _check_hash(path: Path, entry: ArtifactFile, digest: str) -> None:
    if not hmac.compare_digest(digest, entry.sha256):
        raise ArtifactError(
            f"{path} does not match the sha256 in its manifest: the file was changed or corrupted; {_REBUILD}"
        )


def read_file(directory: Path, entry: ArtifactFile, *, verify: bool = True) -> bytes:
    """One listed file's bytes, read once; with ``verify`` its size, then its sha256, checked."""
    path = directory / entry.path
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:  # buffered: read(n) loops until n bytes or the end
        size = os.fstat(fd).st_size
        if verify:
            _check_size(path, entry, size)
        data = f.read(size + 1)  # one byte more: a file that grew since fstat is caught below
    if verify:
        _check_size(path, entry, len(data))
        _check_hash(path, entry, hashlib.sha256(data).hexdigest())
    return data


def verify_file(directory: Path, entry: ArtifactFile) -> None:
    """Check one listed file's size and sha256 without keeping its bytes."""
    path = directory / entry.path
    fd = open_regular(path)
    with os.fdopen(fd, "rb", buffering=0) as f:
        _check_size(path, entry, os.fstat(fd).st_size)
        digest, size = hashlib.sha256(), 0
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    _check_size(path, entry, size)
    _check_hash(path, entry, digest.hexdigest())


def verify_files(directory: Path, files: Sequence[ArtifactFile]) -> None:
    """The whole promise: layout (no symlinks, nothing unlisted), then every file's size and hash."""
    check_layout(directory, [f.path for f in files])
    for entry in files:
        verify_file(directory, entry)


def read_files(directory: Path, files: Sequence[ArtifactFile], model_file: str, *, verify: bool = True
               ) -> ArtifactFiles:
    """Every listed file's bytes, checked as :func:`verify_files` does unless ``verify`` is False."""
    if verify:
        check_layout(directory, [f.path for f in files])
    contents = {entry.path: read_file(directory, entry, verify=verify) for entry in files}
    return ArtifactFiles(directory, model_file, contents, verified=verify)


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """A small file (manifest, signature) read through :func:`open_regular`, at most ``limit`` bytes."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ArtifactError(f"{path} is larger than {limit} bytes: too large to be {what}")
    return data


def manifest_key(key: bytes | str | None = None) -> bytes | None:
    """The manifest signing key: ``key`` if given, else ``$EDGE_CLS_MANIFEST_KEY_FILE``'s contents
    (surrounding whitespace stripped), else ``$EDGE_CLS_MANIFEST_KEY``; None when none is set."""
    source = "the key"
    if key is None and os.environ.get(KEY_FILE_ENV):
        source = f"${KEY_FILE_ENV} ({os.environ[KEY_FILE_ENV]})"
        try:
            key = Path(os.environ[KEY_FILE_ENV]).read_bytes().strip()
        except OSError as e:
            raise ConfigError(f"cannot read the manifest key file {source}: {e.strerror}") from e
    elif key is None and os.environ.get(KEY_ENV):
        key, source = os.environ[KEY_ENV], f"${KEY_ENV}"
    if key is None:
        return None
    key = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"{source} is {len(key)} bytes long; a manifest key needs at least {MIN_KEY_BYTES} "
                          "(e.g. python -c 'import secrets; print(secrets.token_hex(32))')")
    return key


def signature(raw_manifest: bytes, key: bytes) -> str:
    """The signature file's text for these manifest bytes."""
    return f"hmac-sha256:{hmac.new(key, raw_manifest, hashlib.sha256).hexdigest()}\n"


def check_signature(directory: Path, raw_manifest: bytes, key: bytes, *, name: str = "manifest.json",
                    signature_name: str = "manifest.json.hmac") -> None:
    """Refuse a manifest (or a bundle's ``bundle.json``: ``name``) that is unsigned, or signed with another
    key, or changed since signing."""
    path = directory / signature_name
    if not os.path.lexists(path):
        raise ArtifactError(
            f"{directory} is not signed (no {signature_name}) but a manifest key is set: build it with the same "
            f"key, or unset {KEY_FILE_ENV}/{KEY_ENV} to load unsigned artifacts"
        )
    found = read_bounded(path, 1024, "a manifest signature").strip()
    expected = signature(raw_manifest, key).strip().encode()
    if not hmac.compare_digest(found, expected):
        raise ArtifactError(
            f"{path} does not match {name} under this key: the manifest was changed after it was signed, "
            "or signed with another key; rebuild the artifact with the right key"
        )
