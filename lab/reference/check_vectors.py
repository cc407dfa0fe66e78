#!/usr/bin/env python3
"""Check every vector in proto/tests/vectors/ against the Python reference (sesame_ref.py),
then self-test the reference.

    python3 lab/reference/check_vectors.py [--vectors DIR]

Prints one line per failing check, then exactly one summary line `N passed, M failed`.
Exit status 0 only if nothing failed and at least one check ran.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import sesame_ref as ref  # noqa: E402

DEFAULT_VECTORS = HERE.parent.parent / "proto" / "tests" / "vectors"


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def ok(self, name: str, cond: bool, detail: str = "") -> bool:
        if cond:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL {name}" + (f": {detail}" if detail else ""))
        return cond

    def eq(self, name: str, what: str, got, want) -> bool:
        return self.ok(f"{name}: {what}", got == want, f"got {got!r}, want {want!r}")

    def run(self, name: str, fn) -> None:
        """Run a group of checks; an unexpected exception counts as one failure."""
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - any crash is a failed check, reported by name
            self.ok(name, False, f"unexpected {type(e).__name__}: {e}")


def load(dir_: Path, fname: str):
    with open(dir_ / fname, encoding="utf-8") as f:
        return json.load(f)


def label(kind: str, idx: int, v: dict) -> str:
    # Vector names are not unique (fail_payloads.json has four "bit-flip"), so add the index.
    return f"{kind}[{idx}] {v.get('name', '?')}"


def vector_keys(c: Checks, name: str, v: dict):
    """Parse the common key fields and check that the public keys match the private ones."""
    cpriv = ref.parse_key(v["client_private"])
    cpub = ref.parse_key(v["client_public"])
    spriv = ref.parse_key(v["server_private"])
    spub = ref.parse_key(v["server_public"])
    psk = None if v["psk"] is None else ref.parse_key(v["psk"])
    c.eq(name, "client_public = pub(client_private)", ref.pub(cpriv).hex(), cpub.hex())
    c.eq(name, "server_public = pub(server_private)", ref.pub(spriv).hex(), spub.hex())
    for field in ("client_private", "client_public", "server_private", "server_public", "psk"):
        if v[field] is not None:
            c.eq(name, f"{field} re-encodes", ref.format_key(ref.parse_key(v[field])), v[field])
    return cpriv, cpub, spriv, spub, psk


def request_from_json(r: dict) -> ref.Request:
    return ref.Request(
        timestamp_ms=r["timestamp_ms"],
        random=bytes.fromhex(r["random"]),
        services=tuple(ref.parse_service(s) for s in r["services"]),
        address=None if r["address"] is None else ipaddress.ip_address(r["address"]),
        flags=r["flags"],
        action=None if r["action"] is None
        else ref.Action(r["action"]["name"], r["action"]["argument"]),
    )


def request_to_json(req: ref.Request) -> dict:
    return {
        "timestamp_ms": req.timestamp_ms,
        "random": req.random.hex(),
        "services": [ref.format_service(s) for s in req.services],
        "address": None if req.address is None else str(req.address),
        "flags": req.flags,
        "action": None if req.action is None
        else {"name": req.action.name, "argument": req.action.argument},
    }


# ---------------------------------------------------------------------------------------------
# sequences.json
# ---------------------------------------------------------------------------------------------


def check_sequences(c: Checks, data: dict) -> None:
    c.ok("sequences.json: has vectors", len(data["vectors"]) > 0)
    for idx, v in enumerate(data["vectors"]):
        name = label("sequences", idx, v)

        def one(v=v, name=name):
            cpriv, cpub, spriv, spub, psk = vector_keys(c, name, v)
            p = v["params"]
            params = ref.make_params(p["length"], p["port_range"], p["exclude_ports"], p["protocol"])
            counter = ref.counter_from_ms(v["unix_time_ms"], p["step_seconds"])
            c.eq(name, "counter", counter, v["counter"])
            kc = ref.client_keys(cpriv, spub, psk)
            ks = ref.server_keys(spriv, cpub, psk)
            c.eq(name, "client and server key schedules agree", ks, kc)
            seq = ref.sequence(kc.k_seq, p["step_seconds"], v["counter"], params)
            want_knocks = [(k["proto"], k["port"]) for k in v["knocks"]]
            c.eq(name, "knocks", seq.knocks, want_knocks)
            c.eq(name, "payload_port", seq.payload_port, v["payload_port"])
            ports = [pt for _, pt in seq.knocks] + [seq.payload_port]
            c.ok(f"{name}: ports distinct, in range, not excluded",
                 len(set(ports)) == len(ports)
                 and all(params.lo <= pt <= params.hi and pt not in params.exclude_ports
                         for pt in ports))

        c.run(name, one)


# ---------------------------------------------------------------------------------------------
# payloads.json
# ---------------------------------------------------------------------------------------------


def check_payloads(c: Checks, data: dict) -> None:
    c.ok("payloads.json: has vectors", len(data["vectors"]) > 0)
    for idx, v in enumerate(data["vectors"]):
        name = label("payloads", idx, v)

        def one(v=v, name=name):
            cpriv, cpub, spriv, spub, psk = vector_keys(c, name, v)
            e = ref.parse_key(v["ephemeral_private"])
            req = request_from_json(v["request"])
            counter = v["counter"]
            c.eq(name, "timestamp lies in counter",
                 ref.counter_from_ms(req.timestamp_ms, v["step_seconds"]), counter)

            plaintext = ref.encode_plaintext(req)
            c.eq(name, "plaintext", plaintext.hex(), v["plaintext"])
            c.eq(name, "plaintext decodes to request",
                 ref.decode_plaintext(bytes.fromhex(v["plaintext"])), req)

            # Every request field survives the JSON mapping (addresses compared as values).
            back = request_to_json(req)
            c.eq(name, "request JSON fields", {k: x for k, x in back.items() if k != "address"},
                 {k: x for k, x in v["request"].items() if k != "address"})

            kc = ref.client_keys(cpriv, spub, psk)
            padding = bytes.fromhex(v["padding"])
            datagram = ref.build_payload(kc, counter, v["step_seconds"], req, e,
                                         e_high_bit=v["e_high_bit"], padding=padding)
            c.eq(name, "datagram", datagram.hex(), v["datagram"])
            want = bytes.fromhex(v["datagram"])
            c.eq(name, "datagram length", len(want), ref.AUTH_LEN + len(padding))
            c.ok(f"{name}: datagram length in 184..=240",
                 ref.MIN_DATAGRAM_LEN <= len(want) <= ref.MAX_DATAGRAM_LEN, str(len(want)))
            c.eq(name, "padding follows the authenticated part", want[ref.AUTH_LEN:], padding)
            c.eq(name, "top bit of E is e_high_bit", bool(want[31] & 0x80), v["e_high_bit"])

            ks = ref.server_keys(spriv, cpub, psk)
            try:
                got = ref.open_payload(spriv, ks, counter, bytes.fromhex(v["datagram"]),
                                       v["now_ms"], v["step_seconds"], v["skew_steps"])
                # Compared as values, not text: the address text form (e.g. of IPv4-mapped
                # IPv6 addresses) differs between Python versions and languages.
                c.ok(f"{name}: opened request", got == req,
                     f"got {request_to_json(got)}, want {v['request']}")
            except ref.OpenError as err:
                c.ok(f"{name}: open", False, f"refused with {err.reason} ({err})")
            # Padding is not authenticated: other padding (none, or the longest) opens the same.
            for other_pad in (b"", bytes(ref.MAX_PADDING)):
                try:
                    got = ref.open_payload(spriv, ks, counter, want[:ref.AUTH_LEN] + other_pad,
                                           v["now_ms"], v["step_seconds"], v["skew_steps"])
                    c.ok(f"{name}: opened with {len(other_pad)} bytes of other padding",
                         got == req, f"got {request_to_json(got)}")
                except ref.OpenError as err:
                    c.ok(f"{name}: open with {len(other_pad)} bytes of other padding", False,
                         f"refused with {err.reason} ({err})")

        c.run(name, one)


# ---------------------------------------------------------------------------------------------
# fail_payloads.json
# ---------------------------------------------------------------------------------------------

REASONS = {"truncated", "too_long", "stale", "bad_mac", "bad_ephemeral", "bad_aead",
           "bad_version", "malformed", "counter_mismatch"}


def check_fail_payloads(c: Checks, data: dict) -> None:
    c.ok("fail_payloads.json: has vectors", len(data["vectors"]) > 0)
    for idx, v in enumerate(data["vectors"]):
        name = label("fail_payloads", idx, v)

        def one(v=v, name=name):
            c.ok(f"{name}: reason is a known code", v["reason"] in REASONS, repr(v["reason"]))
            _, cpub, spriv, _, psk = vector_keys(c, name, v)
            ks = ref.server_keys(spriv, cpub, psk)
            try:
                got = ref.open_payload(spriv, ks, v["counter"], bytes.fromhex(v["datagram"]),
                                       v["now_ms"], v["step_seconds"], v["skew_steps"])
                c.ok(f"{name}: reason", False,
                     f"opened successfully ({request_to_json(got)}), want {v['reason']}")
            except ref.OpenError as err:
                c.eq(name, "reason", err.reason, v["reason"])

        c.run(name, one)


# ---------------------------------------------------------------------------------------------
# fail_keys.json
# ---------------------------------------------------------------------------------------------


def check_fail_keys(c: Checks, data: dict) -> None:
    for key in ("bad_text", "good_text", "low_order_public"):
        c.ok(f"fail_keys.json: has {key}", len(data[key]) > 0)
    for idx, v in enumerate(data["bad_text"]):
        name = f"fail_keys.bad_text[{idx}] {v['why']}"
        try:
            got = ref.parse_key(v["text"])
            c.ok(name, False, f"accepted {v['text']!r} as {got.hex()}")
        except ref.KeyError_:
            c.ok(name, True)
    for idx, v in enumerate(data["good_text"]):
        name = f"fail_keys.good_text[{idx}] {v['text']!r}"
        try:
            c.eq(name, "bytes", ref.parse_key(v["text"]).hex(), v["hex"])
        except ref.KeyError_ as err:
            c.ok(name, False, f"refused: {err}")
    # Any private key will do: a low-order point gives the all-zero output for every scalar.
    scalars = [ref.clamp(bytes(range(32))), bytes([0xff] * 32), bytes([0x11] * 32)]
    for idx, hx in enumerate(data["low_order_public"]):
        for sidx, k in enumerate(scalars):
            name = f"fail_keys.low_order_public[{idx}] scalar {sidx}"
            try:
                out = ref.x25519(k, bytes.fromhex(hx))
                c.ok(name, False, f"X25519 accepted, output {out.hex()}")
            except ref.NonContributory:
                c.ok(name, True)
        # ...and at the protocol level: the key schedule and the payload builder refuse it.
        name = f"fail_keys.low_order_public[{idx}]"
        for what, fn in (
            ("key schedule (client side)", lambda: ref.client_keys(scalars[0], bytes.fromhex(hx), None)),
            ("key schedule (server side)", lambda: ref.server_keys(scalars[0], bytes.fromhex(hx), None)),
        ):
            try:
                fn()
                c.ok(f"{name}: {what}", False, "accepted")
            except ref.NonContributory:
                c.ok(f"{name}: {what}", True)


# ---------------------------------------------------------------------------------------------
# Self-tests of the reference itself
# ---------------------------------------------------------------------------------------------

# A deliberately naive RFC 7748 X25519 (Montgomery ladder), used only to cross-check that the
# `cryptography` primitive and its error on low-order points mean what sesame_ref assumes.
_P = 2**255 - 19
_A24 = 121665


def _x25519_slow(k: bytes, u: bytes) -> bytes:
    k_int = int.from_bytes(ref.clamp(k), "little")
    x1 = int.from_bytes(u, "little") & ((1 << 255) - 1)  # mask the top bit (RFC 7748 §5)
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        bit = (k_int >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % _P, (x2 - z2) % _P
        aa, bb = a * a % _P, b * b % _P
        e = (aa - bb) % _P
        c_, d = (x3 + z3) % _P, (x3 - z3) % _P
        da, cb = d * a % _P, c_ * b % _P
        x3, z3 = (da + cb) ** 2 % _P, x1 * (da - cb) ** 2 % _P
        x2, z2 = aa * bb % _P, e * (aa + _A24 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(32, "little")


def self_tests(c: Checks, data_fail_keys: dict | None) -> None:
    name = "self-test"
    ckeys = [ref.clamp(os.urandom(32)) for _ in range(2)]
    cpriv, spriv = ckeys
    cpub, spub = ref.pub(cpriv), ref.pub(spriv)
    psk = os.urandom(32)
    step, skew = 30, 1

    # X25519 primitive agrees with the slow ladder, including RFC 7748 §5.2 test vector 1.
    k = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    want = "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"
    c.eq(name, "RFC 7748 X25519 vector (cryptography)", ref.x25519(k, u).hex(), want)
    c.eq(name, "RFC 7748 X25519 vector (slow ladder)", _x25519_slow(k, u).hex(), want)
    c.eq(name, "pub() = slow X25519(k, 9)", ref.pub(cpriv), _x25519_slow(cpriv, (9).to_bytes(32, "little")))
    c.eq(name, "X25519 agrees with slow ladder", ref.x25519(cpriv, spub), _x25519_slow(cpriv, spub))
    if data_fail_keys is not None:
        for hx in data_fail_keys["low_order_public"]:
            c.eq(name, f"slow ladder gives zero for low-order {hx[:8]}..",
                 _x25519_slow(cpriv, bytes.fromhex(hx)), bytes(32))

    # Key text round trip, and every single-character change of the padding / last character.
    for key in (cpriv, cpub, psk):
        c.eq(name, "key text round trip", ref.parse_key(ref.format_key(key)), key)
    text = ref.format_key(cpub)
    for ch in ref.B64_ALPHABET:
        t = text[:42] + ch + "="
        canonical = ref.B64_ALPHABET.index(ch) & 3 == 0
        try:
            ref.parse_key(t)
            c.ok(name, canonical, f"non-canonical last character accepted: {t}")
        except ref.KeyError_:
            c.ok(name, not canonical, f"canonical last character refused: {t}")
    for bad in (text + "\x00", "\t" + text, text[:20] + "\n" + text[21:], text[:43] + "A",
                text.replace("=", "") + "==", text[:43] + "=" + "=", "\u00a0" + text[1:],
                text[:10] + "-" + text[11:]):
        try:
            ref.parse_key(bad)
            c.ok(name, False, f"bad key text accepted: {bad!r}")
        except ref.KeyError_:
            c.ok(name, True)

    # Parameter validation (§5): bounds and the two availability rules.
    for args, valid in (
        ((0, (1, 2)), True), ((1, (1, 3)), False), ((1, (1, 4)), False),
        ((1, (1, 65535)), False), ((2, (1, 6)), True), ((2, (1, 5)), False),
        ((16, (1, 34)), True), ((16, (1, 33)), False),
        ((17, (1, 65535)), False), ((3, (0, 100)), False), ((3, (100, 99)), False),
        ((3, (1, 65536)), False), ((0, (10, 13), [11, 12]), True),
        ((0, (10, 14), [11, 12, 13]), False), ((2, (1, 11), [1, 2, 3, 4, 5, 6]), False),
        ((0, (1, 2), [], "sctp"), False), ((2, (10, 15), [1, 2, 3, 65535]), True),
    ):
        try:
            params = ref.make_params(*args)
            ok = c.ok(name, valid, f"params {args} accepted")
            if ok:
                seq = ref.sequence(os.urandom(32), step, 12345, params)
                ports = [p for _, p in seq.knocks] + [seq.payload_port]
                c.ok(name, len(set(ports)) == len(ports) and
                     all(params.lo <= p <= params.hi and p not in params.exclude_ports for p in ports),
                     f"bad sequence {ports} for {args}")
        except ref.ParamError:
            c.ok(name, not valid, f"params {args} refused")

    # The step length is an input of the port and protocol derivations (§5).
    k_seq = os.urandom(32)
    params = ref.make_params(16, (1024, 65535), protocol="mixed")
    seqs = {st: ref.sequence(k_seq, st, 12345, params) for st in (10, 20, 30)}
    c.ok(name, len({(tuple(s_.knocks), s_.payload_port) for s_ in seqs.values()}) == 3,
         "sequences of one counter with different step lengths are equal")
    for bad_step in (0, 86401):
        try:
            ref.sequence(k_seq, bad_step, 12345, params)
            c.ok(name, False, f"step_seconds {bad_step} accepted")
        except ref.ParamError:
            c.ok(name, True)
    for _ in range(200):
        c.ok(name, 8 <= len(ref.udp_knock_bytes()) <= 120, "UDP knock length outside 8..=120")

    # Payload round trip with a random ephemeral key, at the window edges.
    ks_client = ref.client_keys(cpriv, spub, psk)
    ks_server = ref.server_keys(spriv, cpub, psk)
    c.eq(name, "key schedules agree", ks_client, ks_server)
    now_ms = 1_764_000_000_123
    counter = ref.counter_from_ms(now_ms, step)
    req = ref.Request(now_ms, os.urandom(16), (("tcp", 22), ("udp", 51820)),
                      ipaddress.ip_address("2001:db8::7"))
    datagram = ref.build_payload(ks_client, counter, step, req, os.urandom(32),
                                 e_high_bit=True, padding=os.urandom(ref.MAX_PADDING))
    c.eq(name, "datagram length", len(datagram), 240)
    c.ok(name, datagram[31] & 0x80 == 0x80, "top bit of E not set")
    for open_at in (now_ms, now_ms + step * 1000, now_ms - step * 1000):
        try:
            got = ref.open_payload(spriv, ks_server, counter, datagram, open_at, step, skew)
            c.eq(name, f"round trip at {open_at}", got, req)
        except ref.OpenError as err:
            c.ok(name, False, f"round trip refused at {open_at}: {err}")
    for open_at, want in ((now_ms + 2 * step * 1000, "stale"), (now_ms - 2 * step * 1000, "stale")):
        try:
            ref.open_payload(spriv, ks_server, counter, datagram, open_at, step, skew)
            c.ok(name, False, f"opened outside the window at {open_at}")
        except ref.OpenError as err:
            c.eq(name, f"outside window at {open_at}", err.reason, want)
    datagram2 = ref.build_payload(ks_client, counter, step, req, os.urandom(32))
    c.ok(name, datagram2 != datagram, "two datagrams of the same request are equal")
    c.ok(name, 184 <= len(datagram2) <= 240, f"random padding gave {len(datagram2)} bytes")

    # The same e with either top bit: same edh, different E, so different datagrams, both valid.
    e = os.urandom(32)
    d0 = ref.build_payload(ks_client, counter, step, req, e, e_high_bit=False, padding=b"")
    d1 = ref.build_payload(ks_client, counter, step, req, e, e_high_bit=True, padding=b"")
    c.eq(name, "top bit is the only difference in E", bytes(a ^ b for a, b in zip(d0[:32], d1[:32])),
         bytes(31) + b"\x80")
    c.ok(name, d0[32:] != d1[32:], "E's top bit does not reach the AEAD and MAC inputs")
    for d in (d0, d1):
        try:
            c.eq(name, "either top bit opens", ref.open_payload(spriv, ks_server, counter, d,
                                                                now_ms, step, skew), req)
        except ref.OpenError as err:
            c.ok(name, False, f"top bit {d[31] >> 7} refused: {err}")

    # Any single bit flip in the authenticated part is refused (it always fails the gate); a
    # flip in the padding is not noticed.
    flips_refused = 0
    flip_reasons: set[str] = set()
    for bit in range(8 * ref.AUTH_LEN):
        bad = bytearray(datagram)
        bad[bit // 8] ^= 1 << (bit % 8)
        try:
            ref.open_payload(spriv, ks_server, counter, bytes(bad), now_ms, step, skew)
            c.ok(name, False, f"bit flip {bit} accepted")
        except ref.OpenError as err:
            flips_refused += 1
            flip_reasons.add(err.reason)
    c.eq(name, "all single bit flips refused", flips_refused, 8 * ref.AUTH_LEN)
    c.eq(name, "bit flips refused by the gate", flip_reasons, {"bad_mac"})
    for bit in range(8 * ref.AUTH_LEN, 8 * len(datagram), 7):
        bad = bytearray(datagram)
        bad[bit // 8] ^= 1 << (bit % 8)
        try:
            c.eq(name, f"padding bit flip {bit}",
                 ref.open_payload(spriv, ks_server, counter, bytes(bad), now_ms, step, skew), req)
        except ref.OpenError as err:
            c.ok(name, False, f"padding bit flip {bit} refused: {err}")

    # Wrong keys / counter / PSK are refused by the gate; truncation and extension by length.
    other = ref.server_keys(spriv, ref.pub(ref.clamp(os.urandom(32))), psk)
    no_psk = ref.server_keys(spriv, cpub, None)
    for what, keys, ctr, dg, want in (
        ("other client", other, counter, datagram, "bad_mac"),
        ("missing PSK", no_psk, counter, datagram, "bad_mac"),
        ("next counter", ks_server, counter + 1, datagram, "bad_mac"),
        ("truncated", ks_server, counter, datagram[:183], "truncated"),
        ("empty", ks_server, counter, b"", "truncated"),
        ("too long", ks_server, counter, datagram + b"\0", "too_long"),
        ("too long, stale", ks_server, counter + 5, datagram + b"\0", "too_long"),
        ("truncated, wrong key", other, counter, datagram[:183], "truncated"),
        ("stale, wrong key", other, counter + 5, datagram, "stale"),
    ):
        try:
            ref.open_payload(spriv, keys, ctr, dg, now_ms, step, skew)
            c.ok(name, False, f"{what}: accepted")
        except ref.OpenError as err:
            c.eq(name, what, err.reason, want)

    # Sealed (validly encrypted and MACed) malformed plaintexts give the decode reasons, and a
    # timestamp in another step gives counter_mismatch.
    good = bytearray(ref.encode_plaintext(req))

    def patched(**changes) -> bytes:
        p = bytearray(good)
        for off, val in changes.values():
            p[off] = val
        return bytes(p)

    cases = [
        ("version 0", patched(v=(0, 0)), "bad_version"),
        ("version 1 and flags", patched(v=(0, 1), f=(1, 1)), "bad_version"),
        ("version 255 and padding", patched(v=(0, 255), p=(119, 1)), "bad_version"),
        ("flags bit 7", patched(f=(1, 0x80)), "malformed"),
        ("count 9", patched(c=(26, 9)), "malformed"),
        ("count 3 with zero entry", patched(c=(26, 3)), "malformed"),
        ("count 1, entry 1 left", patched(c=(26, 1)), "malformed"),
        ("ip_proto 1", patched(p=(27, 1)), "malformed"),
        ("ip_proto 0 in used entry", patched(p=(27, 0)), "malformed"),
        ("port 0", patched(a=(28, 0), b=(29, 0)), "malformed"),
        ("family 5", patched(f=(51, 5)), "malformed"),
        ("family 4 with 16 bytes", patched(f=(51, 4)), "malformed"),
        ("family 0 with bytes", patched(f=(51, 0)), "malformed"),
        ("padding", patched(p=(71, 1)), "malformed"),
        ("no change", bytes(good), None),
    ]
    ts_next = (counter + 1) * step * 1000
    cases.append(("timestamp next step",
                  ref.encode_plaintext(ref.Request(ts_next, req.random, req.services, req.address)),
                  "counter_mismatch"))
    cases.append(("timestamp last ms of step", ref.encode_plaintext(
        ref.Request(ts_next - 1, req.random, req.services, req.address)), None))
    A = ref.Action

    def with_action(name_b: bytes, arg_b: bytes) -> bytes:
        p = bytearray(good)
        p[68:84] = name_b.ljust(16, b"\0")
        p[84:116] = arg_b.ljust(32, b"\0")
        return bytes(p)

    cases += [
        ("version 1", patched(v=(0, 1)), "bad_version"),
        ("version 3", patched(v=(0, 3)), "bad_version"),
        ("padding first byte", patched(p=(116, 1)), "malformed"),
        ("padding last byte", patched(p=(119, 0x80)), "malformed"),
        ("action", with_action(b"open-all_9", b""), None),
        ("action, argument", with_action(b"x", b"~!"), None),
        ("action 16, argument 32", with_action(b"a" * 16, b"~" * 32), None),
        ("action uppercase", with_action(b"Wake", b""), "malformed"),
        ("action dot", with_action(b"wake.host", b""), "malformed"),
        ("action space", with_action(b"wake host", b""), "malformed"),
        ("action byte after nul", with_action(b"wake\0x", b""), "malformed"),
        ("action starts with nul", with_action(b"\0wake", b""), "malformed"),
        ("action high byte", with_action(b"w\xe9", b""), "malformed"),
        ("argument without action", with_action(b"", b"x"), "malformed"),
        ("argument space", with_action(b"wake", b"a b"), "malformed"),
        ("argument DEL", with_action(b"wake", b"a\x7f"), "malformed"),
        ("argument tab", with_action(b"wake", b"\t"), "malformed"),
        ("argument byte after nul", with_action(b"wake", b"ab\0c"), "malformed"),
        ("argument starts with nul", with_action(b"wake", b"\0c"), "malformed"),
    ]
    for what, pt, want in cases:
        dg = ref.seal_plaintext(ks_client, counter, os.urandom(32), pt)
        try:
            ref.open_payload(spriv, ks_server, counter, dg, now_ms, step, skew)
            c.ok(name, want is None, f"{what}: accepted, want {want}")
        except ref.OpenError as err:
            c.eq(name, what, err.reason, want)

    # A low-order E with a correct gate is refused as bad_ephemeral, before the AEAD.
    if data_fail_keys is not None:
        for hx, top in [(hx, top) for hx in data_fail_keys["low_order_public"]
                        for top in (0, 0x80)]:
            E = bytes.fromhex(hx)
            E = E[:31] + bytes([E[31] | top])
            ct_tag = os.urandom(136)
            dg = E + ct_tag + ref._gate(ks_client.k_mac, counter, E, ct_tag)
            try:
                ref.open_payload(spriv, ks_server, counter, dg, now_ms, step, skew)
                c.ok(name, False, "low-order E accepted")
            except ref.OpenError as err:
                c.eq(name, f"low-order E {hx[:8]}.. top {top:#x}", err.reason, "bad_ephemeral")
    # Garbage ciphertext with a correct gate and a valid E is bad_aead.
    E = ref.pub(ref.clamp(os.urandom(32)))
    ct_tag = os.urandom(136)
    dg = E + ct_tag + ref._gate(ks_client.k_mac, counter, E, ct_tag)
    try:
        ref.open_payload(spriv, ks_server, counter, dg, now_ms, step, skew)
        c.ok(name, False, "garbage ciphertext accepted")
    except ref.OpenError as err:
        c.eq(name, "garbage ciphertext", err.reason, "bad_aead")

    # The encoder refuses what the decoder would refuse.
    for what, bad_req in (
        ("flags", ref.Request(now_ms, bytes(16), flags=1)),
        ("9 services", ref.Request(now_ms, bytes(16), tuple(("tcp", p) for p in range(1, 10)))),
        ("port 0", ref.Request(now_ms, bytes(16), (("tcp", 0),))),
        ("random length", ref.Request(now_ms, bytes(15))),
        ("empty action name", ref.Request(now_ms, bytes(16), action=ref.Action(""))),
        ("action name 17", ref.Request(now_ms, bytes(16), action=ref.Action("a" * 17))),
        ("action uppercase", ref.Request(now_ms, bytes(16), action=ref.Action("A"))),
        ("argument 33", ref.Request(now_ms, bytes(16), action=ref.Action("a", "b" * 33))),
        ("argument space", ref.Request(now_ms, bytes(16), action=ref.Action("a", "b c"))),
        ("argument non-ASCII", ref.Request(now_ms, bytes(16), action=ref.Action("a", "\u00e9"))),
    ):
        try:
            ref.encode_plaintext(bad_req)
            c.ok(name, False, f"encoder accepted {what}")
        except ref.EncodeError:
            c.ok(name, True)
    for act in (ref.Action("a"), ref.Action("restart-vpn-0123", "!" * 32), ref.Action("x_", "-")):
        r = ref.Request(now_ms, os.urandom(16), (("udp", 1),), ipaddress.ip_address("::ffff:1.2.3.4"),
                        action=act)
        c.eq(name, f"action {act} round trip", ref.decode_plaintext(ref.encode_plaintext(r)), r)
    try:
        ref.build_payload(ks_client, counter + 1, step, req, os.urandom(32))
        c.ok(name, False, "builder accepted a timestamp outside the counter's step")
    except ref.EncodeError:
        c.ok(name, True)


# ---------------------------------------------------------------------------------------------


def check_argument_rules(c: Checks, data: dict) -> None:
    rules = data["rules"]
    c.ok("argument_rules.json", len(rules) >= 20, f"only {len(rules)} rules")
    for idx, v in enumerate(rules):
        name = f"argument_rules[{idx}] {v['rule']!r}"
        try:
            rule = ref.parse_argument_rule(v["rule"])
        except ValueError as e:
            c.ok(name, not v["valid"], f"refused ({e}), but the vector says valid")
            continue
        if not c.ok(name, v["valid"], "accepted, but the vector says invalid"):
            continue
        for a in v["allows"]:
            c.ok(f"{name} allows {a!r}", ref.argument_allowed(rule, a))
        for a in v["refuses"]:
            c.ok(f"{name} refuses {a!r}", not ref.argument_allowed(rule, a))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=Path, default=DEFAULT_VECTORS,
                    help="directory holding the JSON vector files (default: %(default)s)")
    args = ap.parse_args()

    c = Checks()
    fail_keys = None
    for fname, fn in (
        ("sequences.json", check_sequences),
        ("payloads.json", check_payloads),
        ("fail_payloads.json", check_fail_payloads),
        ("fail_keys.json", check_fail_keys),
        ("argument_rules.json", check_argument_rules),
    ):
        try:
            data = load(args.vectors, fname)
        except (OSError, ValueError) as e:
            c.ok(fname, False, f"cannot load: {e}")
            continue
        if fname == "fail_keys.json":
            fail_keys = data
        c.run(fname, lambda fn=fn, data=data: fn(c, data))
    c.run("self-test", lambda: self_tests(c, fail_keys))

    print(f"{c.passed} passed, {c.failed} failed")
    return 0 if c.failed == 0 and c.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
