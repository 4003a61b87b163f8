"""multipart/related framing of DICOMweb bodies: what is written is read back unchanged,
however the network cuts it into pieces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.multipart import (
    MAX_PART_HEADER,
    MultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    PartTooLargeError,
    boundary_of,
    closing,
    content_type,
    new_boundary,
    part_head,
    root_type_of,
    whole_parts,
)


def body_of(parts: list[bytes], boundary: str) -> bytes:
    out = bytearray()
    for number, data in enumerate(parts):
        out += part_head(
            boundary,
            {"Content-Type": "application/dicom", "Content-Length": str(len(data))},
            first=number == 0,
        )
        out += data
    out += closing(boundary, empty=not parts)
    return bytes(out)


def read_back(body: bytes, boundary: str, cuts: list[int]) -> list[tuple[dict[str, str], bytes]]:
    reader = MultipartReader(boundary)
    parts: list[tuple[dict[str, str], bytes]] = []
    current: bytearray | None = None
    headers: dict[str, str] = {}
    start = 0
    for cut in [*sorted(cuts), len(body)]:
        for event in reader.feed(body[start:cut]):
            if isinstance(event, PartStart):
                headers, current = event.headers, bytearray()
            elif isinstance(event, PartData):
                assert current is not None
                current += event.data
            elif isinstance(event, PartEnd):
                assert current is not None
                parts.append((headers, bytes(current)))
                current = None
        start = max(start, cut)
    reader.close()
    return parts


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.binary(max_size=300), max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
)
def test_any_parts_cut_anywhere_are_read_back_byte_for_byte(
    parts: list[bytes], cuts: list[int]
) -> None:
    boundary = new_boundary()
    body = body_of(parts, boundary)

    found = read_back(body, boundary, [c % (len(body) + 1) for c in cuts])

    assert [data for _headers, data in found] == parts
    for (headers, data), _part in zip(found, parts, strict=True):
        assert headers["content-type"] == "application/dicom"
        assert headers["content-length"] == str(len(data))


def test_a_part_holding_text_almost_like_its_delimiter_is_not_split_by_it() -> None:
    boundary = "pacs-ai-boundary"
    # Prefixes of CRLF "--" boundary, and the boundary without its CRLF: data, not ends.
    tricky = b"x--pacs-ai-boundary\r\n--pacs-ai-boundar\r\n-pacs-ai-boundary\r\n--pacs-ai"
    found = read_back(body_of([tricky, b"x"], boundary), boundary, [5, 40, 41])
    assert [data for _h, data in found] == [tricky, b"x"]


def test_a_body_cut_off_before_its_close_delimiter_is_reported() -> None:
    boundary = new_boundary()
    body = body_of([b"a" * 100], boundary)
    reader = MultipartReader(boundary)
    list(reader.feed(body[:-20]))
    with pytest.raises(MultipartError, match="ended before its closing boundary"):
        reader.close()


def test_part_headers_larger_than_the_bound_are_refused() -> None:
    boundary = new_boundary()
    reader = MultipartReader(boundary)
    huge = f"--{boundary}\r\nX-Padding: {'a' * (MAX_PART_HEADER + 10)}".encode()
    with pytest.raises(MultipartError, match="headers exceed"):
        list(reader.feed(huge))


def test_a_preamble_and_a_part_without_headers_are_read() -> None:
    boundary = "b1"
    body = b"ignored preamble\r\n--b1\r\n\r\nDATA\r\n--b1--\r\nepilogue"
    assert read_back(body, boundary, []) == [({}, b"DATA")]


def test_the_content_type_names_its_boundary_and_root_type() -> None:
    header = content_type("abc-123")
    assert boundary_of(header) == "abc-123"
    assert root_type_of(header) == "application/dicom"
    assert boundary_of('multipart/related; type="application/dicom"; boundary="q r"') == "q r"
    with pytest.raises(MultipartError, match="not a multipart body"):
        boundary_of("application/dicom")


class Pieces:
    """A stream that hands out its bytes in the given sizes, as a network does."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data = data
        self.sizes = sizes or [len(data) or 1]
        self.reads = 0

    def read(self, size: int = -1, /) -> bytes:
        step = min(self.sizes[self.reads % len(self.sizes)], size)
        self.reads += 1
        chunk, self.data = self.data[:step], self.data[step:]
        return chunk


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.binary(max_size=300), max_size=5),
    sizes=st.lists(st.integers(min_value=1, max_value=700), max_size=6),
)
def test_whole_parts_come_out_byte_for_byte_however_the_stream_is_cut(
    parts: list[bytes], sizes: list[int]
) -> None:
    boundary = new_boundary()

    found = list(whole_parts(Pieces(body_of(parts, boundary), sizes), boundary, max_part=300))

    assert found == parts


@settings(max_examples=300, deadline=None)
@given(
    prefix_parts=st.lists(st.binary(max_size=200), max_size=3),
    cut=st.integers(min_value=0, max_value=2000),
    noise=st.binary(max_size=400),
    max_part=st.integers(min_value=0, max_value=250),
)
def test_any_stream_gives_bounded_parts_or_a_multipart_error_never_a_crash(
    prefix_parts: list[bytes], cut: int, noise: bytes, max_part: int
) -> None:
    boundary = "b0undary"
    good = body_of(prefix_parts, boundary)
    stream = Pieces(good[: cut % (len(good) + 1)] + noise, [97])

    try:
        found = list(whole_parts(stream, boundary, max_part=max_part, read_size=97))
    except MultipartError:
        return
    assert all(len(part) <= max_part for part in found)


def test_a_part_larger_than_the_bound_is_refused_as_soon_as_it_passes_it() -> None:
    boundary = new_boundary()
    stream = Pieces(body_of([b"a" * 10, b"b" * 5000], boundary), [64])

    found = whole_parts(stream, boundary, max_part=100, read_size=64)

    assert next(found) == b"a" * 10
    with pytest.raises(PartTooLargeError, match="larger than 100 bytes"):
        next(found)
    assert stream.reads < 10, "refused while reading the part, not after it"
