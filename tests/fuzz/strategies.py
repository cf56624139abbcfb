"""What the fuzz tests throw at the sidecar: hypothesis strategies for hostile requests.

Requests that are well-formed protobuf but absurd (any order of the request
oneof, repeated configs, text after finish, empty and huge strings, mixed
scripts, emoji and control characters, extreme and non-finite numbers, deep
and hostile ``extra_parameters``), and raw bytes that may not decode at all
(random, or a valid request cut, flipped or extended).
"""

from __future__ import annotations

import math
from typing import Any, Final

from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from google.protobuf import struct_pb2
from hypothesis import strategies as st

__all__ = ["blobs", "configs", "deep_configs", "length_delimited", "request_sequences", "texts"]

_INT32: Final = st.integers(-(2**31), 2**31 - 1)
_FLOATS: Final = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 0.5, 2.0, 3.4e38, 1e-45]),
    st.floats(width=32),
)
# Letters of several scripts, digits, punctuation DashScope splits sentences
# on, emoji (astral), combining marks, bidi and control characters.
_CHARACTERS: Final = st.one_of(
    st.characters(codec="utf-8"),
    st.sampled_from(
        [
            *"Aa zZ09.!?;,\n\t<>&\"'\\",
            *"\u3002\uff01\uff1f\uff1b",  # the full-width sentence ends
            *["你", "好", "語", "한", "ع", "ש", "é", "\u0301", "\u200f", "\u202e", "\x00", "\x7f"],
            *["😀", "𝄞", "\U0010ffff"],
        ]
    ),
)
# What a reader sees as one character may be several code points.
_PIECES: Final = st.one_of(
    _CHARACTERS, st.sampled_from(["👍🏽", "🇨🇳", "e\u0301", "\r\n", "<speak>", "</s>"])
)
_SIZES: Final = st.sampled_from([1, 100, 20_001, 200_001])


def _strings(max_size: int) -> st.SearchStrategy[str]:
    return st.lists(_PIECES, max_size=max_size).map("".join)


def texts() -> st.SearchStrategy[str]:
    """Text fragments: plain words, empty, short and mixed, or a piece repeated very many times."""
    return st.one_of(
        st.sampled_from(["Hello there. ", "One more sentence", " and its end.", "你好。", "Hi!"]),
        st.just(""),
        _strings(40),
        st.builds(lambda piece, n: piece * n, _PIECES, _SIZES),
    )


def _json_values() -> st.SearchStrategy[Any]:
    leaves = st.one_of(st.none(), st.booleans(), _FLOATS, _strings(20))
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(_strings(8), children, max_size=4),
        ),
        max_leaves=12,
    )


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"next": value}
    return value


# Keys the named fields own, which extra_parameters must not override.
_NAMED_KEYS: Final = ["voice", "format", "sample_rate", "model", "text_type", "volume", "rate"]


@st.composite
def _extra(draw: st.DrawFn) -> struct_pb2.Struct:
    keys = st.one_of(st.sampled_from(_NAMED_KEYS), _strings(12))
    values = draw(st.dictionaries(keys, _json_values(), max_size=4))
    if draw(st.booleans()):
        # Deeper than the sidecar allows (8); at most what the protobuf runtime
        # builds (its limit is 100 messages, two per level): deeper comes raw.
        values["deep"] = _nested(draw(st.integers(1, 30)))
    if draw(st.booleans()):
        values["big"] = "x" * draw(st.sampled_from([10, 16_000, 40_000]))
    extra = struct_pb2.Struct()
    extra.update(values)
    return extra


def configs() -> st.SearchStrategy[pb.SynthesisConfig]:
    """A config, half of the time one the sidecar accepts (so the calls go on), else hostile."""
    return st.one_of(_plausible_configs(), _hostile_configs())


@st.composite
def _plausible_configs(draw: st.DrawFn) -> pb.SynthesisConfig:
    """Values the sidecar accepts (and voices the emulator may reject), any of them unset."""
    config = pb.SynthesisConfig()
    maybe = st.booleans()
    if draw(maybe):
        config.voice = draw(st.sampled_from(["longanyang", "longxiaochun", "bad-voice"]))
    if draw(maybe):
        config.format = draw(st.sampled_from([0, 1, 2, 3, 4]))  # type: ignore[assignment]
    if draw(maybe):
        config.sample_rate_hz = draw(st.sampled_from([0, 8000, 16000, 22050, 24000, 48000]))
    if draw(maybe):
        config.volume = draw(st.integers(0, 100))
    if draw(maybe):
        config.rate = draw(st.floats(0.5, 2.0, width=32))
    if draw(maybe):
        config.pitch = draw(st.floats(0.5, 2.0, width=32))
    if draw(maybe):
        config.seed = draw(st.integers(0, 65535))
    if draw(maybe):
        config.language_hints.extend(
            draw(st.lists(st.sampled_from(["zh", "en", "ja"]), max_size=2))
        )
    config.enable_ssml = draw(st.booleans()) and draw(st.booleans())
    config.word_timestamps = draw(st.booleans())
    config.phoneme_timestamps = draw(st.booleans()) and draw(st.booleans())
    if draw(maybe):
        extra = struct_pb2.Struct()
        extra.update(draw(st.dictionaries(st.sampled_from(["x_a", "x_b"]), st.integers(0, 9))))
        config.extra_parameters.CopyFrom(extra)
    return config


@st.composite
def _hostile_configs(draw: st.DrawFn) -> pb.SynthesisConfig:
    """A SynthesisConfig with every field maybe set, each to anything its type holds."""
    config = pb.SynthesisConfig()
    identifier = st.one_of(
        st.sampled_from(["", "cosyvoice-v3-flash", "longanyang", "bad-voice", "a" * 129]),
        _strings(30),
    )
    if draw(st.booleans()):
        config.model = draw(identifier)
    if draw(st.booleans()):
        config.voice = draw(identifier)
    if draw(st.booleans()):
        config.format = draw(st.one_of(st.sampled_from([0, 1, 2, 3, 4]), _INT32))  # type: ignore[assignment]
    if draw(st.booleans()):
        config.sample_rate_hz = draw(st.one_of(st.sampled_from([0, 8000, 22050, 48000]), _INT32))
    if draw(st.booleans()):
        config.volume = draw(st.one_of(st.integers(-1, 101), _INT32))
    if draw(st.booleans()):
        config.rate = draw(_FLOATS)
    if draw(st.booleans()):
        config.pitch = draw(_FLOATS)
    if draw(st.booleans()):
        config.seed = draw(_INT32)
    if draw(st.booleans()):
        config.instruction = draw(texts())
    if draw(st.booleans()):
        config.language_hints.extend(draw(st.lists(_strings(20), max_size=10)))
    config.enable_ssml = draw(st.booleans())
    config.word_timestamps = draw(st.booleans())
    config.phoneme_timestamps = draw(st.booleans())
    if draw(st.booleans()):
        config.opus_bit_rate_kbps = draw(st.one_of(st.integers(0, 600), _INT32))
    if draw(st.booleans()):
        config.extra_parameters.CopyFrom(draw(_extra()))
    return config


def _request(kind: str, config: pb.SynthesisConfig, text: str) -> pb.StreamingSynthesizeRequest:
    if kind == "config":
        return pb.StreamingSynthesizeRequest(config=config)
    if kind == "text":
        return pb.StreamingSynthesizeRequest(text=text)
    if kind == "flush":
        return pb.StreamingSynthesizeRequest(flush=pb.Flush())
    if kind == "finish":
        return pb.StreamingSynthesizeRequest(finish=pb.Finish())
    return pb.StreamingSynthesizeRequest()  # no oneof set at all


_KINDS: Final = st.sampled_from(["config", "text", "text", "flush", "finish", "empty"])


def request_sequences() -> st.SearchStrategy[list[pb.StreamingSynthesizeRequest]]:
    """Requests of a StreamingSynthesize call, in any order; most start with a config."""
    one = st.builds(_request, _KINDS, configs(), texts())
    first = st.one_of(st.builds(_request, st.just("config"), configs(), texts()), one)
    return st.builds(lambda head, tail: [head, *tail], first, st.lists(one, max_size=6))


def _mutated(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A valid message's bytes, cut short, with a byte flipped, or with garbage appended."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(valid))
        how = draw(st.sampled_from(["cut", "flip", "append"]))
        if how == "cut" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif how == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        else:
            data += draw(st.binary(min_size=1, max_size=16))
        return bytes(data)

    return mutate()


def blobs(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Raw request bytes: random, or a valid request's bytes mutated."""
    return st.one_of(st.binary(max_size=64), _mutated(valid))


def length_delimited(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (field numbers below 16)."""
    length, varint = len(payload), bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([number << 3 | 2]) + bytes(varint) + payload


def deep_configs() -> st.SearchStrategy[bytes]:
    """A SynthesisConfig whose extra_parameters nest Structs 30 to 120 deep, built by hand:
    the protobuf runtime refuses to build (or parse) past 100 messages."""

    def build(depth: int) -> bytes:
        struct = b""
        for _ in range(depth):
            value = length_delimited(5, struct)  # Value.struct_value
            struct = length_delimited(1, length_delimited(1, b"k") + length_delimited(2, value))
        return length_delimited(14, struct)  # SynthesisConfig.extra_parameters

    return st.integers(30, 120).map(build)
