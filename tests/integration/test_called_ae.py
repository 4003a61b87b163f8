"""The node answers only to its own AE title and its ``node.ae_title_aliases``: any other
called AE title is rejected, permanently, "called AE title not recognized" (PS3.8 9.3.4),
as DCMTK and our own requestor see it; an alias reaches the routes as the called AE."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from core.jobs import SeriesState
from core.settings import validate_settings
from dicom_node.node import Node
from dicom_node.requestor import AssociationFailedError
from dicom_node.ul.negotiation import CALLED_AE_NOT_RECOGNIZED
from tests.conftest import DicomFactory
from tests.support.node import CT_IMAGE, associate
from tests.support.peers import (
    LOCALHOST,
    RedisServer,
    echoscu,
    free_port,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.peers


@pytest.fixture
def node(tmp_path: Path, redis_server: RedisServer) -> Iterator[Node]:
    settings = validate_settings(
        {
            "data_dir": str(tmp_path / "data"),
            "broker_url": redis_server.url,
            "node": {
                "ae_title": "PACSAI",
                "ae_title_aliases": ["OLDPACSAI"],
                "host": LOCALHOST,
                "port": free_port(),
                "min_free_disk_mb": 0,
            },
            "completion": {"series_quiet_seconds": 0.5, "check_interval_seconds": 0.1},
            "routes": [
                # Only what is sent to the old title goes on, to the archive.
                {
                    "name": "old-title",
                    "called_ae": "OLDPACSAI",
                    "forward_originals_to": ["archive"],
                }
            ],
            "destinations": {
                "archive": {"host": LOCALHOST, "port": free_port(), "ae_title": "ARCHIVE"}
            },
        }
    )
    with Node(settings) as running:
        yield running


def test_a_called_ae_title_that_is_not_the_nodes_is_rejected_permanently(
    node: Node, dicom_factory: DicomFactory
) -> None:
    dcmtk = echoscu(LOCALHOST, node.port, "SOMEONEELSE")
    with pytest.raises(AssociationFailedError, match="Called AE title not recognised") as caught:
        associate(node.port, [(CT_IMAGE, ExplicitVRLittleEndian)], called_ae="PACSAI2")
    stored = storescu(dicom_factory.series(2), LOCALHOST, node.port, "ANY-SCP")

    assert dcmtk.returncode != 0
    assert "Called AE Title Not Recognized" in dcmtk.stdout + dcmtk.stderr
    assert caught.value.rejection == CALLED_AE_NOT_RECOGNIZED
    assert stored.returncode != 0
    node.recorder.flush()
    assert node.ledger.count_instances() == 0
    assert node.scp.stats["rejected"] == 3
    assert echoscu(LOCALHOST, node.port, "PACSAI").returncode == 0


def test_an_alias_is_accepted_and_routes_see_which_title_was_called(
    node: Node, dicom_factory: DicomFactory
) -> None:
    to_alias = dicom_factory.series(2)
    to_own = dicom_factory.series(2)

    assert storescu(to_alias, LOCALHOST, node.port, "OLDPACSAI").returncode == 0
    assert storescu(to_own, LOCALHOST, node.port, "PACSAI").returncode == 0

    node.recorder.flush()
    alias_uid, own_uid = (str(dcmread(files[0]).SeriesInstanceUID) for files in (to_alias, to_own))
    wait_for(
        lambda: node.ledger.get_series(own_uid).state == SeriesState.UNROUTED, 10, "completion"
    )
    wait_for(
        lambda: node.ledger.get_series(alias_uid).state == SeriesState.ROUTED, 10, "completion"
    )
    assert node.ledger.get_series(alias_uid).called_ae == "OLDPACSAI"
    own = node.ledger.get_series(own_uid)
    assert own.called_ae == "PACSAI"
    assert own.reason == "old-title: called AE is 'PACSAI', not 'OLDPACSAI'"


def test_config_check_warns_about_a_route_for_a_called_ae_the_node_refuses(
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner  # noqa: PLC0415

    from pacs_ai.cli import main  # noqa: PLC0415

    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "data_dir": str(tmp_path / "data"),
                "destinations": {"archive": {"host": LOCALHOST, "port": 104, "ae_title": "A"}},
                "routes": [
                    {"name": "lost", "called_ae": "NEWTITLE", "forward_originals_to": ["archive"]}
                ],
            }
        )
    )

    result = CliRunner().invoke(main, ["config", "check", str(config)])

    assert result.exit_code == 0, result.output
    assert (
        "warning: routes[0].called_ae: no called AE title the node accepts meets it (PACSAI; "
        "others are refused at the door): the route never matches" in result.output
    )
