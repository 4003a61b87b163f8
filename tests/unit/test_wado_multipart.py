"""A WADO-RS answer (multipart/related, RFC 2046) into whole instances as it streams."""

from __future__ import annotations

import io

import pytest

from node_services.retrieve.base import QueryError
from node_services.retrieve.dicomweb import iter_parts

BOUNDARY = "a1b2c3"


def multipart(*bodies: bytes, preamble: bytes = b"") -> bytes:
    delimiter = b"--" + BOUNDARY.encode()
    out = preamble
    for body in bodies:
        out += delimiter + b"\r\nContent-Type: application/dicom\r\n\r\n" + body + b"\r\n"
    return out + delimiter + b"--\r\n"


class Trickle(io.RawIOBase):
    """A stream that hands out at most ``size`` bytes per read, as a slow network does."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data = memoryview(data)
        self.size = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        chunk = bytes(self.data[: self.size])
        self.data = self.data[self.size :]
        return chunk


@pytest.mark.parametrize("size", [1, 7, 64, 1 << 20])
def test_every_part_comes_out_whole_however_the_bytes_arrive(size: int) -> None:
    bodies = [b"DICM" + bytes(range(256)) * 3, b"\r\n--a1b2c", b"", b"x" * 5000]
    stream = Trickle(multipart(*bodies, preamble=b"ignored preamble\r\n"), size)
    assert list(iter_parts(stream, BOUNDARY, max_part=10_000)) == bodies


def test_a_part_larger_than_allowed_is_refused() -> None:
    with pytest.raises(QueryError, match="larger than 100 bytes"):
        list(iter_parts(io.BytesIO(multipart(b"y" * 1000)), BOUNDARY, max_part=100))


def test_an_answer_cut_off_inside_a_part_is_an_error_not_a_short_instance() -> None:
    data = multipart(b"z" * 100)[:-40]
    with pytest.raises(QueryError, match="ended before its closing boundary"):
        list(iter_parts(io.BytesIO(data), BOUNDARY, max_part=1000))


def test_an_answer_without_parts_gives_none() -> None:
    empty = io.BytesIO(b"--" + BOUNDARY.encode() + b"--\r\n")
    assert list(iter_parts(empty, BOUNDARY, max_part=10)) == []
