"""Compressed slices are decoded by processes of their own, to the values the job's own
process decodes; a corrupt slice or a dying decoder is a clear outcome, and the
processes end with the process that started them."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import RLELossless

from core.errors import InvalidInputError
from inference import decode_pool
from inference.volume import load_series
from tests.unit.test_volume import series

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def two_decoding_processes() -> Iterator[None]:
    decode_pool.configure(2)
    yield
    decode_pool.configure(None)


def compressed_series(folder: Path, count: int = 8) -> list[Path]:
    paths = series(folder, [float(z) for z in range(count)])
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path)
    return paths


def stopped_pool(paths: list[Path]) -> tuple[decode_pool.DecodePool, list[int]]:
    """The pool, started by reading ``paths``, with its processes stopped (SIGSTOP)."""
    load_series(paths)
    executor = decode_pool.pool()
    assert executor is not None
    processes = decode_pool.process_ids()
    for pid in processes:
        os.kill(pid, signal.SIGSTOP)
    return executor, processes


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not so after {timeout:.0f} s")
        time.sleep(0.05)


def test_a_compressed_series_decodes_in_processes_to_what_the_job_decodes_itself(
    tmp_path: Path, two_decoding_processes: None
) -> None:
    paths = compressed_series(tmp_path)

    in_processes = load_series(paths)
    assert decode_pool.process_ids(), "the series was not decoded by decoding processes"
    decode_pool.configure(0)
    here = load_series(paths)

    np.testing.assert_array_equal(in_processes.voxels, here.voxels)
    assert [int(v) for v in in_processes.voxels[:, 0, 0] + 1024] == list(range(8))
    # The pixel bytes are not kept with the headers, wherever they were decoded.
    assert all("PixelData" not in h for h in in_processes.source_headers)


def test_the_headers_of_a_long_series_read_by_the_processes_are_those_read_here(
    tmp_path: Path, two_decoding_processes: None
) -> None:
    paths = series(tmp_path, [float(z) for z in range(40)])
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not DICOM at all")

    with pytest.raises(InvalidInputError, match=r"junk\.dcm: not a DICOM file") as caught:
        load_series([*paths[:7], junk, *paths[7:]])
    decode_pool.configure(0)
    with pytest.raises(InvalidInputError) as here:
        load_series([*paths[:7], junk, *paths[7:]])
    assert str(caught.value) == str(here.value)

    decode_pool.configure(2)
    in_processes = load_series(paths)
    assert decode_pool.process_ids()
    decode_pool.configure(0)
    read_here = load_series(paths)
    np.testing.assert_array_equal(in_processes.voxels, read_here.voxels)
    assert [h.to_json_dict() for h in in_processes.source_headers] == [
        h.to_json_dict() for h in read_here.source_headers
    ]


def test_warnings_of_headers_read_by_the_processes_are_logged_without_patient_data(
    tmp_path: Path, two_decoding_processes: None, caplog: pytest.LogCaptureFixture
) -> None:
    long_name = "Testpatient^Secretname" + "X" * 70
    with config.disable_value_validation():
        paths = series(tmp_path, [float(z) for z in range(40)], PatientName=long_name)

    # pytest turns warnings into errors here: none may escape load_series.
    with caplog.at_level(logging.DEBUG):
        volume = load_series(paths)

    assert str(volume.source_headers[0].PatientName) == long_name
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    for header in volume.source_headers:
        assert any(str(header.SOPInstanceUID) in m and "non-conformant" in m for m in said)
    assert not any("Secretname" in r.getMessage() for r in caplog.records if r.levelno > 10)


def test_a_few_compressed_slices_are_decoded_without_starting_processes(tmp_path: Path) -> None:
    decode_pool.stop()
    paths = compressed_series(tmp_path, count=decode_pool.MIN_FRAMES - 1)

    load_series(paths)

    assert not decode_pool.process_ids()


def test_a_corrupt_slice_decoded_in_a_process_is_refused_with_its_name(
    tmp_path: Path, two_decoding_processes: None
) -> None:
    paths = compressed_series(tmp_path)
    ds = pydicom.dcmread(paths[5])
    fragment = next(generate_fragments(ds.PixelData))
    ds.PixelData = encapsulate([fragment[:70]])  # an RLE header and a few bytes
    ds.save_as(paths[5])

    with pytest.raises(InvalidInputError, match=r"slice005\.dcm \(SOP instance .*\): pixel data"):
        load_series(paths)


def test_a_decoding_process_killed_between_series_is_replaced(
    tmp_path: Path, two_decoding_processes: None
) -> None:
    paths = compressed_series(tmp_path)
    load_series(paths)
    before = decode_pool.process_ids()

    os.kill(before[0], signal.SIGKILL)
    wait_until(decode_pool.broken)

    assert load_series(paths).shape[0] == 8
    assert not set(decode_pool.process_ids()) & set(before)


def test_a_decoding_process_that_dies_while_decoding_breaks_what_it_was_asked_only(
    tmp_path: Path, two_decoding_processes: None
) -> None:
    paths = compressed_series(tmp_path)
    executor, processes = stopped_pool(paths)  # neither can answer what is asked below
    try:
        asked = [decode_pool.submit(executor, [(p, None, "")]) for p in paths[:2]]
        os.kill(processes[0], signal.SIGKILL)
    finally:
        os.kill(processes[1], signal.SIGCONT)
    outcomes = []
    for future in asked:
        try:
            outcomes.append(len(future.result(timeout=60)))
        except BrokenProcessPool:
            outcomes.append(-1)

    assert sorted(outcomes) == [-1, 1]
    assert load_series(paths).shape[0] == 8


def test_when_every_decoding_process_dies_nothing_asked_waits_forever(
    tmp_path: Path, two_decoding_processes: None
) -> None:
    paths = compressed_series(tmp_path)
    executor, processes = stopped_pool(paths)  # two requests taken, two queued behind them
    asked = [decode_pool.submit(executor, [(p, None, "")]) for p in paths[:4]]
    for pid in processes:
        os.kill(pid, signal.SIGKILL)

    for future in asked:
        with pytest.raises(BrokenProcessPool):
            future.result(timeout=60)
    assert load_series(paths).shape[0] == 8


def test_decoding_processes_end_with_the_process_that_started_them(tmp_path: Path) -> None:
    compressed_series(tmp_path)
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        from inference import decode_pool
        from inference.volume import load_series
        decode_pool.configure(2)
        load_series(sorted(Path({str(tmp_path)!r}).glob("*.dcm")))
        print(" ".join(map(str, decode_pool.process_ids())), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    finished = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    children = [int(pid) for pid in finished.stdout.split()]
    assert finished.returncode == -signal.SIGKILL, finished.stderr
    assert children, "no decoding process was started"

    def all_gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() for pid in children)

    wait_until(all_gone, timeout=15)


def test_a_daemonic_process_such_as_a_celery_prefork_child_reads_with_the_processes(
    tmp_path: Path,
) -> None:
    compressed_series(tmp_path, count=40)
    script = textwrap.dedent(
        f"""
        import multiprocessing, sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        from inference import decode_pool
        from inference.volume import load_series

        def read(answers):
            decode_pool.configure(2)
            volume = load_series(sorted(Path({str(tmp_path)!r}).glob("*.dcm")))
            answers.put((volume.shape[0], len(decode_pool.process_ids())))

        if __name__ == "__main__":
            context = multiprocessing.get_context("fork")
            answers = context.Queue()
            reader = context.Process(target=read, args=(answers,), daemon=True)
            reader.start()
            print(*answers.get(timeout=120))
            reader.join(timeout=60)
        """
    )
    finished = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180, check=False
    )

    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.split() == ["40", "2"]
