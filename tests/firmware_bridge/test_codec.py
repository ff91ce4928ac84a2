import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge import codec
from firmware_bridge.codec import CRC, FIELDS, FORMAT, LENGTH, Decoder, Frame, Reject, encode


def frames_of(items):
    return [x for x in items if isinstance(x, Frame)]


def test_crc_is_ccitt_false():
    assert codec.crc16(b"123456789") == 0x29B1  # the catalogue check value


def test_worked_example_from_the_docs():
    line = encode(7, "INSPECT", ["SIM00000042"])
    assert line == b"$7,INSPECT,SIM00000042*C021\r\n"
    (f,) = Decoder().feed(line)
    assert f == Frame(7, "INSPECT", ("SIM00000042",), b"$7,INSPECT,SIM00000042*C021")


def test_byte_by_byte_and_bare_newline():
    data = encode(1, "PING") + b"$2,STATUS*" + b"%04X" % codec.crc16(b"2,STATUS") + b"\n"
    d = Decoder()
    out = []
    for b in data:
        out += d.feed(bytes([b]))
    assert [(f.seq, f.type) for f in out] == [(1, "PING"), (2, "STATUS")]


def test_lower_case_crc_is_refused():
    line = b"$2,STATUS*%04x\r\n" % codec.crc16(b"2,STATUS")
    assert any(c in line[-6:-2] for c in b"abcdef")
    assert Decoder().feed(line)[0].reason == FORMAT


def test_resynchronises_after_garbage_and_cut_frames():
    good = encode(5, "RESULT", ["A1"])
    data = b"\x00\xff noise $$ * " + good + b"$9,INSP" + good + b"junk\r\n" + good
    out = Decoder().feed(data)
    assert len(frames_of(out)) == 3
    assert [r.reason for r in out if isinstance(r, Reject)] == [FORMAT]


def test_bad_crc_is_rejected_and_never_a_frame():
    line = bytearray(encode(3, "INSPECT", ["S1"]))
    line[5] ^= 0x01  # a flipped bit in the body
    (r,) = Decoder().feed(bytes(line))
    assert isinstance(r, Reject) and r.reason == CRC


def test_too_long_lines_are_reported_once_and_memory_stays_bounded():
    d = Decoder()
    out = []
    for _ in range(100):
        out += d.feed(b"x" * 1000)
    assert len(d._tail) < codec.MAX_LINE
    out += d.feed(b"\n" + encode(1, "PING"))
    assert [type(x).__name__ for x in out] == ["Reject", "Frame"]
    assert out[0].reason == LENGTH
    long = b"$" + b"1,PING," + b"a" * 600 + b"*0000\r\n"
    assert Decoder().feed(long)[0].reason == LENGTH


def test_field_count_and_seq_limits():
    body = b"1,ACK" + b",x" * 20
    line = b"$%s*%04X\r\n" % (body, codec.crc16(body))
    assert Decoder().feed(line)[0].reason == FIELDS
    for body in (b"65536,PING", b"01,PING", b"1,ping", b"PING"):
        line = b"$%s*%04X\r\n" % (body, codec.crc16(body))
        assert Decoder().feed(line)[0].reason == FORMAT, body


def test_encode_refuses_what_the_format_cannot_carry():
    import pytest

    for args in ((70000, "PING", []), (1, "ping", []), (1, "ACK", ["a,b"]), (1, "ACK", ["*"]),
                 (1, "ACK", ["é"]), (1, "ACK", ["x"] * 15), (1, "ACK", ["x" * 600])):
        with pytest.raises(codec.FrameError):
            encode(*args)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=700), max_size=12))
def test_arbitrary_bytes_never_raise_and_never_yield_a_bad_frame(chunks):
    d = Decoder()
    for c in chunks:
        for item in d.feed(c):
            assert isinstance(item, (Frame, Reject))
            if isinstance(item, Frame):
                body, crc = item.raw[1:-5], item.raw[-4:]
                assert item.raw[:1] == b"$" and item.raw[-5:-4] == b"*"
                assert codec.crc16(body) == int(crc, 16)
                assert len(item.raw) + 2 <= codec.MAX_LINE
        assert len(d._tail) < codec.MAX_LINE  # bounded: cannot grow without end


_words = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=12)
_field = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E,
                                        exclude_characters="$*,"), max_size=20)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 65535), _words, st.lists(_field, max_size=5),
                          st.binary(max_size=50)), min_size=1, max_size=8),
       st.integers(1, 64), st.randoms(use_true_random=False))
def test_valid_frames_survive_noise_between_lines(items, chunk, rnd):
    """Frames with noise *between* lines (ending in a newline) all come through intact."""
    sent, data = [], b""
    for seq, typ, fields, noise in items:
        sent.append((seq, typ, tuple(fields)))
        data += noise + b"\n" + encode(seq, typ, fields)
    d = Decoder()
    got = []
    for i in range(0, len(data), chunk):
        got += [(f.seq, f.type, f.fields) for f in frames_of(d.feed(data[i:i + chunk]))]
    assert got == sent


def test_random_corruption_is_caught():
    rng = random.Random(1)
    lines = [encode(rng.randrange(65536), "VERDICT", [f"S{k}", "1", "PASS", "0", "-", "ok"])
             for k in range(2000)]
    accepted_wrong = 0
    for line in lines:
        b = bytearray(line)
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(1, len(b) - 2)] ^= 1 << rng.randrange(8)
        for f in frames_of(Decoder().feed(bytes(b))):
            accepted_wrong += f.raw + b"\r\n" != line
    assert accepted_wrong == 0
