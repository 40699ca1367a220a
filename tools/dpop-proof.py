#!/usr/bin/env python3
"""A DPoP client's half (RFC 9449), for trying meshguard with curl: an EC P-256 key, its RFC 7638
thumbprint (the `cnf.jkt` your IdP puts in the token), and a fresh proof per request.

    tools/dpop-proof.py keygen KEYFILE        writes a P-256 private key (PEM), prints its jkt
    tools/dpop-proof.py jkt KEYFILE           prints the key's jkt
    tools/dpop-proof.py proof KEYFILE METHOD URL [--token TOKEN] [--nonce NONCE]
                                              prints a DPoP proof for METHOD URL

A proof: header {typ: dpop+jwt, alg: ES256, jwk: the public key}; claims jti (128 random bits),
htm METHOD, htu URL without query and fragment, iat now, ath = base64url(SHA-256(TOKEN)) when
--token is given, nonce when --nonce is given. Each call makes a new jti: a proof is good for one
request. Needs only the `cryptography` package (`make setup` installs it into .venv):

    .venv/bin/python tools/dpop-proof.py proof key.pem GET https://api.example.com/orders --token "$AT"
"""
import argparse
import base64
import hashlib
import json
import os
import secrets
import sys
import time
import urllib.parse

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_key(path: str) -> ec.EllipticCurvePrivateKey:
    with open(path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        sys.exit(f"{path}: not an EC P-256 private key")
    return key


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64(numbers.x.to_bytes(32, "big")),
        "y": b64(numbers.y.to_bytes(32, "big")),
    }


def jkt(jwk: dict) -> str:
    """RFC 7638: SHA-256 of the required members, in lexicographic order, without whitespace."""
    canonical = json.dumps(
        {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    return b64(hashlib.sha256(canonical.encode()).digest())


def htu(url: str) -> str:
    """The URL without query and fragment (RFC 9449 §4.2)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        sys.exit(f"{url}: not an absolute http(s) URL")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def proof(key, method: str, url: str, token=None, nonce=None) -> str:
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk(key)}
    claims = {
        "jti": b64(secrets.token_bytes(16)),
        "htm": method,
        "htu": htu(url),
        "iat": int(time.time()),
    }
    if token is not None:
        claims["ath"] = b64(hashlib.sha256(token.encode("ascii")).digest())
    if nonce is not None:
        claims["nonce"] = nonce
    signing_input = (
        b64(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64(json.dumps(claims, separators=(",", ":")).encode())
    )
    der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    # JWS ES256 carries the raw r || s, 32 bytes each (RFC 7518 §3.4), not DER.
    r, s = utils.decode_dss_signature(der)
    return signing_input + "." + b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def keygen(path: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        sys.exit(f"{path}: exists; not overwritten")
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    print(jkt(public_jwk(key)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("keygen", help="write a new EC P-256 private key (PEM), print its jkt")
    p.add_argument("keyfile")
    p = sub.add_parser("jkt", help="print the RFC 7638 thumbprint of the key's public half")
    p.add_argument("keyfile")
    p = sub.add_parser("proof", help="print a fresh DPoP proof for METHOD URL")
    p.add_argument("keyfile")
    p.add_argument("method", help="the request's method, exactly as sent (GET, POST, …)")
    p.add_argument("url", help="the URL the client uses; query and fragment are dropped")
    p.add_argument("--token", help="the access token sent with the proof (adds ath)")
    p.add_argument("--nonce", help="a DPoP-Nonce the server sent (adds nonce)")
    args = parser.parse_args()
    if args.command == "keygen":
        keygen(args.keyfile)
    elif args.command == "jkt":
        print(jkt(public_jwk(load_key(args.keyfile))))
    else:
        print(proof(load_key(args.keyfile), args.method, args.url, args.token, args.nonce))


if __name__ == "__main__":
    main()
