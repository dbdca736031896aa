"""Public-key signatures: `edge-cls sign` writes model-signing's bundle, `model_signing verify` accepts
it, and a device holding only public keys (and only cryptography) verifies it, refusing unsigned,
forged or changed artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_cls.artifact.integrity import KEY_ENV, KEY_SIGNATURE_NAME, SIGNATURE_NAME
from edge_cls.artifact.manifest import describe_files
from edge_cls.artifact.signatures import TRUSTED_KEYS_ENV
from edge_cls.errors import ArtifactError
from edge_cls.runtimes import load

pytest.importorskip("model_signing", reason="pip install 'edge-cls[sign]' (in [dev])")
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

CLI = [sys.executable, "-m", "edge_cls.cli"]


def key_pair(folder: Path, name: str, curve=ec.SECP256R1) -> tuple[Path, Path]:
    private = ec.generate_private_key(curve()) if curve else ed25519.Ed25519PrivateKey.generate()
    secret, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    secret.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    public.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    return secret, public


def cli(*args, env=None):
    environment = {k: v for k, v in os.environ.items() if k not in (TRUSTED_KEYS_ENV, KEY_ENV)} | (env or {})
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300, env=environment)


def refused(result, match):
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("edge-cls: error:") and match in result.stderr, \
        result.stderr


@pytest.fixture
def signed(artifact_copy, tmp_path):
    """A copy of an artifact signed by `edge-cls sign` with a fresh P-256 key: (artifact, private, public)."""
    artifact = artifact_copy("onnx-fp32")
    private, public = key_pair(tmp_path, "release")
    result = cli("sign", artifact, "--key", private)
    assert result.returncode == 0 and f"{artifact / KEY_SIGNATURE_NAME}: signed" in result.stdout, result.stderr
    return artifact, private, public


def test_model_signing_accepts_it_and_a_device_verifies_with_cryptography_alone(signed, test_images):
    artifact, _, public = signed
    tool = Path(sys.executable).parent / "model_signing"
    verified = subprocess.run([str(tool), "verify", "key", str(artifact), "--signature", str(artifact / "model.sig"),
                               "--public_key", str(public)], capture_output=True, text=True, timeout=300)
    assert verified.returncode == 0 and "Verification succeeded" in verified.stdout + verified.stderr, verified.stderr
    device = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from edge_cls.runtimes import load
        with load({str(artifact)!r}) as clf:
            clf.predict({str(test_images[0])!r}, k=1)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("model_signing", "sigstore", "OpenSSL")))
    """)], capture_output=True, text=True, timeout=300, env=os.environ | {TRUSTED_KEYS_ENV: str(public)})
    assert device.returncode == 0 and device.stdout.strip() == "[]", device.stderr
    with load(artifact, trusted_keys=[public.read_bytes()]) as clf:  # keys as PEM bytes, not only files
        assert clf.predict(test_images[0], k=1)


def test_with_trusted_keys_an_unsigned_artifact_is_refused(artifact_copy, tmp_path, test_images):
    artifact = artifact_copy("onnx-fp32")
    _, public = key_pair(tmp_path, "release")
    refused(cli("predict", artifact, test_images[0], env={TRUSTED_KEYS_ENV: str(public)}),
            f"is not signed (no {KEY_SIGNATURE_NAME}) but trusted keys are set")
    assert cli("predict", artifact, test_images[0]).returncode == 0  # without keys, as before


def rewrite_manifest(artifact: Path, change) -> None:
    """What an attacker without the key can do: change a file and rewrite the manifest to match."""
    path = artifact / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_manifest_re_signed_with_a_forged_key_is_refused(signed, tmp_path, test_images):
    artifact, _, public = signed
    rewrite_manifest(artifact, lambda d: d.update(labels=[f"forged {x}" for x in d["labels"]]))
    forger, _ = key_pair(tmp_path, "forger")
    assert cli("sign", artifact, "--key", forger).returncode == 0
    refused(cli("predict", artifact, test_images[0], env={TRUSTED_KEYS_ENV: str(public)}),
            "signed by a key this device does not trust")
    bundle = json.loads((artifact / KEY_SIGNATURE_NAME).read_text())  # forged, now naming the trusted key's hint
    bundle["verificationMaterial"]["publicKey"]["hint"] = ec_hint(public)
    (artifact / KEY_SIGNATURE_NAME).write_text(json.dumps(bundle))
    with pytest.raises(ArtifactError, match="does not verify under the trusted key"):
        load(artifact, trusted_keys=[public])


def ec_hint(public: Path) -> str:
    import hashlib

    key = serialization.load_pem_public_key(public.read_bytes())
    return hashlib.sha256(key.public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def test_a_file_changed_after_signing_is_refused(signed, test_images):
    artifact, _, public = signed
    model = artifact / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")  # and the manifest rewritten to match: the hashes pass
    rewrite_manifest(artifact, lambda d: d.update(files=[vars(f) for f in describe_files(
        artifact, [f["path"] for f in d["files"]])]))
    with pytest.raises(ArtifactError, match="changed after it was signed"):
        load(artifact, trusted_keys=[public])


@pytest.mark.slow
def test_hmac_and_trusted_keys_both_apply(artifact_copy, tmp_path, test_images):
    artifact = artifact_copy("openvino-fp32")
    private, public = key_pair(tmp_path, "p384", ec.SECP384R1)
    assert cli("sign", artifact, "--key", private).returncode == 0
    secret = {KEY_ENV: "k" * 32, TRUSTED_KEYS_ENV: str(public)}
    refused(cli("predict", artifact, test_images[0], env=secret), f"is not signed (no {SIGNATURE_NAME})")
    rewrite_manifest(artifact, lambda d: None)  # the HMAC is written with the manifest: sign both again
    from edge_cls.artifact.manifest import Manifest

    Manifest.from_dict(json.loads((artifact / "manifest.json").read_text())).save(artifact, key=secret[KEY_ENV])
    refused(cli("predict", artifact, test_images[0], env=secret), f"does not cover '{SIGNATURE_NAME}'")
    assert cli("sign", artifact, "--key", private, env=secret).returncode == 0
    assert cli("predict", artifact, test_images[0], env=secret).returncode == 0


def test_keys_model_signing_cannot_use_are_one_line_errors(artifact_copy, tmp_path):
    artifact = artifact_copy("onnx-fp32")
    ed, ed_public = key_pair(tmp_path, "ed", curve=None)
    refused(cli("sign", artifact, "--key", ed), "is not an EC P-256, P-384 or P-521 public key")
    refused(cli("info", artifact, env={TRUSTED_KEYS_ENV: str(ed_public)}), "is not an EC P-256")
    refused(cli("sign", artifact, "--key", tmp_path / "missing.pem"), "cannot read the private key")
    assert not (artifact / KEY_SIGNATURE_NAME).exists()
