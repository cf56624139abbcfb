"""Deterministic audio, so a test can check every byte the emulator sends.

A sentence sounds as a triangle tone. Its samples are a pure function of
(sentence text, sentence index, sample rate, volume, rate, pitch, seed) and
the ``ms_per_character`` knob, computed with integer arithmetic only, so the
same inputs give the same bytes on every machine:

- duration = counted characters (§4.2 rule) x ``ms_per_character`` / rate,
  at least one sample;
- frequency = 220..879 Hz picked by a SHA-256 of (seed, index, text), times pitch;
- amplitude = volume / 100 x 16000.

Formats (§8):

- ``pcm``: 16-bit signed little-endian mono at the sample rate;
- ``wav``: the same samples; the task's first binary frame starts with a
  44-byte RIFF header whose size fields are ``0xFFFFFFFF`` (streamed);
- ``mp3``: real MPEG audio, constant 64 kbit/s, when the optional LAME
  binding ``lameenc`` is installed (``pip install 'cosyvoice-sidecar[emulator]'``;
  the dev setup has it). Each sentence is encoded on its own, so a task's audio
  is one MP3 stream per sentence, back to back, as a streaming decoder takes
  them; LAME is deterministic, so the bytes still compare exactly.
- ``opus``, and ``mp3`` without ``lameenc``: **placeholder bytes, not
  decodable**: one byte per sample (the sample's high byte XOR a per-format
  mask), deterministic and chunk-independent.
"""

from __future__ import annotations

import hashlib
import importlib.util
import struct
import sys
from array import array
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from sidecar.protocol import count_characters

__all__ = [
    "FORMATS",
    "MP3_BIT_RATE_KBPS",
    "SAMPLE_RATES",
    "AudioSpec",
    "chunk_size",
    "encode",
    "mp3_is_real",
    "pcm_chunks",
    "sentence_audio",
    "sentence_pcm",
    "sentence_samples",
    "task_audio",
    "wav_header",
]

FORMATS: Final = frozenset({"pcm", "wav", "mp3", "opus"})
SAMPLE_RATES: Final = frozenset({8000, 16000, 22050, 24000, 44100, 48000})
_STREAMED_SIZE: Final = 0xFFFFFFFF
_MASKS: Final = {"mp3": 0x4D, "opus": 0x4F}
# DashScope does not document its mp3 bit rate (unconfirmed). 64 kbit/s is a
# Layer III bit rate of MPEG-1, 2 and 2.5 alike, so one constant serves every
# sample rate the service offers (the tests encode and decode all six).
MP3_BIT_RATE_KBPS: Final = 64
_LAME_QUALITY: Final = 7  # LAME's fast mode: the emulator's audio is a test tone
_lame_installed: Final = importlib.util.find_spec("lameenc") is not None


@dataclass(frozen=True)
class AudioSpec:
    """The audio parameters of one task, resolved (no "Default", no 0 rate)."""

    format: str = "pcm"
    sample_rate: int = 16000
    volume: int = 50
    rate: float = 1.0
    pitch: float = 1.0
    seed: int = 0


def sentence_samples(text: str, spec: AudioSpec, ms_per_character: float) -> int:
    """Return how many samples the sentence ``text`` lasts (at least 1)."""
    duration_ms = count_characters(text) * ms_per_character / spec.rate
    return max(1, round(duration_ms * spec.sample_rate / 1000))


def sentence_pcm(text: str, index: int, spec: AudioSpec, ms_per_character: float) -> bytes:
    """Return the 16-bit LE mono PCM of sentence number ``index`` (0-based)."""
    digest = hashlib.sha256(f"{spec.seed}\x00{index}\x00{text}".encode()).digest()
    frequency = (220 + int.from_bytes(digest[:2], "big") % 660) * spec.pitch
    period = max(2, round(spec.sample_rate / frequency))
    amplitude = spec.volume * 16000 // 100
    one_period = array("h", (_triangle(i, period, amplitude) for i in range(period)))
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts only
        one_period.byteswap()
    wave = one_period.tobytes()
    count = sentence_samples(text, spec, ms_per_character)
    whole, rest = divmod(count, period)
    return wave * whole + wave[: 2 * rest]


def sentence_audio(text: str, index: int, spec: AudioSpec, ms_per_character: float) -> bytes:
    """Return sentence ``index``'s audio in ``spec.format``, without any container header.

    This is what the sentence's binary frames carry, concatenated; cut it with
    :func:`chunk_size`. Equal to ``encode(spec.format, sentence_pcm(...), spec.sample_rate)``,
    remembered for recently used sentences.
    """
    key = (text, index, spec, ms_per_character)
    data = _cache.get(key)
    if data is not None:
        _cache.move_to_end(key)
        return data
    data = encode(spec.format, sentence_pcm(text, index, spec, ms_per_character), spec.sample_rate)
    if len(data) <= _CACHE_MAX_SIZE:
        _cache[key] = data
        if len(_cache) > _CACHE_ENTRIES:
            _cache.popitem(last=False)
    return data


def chunk_size(format_: str, sample_rate: int, chunk_ms: int) -> int:
    """Return how many bytes of :func:`sentence_audio` one binary frame carries.

    Whole samples, as :func:`pcm_chunks` cuts them (the placeholder formats
    have one byte per sample); for real mp3, ``chunk_ms`` of its constant bit rate.
    """
    if format_ == "mp3" and mp3_is_real():
        return max(1, MP3_BIT_RATE_KBPS * chunk_ms // 8)
    width = 2 if format_ in ("pcm", "wav") else 1
    return max(1, sample_rate * chunk_ms // 1000) * width


def mp3_is_real() -> bool:
    """Return whether ``mp3`` is encoded by LAME here (``lameenc`` installed)."""
    return _lame_installed


# Recently synthesised sentences, encoded: frames are slices of one buffer, and
# a repeated text (every task of a benchmark, a retry) is not synthesised again.
# Long sentences are not kept, so the cache stays under 16 MiB.
_CACHE_ENTRIES: Final = 64
_CACHE_MAX_SIZE: Final = 1 << 18
_cache: OrderedDict[tuple[str, int, AudioSpec, float], bytes] = OrderedDict()


def _triangle(i: int, period: int, amplitude: int) -> int:
    """Sample ``i`` of a triangle wave in [-amplitude, amplitude], integer math only."""
    q = 4 * amplitude * i // period  # 0 .. 4 * amplitude
    if q <= amplitude:
        return q
    if q <= 3 * amplitude:
        return 2 * amplitude - q
    return q - 4 * amplitude


def encode(format_: str, pcm: bytes, sample_rate: int) -> bytes:
    """Return the bytes of ``pcm`` in ``format_``, without any container header.

    ``pcm`` and ``wav`` are the PCM itself; ``mp3`` is one MP3 stream when
    :func:`mp3_is_real`; otherwise ``mp3`` and ``opus`` are the placeholder
    bytes described in the module docstring.
    """
    if format_ in ("pcm", "wav"):
        return pcm
    if format_ == "mp3" and mp3_is_real():
        return _lame(pcm, sample_rate)
    mask = _MASKS[format_]
    table = bytes(b ^ mask for b in range(256))
    return pcm[1::2].translate(table)


def _lame(pcm: bytes, sample_rate: int) -> bytes:
    import lameenc  # type: ignore[import-not-found, unused-ignore]  # optional

    encoder = lameenc.Encoder()
    encoder.set_bit_rate(MP3_BIT_RATE_KBPS)
    encoder.set_in_sample_rate(sample_rate)
    encoder.set_channels(1)
    encoder.set_quality(_LAME_QUALITY)
    return bytes(encoder.encode(pcm)) + bytes(encoder.flush())


def wav_header(sample_rate: int) -> bytes:
    """Return the 44-byte header of a streamed 16-bit mono WAV (sizes 0xFFFFFFFF)."""
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        _STREAMED_SIZE,
        b"WAVE",
        b"fmt ",
        16,  # fmt chunk size
        1,  # PCM
        1,  # mono
        sample_rate,
        sample_rate * 2,  # byte rate
        2,  # block align
        16,  # bits per sample
        b"data",
        _STREAMED_SIZE,
    )


def pcm_chunks(pcm: bytes, sample_rate: int, chunk_ms: int) -> Iterator[bytes]:
    """Cut ``pcm`` into chunks of ``chunk_ms`` (whole samples; the last may be shorter)."""
    size = 2 * max(1, sample_rate * chunk_ms // 1000)
    for start in range(0, len(pcm), size):
        yield pcm[start : start + size]


def task_audio(sentences: Sequence[str], spec: AudioSpec, ms_per_character: float) -> bytes:
    """Return every audio byte the emulator sends for a task with these sentences.

    ``sentences`` are the ``original_text`` values in order (index = position).
    This is what a client must have received, concatenated, when the task ends
    with task-finished; chunking does not change it.
    """
    body = b"".join(
        sentence_audio(text, i, spec, ms_per_character) for i, text in enumerate(sentences)
    )
    if spec.format == "wav" and body:
        return wav_header(spec.sample_rate) + body
    return body
