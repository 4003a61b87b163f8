"""What libraries say reaches the logs without the values it quotes (above DEBUG).

The real messages are used: highdicom's warning about a single-component Patient's Name
(it quotes the name, on every SEG of such a patient) and pydicom's warning and log record
about an invalid value (both quote it).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pytest
from highdicom.valuerep import check_person_name
from pydicom import config
from pydicom.dataset import Dataset

from core.library_logs import LIBRARY_LOGGERS, WARNINGS_LOGGER, install_library_log_guard

NAME = "ZYXWVQWERTY"
BIRTH_DATE = "1970-13-45"


class Logged(logging.Handler):
    """What the root logger's handlers receive (pytest's own capture handler also sits on
    every non-propagating logger, so caplog would see the libraries' originals too)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self, *, above: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno > above]

    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


@pytest.fixture
def logged() -> Iterator[Logged]:
    """The guard installed as in ``serve`` (root at INFO), and all it changed restored."""
    root = logging.getLogger()
    loggers = [logging.getLogger(name) for name in (*LIBRARY_LOGGERS, WARNINGS_LOGGER)]
    saved = [(lg, list(lg.handlers), lg.propagate) for lg in loggers]
    level = root.level
    handler = Logged()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # pytest turns warnings into errors; show them
        install_library_log_guard()
        try:
            yield handler
        finally:
            logging.captureWarnings(False)
            for lg, handlers, propagate in saved:
                lg.handlers = handlers
                lg.propagate = propagate
            root.removeHandler(handler)
            root.setLevel(level)


def test_highdicoms_warning_quoting_the_patient_name_is_logged_without_it(logged: Logged) -> None:

    check_person_name(NAME)

    (record,) = logged.records
    assert record.levelno == logging.WARNING
    assert record.name == WARNINGS_LOGGER
    # highdicom warns with stacklevel 2: the origin is its caller (in a worker, highdicom.base).
    assert record.getMessage().startswith("UserWarning from tests.unit.test_library_logs line ")
    assert "logged at DEBUG only" in record.getMessage()
    assert NAME not in logged.text


def test_the_same_warning_again_is_logged_at_info(logged: Logged) -> None:

    for _ in range(3):
        warn_from_one_place(f"{NAME} is odd")

    assert [r.levelno for r in logged.records] == [logging.WARNING, logging.INFO, logging.INFO]
    assert all("UserWarning from tests.unit.test_library_logs line" in t for t in logged.texts())
    assert NAME not in logged.text


def warn_from_one_place(text: str) -> None:
    warnings.warn(text, UserWarning, stacklevel=1)


def test_pydicoms_record_and_warning_about_an_invalid_value_are_logged_without_it(
    logged: Logged,
) -> None:
    dataset = Dataset()

    previous = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.WARN
    try:
        dataset.PatientBirthDate = BIRTH_DATE
    finally:
        config.settings.writing_validation_mode = previous

    assert {r.name for r in logged.records} == {"pydicom", WARNINGS_LOGGER}
    assert all(r.levelno == logging.WARNING for r in logged.records)
    assert BIRTH_DATE not in logged.text


def test_at_debug_the_text_is_there_but_only_at_debug(logged: Logged) -> None:
    logging.getLogger().setLevel(logging.DEBUG)

    check_person_name(NAME)
    logging.getLogger("pynetdicom.association").warning("peer sent %s", NAME)

    assert NAME not in "\n".join(logged.texts())
    debug = [r.getMessage() for r in logged.records if r.levelno == logging.DEBUG]
    assert sum(NAME in text for text in debug) == 2


def test_a_library_exception_record_names_the_exception_type_but_not_its_text(
    logged: Logged,
) -> None:

    try:
        int(f"Invalid value for VR PN: {NAME!r}")
    except ValueError:
        logging.getLogger("pynetdicom.dsutils").exception("pydicom.write_dataset() failed:")

    (record,) = logged.records
    assert record.levelno == logging.ERROR
    assert record.name == "pynetdicom.dsutils"
    assert record.getMessage().startswith("a record with a ValueError from test_library_logs.py")
    assert record.exc_info is None
    assert NAME not in logged.text


def test_a_warning_formatted_by_loggings_own_hook_is_logged_without_its_text(
    logged: Logged,
) -> None:
    # What Celery's captureWarnings would log if it had come first.
    text = warnings.formatwarning(f'"{NAME}"', UserWarning, "/x/site-packages/lib/mod.py", 7)

    logging.getLogger(WARNINGS_LOGGER).warning("%s", text)

    (record,) = logged.records
    assert record.getMessage().startswith("UserWarning from ")
    assert " line 7 " in record.getMessage()
    assert NAME not in logged.text


def test_installing_twice_relays_each_record_once(logged: Logged) -> None:
    install_library_log_guard()
    logging.captureWarnings(True)  # as Celery does in each worker process

    logging.getLogger("highdicom").warning("value %s", NAME)
    warnings.warn(NAME, UserWarning, stacklevel=1)

    assert [r.name for r in logged.records] == ["highdicom", WARNINGS_LOGGER]
    assert NAME not in logged.text


def test_a_librarys_info_record_is_not_logged_at_info(logged: Logged) -> None:
    logging.getLogger("highdicom.seg").info("frame %d of %s", 3, "Doe^Jane")

    assert logged.records == []
