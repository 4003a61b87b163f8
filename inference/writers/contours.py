"""Outlines of a segment on a slice: the polygon the SR draws and the pixels the SC colours.

Coordinates follow the image pixel convention of PS3.3 C.18.6.1.2 (SCOORD Graphic Data):
``(column, row)``, with ``0.0, 0.0`` the top left corner of the top left pixel, so a
polygon through pixel *corners* encloses exactly the pixels of the region.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

# A step along a pixel edge, (dx, dy), for each kind of boundary edge; walking them the
# region is always on the right-hand side (image coordinates: x right, y down).
_TOP, _RIGHT, _BOTTOM, _LEFT = (1, 0), (0, 1), (-1, 0), (0, -1)


def key_slice(mask: npt.NDArray[np.bool_]) -> int:
    """Index of the slice (first axis) where ``mask`` has the most pixels.

    Raises:
        ValueError: the mask is empty.
    """
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    if not areas.any():
        raise ValueError("the mask is empty: it has no key slice")
    return int(np.argmax(areas))


def largest_region(plane: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The largest 4-connected region of a 2D mask, its holes filled.

    Raises:
        ValueError: the plane is empty.
    """
    labelled, count = ndimage.label(plane)
    if count == 0:
        raise ValueError("the plane is empty: it has no region")
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    region = labelled == int(np.argmax(sizes))
    filled: npt.NDArray[np.bool_] = ndimage.binary_fill_holes(region)
    return filled


def outer_contour(plane: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """The outline of the largest region of ``plane`` as a closed polygon, ``(N, 2)``.

    Rows are ``(column, row)`` pixel-corner coordinates, the first repeated at the end;
    vertices where the outline runs straight on are left out. Its area (shoelace) equals
    the number of pixels of the region with its holes filled.

    A 4-connected region without 4-connected holes has a boundary that is one simple
    closed curve (two of its pixels touching only at a corner would enclose a hole), so
    following the pixel edges from any boundary corner comes back round the whole region.

    Raises:
        ValueError: the plane is empty.
    """
    region = largest_region(plane)
    padded = np.pad(region, 1)
    inner = padded[1:-1, 1:-1]
    steps: dict[tuple[int, int], tuple[int, int]] = {}
    # Each exposed side of a region pixel at (row r, column c) is a directed edge.
    for (dx, dy), outside in (
        (_TOP, ~padded[:-2, 1:-1]),
        (_RIGHT, ~padded[1:-1, 2:]),
        (_BOTTOM, ~padded[2:, 1:-1]),
        (_LEFT, ~padded[1:-1, :-2]),
    ):
        rows, columns = np.nonzero(inner & outside)
        # Start corner of the edge: top edge from the top left corner, right edge from
        # the top right, bottom edge from the bottom right, left edge from the bottom left.
        start_x = columns + (1 if (dx, dy) in (_RIGHT, _BOTTOM) else 0)
        start_y = rows + (1 if (dx, dy) in (_BOTTOM, _LEFT) else 0)
        for x, y in zip(start_x.tolist(), start_y.tolist(), strict=True):
            steps[(x, y)] = (dx, dy)
    start = min(steps, key=lambda corner: (corner[1], corner[0]))
    vertices = [start]
    corner, direction = start, steps[start]
    while True:
        corner = (corner[0] + direction[0], corner[1] + direction[1])
        if corner == start:
            break
        following = steps[corner]
        if following != direction:
            vertices.append(corner)
        direction = following
    vertices.append(start)
    return np.asarray(vertices, dtype=np.float64)


def polygon_area(polygon: npt.NDArray[np.float64]) -> float:
    """Area enclosed by a closed polygon (shoelace formula), in squared coordinate units."""
    x, y = polygon[:, 0], polygon[:, 1]
    return float(abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2.0)


def rim(plane: npt.NDArray[np.bool_], width: int = 1) -> npt.NDArray[np.bool_]:
    """Pixels of ``plane`` within ``width`` pixels of its edge (4-neighbourhood).

    Burned into the Secondary Capture, the rim outlines a segment without hiding the
    image inside it.
    """
    inside = plane.copy()
    for _ in range(width):
        shrunk = inside.copy()
        shrunk[1:, :] &= inside[:-1, :]
        shrunk[:-1, :] &= inside[1:, :]
        shrunk[:, 1:] &= inside[:, :-1]
        shrunk[:, :-1] &= inside[:, 1:]
        shrunk[0, :] = shrunk[-1, :] = False
        shrunk[:, 0] = shrunk[:, -1] = False
        inside = shrunk
    return plane & ~inside
