"""The DICOM Conformance Statement says what the code does: each list in it is compared
with the code's own table, and the objects it lists with objects the writers write."""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from core.output_profiles import OutputProfile
from core.settings import DestinationSettings, NodeSettings, validate_settings
from dicom_node.acceptor import ABSTRACT_SYNTAXES
from dicom_node.encoding import KNOWN_TRANSFER_SYNTAXES
from dicom_node.status import Status
from inference import codes
from inference.pipeline import Prediction
from inference.results import WrittenResults, write_results
from node_services.retrieve import dimse
from node_services.retrieve.dimse import DimseSource
from pacs_ai.docs_gen.conformance import statement_page
from pacs_ai.docs_gen.ihe import air_statement_page
from tests.support.small_ct import TWO_LUNGS, lung_labels, small_ct

#: Frames large enough for every encoder the profiles name (JPEG 2000 needs 32+).
SIZE = 64
_UID = re.compile(r"`(\d+(?:\.\d+)+)`")


@pytest.fixture(scope="module")
def statement() -> str:
    return statement_page()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> WrittenResults:
    """Every kind of object in every transfer syntax a destination may ask for."""
    folder = tmp_path_factory.mktemp("ct")
    volume = small_ct(folder, rows=SIZE, columns=SIZE)
    labels = lung_labels(SIZE, SIZE).astype(np.uint16)
    prediction = Prediction(
        labels=labels, backend="torch", precision="fp32", device="cpu", fallbacks=()
    )
    profiles = {"plain": OutputProfile(sc=True, pdf=True)}
    for compression in ("rle", "jpeg-ls", "jpeg2000"):
        profiles[f"binary-{compression}"] = OutputProfile(compression=(compression,), sc=True)
        profiles[f"labelmap-{compression}"] = OutputProfile(
            seg="labelmap", compression=(compression,)
        )
    profiles["labelmap"] = OutputProfile(seg="labelmap")
    return write_results(
        volume, prediction, TWO_LUNGS, out_dir=tmp_path_factory.mktemp("out"), profiles=profiles
    )


def section(page: str, anchor: str) -> str:
    """The text under the heading with ``{#anchor}``, up to the next heading."""
    after = page.split(f"{{#{anchor}}}", 1)[1]
    return re.split(r"\n#{1,6} ", after, maxsplit=1)[0]


def first_column_uids(text: str) -> set[str]:
    return {match.group(1) for match in _UID.finditer(text)}


def table_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row.strip("|").split(" | ")] for row in rows[1:]]


def test_the_statement_lists_exactly_the_sop_classes_the_node_accepts(statement: str) -> None:
    assert first_column_uids(section(statement, "scp-sop-classes")) == set(ABSTRACT_SYNTAXES)


def test_the_statement_lists_exactly_the_transfer_syntaxes_the_node_accepts(
    statement: str,
) -> None:
    listed = first_column_uids(section(statement, "scp-transfer-syntaxes"))

    assert listed == set(KNOWN_TRANSFER_SYNTAXES)


def test_the_statement_lists_every_status_the_node_answers(statement: str) -> None:
    rows = table_rows(section(statement, "scp-statuses"))

    assert {int(row[0], 16) for row in rows} == {int(status) for status in Status}


def test_the_association_limits_are_the_settings_defaults(statement: str) -> None:
    node = NodeSettings()
    policies = statement.split("##### Association policies", 1)[1]

    assert f"{node.max_pdu_length} bytes (`node.max_pdu_length`)" in policies
    assert f"{node.max_associations} (`node.max_associations`)" in policies
    assert f"{node.max_instance_bytes} bytes" in policies


def test_the_statement_lists_exactly_the_coded_terms_pacs_ai_writes(statement: str) -> None:
    rows = table_rows(section(statement, "codes"))
    listed = {(row[1].strip("`"), row[2], row[3]) for row in rows}

    assert listed == {(c.value, c.scheme_designator, c.meaning) for c in codes.ALL_CODES}


def created_objects(statement: str) -> set[tuple[str, str, str]]:
    """(SOP class, transfer syntax, modality) for every combination the statement lists."""
    found = set()
    for row in table_rows(section(statement, "created-objects")):
        sop_class, modality, syntaxes = row[1].strip("`"), row[2], row[3]
        found |= {(sop_class, syntax, modality) for syntax in first_column_uids(syntaxes)}
    return found


def written_objects(written: WrittenResults) -> set[tuple[str, str, str]]:
    found = set()
    for file in written.files:
        dataset = pydicom.dcmread(file.path, stop_before_pixels=True)
        found.add(
            (
                str(dataset.SOPClassUID),
                str(dataset.file_meta.TransferSyntaxUID),
                str(dataset.Modality),
            )
        )
    return found


def test_the_objects_the_statement_lists_are_exactly_those_the_writers_write(
    statement: str, written: WrittenResults
) -> None:
    assert written_objects(written) == created_objects(statement)


def test_every_result_object_names_the_installed_pacs_ai_version(
    written: WrittenResults,
) -> None:
    expected = [f"pacs-ai {version('pacs-ai')}", f"{TWO_LUNGS.id} {TWO_LUNGS.version}"]
    kinds: set[str] = set()
    for file in written.files:
        dataset = pydicom.dcmread(file.path, stop_before_pixels=True)
        versions: Any = dataset.SoftwareVersions
        assert list(versions) == expected, file.path.name
        ours = [
            item
            for item in dataset.ContributingEquipmentSequence
            if item.get("Manufacturer") == "pacs-ai"
        ]
        assert [list(item.SoftwareVersions) for item in ours] == [expected], file.path.name
        kinds.add(file.kind)
    assert kinds == {"seg", "sr", "sc", "pdf"}


def test_the_statements_name_the_installed_version(statement: str) -> None:
    installed = version("pacs-ai")

    assert f"| Version | {installed} |" in statement
    assert f"| pacs-ai | pacs-ai | {installed} |" in air_statement_page()


def test_the_statement_cites_no_page_that_does_not_exist(statement: str) -> None:
    docs = Path(__file__).resolve().parents[2] / "docs"
    for target in re.findall(r"\]\(\.\./([a-z-]+\.md)", statement):
        assert (docs / target).is_file() or target == "changelog.md", target


def proposed(contexts: Sequence[tuple[str, Sequence[str]]]) -> dict[str, list[str]]:
    """What an association of the retrieval proposes: abstract syntax -> transfer
    syntaxes, read from the pynetdicom AE that :mod:`node_services.retrieve.dimse` builds."""
    settings = validate_settings(
        {
            "destinations": {
                "pacs": {"host": "127.0.0.1", "port": 104, "ae_title": "PACS", "query_retrieve": {}}
            }
        }
    )
    destination = settings.destinations["pacs"]
    assert isinstance(destination, DestinationSettings)
    source = DimseSource("pacs", destination, calling_ae="PACSAI", node_ae="PACSAI")
    ae = source.requesting_ae(contexts)
    return {
        str(c.abstract_syntax): [str(t) for t in c.transfer_syntax] for c in ae.requested_contexts
    }


def test_the_statement_lists_the_query_retrieve_models_the_retrieval_proposes(
    statement: str,
) -> None:
    rows = table_rows(section(statement, "qr-scu-sop-classes"))
    listed = {(row[0], row[2].strip("`")): row[3] for row in rows}

    wanted = {}
    for what, model, contexts in (
        ("C-FIND", dimse.FIND_MODEL, dimse.FIND_CONTEXTS),
        ("C-GET", dimse.GET_MODEL, dimse.GET_CONTEXTS),
        ("C-MOVE", dimse.MOVE_MODEL, dimse.MOVE_CONTEXTS),
    ):
        syntaxes = proposed(contexts)[model]
        wanted[(what, model)] = ", ".join(pydicom.uid.UID(ts).name for ts in syntaxes)
    assert listed == wanted


def test_the_statement_lists_every_storage_class_a_c_get_takes_the_scp_role_for(
    statement: str,
) -> None:
    storage = first_column_uids(section(statement, "qr-get-storage-scp"))
    syntaxes = first_column_uids(section(statement, "qr-get-transfer-syntaxes"))

    get = proposed(dimse.GET_CONTEXTS)
    del get[dimse.GET_MODEL]
    assert storage == set(get) == set(dimse.GET_SCP_ROLES)
    assert all(set(offered) == syntaxes for offered in get.values())
