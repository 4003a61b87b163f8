"""The IHE AI Results (AIR) integration statement, from the writers' own documentation.

What pacs-ai claims is what its writers do: the identification every result carries
(:func:`inference.writers.processing_equipment`), the deterministic series numbers and
descriptions (:func:`inference.writers.result_series_number`,
:func:`inference.writers.series_description`) and the objects of
:data:`pacs_ai.docs_gen.conformance.RESULT_OBJECTS`.
"""

from __future__ import annotations

from inference.writers import (
    MANUFACTURER,
    pacs_ai_version,
    processing_equipment,
    result_series_number,
    series_description,
)
from pacs_ai.docs_gen.conformance import RESULT_OBJECTS, uid_name
from pacs_ai.docs_gen.markdown import docstring, table


def air_statement_page() -> str:
    """``reference/ihe-integration-statement.md``."""
    objects = [[uid_name(obj.sop_class_uid), obj.modality, obj.summary] for obj in RESULT_OBJECTS]
    return "\n".join(
        [
            "# IHE Integration Statement\n",
            '!!! note "Generated"\n'
            "    Generated from the result writers each time the site is built.\n",
            table(
                ["Vendor", "Product", "Version"],
                [[MANUFACTURER, "pacs-ai", pacs_ai_version()]],
            ),
            "## Profiles and actors implemented\n",
            table(
                ["Integration profile", "Actor", "Options", "Transactions (DICOM)"],
                [
                    [
                        "AI Results (AIR), IHE Radiology",
                        "Evidence Creator",
                        "none claimed",
                        "stores its results to the Image Manager / Image Archive with "
                        "C-STORE (Storage SCU) or STOW-RS",
                    ]
                ],
            ),
            "No other IHE profile is claimed. In particular pacs-ai is not an ATNA Secure "
            "Node (it sends no audit messages; see [Security hardening](../security.md)), "
            "not an Image Display, and it does not query or retrieve: studies are pushed "
            "to it.\n",
            "## Evidence Creator: the result objects\n",
            table(["SOP class", "Modality", "Content"], objects),
            "Segmentations and measurement reports are the AIR profile's core objects; "
            "Secondary Capture and Encapsulated PDF are offered for displays that show "
            "neither (a destination's `outputs`). The [DICOM Conformance Statement]"
            "(conformance-statement.md#created-objects) lists their transfer syntaxes and "
            "the [coded terms](conformance-statement.md#coded-terms).\n",
            "## How each result identifies the algorithm\n",
            docstring(processing_equipment.__doc__),
            "## Series numbers a hanging protocol can rely on\n",
            docstring(result_series_number.__doc__),
            "## Series descriptions\n",
            docstring(series_description.__doc__),
            "## Not implemented\n",
            "- Image Display actor requirements (pacs-ai has no viewer; results were shown "
            "in OHIF 3.13 in the tests, see [Results](../results.md)).\n"
            "- AI result assessment (accept / reject by a radiologist written back as "
            "DICOM); pacs-ai's own review (release or discard of held results) is recorded "
            "in its ledger only.\n"
            "- Parametric maps, Key Object Selection and presentation states.\n",
        ]
    )
