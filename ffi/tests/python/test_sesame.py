#!/usr/bin/env python3
"""libsesame_ffi from Python through ctypes (the standard library only), as an app would use it.

    python3 ffi/tests/python/test_sesame.py [--lib PATH/libsesame_ffi.so] [-v]

Checks the C API against the test vectors (proto/tests/vectors/sequences.json), its errors and
buffers, and (when `cryptography` is installed, as .ci/run ensures) opens a knock it built with
the independent Python implementation of docs/PROTOCOL.md (lab/reference/sesame_ref.py).

With SESAME_TEST_URI set (lab/e2e/embedding.rs sets it, in a network namespace) it also
imports that URI, which `sesamed export-client` made for the vector's keys, checks its ports
against the vector SESAME_TEST_VECTOR at the vector's time with the key SESAME_TEST_KEY, and,
with SESAME_TEST_KNOCK=1, knocks the real server (SESAME_TEST_ADDRESS: the address to bind).

The library is --lib, else $SESAME_FFI_LIB, else target/debug/libsesame_ffi.so. The last line
is `N passed, M failed, K skipped`; the exit status is 0 only if nothing failed.
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import os
import sys
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
VECTORS = ROOT / "proto" / "tests" / "vectors" / "sequences.json"

OK, NULL_ARGUMENT, INVALID_UTF8, INVALID_URI, INVALID_PROFILE, INVALID_KEY = 0, 1, 2, 3, 4, 5
INVALID_ARGUMENT, KEY_EXCHANGE, NO_PRIVATE_KEY, KNOCK_FAILED, RANDOM_EXHAUSTED = 6, 7, 8, 9, 10
BUFFER_TOO_SMALL, ABSENT = 11, 12
PROTO = {6: "tcp", 17: "udp"}
KEY_TEXT_SIZE, MAX_KNOCKS, RANDOM_BYTES_ENOUGH = 45, 16, 4096

LIB_PATH: str = ""


class Port(ctypes.Structure):
    _fields_ = [("proto", ctypes.c_uint8), ("port", ctypes.c_uint16)]


class Packet(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("port", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("address", ctypes.c_uint8 * 16),
        ("data", ctypes.POINTER(ctypes.c_uint8)),
        ("data_len", ctypes.c_size_t),
    ]


class SesameError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"status {status}: {message}")
        self.status = status
        self.message = message


def load(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    P, S, B = ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint8)
    PP, SZ, U64, I32 = ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_uint64, ctypes.c_int32
    sigs = {
        "sesame_abi_version": ([], ctypes.c_uint32),
        "sesame_version": ([], S),
        "sesame_last_error": ([], S),
        "sesame_status_name": ([I32], S),
        "sesame_now_ms": ([], U64),
        "sesame_profile_from_uri": ([S, PP], I32),
        "sesame_profile_from_toml": ([S, PP], I32),
        "sesame_profile_free": ([P], None),
        "sesame_profile_name": ([P, S, SZ, ctypes.POINTER(SZ)], I32),
        "sesame_profile_host": ([P, S, SZ, ctypes.POINTER(SZ)], I32),
        "sesame_profile_services": ([P, S, SZ, ctypes.POINTER(SZ)], I32),
        "sesame_profile_server_public_key": ([P, S, SZ], I32),
        "sesame_profile_lease": ([P], ctypes.c_uint8),
        "sesame_profile_private_key": ([P, PP], I32),
        "sesame_profile_psk": ([P, PP], I32),
        "sesame_key_generate": ([PP], I32),
        "sesame_key_from_base64": ([S, PP], I32),
        "sesame_key_from_bytes": ([B, PP], I32),
        "sesame_key_to_base64": ([P, S, SZ], I32),
        "sesame_key_to_bytes": ([P, B], I32),
        "sesame_key_public_key": ([P, S, SZ], I32),
        "sesame_key_free": ([P], None),
        "sesame_client_new": ([P, P, P, PP], I32),
        "sesame_client_free": ([P], None),
        "sesame_client_ports": (
            [P, U64, ctypes.POINTER(Port), SZ, ctypes.POINTER(SZ),
             ctypes.POINTER(ctypes.c_uint16), ctypes.POINTER(U64)], I32),
        "sesame_client_build_knock": ([P, S, U64, S, S, PP], I32),
        "sesame_client_build_knock_with_random": ([P, S, U64, S, S, B, SZ, PP], I32),
        "sesame_client_knock": ([P, S, S, S, ctypes.c_uint32], I32),
        "sesame_knock_counter": ([P], U64),
        "sesame_knock_packet_count": ([P], SZ),
        "sesame_knock_packet": ([P, SZ, ctypes.POINTER(Packet)], I32),
        "sesame_knock_send": ([P, ctypes.c_uint32], I32),
        "sesame_knock_free": ([P], None),
    }
    for name, (args, res) in sigs.items():
        f = getattr(lib, name)
        f.argtypes = args
        f.restype = res
    return lib


class Sesame:
    """A thin Pythonic layer over the C API, as an app's binding would be."""

    def __init__(self, path: str) -> None:
        self.lib = load(path)

    def check(self, status: int) -> None:
        if status != OK:
            raise SesameError(status, self.lib.sesame_last_error().decode())

    def handle(self, fn, *args) -> ctypes.c_void_p:
        out = ctypes.c_void_p()
        self.check(fn(*args, ctypes.byref(out)))
        assert out.value, "a successful call gave a NULL handle"
        return out

    def text(self, fn, handle, size: int = 256) -> str:
        buf = ctypes.create_string_buffer(size)
        self.check(fn(handle, buf, size, None))
        return buf.value.decode()

    def key_text(self, fn, handle) -> str:
        buf = ctypes.create_string_buffer(KEY_TEXT_SIZE)
        self.check(fn(handle, buf, KEY_TEXT_SIZE))
        return buf.value.decode()

    def key(self, text: str) -> ctypes.c_void_p:
        return self.handle(self.lib.sesame_key_from_base64, text.encode())

    def ports(self, client, at_ms: int) -> tuple[list[str], int, int]:
        knocks = (Port * MAX_KNOCKS)()
        count, pay, counter = ctypes.c_size_t(), ctypes.c_uint16(), ctypes.c_uint64()
        self.check(self.lib.sesame_client_ports(
            client, at_ms, knocks, MAX_KNOCKS, ctypes.byref(count), ctypes.byref(pay),
            ctypes.byref(counter)))
        got = [f"{PROTO[knocks[i].proto]}/{knocks[i].port}" for i in range(count.value)]
        return got, pay.value, counter.value

    def packets(self, knock) -> list[tuple[int, str, int, bytes]]:
        out = []
        for i in range(self.lib.sesame_knock_packet_count(knock)):
            p = Packet()
            self.check(self.lib.sesame_knock_packet(knock, i, ctypes.byref(p)))
            data = ctypes.string_at(p.data, p.data_len) if p.data_len else b""
            out.append((p.kind, PROTO[p.proto], p.port, data))
        return out


def vectors() -> list[dict]:
    return json.loads(VECTORS.read_text())["vectors"]


def vector_toml(v: dict, host: str = "198.18.0.1") -> str:
    p = v["params"]
    return (
        f'host = "{host}"\nserver_public_key = "{v["server_public"]}"\n'
        f'private_key_file = "unused.key"\nstep_seconds = {p["step_seconds"]}\n'
        f'length = {p["length"]}\nport_range = [{p["port_range"][0]}, {p["port_range"][1]}]\n'
        f'exclude_ports = {json.dumps(p["exclude_ports"])}\nprotocol = "{p["protocol"]}"\n'
        'open = ["tcp/22"]\n'
    )


def expected(v: dict) -> list[str]:
    return [f'{k["proto"]}/{k["port"]}' for k in v["knocks"]]


class Api(unittest.TestCase):
    s: Sesame

    @classmethod
    def setUpClass(cls) -> None:
        cls.s = Sesame(LIB_PATH)

    def client_for(self, v: dict):
        s = self.s
        profile = s.handle(s.lib.sesame_profile_from_toml, vector_toml(v).encode())
        key = s.key(v["client_private"])
        psk = s.key(v["psk"]) if v["psk"] else None
        client = s.handle(s.lib.sesame_client_new, profile, key, psk)
        for h in (profile,):
            s.lib.sesame_profile_free(h)
        s.lib.sesame_key_free(key)
        s.lib.sesame_key_free(psk)
        return client

    def test_abi_version_and_library_version(self) -> None:
        self.assertEqual(self.s.lib.sesame_abi_version(), 1)
        self.assertRegex(self.s.lib.sesame_version().decode(), r"^\d+\.\d+\.\d+")

    def test_every_sequence_vector(self) -> None:
        vs = vectors()
        self.assertGreaterEqual(len(vs), 8)
        for v in vs:
            with self.subTest(v["name"]):
                client = self.client_for(v)
                got, pay, counter = self.s.ports(client, v["unix_time_ms"])
                self.assertEqual(got, expected(v))
                self.assertEqual(pay, v["payload_port"])
                self.assertEqual(counter, v["counter"])
                self.s.lib.sesame_client_free(client)

    def test_profile_says_what_a_lease_admits(self) -> None:
        s = self.s
        text = vector_toml(vectors()[0])
        for extra, want in (("", 0), ('lease = "window"\n', 0), ('lease = "connection"\n', 1)):
            profile = s.handle(s.lib.sesame_profile_from_toml, (text + extra).encode())
            self.assertEqual(s.lib.sesame_profile_lease(profile), want, extra)
            s.lib.sesame_profile_free(profile)

    def test_keys_generate_and_show_their_public_key(self) -> None:
        s = self.s
        v = vectors()[0]
        key = s.key(v["client_private"])
        self.assertEqual(s.key_text(s.lib.sesame_key_public_key, key), v["client_public"])
        self.assertEqual(s.key_text(s.lib.sesame_key_to_base64, key), v["client_private"])
        raw = (ctypes.c_uint8 * 32)()
        s.check(s.lib.sesame_key_to_bytes(key, raw))
        copy = s.handle(s.lib.sesame_key_from_bytes, raw)
        self.assertEqual(s.key_text(s.lib.sesame_key_public_key, copy), v["client_public"])
        new = s.handle(s.lib.sesame_key_generate)
        pub = s.key_text(s.lib.sesame_key_public_key, new)
        priv = s.key_text(s.lib.sesame_key_to_base64, new)
        self.assertEqual((len(pub), len(priv)), (44, 44))
        self.assertNotEqual(pub, v["client_public"])
        # Generated keys are clamped, as `wg genkey` makes them.
        s.check(s.lib.sesame_key_to_bytes(new, raw))
        self.assertEqual((raw[0] & 7, raw[31] & 0xC0), (0, 0x40))
        for h in (key, copy, new):
            s.lib.sesame_key_free(h)

    def test_errors_are_codes_and_messages_without_secrets(self) -> None:
        s = self.s
        out = ctypes.c_void_p(1234)
        self.assertEqual(s.lib.sesame_profile_from_uri(b"sesame://1/AAAA", ctypes.byref(out)),
                         INVALID_URI)
        self.assertIsNone(out.value, "the out-pointer is cleared on failure")
        self.assertIn("version-1 URI", s.lib.sesame_last_error().decode())
        self.assertEqual(s.lib.sesame_status_name(INVALID_URI), b"SESAME_STATUS_INVALID_URI")
        self.assertEqual(s.lib.sesame_profile_from_uri(None, ctypes.byref(out)), NULL_ARGUMENT)
        self.assertEqual(s.lib.sesame_profile_from_toml(b"\xff\xfe", ctypes.byref(out)),
                         INVALID_UTF8)
        self.assertEqual(s.lib.sesame_profile_from_toml(b"host = 1", ctypes.byref(out)),
                         INVALID_PROFILE)
        self.assertIn("line 1", s.lib.sesame_last_error().decode())
        typo = vectors()[0]["client_private"][:-1] + "!"
        self.assertEqual(s.lib.sesame_key_from_base64(typo.encode(), ctypes.byref(out)),
                         INVALID_KEY)
        msg = s.lib.sesame_last_error().decode()
        self.assertIn("character 44", msg)
        self.assertNotIn(typo[:12], msg)
        # A buffer too small says how large it must be; a large enough one clears the message.
        v = vectors()[0]
        profile = s.handle(s.lib.sesame_profile_from_toml, vector_toml(v).encode())
        needed = ctypes.c_size_t()
        small = ctypes.create_string_buffer(4)
        self.assertEqual(s.lib.sesame_profile_host(profile, small, 4, ctypes.byref(needed)),
                         BUFFER_TOO_SMALL)
        self.assertEqual(needed.value, len("198.18.0.1") + 1)
        self.assertEqual(s.text(s.lib.sesame_profile_host, profile), "198.18.0.1")
        self.assertEqual(s.lib.sesame_last_error(), b"")
        self.assertEqual(s.text(s.lib.sesame_profile_services, profile), "tcp/22")
        self.assertEqual(s.text(s.lib.sesame_profile_name, profile), "")
        # No key given and none in the profile; none carried either.
        self.assertEqual(s.lib.sesame_client_new(profile, None, None, ctypes.byref(out)),
                         NO_PRIVATE_KEY)
        self.assertEqual(s.lib.sesame_profile_private_key(profile, ctypes.byref(out)), ABSENT)
        client = self.client_for(v)
        for services, address in ((b"tcp/22 ftp/21", None), (None, b"198.18.0.300")):
            self.assertEqual(s.lib.sesame_client_build_knock(
                client, b"198.18.0.1", 0, services, address, ctypes.byref(out)), INVALID_ARGUMENT)
        nine = ",".join(f"tcp/{p}" for p in range(1, 10)).encode()
        self.assertEqual(s.lib.sesame_client_build_knock(
            client, b"198.18.0.1", 0, nine, None, ctypes.byref(out)), INVALID_ARGUMENT)
        s.lib.sesame_client_free(client)
        s.lib.sesame_profile_free(profile)
        # Freeing NULL is allowed.
        s.lib.sesame_profile_free(None)
        s.lib.sesame_knock_free(None)

    def test_a_knock_from_caller_bytes_is_reproducible(self) -> None:
        s = self.s
        v = next(v for v in vectors() if v["name"] == "default-udp")
        client = self.client_for(v)
        rnd = (ctypes.c_uint8 * RANDOM_BYTES_ENOUGH)(*[(i * 31 + 5) % 256 for i in range(RANDOM_BYTES_ENOUGH)])
        knocks = []
        for _ in range(2):
            knocks.append(s.handle(s.lib.sesame_client_build_knock_with_random, client,
                                   b"198.18.0.1", v["unix_time_ms"], None, b"198.18.0.2",
                                   rnd, RANDOM_BYTES_ENOUGH))
        a, b = (s.packets(k) for k in knocks)
        self.assertEqual(a, b)
        self.assertEqual([f"{p[1]}/{p[2]}" for p in a[:-1]], expected(v))
        self.assertEqual((a[-1][0], a[-1][2]), (1, v["payload_port"]))
        self.assertEqual(s.lib.sesame_knock_counter(knocks[0]), v["counter"])
        out = ctypes.c_void_p()
        self.assertEqual(s.lib.sesame_client_build_knock_with_random(
            client, b"198.18.0.1", v["unix_time_ms"], None, None, rnd, 100, ctypes.byref(out)),
            RANDOM_EXHAUSTED)
        fresh = s.handle(s.lib.sesame_client_build_knock, client, b"198.18.0.1",
                         v["unix_time_ms"], None, None)
        self.assertNotEqual(s.packets(fresh)[-1][3], a[-1][3])
        for k in knocks + [fresh]:
            s.lib.sesame_knock_free(k)
        s.lib.sesame_client_free(client)

    def test_the_reference_implementation_opens_the_knock(self) -> None:
        try:
            sys.path.insert(0, str(ROOT / "lab" / "reference"))
            import sesame_ref as ref  # needs `cryptography`
        except ImportError as e:
            if os.environ.get("CI") == "true":
                raise
            self.skipTest(f"the reference implementation needs `cryptography`: {e}")
        s = self.s
        v = next(v for v in vectors() if v["name"] == "psk-tcp")
        client = self.client_for(v)
        now = v["unix_time_ms"]
        knock = s.handle(s.lib.sesame_client_build_knock, client, b"2001:db8::1", now,
                         b"tcp/22,udp/51820", b"2001:db8::2")
        packets = s.packets(knock)
        self.assertEqual([f"{p[1]}/{p[2]}" for p in packets[:-1]], expected(v))
        self.assertTrue(all(p[3] == b"" for p in packets[:-1]), "TCP knocks carry no bytes")
        keys = ref.server_keys(ref.parse_key(v["server_private"]),
                               ref.parse_key(v["client_public"]), ref.parse_key(v["psk"]))
        req = ref.open_payload(ref.parse_key(v["server_private"]), keys, v["counter"],
                               packets[-1][3], now, v["params"]["step_seconds"], 1)
        self.assertEqual(req.timestamp_ms, now)
        self.assertEqual(set(req.services), {("tcp", 22), ("udp", 51820)})
        self.assertEqual(req.address, ipaddress.ip_address("2001:db8::2"))
        s.lib.sesame_knock_free(knock)
        s.lib.sesame_client_free(client)


class Deployment(unittest.TestCase):
    """The URI of a real sesamed (lab/e2e/embedding.rs runs this in the client namespace)."""

    def test_uri_from_sesamed_ports_and_knock(self) -> None:
        uri = os.environ.get("SESAME_TEST_URI")
        if not uri:
            self.skipTest("no SESAME_TEST_URI: lab/e2e/embedding.rs sets it")
        s = Sesame(LIB_PATH)
        v = next(v for v in vectors() if v["name"] == os.environ.get("SESAME_TEST_VECTOR",
                                                                     "default-udp"))
        profile = s.handle(s.lib.sesame_profile_from_uri, uri.encode())
        self.assertEqual(s.key_text(s.lib.sesame_profile_server_public_key, profile),
                         v["server_public"])
        key = s.key(os.environ["SESAME_TEST_KEY"])
        client = s.handle(s.lib.sesame_client_new, profile, key, None)
        got, pay, counter = s.ports(client, v["unix_time_ms"])
        self.assertEqual((got, pay, counter), (expected(v), v["payload_port"], v["counter"]))
        print(f"\n{v['name']}: ports {got} and payload port {pay} as in the vectors",
              file=sys.stderr)
        if os.environ.get("SESAME_TEST_KNOCK") == "1":
            address = os.environ.get("SESAME_TEST_ADDRESS")
            s.check(s.lib.sesame_client_knock(client, None, None,
                                              address.encode() if address else None, 0))
            print(f"knock sent to {s.text(s.lib.sesame_profile_host, profile)}",
                  file=sys.stderr)
        s.lib.sesame_client_free(client)
        s.lib.sesame_key_free(key)
        s.lib.sesame_profile_free(profile)


def main() -> int:
    global LIB_PATH
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", default=os.environ.get(
        "SESAME_FFI_LIB", str(ROOT / "target" / "debug" / "libsesame_ffi.so")))
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    LIB_PATH = args.lib
    if not Path(LIB_PATH).is_file():
        print(f"no library at {LIB_PATH}: build it (cargo build -p sesame-ffi) or pass --lib")
        print("0 passed, 1 failed")
        return 1
    suite = unittest.TestSuite()
    for case in (Api, Deployment):
        suite.addTests(unittest.defaultTestLoader.loadTestsFromTestCase(case))
    result = unittest.TextTestRunner(verbosity=2 if args.verbose else 1).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    print(f"{result.testsRun - failed - skipped} passed, {failed} failed, {skipped} skipped")
    return 0 if failed == 0 and result.testsRun > skipped else 1


if __name__ == "__main__":
    sys.exit(main())
