#!/usr/bin/env python3
"""Independent implementation of TierKV's prefix-hash chain (no dependencies).

Engines written in Python can compute the same BlockKeys TierKV does; the Swift tests pin the
chain against this script's output. Chain (see Sources/TierKVCore/PrefixHasher.swift):
  salted = b"tierkv-prefix-v1\\0" + namespace (UTF-8)
  root   = (XXH64(salted, HIGH_SEED), XXH64(salted, LOW_SEED))
  h_i    = XXH64 lanes of  le64(h_{i-1}.low) + le64(h_{i-1}.high) + le32(token)...
Usage: prefix-hash.py --namespace NS --tokens-per-block N 1 2 3 ...
"""
import argparse
import struct

M = (1 << 64) - 1
P1, P2, P3, P4, P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                      0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5)
LOW_SEED = 0
HIGH_SEED = 0x7469_6572_6B76_2D68  # "tierkv-h"


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M


def _round(acc, lane):
    return (_rotl((acc + lane * P2) & M, 31) * P1) & M


def xxh64(data: bytes, seed: int = 0) -> int:
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + P1 + P2) & M, (seed + P2) & M, seed, (seed - P1) & M]
        while i <= n - 32:
            for k in range(4):
                v[k] = _round(v[k], struct.unpack_from("<Q", data, i + 8 * k)[0])
            i += 32
        acc = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & M
        for lane in v:
            acc = ((acc ^ _round(0, lane)) * P1 + P4) & M
    else:
        acc = (seed + P5) & M
    acc = (acc + n) & M
    while i + 8 <= n:
        acc ^= _round(0, struct.unpack_from("<Q", data, i)[0])
        acc = (_rotl(acc, 27) * P1 + P4) & M
        i += 8
    if i + 4 <= n:
        acc ^= (struct.unpack_from("<I", data, i)[0] * P1) & M
        acc = (_rotl(acc, 23) * P2 + P3) & M
        i += 4
    while i < n:
        acc ^= (data[i] * P5) & M
        acc = (_rotl(acc, 11) * P1) & M
        i += 1
    acc ^= acc >> 33
    acc = (acc * P2) & M
    acc ^= acc >> 29
    acc = (acc * P3) & M
    acc ^= acc >> 32
    return acc


def block_hashes(namespace: str, tokens_per_block: int, tokens):
    salted = b"tierkv-prefix-v1\0" + namespace.encode()
    high, low = xxh64(salted, HIGH_SEED), xxh64(salted, LOW_SEED)
    out = []
    for start in range(0, len(tokens) - tokens_per_block + 1, tokens_per_block):
        data = struct.pack("<QQ", low, high) + struct.pack(f"<{tokens_per_block}I", *tokens[start:start + tokens_per_block])
        high, low = xxh64(data, HIGH_SEED), xxh64(data, LOW_SEED)
        out.append(f"{high:016x}{low:016x}")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--namespace", default="")
    parser.add_argument("--tokens-per-block", type=int, default=16)
    parser.add_argument("tokens", nargs="*", type=int)
    args = parser.parse_args()
    for index, value in enumerate(block_hashes(args.namespace, args.tokens_per_block, args.tokens)):
        print(f"{index}\t{value}")
