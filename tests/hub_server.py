"""A loopback stand-in for the Hugging Face Hub: just the routes ``create_repo`` + ``upload_folder`` use.

Routes (huggingface_hub 1.x/2.x, ``hf_api.py`` and ``_commit_api.py``):

* ``POST /api/repos/create``                          -> ``{"url": ...}``
* ``POST /api/models/{repo}/branch/{branch}``          -> ``{}`` (``create_branch`` for a revision)
* ``POST /api/validate-yaml``                          -> README metadata check, ``{"errors": [], "warnings": []}``
* ``POST /api/models/{repo}/preupload/{revision}``     -> every file ``uploadMode: regular``, so the client
  sends contents base64-encoded inside the commit instead of through LFS / Xet storage
* ``POST /api/models/{repo}/commit/{revision}``        -> the ndjson commit, recorded

Every request is recorded with its Authorization header; unknown routes answer 404 and are recorded too.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

FAKE_USER = "fake-user"


@dataclass
class Commit:
    repo_id: str
    revision: str
    summary: str
    files: dict[str, bytes]


@dataclass
class HubRecorder:
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Authorization
    created: list[dict] = field(default_factory=list)
    branches: list[tuple[str, str]] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    reject_token: bool = False


class _Handler(BaseHTTPRequestHandler):
    recorder: HubRecorder
    endpoint: str

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.recorder.requests.append(("GET", self.path, self.headers.get("Authorization")))
        self._reply(404, {"error": f"no route GET {self.path}"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        path = unquote(urlparse(self.path).path)
        self.recorder.requests.append(("POST", path, self.headers.get("Authorization")))
        if self.recorder.reject_token:
            self._reply(401, {"error": "Invalid credentials in Authorization header"})
            return
        parts = path.strip("/").split("/")
        if path == "/api/repos/create":
            payload = json.loads(body)
            self.recorder.created.append(payload)
            repo_id = f"{payload.get('organization') or FAKE_USER}/{payload['name']}"
            self._reply(200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id, "id": "0" * 24})
        elif path == "/api/validate-yaml":
            self._reply(200, {"errors": [], "warnings": []})
        elif parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "branch":
            self.recorder.branches.append((f"{parts[2]}/{parts[3]}", parts[5]))
            self._reply(200, {})
        elif parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "preupload":
            files = json.loads(body)["files"]
            self._reply(
                200,
                {
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files
                    ]
                },
            )
        elif parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "commit":
            repo_id, revision = f"{parts[2]}/{parts[3]}", parts[5]
            summary, files = "", {}
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "header":
                    summary = item["value"]["summary"]
                elif item["key"] == "file":
                    value = item["value"]
                    assert value["encoding"] == "base64"
                    files[value["path"]] = base64.b64decode(value["content"])
            self.recorder.commits.append(Commit(repo_id, revision, summary, files))
            self._reply(
                200,
                {
                    "commitUrl": f"{self.endpoint}/{repo_id}/commit/{'a' * 40}",
                    "commitOid": "a" * 40,
                    "pullRequestUrl": None,
                },
            )
        else:
            self._reply(404, {"error": f"no route POST {path}"})


class LoopbackHub:
    """``with LoopbackHub() as hub:`` serves on 127.0.0.1 at ``hub.endpoint``; ``hub.recorder`` holds what came in."""

    def __init__(self) -> None:
        self.recorder = HubRecorder()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.server.RequestHandlerClass = type(
            "Handler", (_Handler,), {"recorder": self.recorder, "endpoint": self.endpoint}
        )
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
