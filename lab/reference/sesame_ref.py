"""Independent Python reference implementation of the sesame knock protocol, version 2.

Written from docs/PROTOCOL.md alone (section numbers below refer to it). It is meant to be
read next to the spec, not to be fast: every derivation is spelled out once, in spec order.

Primitives come from the `cryptography` package (X25519, HMAC-SHA256, HKDF-SHA256,
ChaCha20-Poly1305); everything else is the standard library.
"""

from __future__ import annotations

import hmac as _hmac
import ipaddress
import os
import secrets
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as c_hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class KeyError_(ValueError):
    """A key text that the strict parser refuses (section 2.1)."""


class NonContributory(ValueError):
    """X25519 produced the all-zero output: the peer key is a low-order point (section 2.1)."""


class ParamError(ValueError):
    """Invalid sequence parameters (section 5)."""


class EncodeError(ValueError):
    """A request that cannot be encoded as a version-2 plaintext (section 6.1)."""


class DecodeError(ValueError):
    """A plaintext the decoder refuses; `reason` is "bad_version" or "malformed" (section 6.3)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class OpenError(ValueError):
    """A datagram the opener refuses; `reason` is one of the section 6.3 reason codes."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# Section 2: notation and primitives
# ---------------------------------------------------------------------------------------------


def u8(x: int) -> bytes:
    return struct.pack(">B", x)


def u16be(x: int) -> bytes:
    return struct.pack(">H", x)


def u32be(x: int) -> bytes:
    return struct.pack(">I", x)


def u64be(x: int) -> bytes:
    return struct.pack(">Q", x)


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    h = c_hmac.HMAC(key, hashes.SHA256())
    h.update(msg)
    return h.finalize()


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    # RFC 5869 section 2.2: PRK = HMAC-Hash(salt, IKM).
    return hmac_sha256(salt, ikm)


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(prk)


def hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def aead_seal(key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
    """ChaCha20-Poly1305 (RFC 8439): ciphertext || 16-byte tag."""
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def aead_open(key: bytes, nonce: bytes, aad: bytes, ct_and_tag: bytes) -> bytes | None:
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ct_and_tag, aad)
    except InvalidTag:
        return None


def x25519(k: bytes, u: bytes) -> bytes:
    """X25519(k, U) with the mandatory all-zero check (section 2.1).

    `cryptography` (OpenSSL) itself raises ValueError when the shared secret is all zero; both
    that and an explicit all-zero result are reported as NonContributory.
    """
    if len(k) != 32 or len(u) != 32:
        raise ValueError("X25519 inputs must be 32 bytes")
    # RFC 7748 section 5: the most significant bit of the u-coordinate is ignored. Mask it here
    # rather than rely on the backend (a payload's E carries a random top bit, section 6.2).
    u = u[:31] + bytes([u[31] & 0x7F])
    try:
        out = X25519PrivateKey.from_private_bytes(k).exchange(X25519PublicKey.from_public_bytes(u))
    except ValueError as e:
        raise NonContributory("X25519 output is all zero (low-order peer key)") from e
    if out == bytes(32):
        raise NonContributory("X25519 output is all zero (low-order peer key)")
    return out


def pub(k: bytes) -> bytes:
    """pub(k) = X25519(k, 9)."""
    if len(k) != 32:
        raise ValueError("private key must be 32 bytes")
    return X25519PrivateKey.from_private_bytes(k).public_key().public_bytes_raw()


def clamp(k: bytes) -> bytes:
    """RFC 7748 section 5 clamping (what generators SHOULD apply, as `wg genkey` does)."""
    b = bytearray(k)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


# ---------------------------------------------------------------------------------------------
# Section 2.1: key text form (strict WireGuard base64)
# ---------------------------------------------------------------------------------------------

B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(B64_ALPHABET)}

# PROTOCOL.md section 2.1: only ASCII space, TAB, LF and CR may follow a key.
TRAILING_WHITESPACE = " \t\n\r"


def parse_key(text: str | bytes) -> bytes:
    """Parse a 44-character WireGuard base64 key into 32 bytes, refusing anything else."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError as e:
            raise KeyError_("key text is not ASCII") from e
    s = text.rstrip(TRAILING_WHITESPACE)
    if len(s) != 44:
        raise KeyError_(f"key text has {len(s)} characters after trailing whitespace, not 44")
    # 32 bytes = 256 bits = 42 full 6-bit characters (252 bits) + 4 bits in character 43, whose
    # 2 low bits are unused; then exactly one '=' of padding.
    if s[43] != "=":
        raise KeyError_("key text must end with exactly one '=' of padding")
    data = s[:43]
    acc = 0
    for i, ch in enumerate(data):
        v = _B64_VALUE.get(ch)
        if v is None:
            raise KeyError_(f"character {ch!r} at position {i} is outside the base64 alphabet")
        acc = (acc << 6) | v
    if acc & 0b11:
        raise KeyError_("non-canonical encoding: the unused low bits of the last character are set")
    return (acc >> 2).to_bytes(32, "big")


def format_key(key: bytes) -> str:
    if len(key) != 32:
        raise ValueError("keys are 32 bytes")
    acc = int.from_bytes(key, "big") << 2  # 258 bits, 43 characters
    chars = [B64_ALPHABET[(acc >> (6 * (42 - i))) & 63] for i in range(43)]
    return "".join(chars) + "="


# ---------------------------------------------------------------------------------------------
# Section 3: key schedule
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientKeys:
    C: bytes  # client public key
    S: bytes  # server public key
    k_seq: bytes
    k_mac: bytes
    k_pay: bytes


def key_schedule(
    own_private: bytes, peer_public: bytes, client_public: bytes, server_public: bytes,
    psk: bytes | None,
) -> ClientKeys:
    """dh = X25519(own_private, peer_public), which is X25519(c, S) on the client and X25519(s, C)
    on the server; the rest is identical on both sides."""
    if psk is None:
        psk = bytes(32)
    if len(psk) != 32:
        raise ValueError("PSK must be 32 bytes")
    dh = x25519(own_private, peer_public)
    prk = hkdf_extract(b"sesame v2 static", dh + psk)
    ids = client_public + server_public
    return ClientKeys(
        C=client_public,
        S=server_public,
        k_seq=hkdf_expand(prk, b"sesame v2 sequence" + ids, 32),
        k_mac=hkdf_expand(prk, b"sesame v2 mac key" + ids, 32),
        k_pay=hkdf_expand(prk, b"sesame v2 payload key" + ids, 32),
    )


def client_keys(client_private: bytes, server_public: bytes, psk: bytes | None) -> ClientKeys:
    return key_schedule(client_private, server_public, pub(client_private), server_public, psk)


def server_keys(server_private: bytes, client_public: bytes, psk: bytes | None) -> ClientKeys:
    return key_schedule(server_private, client_public, client_public, pub(server_private), psk)


# ---------------------------------------------------------------------------------------------
# Section 4: time steps
# ---------------------------------------------------------------------------------------------


def check_step_seconds(step_seconds: int) -> None:
    if not (isinstance(step_seconds, int) and 1 <= step_seconds <= 86400):
        raise ParamError("step_seconds must be 1..=86400")


def counter_from_seconds(unix_seconds: int, step_seconds: int) -> int:
    check_step_seconds(step_seconds)
    return unix_seconds // step_seconds


def counter_from_ms(unix_ms: int, step_seconds: int) -> int:
    """floor(floor(ms / 1000) / step) == floor(ms / (1000 * step)) for non-negative integers."""
    return counter_from_seconds(unix_ms // 1000, step_seconds)


def in_window(counter: int, counter_now: int, skew_steps: int) -> bool:
    return counter_now - skew_steps <= counter <= counter_now + skew_steps


# ---------------------------------------------------------------------------------------------
# Section 5: port sequence
# ---------------------------------------------------------------------------------------------

PROTOCOLS = ("udp", "tcp", "mixed")
MAX_LENGTH = 16


@dataclass(frozen=True)
class Params:
    length: int
    lo: int
    hi: int
    exclude_ports: frozenset[int] = field(default_factory=frozenset)
    protocol: str = "udp"

    def __post_init__(self) -> None:
        # 0 (single-packet mode) or 2..=16; 1 MUST be refused.
        if not (self.length == 0 or 2 <= self.length <= MAX_LENGTH):
            raise ParamError("length must be 0 or 2..=16")
        if not (1 <= self.lo <= self.hi <= 65535):
            raise ParamError("port_range must satisfy 1 <= lo <= hi <= 65535")
        if self.protocol not in PROTOCOLS:
            raise ParamError(f"protocol must be one of {PROTOCOLS}")
        n = self.n
        available = self.available
        if available < 2 * (self.length + 1):
            raise ParamError(f"available ports {available} < 2 * (length + 1)")
        if 2 * available < n:
            raise ParamError(f"more than half of the {n} ports in the range are excluded")

    @property
    def n(self) -> int:
        return self.hi - self.lo + 1

    @property
    def available(self) -> int:
        excluded_in_range = {p for p in self.exclude_ports if self.lo <= p <= self.hi}
        return self.n - len(excluded_in_range)


def make_params(length: int, port_range, exclude_ports=(), protocol: str = "udp") -> Params:
    lo, hi = port_range
    return Params(length, lo, hi, frozenset(exclude_ports), protocol)


class Exhausted(RuntimeError):
    """Rejection sampling ran out of candidates (unreachable with valid parameters)."""


def port_at(
    k_seq: bytes, step_seconds: int, counter: int, i: int, params: Params, used: list[int],
) -> int:
    check_step_seconds(step_seconds)
    n = params.n
    limit = 2**32 - (2**32 % n)
    for j in range(256):
        block = hmac_sha256(
            k_seq, b"sesame v2 port" + u32be(step_seconds) + u64be(counter) + u8(i) + u8(j))
        for t in range(8):
            v = int.from_bytes(block[4 * t: 4 * t + 4], "big")
            if v >= limit:
                continue
            port = params.lo + (v % n)
            if port in params.exclude_ports:
                continue
            if port in used:
                continue
            return port
    raise Exhausted(f"no port for position {i}")


def knock_proto(k_seq: bytes, step_seconds: int, counter: int, i: int, params: Params) -> str:
    if params.protocol in ("udp", "tcp"):
        return params.protocol
    check_step_seconds(step_seconds)
    b = hmac_sha256(
        k_seq, b"sesame v2 proto" + u32be(step_seconds) + u64be(counter) + u8(i))[0] & 1
    return "tcp" if b else "udp"


@dataclass(frozen=True)
class Sequence:
    counter: int
    knocks: list[tuple[str, int]]  # (proto, port) for positions 0 .. length-1
    payload_port: int  # position `length`, always UDP


def sequence(k_seq: bytes, step_seconds: int, counter: int, params: Params) -> Sequence:
    used: list[int] = []
    for i in range(params.length + 1):
        used.append(port_at(k_seq, step_seconds, counter, i, params, used))
    knocks = [(knock_proto(k_seq, step_seconds, counter, i, params), used[i])
              for i in range(params.length)]
    return Sequence(counter, knocks, used[params.length])


def udp_knock_bytes() -> bytes:
    """Content of a UDP knock (section 5, SHOULD): L random bytes, L uniform in 8..=120."""
    return os.urandom(8 + secrets.randbelow(120 - 8 + 1))


# ---------------------------------------------------------------------------------------------
# Section 6.1: plaintext
# ---------------------------------------------------------------------------------------------

PLAINTEXT_LEN = 120
AUTH_LEN = 184  # E (32) || ct (120) || tag (16) || mac (16): the authenticated part
MAX_PADDING = 56
MIN_DATAGRAM_LEN = AUTH_LEN
MAX_DATAGRAM_LEN = AUTH_LEN + MAX_PADDING  # 240
VERSION = 2
MAX_SERVICES = 8
ACTION_LEN = 16
ARGUMENT_LEN = 32
IP_PROTO = {"tcp": 6, "udp": 17}
IP_PROTO_NAME = {v: k for k, v in IP_PROTO.items()}
ACTION_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_-")
ARGUMENT_CHARS = frozenset(range(0x21, 0x7F))  # printable ASCII without space


@dataclass(frozen=True)
class Action:
    name: str  # 1..=16 characters of a-z 0-9 _ -
    argument: str = ""  # 0..=32 characters of 0x21..=0x7E


@dataclass(frozen=True)
class Request:
    timestamp_ms: int
    random: bytes  # 16 bytes
    services: tuple[tuple[str, int], ...] = ()  # ("tcp"|"udp", port); empty = all allowed
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    flags: int = 0
    action: Action | None = None


def parse_service(text: str) -> tuple[str, int]:
    proto, _, port = text.partition("/")
    if proto not in IP_PROTO or not port.isdigit():
        raise EncodeError(f"bad service {text!r}")
    return proto, int(port)


def format_service(svc: tuple[str, int]) -> str:
    return f"{svc[0]}/{svc[1]}"


def _encode_text_field(text: str, size: int, min_len: int, charset: frozenset, what: str) -> bytes:
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError as e:
        raise EncodeError(f"{what} is not ASCII") from e
    if not (min_len <= len(raw) <= size):
        raise EncodeError(f"{what} must be {min_len}..={size} bytes")
    if any(b not in charset for b in raw):
        raise EncodeError(f"{what} {text!r} has a character outside its set")
    return raw.ljust(size, b"\0")


def encode_plaintext(req: Request) -> bytes:
    if req.flags != 0:
        raise EncodeError("version 2 defines no flags")
    if not (0 <= req.timestamp_ms < 2**64):
        raise EncodeError("timestamp_ms must fit in u64")
    if len(req.random) != 16:
        raise EncodeError("random must be 16 bytes")
    if len(req.services) > MAX_SERVICES:
        raise EncodeError("at most 8 services")
    services = b""
    for proto, port in req.services:
        if proto not in IP_PROTO or not (1 <= port <= 65535):
            raise EncodeError(f"bad service {proto}/{port}")
        services += u8(IP_PROTO[proto]) + u16be(port)
    services = services.ljust(3 * MAX_SERVICES, b"\0")
    if req.address is None:
        family, addr = 0, bytes(16)
    elif isinstance(req.address, ipaddress.IPv4Address):
        family, addr = 4, req.address.packed + bytes(12)
    elif isinstance(req.address, ipaddress.IPv6Address):
        family, addr = 6, req.address.packed
    else:
        raise EncodeError("address must be IPv4, IPv6 or None")
    if req.action is None:
        action, argument = bytes(ACTION_LEN), bytes(ARGUMENT_LEN)
    else:
        action = _encode_text_field(req.action.name, ACTION_LEN, 1, ACTION_CHARS, "action name")
        argument = _encode_text_field(req.action.argument, ARGUMENT_LEN, 0, ARGUMENT_CHARS,
                                      "action argument")
    out = (
        u8(VERSION) + u8(req.flags) + u64be(req.timestamp_ms) + req.random
        + u8(len(req.services)) + services + u8(family) + addr + action + argument + bytes(4)
    )
    assert len(out) == PLAINTEXT_LEN
    return out


def _decode_text_field(raw: bytes, charset: frozenset, what: str) -> str:
    """`raw` is 0 or more characters of `charset`, then zero bytes up to the end. Returns the
    characters (possibly empty)."""
    end = raw.find(b"\0")
    if end < 0:
        end = len(raw)
    text, rest = raw[:end], raw[end:]
    if any(b not in charset for b in text):
        raise DecodeError("malformed", f"{what}: character outside its set")
    if rest != bytes(len(rest)):
        raise DecodeError("malformed", f"{what}: non-zero byte after the first zero byte")
    return text.decode("ascii")


def decode_plaintext(p: bytes) -> Request:
    """Strict decoder. Version is checked first (bad_version); every other field error is
    `malformed`."""
    if len(p) != PLAINTEXT_LEN:
        raise DecodeError("malformed", f"plaintext is {len(p)} bytes, not {PLAINTEXT_LEN}")
    if p[0] != VERSION:
        raise DecodeError("bad_version", f"version {p[0]}")

    def bad(detail: str) -> DecodeError:
        return DecodeError("malformed", detail)

    flags = p[1]
    if flags != 0:
        raise bad(f"flags {flags:#04x}")
    timestamp_ms = int.from_bytes(p[2:10], "big")
    random = p[10:26]
    count = p[26]
    if count > MAX_SERVICES:
        raise bad(f"count {count}")
    services = []
    for idx in range(MAX_SERVICES):
        entry = p[27 + 3 * idx: 30 + 3 * idx]
        if idx >= count:
            if entry != bytes(3):
                raise bad(f"unused service entry {idx} not zero")
            continue
        ip_proto, port = entry[0], int.from_bytes(entry[1:3], "big")
        if ip_proto not in IP_PROTO_NAME:
            raise bad(f"service {idx}: ip_proto {ip_proto}")
        if port == 0:
            raise bad(f"service {idx}: port 0")
        services.append((IP_PROTO_NAME[ip_proto], port))
    family = p[51]
    addr = p[52:68]
    if family == 0:
        if addr != bytes(16):
            raise bad("address bytes without a family")
        address = None
    elif family == 4:
        if addr[4:] != bytes(12):
            raise bad("IPv4 address with non-zero unused bytes")
        address = ipaddress.IPv4Address(addr[:4])
    elif family == 6:
        address = ipaddress.IPv6Address(addr)
    else:
        raise bad(f"family {family}")
    name = _decode_text_field(p[68:84], ACTION_CHARS, "action name")
    argument = _decode_text_field(p[84:116], ARGUMENT_CHARS, "action argument")
    if name:
        action = Action(name, argument)
    elif argument:
        raise bad("argument without an action")
    else:
        action = None
    if p[116:120] != bytes(4):
        raise bad("non-zero padding")
    return Request(timestamp_ms, random, tuple(services), address, flags, action)


# ---------------------------------------------------------------------------------------------
# Section 7.2: argument rules of server actions (server policy, not the wire format)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArgumentRule:
    """`none` (chars is None) or `^[CLASS]{m,n}$`: m..=n characters of `chars`."""

    chars: frozenset | None = None
    min_len: int = 0
    max_len: int = 0


def parse_argument_rule(text: str) -> ArgumentRule:
    """Parse an argument rule as section 7.2 states it; raise ValueError if it is not one."""
    if text == "none":
        return ArgumentRule()
    if not text.startswith("^["):
        raise ValueError("not none and not ^[CLASS]{m,n}$")
    rest = text[2:]
    i = 0

    def char() -> str:
        nonlocal i
        if i >= len(rest):
            raise ValueError("unterminated class")
        c = rest[i]
        i += 1
        if c == "\\":
            if i >= len(rest):
                raise ValueError("escape at the end")
            c = rest[i]
            i += 1
        if not (0x21 <= ord(c) <= 0x7E):
            raise ValueError(f"{c!r} is not printable ASCII without space")
        return c

    if rest[:1] == "^":
        raise ValueError("negated class")
    chars: set[int] = set()
    while True:
        if i >= len(rest):
            raise ValueError("unterminated class")
        if rest[i] == "]":
            i += 1
            break
        lo = char()
        # lo-hi is a range unless the "-" is the last character of the class.
        if rest[i:i + 1] == "-" and i + 1 < len(rest) and rest[i + 1] != "]":
            i += 1
            hi = char()
            if lo > hi:
                raise ValueError("backwards range")
            chars.update(range(ord(lo), ord(hi) + 1))
        else:
            chars.add(ord(lo))
    if not chars:
        raise ValueError("empty class")
    counts = rest[i:]
    if not (counts.startswith("{") and counts.endswith("}$")):
        raise ValueError("no {m,n}$")
    parts = counts[1:-2].split(",")
    if len(parts) == 1:
        parts = [parts[0], parts[0]]
    if len(parts) != 2 or not all(p and p.isascii() and p.isdigit() for p in parts):
        raise ValueError("bad counts")
    m, n = int(parts[0]), int(parts[1])
    if not (1 <= m <= n <= ARGUMENT_LEN):
        raise ValueError("need 1 <= m <= n <= 32")
    return ArgumentRule(frozenset(chars), m, n)


def argument_allowed(rule: ArgumentRule, argument: str) -> bool:
    """Whether a payload may carry `argument` ("" for none) for an action with this rule."""
    if rule.chars is None:
        return argument == ""
    return (
        rule.min_len <= len(argument) <= rule.max_len
        and not argument.startswith("-")
        and all(ord(c) in rule.chars for c in argument)
    )


# ---------------------------------------------------------------------------------------------
# Section 6.2: building (client)
# ---------------------------------------------------------------------------------------------


def _aad(counter: int, E: bytes) -> bytes:
    return u8(VERSION) + u64be(counter) + E  # 41 bytes


def _k_aead(k_pay: bytes, edh: bytes, counter: int, E: bytes) -> bytes:
    # info = "sesame v2 aead" || u8(2) || u64be(counter) || E, which is the label then the AAD.
    return hkdf(salt=k_pay, ikm=edh, info=b"sesame v2 aead" + _aad(counter, E), length=32)


def _gate(k_mac: bytes, counter: int, E: bytes, ct_tag: bytes) -> bytes:
    return hmac_sha256(k_mac, b"sesame v2 mac" + u64be(counter) + E + ct_tag)[:16]


def ephemeral_public(e: bytes, e_high_bit: bool) -> bytes:
    """E = pub(e) with bit 7 of byte 31 (the most significant bit of the little-endian
    u-coordinate) set to `e_high_bit`."""
    E = bytearray(pub(e))
    E[31] = (E[31] & 0x7F) | (0x80 if e_high_bit else 0)
    return bytes(E)


def seal_plaintext(
    keys: ClientKeys, counter: int, e: bytes, plaintext: bytes,
    e_high_bit: bool | None = None, padding: bytes | None = None,
) -> bytes:
    """The 6.2 construction on an already encoded 120-byte plaintext (also used by tests to seal
    deliberately malformed plaintexts). `e_high_bit` and `padding` are random when None."""
    if len(plaintext) != PLAINTEXT_LEN:
        raise ValueError(f"plaintext must be {PLAINTEXT_LEN} bytes")
    if not (0 <= counter < 2**64):
        raise ValueError("counter must fit in u64")
    if e_high_bit is None:
        e_high_bit = bool(secrets.randbits(1))
    if padding is None:
        padding = os.urandom(secrets.randbelow(MAX_PADDING + 1))
    if len(padding) > MAX_PADDING:
        raise ValueError(f"padding is at most {MAX_PADDING} bytes")
    E = ephemeral_public(e, e_high_bit)
    edh = x25519(e, keys.S)
    k_aead = _k_aead(keys.k_pay, edh, counter, E)
    ct_tag = aead_seal(k_aead, bytes(12), _aad(counter, E), plaintext)
    authenticated = E + ct_tag + _gate(keys.k_mac, counter, E, ct_tag)
    assert len(authenticated) == AUTH_LEN
    return authenticated + padding


def build_payload(
    keys: ClientKeys, counter: int, step_seconds: int, req: Request, e: bytes,
    e_high_bit: bool | None = None, padding: bytes | None = None,
) -> bytes:
    """Build the datagram. `e` MUST be fresh random bytes for every datagram (os.urandom(32));
    `e_high_bit` and `padding` SHOULD be random (the default); vectors pass them explicitly."""
    if counter_from_ms(req.timestamp_ms, step_seconds) != counter:
        raise EncodeError("timestamp_ms does not lie in the step `counter`")
    return seal_plaintext(keys, counter, e, encode_plaintext(req), e_high_bit, padding)


# ---------------------------------------------------------------------------------------------
# Section 6.3: opening (server), steps 1-7 (steps 8 and 9, replay and ahead, are server state)
# ---------------------------------------------------------------------------------------------


def open_payload(
    server_private: bytes, keys: ClientKeys, counter: int, datagram: bytes,
    now_ms: int, step_seconds: int, skew_steps: int,
) -> Request:
    """Open one candidate (client, counter). Raises OpenError with the section 6.3 reason."""
    # 1. length; only the authenticated part is used from here on.
    if len(datagram) < MIN_DATAGRAM_LEN:
        raise OpenError("truncated", f"{len(datagram)} bytes")
    if len(datagram) > MAX_DATAGRAM_LEN:
        raise OpenError("too_long", f"{len(datagram)} bytes")
    auth = datagram[:AUTH_LEN]
    # 2. window
    counter_now = counter_from_ms(now_ms, step_seconds)
    if not in_window(counter, counter_now, skew_steps):
        raise OpenError("stale", f"counter {counter}, now {counter_now}, skew {skew_steps}")
    # E is used as sent (top bit included) in the MAC, the AAD and the HKDF info.
    E, ct_tag, mac = auth[:32], auth[32:168], auth[168:184]
    # 3. gate (constant-time compare)
    if not _hmac.compare_digest(_gate(keys.k_mac, counter, E, ct_tag), mac):
        raise OpenError("bad_mac")
    # 4. ephemeral (X25519 ignores the top bit of E)
    try:
        edh = x25519(server_private, E)
    except NonContributory:
        raise OpenError("bad_ephemeral") from None
    # 5. AEAD
    plaintext = aead_open(_k_aead(keys.k_pay, edh, counter, E), bytes(12), _aad(counter, E), ct_tag)
    if plaintext is None:
        raise OpenError("bad_aead")
    # 6. decode
    try:
        req = decode_plaintext(plaintext)
    except DecodeError as e:
        raise OpenError(e.reason, e.detail) from None
    # 7. step
    if counter_from_ms(req.timestamp_ms, step_seconds) != counter:
        raise OpenError("counter_mismatch")
    return req
