#!/usr/bin/env python3
"""Makes the DPoP proofs pasted as constants in src/dpop/proof/tests.rs, with Python's
`cryptography` (an implementation independent of the verifier under test), and prints them with
the RFC 7638 thumbprints of their keys, computed here with hashlib.

Run: .venv/bin/python tools/dpop_fixtures.py. Keys are fresh on every run, so the output differs
each time; any run's output is a valid set of fixtures.
"""
import base64
import hashlib
import json

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

IAT = 1767225600  # 2026-01-01T00:00:00Z
HTU = "https://api.example.com/orders"
ACCESS_TOKEN = "mg-test-access-token"


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jkt(jwk: dict) -> str:
    required = {"RSA": ["e", "kty", "n"], "EC": ["crv", "kty", "x", "y"], "OKP": ["crv", "kty", "x"]}
    canon = json.dumps({k: jwk[k] for k in required[jwk["kty"]]}, separators=(",", ":"), sort_keys=True)
    return b64(hashlib.sha256(canon.encode()).digest())


def uint(n: int, size: int) -> str:
    return b64(n.to_bytes(size, "big"))


def proof(alg: str, jwk: dict, sign, extra: dict) -> str:
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": jwk}
    payload = {"jti": f"{alg}-fixture-1", "htm": "GET", "htu": HTU, "iat": IAT,
               "ath": b64(hashlib.sha256(ACCESS_TOKEN.encode()).digest()), **extra}
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    return signing_input + "." + b64(sign(signing_input.encode()))


def ecdsa(key, hash_alg, size):
    def sign(msg):
        r, s = utils.decode_dss_signature(key.sign(msg, ec.ECDSA(hash_alg)))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return sign


out = []
rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
pn = rsa_key.public_key().public_numbers()
rsa_jwk = {"kty": "RSA", "n": uint(pn.n, 256), "e": uint(pn.e, 3)}
out.append(("RS256", rsa_jwk, proof("RS256", rsa_jwk, lambda m: rsa_key.sign(m, padding.PKCS1v15(), hashes.SHA256()), {})))
pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
out.append(("PS256", rsa_jwk, proof("PS256", rsa_jwk, lambda m: rsa_key.sign(m, pss, hashes.SHA256()), {})))

p256 = ec.generate_private_key(ec.SECP256R1())
n = p256.public_key().public_numbers()
p256_jwk = {"kty": "EC", "crv": "P-256", "x": uint(n.x, 32), "y": uint(n.y, 32)}
out.append(("ES256", p256_jwk, proof("ES256", p256_jwk, ecdsa(p256, hashes.SHA256(), 32), {"nonce": "fixture-nonce"})))

p384 = ec.generate_private_key(ec.SECP384R1())
n = p384.public_key().public_numbers()
p384_jwk = {"kty": "EC", "crv": "P-384", "x": uint(n.x, 48), "y": uint(n.y, 48)}
out.append(("ES384", p384_jwk, proof("ES384", p384_jwk, ecdsa(p384, hashes.SHA384(), 48), {})))

ed = ed25519.Ed25519PrivateKey.generate()
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
ed_jwk = {"kty": "OKP", "crv": "Ed25519",
          "x": b64(ed.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))}
out.append(("EdDSA", ed_jwk, proof("EdDSA", ed_jwk, ed.sign, {})))

print(f'/// base64url(SHA-256("{ACCESS_TOKEN}")), by hashlib.')
print(f'const ATH: &str = "{b64(hashlib.sha256(ACCESS_TOKEN.encode()).digest())}";')
for alg, jwk, token in out:
    print(f'const {alg.upper()}_PROOF: &str = "{token}";')
    print(f'const {alg.upper()}_JKT: &str = "{jkt(jwk)}";')
