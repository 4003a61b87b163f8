"""The documentation pages generated from the code (the docs site builds them, see
``docs/hooks.py``): the configuration and model package references, the DICOM
Conformance Statement and the IHE integration statement.

Each page is a function of the code alone, so that nothing in them is ever written twice
by hand and ``mkdocs build`` always shows what this version does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pacs_ai.docs_gen.conformance import statement_page
from pacs_ai.docs_gen.ihe import air_statement_page
from pacs_ai.docs_gen.reference import configuration_page, model_package_page

#: Generated pages by their path in the site's source (``docs/``).
PAGES: Mapping[str, Callable[[], str]] = {
    "reference/configuration.md": configuration_page,
    "reference/model-package.md": model_package_page,
    "reference/conformance-statement.md": statement_page,
    "reference/ihe-integration-statement.md": air_statement_page,
}
