"""A loopback stand-in for the Hugging Face Hub: the routes ``create_repo`` + ``upload_folder`` use, and the
download routes that serve back what was committed.

Upload routes (huggingface_hub 1.x/2.x, ``hf_api.py`` and ``_commit_api.py``):

* ``POST /api/repos/create``                          -> ``{"url": ...}``
* ``POST /api/models/{repo}/branch/{branch}``          -> ``{}`` (``create_branch`` for a revision)
* ``POST /api/validate-yaml``                          -> README metadata check, ``{"errors": [], "warnings": []}``
* ``POST /api/models/{repo}/preupload/{revision}``     -> every file ``uploadMode: regular``, so the client
  sends contents base64-encoded inside the commit instead of through LFS / Xet storage
* ``POST /api/models/{repo}/commit/{revision}``        -> the ndjson commit, recorded and applied to the branch

Download routes (``file_download.py``: ``hf_hub_download`` / ``get_hf_file_metadata``; ``hf_api.py``:
``model_info`` / ``list_repo_tree``, which ``snapshot_download`` uses):

* ``HEAD|GET /{repo}/resolve/{revision}/{path}``       -> the file, with ``ETag`` (its git blob id),
  ``X-Repo-Commit`` and ``Content-Length``, as the Hub serves a regular (non-LFS) file
* ``GET /api/models/{repo}[/revision/{revision}]``     -> model info: ``id``, ``sha``, ``siblings``
* ``GET /api/models/{repo}/tree/{revision}``           -> the file listing (one page)
* ``GET /api/agent-harnesses``                         -> an empty registry (huggingface_hub 2.x asks for it)

``{revision}`` is a branch or a commit id. Misses answer 404 with the ``X-Error-Code`` the Hub sends
(``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``), so huggingface_hub raises its own errors.

Every request is recorded with its Authorization header; unknown routes answer 404 and are also
recorded in ``unrouted``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

FAKE_USER = "fake-user"
DEFAULT_BRANCH = "main"


@dataclass
class Commit:
    repo_id: str
    revision: str
    summary: str
    files: dict[str, bytes]  # what this commit added or changed
    oid: str = ""


@dataclass
class HostedRepo:
    """A repo's branches (name -> commit id) and the full file tree at every commit."""

    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    trees: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        """The commit id a branch name or commit id stands for, or None."""
        return self.branches.get(revision) or (revision if revision in self.trees else None)


@dataclass
class HubRecorder:
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Authorization
    unrouted: list[tuple[str, str]] = field(default_factory=list)  # method, path that no route answered
    created: list[dict] = field(default_factory=list)
    branches: list[tuple[str, str]] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    repos: dict[str, HostedRepo] = field(default_factory=dict)
    reject_token: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def new_commit_id(self, *parts: str) -> str:
        return hashlib.sha1("\0".join((str(len(self.commits)), *parts)).encode()).hexdigest()

    def create_repo(self, repo_id: str, private: bool = False) -> HostedRepo:
        if repo_id not in self.repos:  # like the Hub: an initial (here empty) commit on the default branch
            initial = self.new_commit_id(repo_id, "initial commit")
            self.repos[repo_id] = HostedRepo(private, {DEFAULT_BRANCH: initial}, {initial: {}})
        return self.repos[repo_id]

    def files(self, repo_id: str, revision: str = DEFAULT_BRANCH) -> dict[str, bytes]:
        """The files served for ``repo_id`` at ``revision`` (for assertions)."""
        repo = self.repos[repo_id]
        return dict(repo.trees[repo.resolve(revision)])


def git_blob_id(data: bytes) -> str:
    """The git object id of a file: what the Hub sends as ETag for a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    recorder: HubRecorder
    endpoint: str

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _reply(self, status: int, body: dict | list, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _miss(self, code: str, message: str, commit: str | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message}
        if commit:
            headers["X-Repo-Commit"] = commit  # the Hub sends it with EntryNotFound; the client caches the miss
        self._reply(404, {"error": message}, headers)

    def _unrouted(self, method: str, path: str) -> None:
        self.recorder.unrouted.append((method, path))
        self._reply(404, {"error": f"no route {method} {path}"})

    def _lookup(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        """(commit id, files) of ``repo_id`` at ``revision``; a 404 answer and None on a miss."""
        repo = self.recorder.repos.get(repo_id)
        if repo is None:
            self._miss("RepoNotFound", "Repository not found")
            return None
        commit = repo.resolve(revision)
        if commit is None:
            self._miss("RevisionNotFound", "Invalid rev id: " + revision)
            return None
        return commit, repo.trees[commit]

    # ------------------------------------------------------------------------------------------
    # Downloads

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_GET(self) -> None:
        self._serve("GET")

    def _serve(self, method: str) -> None:
        path = unquote(urlparse(self.path).path)
        self.recorder.requests.append((method, path, self.headers.get("Authorization")))
        parts = path.strip("/").split("/")
        with self.recorder.lock:
            if method == "GET" and path == "/api/agent-harnesses":
                # huggingface_hub 2.x fetches this registry (best effort) to name the calling agent; none here
                self._reply(200, {"standardEnvVars": [], "harnesses": {}})
            elif len(parts) >= 5 and parts[2] == "resolve" and parts[0] != "api":
                # /{user}/{name}/resolve/{revision}/{path}; a revision holding "/" comes URL-encoded
                self._serve_file(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            elif method == "GET" and parts[:2] == ["api", "models"] and len(parts) == 4:
                self._model_info(f"{parts[2]}/{parts[3]}", DEFAULT_BRANCH)
            elif method == "GET" and parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "revision":
                self._model_info(f"{parts[2]}/{parts[3]}", parts[5])
            elif method == "GET" and parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
                self._tree(f"{parts[2]}/{parts[3]}", parts[5], "/".join(parts[6:]))
            else:
                self._unrouted(method, path)

    def _serve_file(self, repo_id: str, revision: str, filename: str) -> None:
        found = self._lookup(repo_id, revision)
        if found is None:
            return
        commit, files = found
        if filename not in files:
            self._miss("EntryNotFound", f'{filename} does not exist on "{revision}"', commit)
            return
        data = files[filename]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{git_blob_id(data)}"')
        self.send_header("X-Repo-Commit", commit)
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(data)

    def _model_info(self, repo_id: str, revision: str) -> None:
        found = self._lookup(repo_id, revision)
        if found is None:
            return
        commit, files = found
        self._reply(
            200,
            {
                "_id": "0" * 24,
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit,
                "private": self.recorder.repos[repo_id].private,
                "disabled": False,
                "gated": False,
                "tags": [],
                "siblings": [{"rfilename": name} for name in sorted(files)],
            },
        )

    def _tree(self, repo_id: str, revision: str, folder: str) -> None:
        found = self._lookup(repo_id, revision)
        if found is None:
            return
        commit, files = found
        recursive = "recursive=true" in (urlparse(self.path).query or "").lower()
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        entries, folders = [], set()
        for name in sorted(files):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            if recursive:
                parents = rest.split("/")[:-1]
                folders.update(prefix + "/".join(parents[: i + 1]) for i in range(len(parents)))
            entries.append({"type": "file", "path": name, "size": len(files[name]), "oid": git_blob_id(files[name])})
        if prefix and not entries and not folders:
            self._miss("EntryNotFound", f'{folder} does not exist on "{revision}"', commit)
            return
        entries += [{"type": "directory", "path": name, "oid": "0" * 40} for name in sorted(folders)]
        self._reply(200, entries)

    # ------------------------------------------------------------------------------------------
    # Uploads

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        path = unquote(urlparse(self.path).path)
        self.recorder.requests.append(("POST", path, self.headers.get("Authorization")))
        if self.recorder.reject_token:
            self._reply(401, {"error": "Invalid credentials in Authorization header"})
            return
        parts = path.strip("/").split("/")
        with self.recorder.lock:
            self._post(path, parts, body)

    def _post(self, path: str, parts: list[str], body: bytes) -> None:
        if path == "/api/repos/create":
            payload = json.loads(body)
            self.recorder.created.append(payload)
            repo_id = f"{payload.get('organization') or FAKE_USER}/{payload['name']}"
            private = payload.get("visibility") == "private" or payload.get("private") is True
            self.recorder.create_repo(repo_id, private)
            self._reply(200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id, "id": "0" * 24})
        elif path == "/api/validate-yaml":
            self._reply(200, {"errors": [], "warnings": []})
        elif parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "branch":
            repo_id, branch = f"{parts[2]}/{parts[3]}", parts[5]
            self.recorder.branches.append((repo_id, branch))
            repo = self.recorder.create_repo(repo_id)
            start = repo.resolve((json.loads(body) if body else {}).get("startingPoint") or DEFAULT_BRANCH)
            repo.branches.setdefault(branch, start)
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
            repo = self.recorder.repos.get(repo_id)
            if repo is None:
                self._miss("RepoNotFound", "Repository not found")
                return
            if revision not in repo.branches:
                self._miss("RevisionNotFound", "Invalid rev id: " + revision)
                return
            summary, files, deleted = "", {}, []
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "header":
                    summary = item["value"]["summary"]
                elif item["key"] == "file":
                    value = item["value"]
                    assert value["encoding"] == "base64"
                    files[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] in ("deletedFile", "deletedFolder"):
                    deleted.append((item["value"]["path"], item["key"] == "deletedFolder"))
                else:
                    raise AssertionError(f"unexpected commit operation {item['key']}")
            tree = dict(repo.trees[repo.branches[revision]])
            for name, is_folder in deleted:
                for existing in list(tree):
                    if existing == name or (is_folder and existing.startswith(name.rstrip("/") + "/")):
                        del tree[existing]
            tree.update(files)
            oid = self.recorder.new_commit_id(repo_id, revision, summary)
            repo.trees[oid] = tree
            repo.branches[revision] = oid
            self.recorder.commits.append(Commit(repo_id, revision, summary, files, oid))
            self._reply(
                200,
                {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None},
            )
        else:
            self._unrouted("POST", path)


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
