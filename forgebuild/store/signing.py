"""Workspace keys and the signatures on remote cache entries (Ed25519, through `cryptography`).

A remote's contents are whatever anyone with write access put there. Content digests (BLAKE3)
make a blob's name prove its bytes, and the provenance statement says which action an entry
belongs to, but both can be forged together by a writer: a self-consistent statement for
swapped bytes. A signature settles who vouches for an entry: a workspace signs every entry it
pushes, and a fetch uses only entries signed by a key it trusts (its own, and the public keys
in `[forge] trusted_keys`).

- The private key lives in `.forge/keys/signing.key` (PKCS#8 PEM, mode 0600), beside the
  store but never inside it, so neither a push nor `clean --cache` ever touches it; made on
  the first push or by `forgebuild keys`. FORGE_SIGNING_KEY names another file (CI secrets).
- Public keys are OpenSSH lines (`ssh-ed25519 AAAA... comment`): short, pasteable, and
  the format `ssh-keygen -y` and every SSH tool read.
- What is signed: the action key, the entry (manifest, tree digest, statement digest,
  record id, verdict) and the digest of the build record, as canonical JSON. The statement
  is a blob named by its digest, so it is covered through the entry.
"""
from __future__ import annotations

import base64
import json
import os

from forgebuild.errors import UsageError

KEY_FILE = "signing.key"
PUBLIC_FILE = "signing.pub"
KEY_TYPE = "ssh-ed25519"


class KeyProblem(ValueError):
    """A trusted key that cannot be read: a Forgefile error (exit 2)."""


def key_dir(workspace_dir: str) -> str:
    return os.path.join(workspace_dir, "keys")


def private_path(workspace_dir: str) -> str:
    return os.environ.get("FORGE_SIGNING_KEY") or os.path.join(key_dir(workspace_dir), KEY_FILE)


def load_or_make(workspace_dir: str):
    """This workspace's private key, made (0600, written whole) when there is none yet."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = private_path(workspace_dir)
    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except FileNotFoundError:
        if os.environ.get("FORGE_SIGNING_KEY"):
            raise UsageError(f"FORGE_SIGNING_KEY names {path}, which does not exist") from None
        return _make(workspace_dir, path)
    except ValueError as e:
        raise UsageError(f"{path}: not a PEM private key ({e})") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot be read ({e.strerror})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path}: not an Ed25519 private key")
    return key


def _make(workspace_dir: str, path: str):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    try:
        os.link(tmp, path)  # not a rename: two processes making a key at once keep the first one
    except FileExistsError:
        os.unlink(tmp)
        return load_or_make(workspace_dir)
    os.unlink(tmp)
    with open(os.path.join(os.path.dirname(path), PUBLIC_FILE), "w", encoding="utf-8") as f:
        f.write(public_line(key) + "\n")
    return key


def public_line(private_key) -> str:
    """The OpenSSH line of a private key's public half."""
    from cryptography.hazmat.primitives import serialization

    raw = private_key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return raw.decode() + " forgebuild"


def parse_public(text: str):
    """An Ed25519 public key from its OpenSSH line (the comment is ignored); KeyProblem otherwise."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    parts = text.split()
    if len(parts) < 2 or parts[0] != KEY_TYPE:
        raise KeyProblem(f"not an {KEY_TYPE} public key (expected `{KEY_TYPE} AAAA...`, as `forgebuild keys` shows)")
    try:
        key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except (ValueError, TypeError) as e:
        raise KeyProblem(f"not a valid {KEY_TYPE} public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyProblem(f"not an {KEY_TYPE} public key")
    return key


def raw_bytes(public_key) -> bytes:
    """The key's 32 bytes: what identifies it, whatever comment its OpenSSH line carries."""
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public_key) -> str:
    """The key's short name in messages: `ed25519:` and the first 16 characters of its base64."""
    return "ed25519:" + base64.b64encode(raw_bytes(public_key)).decode()[:16]


def is_key_text(item: str) -> bool:
    """An inline key, as opposed to the path of a file holding one."""
    return item.startswith(KEY_TYPE + " ")


def trusted_keys(items: list[str], root: str, source: str) -> dict:
    """{raw public bytes: key} of `[forge] trusted_keys` (inline lines, or files relative to `root`);
    `source` names where the list came from in errors (exit 2)."""
    found = {}
    for item in items:
        text, where = item, ""
        if not is_key_text(item):
            where = f"{item}: "
            try:
                with open(os.path.join(root, item), encoding="utf-8") as f:
                    text = f.read().strip()
            except (OSError, UnicodeDecodeError) as e:
                raise UsageError(f"{source}: {item}: cannot be read "
                                 f"({getattr(e, 'strerror', None) or e})") from None
        try:
            key = parse_public(text)
        except KeyProblem as e:
            raise UsageError(f"{source}: {where}{e}") from None
        found[raw_bytes(key)] = key
    return found


# ------------------------------------------------------------------ signatures

def payload(action_key: str, entry: dict, record_digest: str | None) -> bytes:
    """The bytes a signature covers: canonical JSON, so signer and verifier agree byte for byte."""
    body = {"action_key": action_key, "entry": {k: v for k, v in entry.items() if k != "signature"},
            "record": record_digest}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(private_key, action_key: str, entry: dict, record_digest: str | None) -> dict:
    """The entry's `signature` field: who signs (OpenSSH line), the record's digest, the signature."""
    sig = private_key.sign(payload(action_key, entry, record_digest))
    return {"key": public_line(private_key), "record": record_digest, "sig": base64.b64encode(sig).decode()}


def check(signature: dict, action_key: str, entry: dict, trusted: dict) -> str | None:
    """Why a signature does not vouch for this entry, or None when a trusted key made it."""
    from cryptography.exceptions import InvalidSignature

    try:
        key = parse_public(signature["key"])
    except KeyProblem as e:
        return f"its signature's key is {e}"
    raw = raw_bytes(key)
    if raw not in trusted:
        return f"it is signed by {fingerprint(key)}, a key this workspace does not trust ([forge] trusted_keys)"
    try:
        sig = base64.b64decode(signature["sig"], validate=True)
        trusted[raw].verify(sig, payload(action_key, entry, signature["record"]))
    except (InvalidSignature, ValueError):
        return f"its signature by {fingerprint(key)} does not match its contents (tampered)"
    return None
