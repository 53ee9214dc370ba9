#!/usr/bin/env python3
"""Writes docs/envelope-vectors.json: RKMS envelope test vectors computed from
docs/envelope-format.md with Python's `cryptography` package, an implementation independent of
the Rust crate (whose tests check that it writes these envelopes byte for byte).

    python3 scripts/envelope_vectors.py            # rewrite the file
    python3 scripts/envelope_vectors.py --check    # exit 1 if the file differs
"""

import json
import pathlib
import struct
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

OUT = pathlib.Path(__file__).resolve().parent.parent / "docs" / "envelope-vectors.json"


def header(key_id: str, version: int, chunk_size: int, salt: bytes, prefix: bytes) -> bytes:
    id_bytes = key_id.encode()
    return (
        b"RKMSENV\0"
        + bytes([1, 1])
        + struct.pack(">IIH", chunk_size, version, len(id_bytes))
        + id_bytes
        + salt
        + prefix
    )


def envelope(data_key, key_id, version, chunk_size, salt, prefix, plaintext) -> bytes:
    head = header(key_id, version, chunk_size, salt, prefix)
    chunk_key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=salt, info=b"rkms envelope v1 chunk key"
    ).derive(data_key)
    aead = AESGCM(chunk_key)
    chunks = [plaintext[i : i + chunk_size] for i in range(0, len(plaintext), chunk_size)] or [b""]
    body = b""
    for number, chunk in enumerate(chunks):
        last = 1 if number == len(chunks) - 1 else 0
        nonce = prefix + struct.pack(">IB", number, last)
        body += aead.encrypt(nonce, chunk, head)
    return head + body


def vectors():
    data_key = bytes(range(32))
    salt = bytes(range(0x20, 0x40))
    prefix = bytes(range(0x40, 0x47))
    cases = [
        ("empty plaintext", "orders/eu", 2, 1024, b""),
        ("one short chunk", "orders/eu", 2, 1024, bytes(i % 251 for i in range(100))),
        ("two full chunks", "invoices", 1, 1024, bytes(i % 251 for i in range(2048))),
        ("a short chunk after full ones", "invoices", 7, 1024, bytes(i % 251 for i in range(2500))),
    ]
    return [
        {
            "name": name,
            "data_key": data_key.hex(),
            "id": key_id,
            "version": version,
            "chunk_size": chunk_size,
            "salt": salt.hex(),
            "nonce_prefix": prefix.hex(),
            "plaintext": plaintext.hex(),
            "envelope": envelope(data_key, key_id, version, chunk_size, salt, prefix, plaintext).hex(),
        }
        for name, key_id, version, chunk_size, plaintext in cases
    ]


def main():
    text = json.dumps({"format": 1, "vectors": vectors()}, indent=2) + "\n"
    if "--check" in sys.argv:
        if OUT.read_text() != text:
            sys.exit(f"{OUT} differs from the vectors the specification gives")
        print(f"{OUT}: matches the specification")
        return
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
