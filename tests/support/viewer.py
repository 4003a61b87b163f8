"""The OHIF viewer served against a real Orthanc's DICOMweb, for the viewer tests.

OHIF (npm ``@ohif/app``) ships a built single-page application in ``dist/``;
``scripts/setup`` unpacks it under ``.cache/ohif`` (``PACS_AI_OHIF_DIST`` points
elsewhere). :class:`OhifServer` serves it on a free port with an ``app-config.js`` of
ours, and passes ``/dicom-web/`` through to Orthanc's DICOMweb plugin, so that the viewer
and its data share one origin (no CORS set-up in Orthanc) - the way sites deploy OHIF
behind a reverse proxy.
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import os
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.missing import skip_locally_fail_in_ci

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIST = REPO / ".cache" / "ohif" / "package" / "dist"

# Headers a proxy must not pass on (RFC 9110 7.6.1), plus the ones it sets itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


def ohif_dist_or_skip() -> Path:
    """OHIF's built ``dist/``; skip the test locally, fail it in CI, when it is missing."""
    dist = Path(os.environ.get("PACS_AI_OHIF_DIST", DEFAULT_DIST))
    if not (dist / "index.html").is_file():
        skip_locally_fail_in_ci(
            f"the OHIF viewer is not unpacked at {dist}: run scripts/setup (npm pack @ohif/app)"
        )
    return dist


def app_config() -> str:
    """OHIF's configuration: one DICOMweb data source on this origin's ``/dicom-web``."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc (pacs-ai test)",
            "name": "orthanc",
            "wadoUriRoot": "/wado",
            "qidoRoot": "/dicom-web",
            "wadoRoot": "/dicom-web",
            "qidoSupportsIncludeField": False,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "dicomUploadEnabled": False,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "defaultDataSourceName": "orthanc",
        "investigationalUseDialog": {"option": "never"},
        "dataSources": [source],
    }
    # The data-source roots must be absolute URLs; the page fills in its own origin.
    return (
        "window.config = "
        + json.dumps(config, indent=2)
        + ";\n"
        + "for (const s of window.config.dataSources) {\n"
        + "  for (const k of ['qidoRoot', 'wadoRoot', 'wadoUriRoot']) {\n"
        + "    s.configuration[k] = window.location.origin + s.configuration[k];\n"
        + "  }\n"
        + "}\n"
    )


class OhifServer:
    """OHIF's ``dist`` plus a pass-through to Orthanc's DICOMweb, on one port."""

    def __init__(self, dist: Path, orthanc_http_port: int) -> None:
        self.dist = dist
        self.orthanc_port = orthanc_http_port
        self._config = app_config().encode()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="ohif", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # the viewer asks for hundreds of files

            def do_GET(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                if path.startswith(("/dicom-web/", "/wado")):
                    self._proxy()
                elif path == "/app-config.js":
                    self._send(200, owner._config, "text/javascript")
                else:
                    self._static(path)

            def _static(self, path: str) -> None:
                relative = urllib.parse.unquote(path).lstrip("/")
                candidate = (owner.dist / relative).resolve()
                inside = candidate.is_relative_to(owner.dist.resolve())
                if not (inside and candidate.is_file()):
                    # A route of the single-page app (/viewer, /segmentation, ...).
                    candidate = owner.dist / "index.html"
                kind = mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
                if candidate.suffix == ".wasm":
                    kind = "application/wasm"
                self._send(200, candidate.read_bytes(), kind)

            def _proxy(self) -> None:
                connection = http.client.HTTPConnection("127.0.0.1", owner.orthanc_port, timeout=60)
                try:
                    headers = {"Accept": self.headers.get("Accept", "*/*")}
                    connection.request("GET", self.path, headers=headers)
                    reply = connection.getresponse()
                    body = reply.read()
                    passed = {k: v for k, v in reply.getheaders() if k.lower() not in _HOP_BY_HOP}
                finally:
                    connection.close()
                self.send_response(reply.status)
                for key, value in passed.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _send(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
