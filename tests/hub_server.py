"""A loopback-only fake of the Hugging Face Hub HTTP API, for tests that drive the *real* ``huggingface_hub`` client.

``LocalHub`` is an ``http.server.ThreadingHTTPServer`` bound to ``127.0.0.1`` on a free port, serving from a daemon
thread and keeping every repository in memory. Point the real client at it with :func:`hub_env` (environment for a
fresh subprocess, **the faithful way**: ``HF_ENDPOINT`` and friends are read once, when ``huggingface_hub`` is
imported) or with :func:`patched_endpoint` (patches the already-imported constants of this process; convenient, but
it relies on knowing every module that copied a constant at import time, see its docstring).

What it implements (the endpoints ``huggingface_hub`` 2.x and ``transformers`` 5.x call for the workflows below):

* ``create_repo`` / ``delete_repo``: ``POST /api/repos/create``, ``DELETE /api/repos/delete`` (409 when it exists,
  so ``exist_ok=True`` works; a name without a namespace goes to the fake user's namespace, like the real Hub).
* ``create_commit`` / ``upload_file`` / ``upload_folder`` / ``push_to_hub``:
  ``POST /api/{type}s/{repo_id}/preupload/{rev}`` answers ``uploadMode: "regular"`` for every file (plus the git
  blob ``oid`` of files that already exist, so the client drops unchanged files exactly as it does against the real
  Hub), then ``POST /api/{type}s/{repo_id}/commit/{rev}`` takes the NDJSON payload (``header``, ``file`` with base64
  content, ``deletedFile``, ``deletedFolder``; ``parentCommit`` is checked; ``?create_pr=1`` opens ``refs/pr/N``).
  ``POST /api/validate-yaml`` (sent when ``README.md`` is committed) parses the YAML front matter.
* ``model_info`` / ``dataset_info`` / ``repo_info``: ``GET /api/{type}s/{repo_id}[/revision/{rev}]`` with ``sha``
  and ``siblings`` (with ``size``/``blobId`` when ``?blobs=true``).
* ``list_repo_files`` / ``list_repo_tree``: ``GET /api/{type}s/{repo_id}/tree/{rev}[/{path}]`` (recursive or not,
  ``expand`` adds ``lastCommit``); ``get_paths_info``: ``POST .../paths-info/{rev}``.
* ``create_branch`` / ``delete_branch`` / ``list_repo_refs`` / ``list_repo_commits``: ``.../branch/{name}``,
  ``.../refs``, ``.../commits/{rev}``.
* ``hf_hub_download`` / ``snapshot_download`` / ``from_pretrained``: ``HEAD`` and ``GET``
  ``/[{type}s/]{repo_id}/resolve/{rev}/{filename}`` with ``X-Repo-Commit``, ``ETag`` (the git blob sha1, as the Hub
  sends for non-LFS files), ``Content-Length`` and ``Range`` support; a missing file is a 404 with
  ``X-Error-Code: EntryNotFound`` *and* ``X-Repo-Commit`` (so the client caches the miss in ``.no_exist``), a missing
  revision ``RevisionNotFound``, a missing repo ``RepoNotFound``.
* The side calls the client makes by itself: ``GET /api/whoami-v2``, and, unless ``HF_HUB_DISABLE_TELEMETRY`` is
  set (both helpers below set it), ``GET /api/agent-harnesses`` (empty registry; asked once per process to build
  the user agent) and ``/api/telemetry/...``.

Anything else is answered 404 with a JSON error and recorded in ``LocalHub.unhandled``; a server-side exception is
answered 500 and recorded in ``LocalHub.errors``; every request is recorded in ``LocalHub.requests`` (all recorded
before the answer is sent). Set ``LOCAL_HUB_LOG=1`` for an access log on stderr; otherwise the server is silent.

Usage::

    from hub_server import LocalHub, hub_env, local_hub_fixture, patched_endpoint  # noqa: F401

    def test_push(local_hub, tmp_path):
        with patched_endpoint(local_hub, tmp_path / "home"):  # in-process
            model.push_to_hub("me/model")
        assert local_hub.uploads("me/model") == [{"config.json", "model.safetensors", "README.md"}]
        subprocess.run([...], env=hub_env(local_hub, tmp_path / "home2"), check=True)  # fresh process

Client behaviour found with ``huggingface_hub`` 2.4 / ``transformers`` 5.23 (the tests in ``test_hub_server.py``):
no token is needed for anything but ``whoami`` (the client raises ``LocalTokenNotFoundError`` itself); the helpers
still set a dummy ``HF_TOKEN`` so a real one is never sent. ``HF_HUB_DISABLE_XET`` is not needed for downloads (no
Xet header, so plain HTTP), but with ``hf_xet`` installed ``upload_folder`` takes its Xet streaming pipeline instead
of ``create_commit``; both work here (all files "regular"), the helpers disable Xet by default.

What it does NOT test (a test passing here says nothing about these):

* LFS and Xet uploads/downloads: every file is a regular git blob sent base64 inside the commit call, whatever its
  size or extension, where the real Hub would ask for LFS/Xet for weights. No ``X-Xet-*`` / ``X-Linked-*`` header is
  ever sent, so downloads never take the Xet path either. ``lfsFile`` commit lines are rejected with a 400.
* Authentication, permissions, private/gated repos, organisations, tokens: every request is accepted (only
  ``whoami`` wants an ``Authorization`` header); ``private`` is stored and reported, nothing more.
* Rate limits, redirects/CDN, HTTP compression, pagination (every listing is one page), ``.gitignore`` handling
  (``shouldIgnore`` is always false), tags, Spaces runtime, Inference, discussions beyond ``create_pr``.
* Server-side validation beyond paths, the commit parent and README YAML; real commit shas (ours are sha1 digests
  of the parent, message and file blobs, deterministic).

By default a new repo starts with one empty commit; the real Hub puts a ``.gitattributes`` file in it, pass
``LocalHub(initial_files={".gitattributes": ...})`` to mimic that.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import hashlib
import json
import os
import sys
import tempfile
import threading
import traceback
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

__all__ = ["DUMMY_TOKEN", "LocalHub", "hub_env", "local_hub", "local_hub_fixture", "patched_endpoint"]

#: Set this environment variable to a true value to get the server's access log on stderr.
LOG_ENV_VAR = "LOCAL_HUB_LOG"
#: The user the fake Hub pretends the caller is (``whoami``, namespace of repo ids without one).
DEFAULT_USER = "local-user"
#: Token handed to clients by :func:`hub_env` / :func:`patched_endpoint`, so no real token ever leaves the machine.
DUMMY_TOKEN = "hf_localhubdummytokennotarealtoken"

_MAX_BODY_BYTES = 1 << 30  # refuse request bodies over 1 GiB
_MAX_RECORDED_REQUESTS = 100_000
_SOCKET_TIMEOUT_S = 60  # an idle keep-alive connection thread ends after this

_TYPE_FROM_PLURAL = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/", "kernel": "kernels/"}
_REPO_ACTIONS = {"revision", "tree", "paths-info", "preupload", "commit", "branch", "refs", "commits"}
_TRUE = {"1", "true", "True", "yes"}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def git_blob_sha(content: bytes) -> str:
    """The git blob sha1 of ``content`` (what the Hub reports as ``oid``/``blobId``/``ETag`` of regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class _Commit:
    sha: str
    parent: str | None
    ref: str
    message: str
    description: str
    files: dict[str, bytes]  # full snapshot of the repo after this commit
    uploaded: frozenset[str]  # paths whose content was sent in this commit
    deleted: frozenset[str]
    date: str
    via_api: bool  # made by a client through the commit endpoint (not by create_repo / LocalHub.commit)


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    refs: dict[str, str] = field(default_factory=dict)  # "main" / "refs/pr/1" / branch name -> commit sha
    commits: dict[str, _Commit] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)  # commit shas in creation order
    nb_prs: int = 0


class _HubError(Exception):
    """An error answer: HTTP status, ``X-Error-Code`` (may be empty), message, extra headers and JSON fields."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.body = dict(body or {})


class LocalHub:
    """In-memory fake Hub served over HTTP on ``127.0.0.1`` (see the module docstring for what it covers).

    Use as a context manager (``with LocalHub() as hub: ...``) or call :meth:`start` / :meth:`stop`; the pytest
    fixture :func:`local_hub` does it for you. Inspection helpers (:meth:`files`, :meth:`uploads`, :meth:`commits`,
    ...) return copies and are safe to call while the server runs; :meth:`create_repo` / :meth:`commit` seed repos
    without going through HTTP.
    """

    def __init__(
        self,
        *,
        user: str = DEFAULT_USER,
        initial_files: Mapping[str, bytes | str] | None = None,
        port: int = 0,
    ) -> None:
        self.user = user
        self._initial_files = {p: _as_bytes(c) for p, c in (initial_files or {}).items()}
        self._port = port
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._requests: deque[tuple[str, str]] = deque(maxlen=_MAX_RECORDED_REQUESTS)
        self._unhandled: list[tuple[str, str]] = []
        self._errors: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash); only valid once started."""
        if self._server is None:
            raise RuntimeError("LocalHub is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalHub:
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.hub = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="local-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ inspection

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every request received, as ``(method, path?query)``, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def unhandled(self) -> list[tuple[str, str]]:
        """Requests no route matched, as ``(method, path?query)`` (each got a 404 with a JSON error)."""
        with self._lock:
            return list(self._unhandled)

    @property
    def errors(self) -> list[str]:
        """Tracebacks of exceptions raised while handling a request (each got a 500)."""
        with self._lock:
            return list(self._errors)

    def repo_ids(self, repo_type: str = "model") -> list[str]:
        with self._lock:
            return sorted(rid for rtype, rid in self._repos if rtype == repo_type)

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        """Commit sha that ``revision`` (branch, ``refs/pr/N`` or commit sha) points to."""
        with self._lock, _as_key_error():
            repo = self._get_repo(repo_type, repo_id)
            return self._resolve(repo, revision)

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Content of every file of ``repo_id`` at ``revision``."""
        with self._lock, _as_key_error():
            repo = self._get_repo(repo_type, repo_id)
            return dict(repo.commits[self._resolve(repo, revision)].files)

    def uploads(self, repo_id: str, repo_type: str = "model") -> list[set[str]]:
        """For each commit a client made (oldest first, all refs), the set of paths whose content it sent.

        The commit created with the repo and commits seeded with :meth:`commit` are not included; files the client
        dropped as unchanged (its preupload no-op check) are not in the sets, deletions are in :meth:`commits`.
        """
        with self._lock, _as_key_error():
            repo = self._get_repo(repo_type, repo_id)
            return [set(c.uploaded) for c in (repo.commits[s] for s in repo.history) if c.via_api]

    def commits(self, repo_id: str, repo_type: str = "model") -> list[dict[str, Any]]:
        """Every commit of the repo, oldest first: sha, parent, ref, message, description, uploaded, deleted,
        via_api, files (the full snapshot after the commit)."""
        with self._lock, _as_key_error():
            repo = self._get_repo(repo_type, repo_id)
            out = []
            for sha in repo.history:
                c = repo.commits[sha]
                out.append(
                    {
                        "sha": c.sha,
                        "parent": c.parent,
                        "ref": c.ref,
                        "message": c.message,
                        "description": c.description,
                        "uploaded": set(c.uploaded),
                        "deleted": set(c.deleted),
                        "via_api": c.via_api,
                        "files": dict(c.files),
                    }
                )
            return out

    # ------------------------------------------------------------------ seeding (no HTTP)

    def create_repo(
        self, repo_id: str, repo_type: str = "model", *, private: bool = False, exist_ok: bool = True
    ) -> str:
        """Create a repo directly (same effect as the ``/api/repos/create`` call). Returns its full id."""
        if "/" not in repo_id:
            repo_id = f"{self.user}/{repo_id}"
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                if not exist_ok:
                    raise ValueError(f"{repo_type} repo {repo_id} already exists")
                return repo_id
            repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now())
            self._repos[(repo_type, repo_id)] = repo
            self._add_commit(repo, "main", dict(self._initial_files), "initial commit", "", set(), set(), False)
            return repo_id

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str],
        *,
        deletions: tuple[str, ...] | list[str] = (),
        message: str = "Seed files",
        revision: str = "main",
        repo_type: str = "model",
    ) -> str:
        """Commit ``files`` (and delete ``deletions``) directly, creating the repo if needed. Returns the sha."""
        self.create_repo(repo_id, repo_type)
        if "/" not in repo_id:
            repo_id = f"{self.user}/{repo_id}"
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            if revision not in repo.refs:
                repo.refs[revision] = repo.refs["main"]
            snapshot = dict(repo.commits[repo.refs[revision]].files)
            for path in deletions:
                snapshot.pop(path, None)
            added = {_check_path(p): _as_bytes(c) for p, c in files.items()}
            snapshot.update(added)
            return self._add_commit(repo, revision, snapshot, message, "", set(added), set(deletions), False)

    # ------------------------------------------------------------------ internals (call with the lock held)

    def _get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise _HubError(404, "RepoNotFound", "Repository not found")
        return repo

    def _resolve(self, repo: _Repo, revision: str) -> str:
        if revision in repo.refs:
            return repo.refs[revision]
        if revision.startswith("refs/heads/") and revision[len("refs/heads/") :] in repo.refs:
            return repo.refs[revision[len("refs/heads/") :]]
        if len(revision) >= 7 and all(ch in "0123456789abcdef" for ch in revision):
            matches = [sha for sha in repo.history if sha.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def _add_commit(
        self,
        repo: _Repo,
        ref: str,
        snapshot: dict[str, bytes],
        message: str,
        description: str,
        uploaded: set[str],
        deleted: set[str],
        via_api: bool,
    ) -> str:
        parent = repo.refs.get(ref)
        digest = hashlib.sha1()
        digest.update(json.dumps([parent, ref, message, description, len(repo.history)]).encode())
        for path in sorted(snapshot):
            digest.update(f"\n{path}\0{git_blob_sha(snapshot[path])}".encode())
        sha = digest.hexdigest()
        repo.commits[sha] = _Commit(
            sha=sha,
            parent=parent,
            ref=ref,
            message=message,
            description=description,
            files=snapshot,
            uploaded=frozenset(uploaded),
            deleted=frozenset(deleted),
            date=_now(),
            via_api=via_api,
        )
        repo.history.append(sha)
        repo.refs[ref] = sha
        return sha

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.endpoint}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _last_commit(self, repo: _Repo, sha: str, path: str) -> _Commit:
        """Oldest commit in the first-parent chain of ``sha`` from which ``path`` has its current content."""
        commit = repo.commits[sha]
        blob = commit.files.get(path)
        for _ in range(len(repo.history)):
            if commit.parent is None or repo.commits[commit.parent].files.get(path) != blob:
                break
            commit = repo.commits[commit.parent]
        return commit

    def _record(self, method: str, target: str) -> None:
        with self._lock:
            self._requests.append((method, target))

    def _record_unhandled(self, method: str, target: str) -> None:
        with self._lock:
            self._unhandled.append((method, target))

    def _record_error(self, text: str) -> None:
        with self._lock:
            self._errors.append(text)


@contextlib.contextmanager
def _as_key_error() -> Iterator[None]:
    """Inspection helpers raise ``KeyError`` (not the HTTP-level error) for a missing repo or revision."""
    try:
        yield
    except _HubError as err:
        raise KeyError(err.message) from None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    hub: LocalHub

    def handle_error(self, request: Any, client_address: Any) -> None:
        # the base class prints a traceback to stderr; a client hanging up is no error, anything else is recorded
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            self.hub._record_error(traceback.format_exc())


def _as_bytes(content: bytes | str) -> bytes:
    return content.encode() if isinstance(content, str) else bytes(content)


def _check_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or parts[0] == ".git":
        raise _HubError(400, "", f"Invalid path in repo: {path!r}")
    return path


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer carries a Content-Length
    server_version = "LocalHub/1"
    timeout = _SOCKET_TIMEOUT_S

    @property
    def hub(self) -> LocalHub:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
        if os.environ.get(LOG_ENV_VAR, "").strip().lower() in {"1", "true", "yes", "on"}:
            sys.stderr.write(f"[LocalHub] {self.address_string()} {format % args}\n")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    # ------------------------------------------------------------------ plumbing

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                total += size
                if total > _MAX_BODY_BYTES:
                    raise _HubError(413, "", "Request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY_BYTES:
            raise _HubError(413, "", "Request body too large")
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json; charset=utf-8",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, _json_bytes(obj), headers)

    def _send_error(self, err: _HubError) -> None:
        headers = {"X-Error-Message": err.message, **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send_json({"error": err.message, **err.body}, err.status, headers)

    def _handle(self, method: str) -> None:
        # everything is recorded *before* the answer is sent, so a client that got its answer sees the record
        self.hub._record(method, self.path)
        if self.hub._server is not self.server:  # stopped: do not serve on a kept-alive connection
            self.close_connection = True
            self._send_json({"error": "LocalHub is stopped"}, 503)
            return
        try:
            body = self._read_body() if method in ("POST", "PUT", "PATCH", "DELETE") else b""
            split = urlsplit(self.path)
            query = parse_qs(split.query, keep_blank_values=True)
            segments = [unquote(s) for s in split.path.split("/")[1:]]
            if segments and segments[-1] == "":
                segments.pop()
            if not self._route(method, segments, query, body):
                self.hub._record_unhandled(method, self.path)
                self._send_json({"error": f"LocalHub does not implement {method} {split.path}"}, 404)
        except _HubError as err:
            if err.status == 413:  # the body was not read: the connection cannot be reused
                self.close_connection = True
            self._send_error(err)
        except Exception:  # noqa: BLE001 - any bug must come back as a 500, not kill the connection silently
            self.hub._record_error(traceback.format_exc())
            with contextlib.suppress(Exception):
                self._send_json({"error": "LocalHub internal error (see LocalHub.errors)"}, 500)
            self.close_connection = True

    # ------------------------------------------------------------------ routing

    def _route(self, method: str, seg: list[str], query: dict[str, list[str]], body: bytes) -> bool:
        if not seg:
            return False
        if seg[0] == "api":
            return self._route_api(method, seg[1:], query, body)
        if method in ("GET", "HEAD"):
            repo_type = "model"
            if seg[0] in _TYPE_FROM_PLURAL and seg[0] != "models":
                repo_type, seg = _TYPE_FROM_PLURAL[seg[0]], seg[1:]
            if len(seg) >= 5 and seg[2] == "resolve":
                self._resolve_file(repo_type, "/".join(seg[:2]), seg[3], "/".join(seg[4:]))
                return True
            if len(seg) >= 4 and seg[1] == "resolve":
                self._resolve_file(repo_type, seg[0], seg[2], "/".join(seg[3:]))
                return True
        return False

    def _route_api(self, method: str, seg: list[str], query: dict[str, list[str]], body: bytes) -> bool:
        if not seg:
            return False
        head = seg[0]
        if seg == ["whoami-v2"] and method == "GET":
            self._whoami()
        elif seg == ["agent-harnesses"] and method == "GET":
            self._send_json({"standardEnvVars": [], "harnesses": {}})
        elif head == "telemetry":
            self._send_json({})
        elif seg == ["validate-yaml"] and method == "POST":
            self._validate_yaml(body)
        elif seg == ["repos", "create"] and method == "POST":
            self._create_repo(body)
        elif seg == ["repos", "delete"] and method in ("DELETE", "POST"):
            self._delete_repo(body)
        elif head in _TYPE_FROM_PLURAL and len(seg) >= 2:
            return self._route_repo(method, _TYPE_FROM_PLURAL[head], seg[1:], query, body)
        else:
            return False
        return True

    def _route_repo(
        self, method: str, repo_type: str, rest: list[str], query: dict[str, list[str]], body: bytes
    ) -> bool:
        # repo ids are "namespace/name" (or a legacy single segment), the action follows
        if len(rest) >= 2 and (len(rest) == 2 or rest[2] in _REPO_ACTIONS):
            repo_id, tail = "/".join(rest[:2]), rest[2:]
        else:
            repo_id, tail = rest[0], rest[1:]
        action = tail[0] if tail else ""
        if method == "GET" and not tail:
            self._repo_info(repo_type, repo_id, "main", query)
        elif method == "GET" and action == "revision" and len(tail) == 2:
            self._repo_info(repo_type, repo_id, tail[1], query)
        elif method == "GET" and action == "tree" and len(tail) >= 2:
            self._tree(repo_type, repo_id, tail[1], "/".join(tail[2:]), query)
        elif method == "POST" and action == "paths-info" and len(tail) == 2:
            self._paths_info(repo_type, repo_id, tail[1], body)
        elif method == "POST" and action == "preupload" and len(tail) == 2:
            self._preupload(repo_type, repo_id, tail[1], query, body)
        elif method == "POST" and action == "commit" and len(tail) == 2:
            self._commit(repo_type, repo_id, tail[1], query, body)
        elif action == "branch" and len(tail) == 2 and method in ("POST", "DELETE"):
            self._branch(method, repo_type, repo_id, tail[1], body)
        elif method == "GET" and tail == ["refs"]:
            self._refs(repo_type, repo_id, query)
        elif method == "GET" and action == "commits" and len(tail) == 2:
            self._list_commits(repo_type, repo_id, tail[1])
        else:
            return False
        return True

    # ------------------------------------------------------------------ endpoints

    def _whoami(self) -> None:
        if not self.headers.get("Authorization"):
            raise _HubError(401, "", "Invalid credentials in Authorization header")
        user = self.hub.user
        self._send_json(
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user,
                "email": None,
                "emailVerified": False,
                "canPay": False,
                "isPro": False,
                "periodEnd": None,
                "avatarUrl": "",
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
            }
        )

    def _validate_yaml(self, body: bytes) -> None:
        content = json.loads(body or b"{}").get("content", "")
        lines = content.splitlines()
        if not lines or lines[0].strip() != "---":
            self._send_json({"errors": [], "warnings": []})
            return
        end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
        if end is None:
            raise _HubError(400, "", "Unterminated YAML front matter in README.md")
        try:
            import yaml

            data = yaml.safe_load("\n".join(lines[1:end]))
        except ImportError:
            data = {}
        except Exception as exc:  # noqa: BLE001 - any YAML error is the client's problem
            self._send_json({"errors": [{"message": f"Invalid YAML: {exc}"}], "warnings": []}, 400)
            return
        if data is not None and not isinstance(data, dict):
            self._send_json({"errors": [{"message": "YAML metadata must be a mapping"}], "warnings": []}, 400)
            return
        self._send_json({"errors": [], "warnings": []})

    def _create_repo(self, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        name = payload.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise _HubError(400, "", f"Invalid repo name: {name!r}")
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise _HubError(400, "", f"Invalid repo type: {repo_type!r}")
        repo_id = f"{payload.get('organization') or self.hub.user}/{name}"
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        hub = self.hub
        with hub._lock:
            if (repo_type, repo_id) in hub._repos:
                url = hub._repo_url(hub._repos[(repo_type, repo_id)])
                # the client reads "url" from this body when exist_ok=True
                raise _HubError(409, "", f"You already created this {repo_type} repo", body={"url": url})
            hub.create_repo(repo_id, repo_type, private=private)
            repo = hub._repos[(repo_type, repo_id)]
            url = hub._repo_url(repo)
        self._send_json({"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _delete_repo(self, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload.get('name')}"
        with self.hub._lock:
            self.hub._get_repo(repo_type, repo_id)
            del self.hub._repos[(repo_type, repo_id)]
        self._send_json({})

    def _repo_info(self, repo_type: str, repo_id: str, revision: str, query: dict[str, list[str]]) -> None:
        blobs = query.get("blobs", ["false"])[-1] in _TRUE
        hub = self.hub
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
            sha = hub._resolve(repo, revision)
            commit = repo.commits[sha]
            siblings = []
            for path in sorted(commit.files):
                sibling: dict[str, Any] = {"rfilename": path}
                if blobs:
                    sibling.update(size=len(commit.files[path]), blobId=git_blob_sha(commit.files[path]))
                siblings.append(sibling)
            info: dict[str, Any] = {
                "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
                "id": repo_id,
                "author": repo_id.split("/")[0] if "/" in repo_id else None,
                "sha": sha,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(len(c) for c in commit.files.values()),
            }
            if repo_type == "model":
                info["modelId"] = repo_id
                info["spaces"] = []
        self._send_json(info)

    def _entry(self, repo: _Repo, sha: str, path: str, expand: bool) -> dict[str, Any]:
        files = repo.commits[sha].files
        if path in files:
            entry: dict[str, Any] = {
                "type": "file",
                "oid": git_blob_sha(files[path]),
                "size": len(files[path]),
                "path": path,
            }
        else:
            listing = "\n".join(
                f"{p}\0{git_blob_sha(c)}" for p, c in sorted(files.items()) if p.startswith(path + "/")
            )
            entry = {"type": "directory", "oid": hashlib.sha1(listing.encode()).hexdigest(), "size": 0, "path": path}
        if expand:
            if entry["type"] == "file":
                last = self.hub._last_commit(repo, sha, path)
            else:
                last = repo.commits[sha]
            entry["lastCommit"] = {"id": last.sha, "title": last.message, "date": last.date}
        return entry

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str, query: dict[str, list[str]]) -> None:
        recursive = query.get("recursive", ["false"])[-1] in _TRUE
        expand = query.get("expand", ["false"])[-1] in _TRUE
        hub = self.hub
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
            sha = hub._resolve(repo, revision)
            files = repo.commits[sha].files
            prefix = f"{path}/" if path else ""
            below = [p for p in files if p.startswith(prefix)]
            if path and not below:
                raise _HubError(404, "EntryNotFound", f"{path} does not exist on {revision!r}")
            paths: set[str] = set()
            for file_path in below:
                parts = file_path[len(prefix) :].split("/")
                depth = len(parts) if recursive else 1
                for i in range(1, depth + 1):
                    paths.add(prefix + "/".join(parts[:i]))
            entries = [self._entry(repo, sha, p, expand) for p in sorted(paths)]
        entries.sort(key=lambda e: (e["type"] != "directory", e["path"]))
        self._send_json(entries)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> None:
        form = parse_qs(body.decode(), keep_blank_values=True)
        expand = form.get("expand", ["false"])[-1] in _TRUE
        hub = self.hub
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
            sha = hub._resolve(repo, revision)
            files = repo.commits[sha].files
            out = []
            for path in form.get("paths", []):
                path = path.strip("/")
                if path in files or any(p.startswith(path + "/") for p in files):
                    out.append(self._entry(repo, sha, path, expand))
        self._send_json(out)

    def _preupload(
        self, repo_type: str, repo_id: str, revision: str, query: dict[str, list[str]], body: bytes
    ) -> None:
        payload = json.loads(body or b"{}")
        hub = self.hub
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
            sha = hub._resolve(repo, revision)
            files = repo.commits[sha].files
            out = []
            for item in payload.get("files", []):
                path = item["path"]
                entry: dict[str, Any] = {"path": path, "uploadMode": "regular", "shouldIgnore": False}
                if path in files:
                    entry["oid"] = git_blob_sha(files[path])
                out.append(entry)
        self._send_json({"files": out, "commitOid": sha})

    def _commit(self, repo_type: str, repo_id: str, revision: str, query: dict[str, list[str]], body: bytes) -> None:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, "", "The first line of a commit payload must be its header")
        header = lines[0].get("value") or {}
        create_pr = query.get("create_pr", ["0"])[-1] in _TRUE
        hub = self.hub
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
            if revision not in repo.refs and not revision.startswith("refs/heads/"):
                raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            ref = revision[len("refs/heads/") :] if revision.startswith("refs/heads/") else revision
            if ref not in repo.refs:
                raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            base = repo.refs[ref]
            parent_commit = header.get("parentCommit")
            if parent_commit and not base.startswith(parent_commit):
                raise _HubError(412, "", "A commit has happened since. Please refresh and try again.")
            snapshot = dict(repo.commits[base].files)
            uploaded: set[str] = set()
            deleted: set[str] = set()
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value") or {}
                if key == "file":
                    path = _check_path(value["path"])
                    raw = value.get("content", "")
                    content = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
                    snapshot[path] = content
                    uploaded.add(path)
                elif key == "deletedFile":
                    path = value["path"]
                    if path not in snapshot:
                        raise _HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {path}")
                    del snapshot[path]
                    deleted.add(path)
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    gone = [p for p in snapshot if p.startswith(folder)]
                    if not gone:
                        raise _HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {folder}")
                    for path in gone:
                        del snapshot[path]
                    deleted.update(gone)
                elif key == "lfsFile":
                    raise _HubError(
                        400, "", "LocalHub does not store LFS files (it always answers uploadMode=regular)"
                    )
                else:
                    raise _HubError(400, "", f"Unknown commit operation key: {key!r}")
            pr_url = None
            if create_pr:
                repo.nb_prs += 1
                ref = f"refs/pr/{repo.nb_prs}"
                repo.refs[ref] = base
                pr_url = f"{hub._repo_url(repo)}/discussions/{repo.nb_prs}"
            sha = hub._add_commit(
                repo,
                ref,
                snapshot,
                header.get("summary") or "",
                header.get("description") or "",
                uploaded,
                deleted,
                True,
            )
            commit_url = f"{hub._repo_url(repo)}/commit/{sha}"
        self._send_json(
            {"success": True, "commitOid": sha, "commitUrl": commit_url, "hookOutput": "", "pullRequestUrl": pr_url}
        )

    def _branch(self, method: str, repo_type: str, repo_id: str, branch: str, body: bytes) -> None:
        hub = self.hub
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
            if method == "DELETE":
                if branch not in repo.refs or branch.startswith("refs/"):
                    raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {branch}")
                if branch == "main":
                    raise _HubError(403, "", "Cannot delete the default branch")
                del repo.refs[branch]
            else:
                if branch in repo.refs:
                    raise _HubError(409, "", f"Reference already exists: refs/heads/{branch}")
                starting_point = json.loads(body or b"{}").get("startingPoint") or "main"
                repo.refs[branch] = hub._resolve(repo, starting_point)
        self._send_json({})

    def _refs(self, repo_type: str, repo_id: str, query: dict[str, list[str]]) -> None:
        hub = self.hub
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
            branches = [
                {"name": n, "ref": f"refs/heads/{n}", "targetCommit": s}
                for n, s in sorted(repo.refs.items())
                if not n.startswith("refs/")
            ]
            prs = [
                {"name": n, "ref": n, "targetCommit": s}
                for n, s in sorted(repo.refs.items())
                if n.startswith("refs/pr/")
            ]
        out: dict[str, Any] = {"branches": branches, "converts": [], "tags": []}
        if query.get("include_prs", ["0"])[-1] in _TRUE:
            out["pullRequests"] = prs
        self._send_json(out)

    def _list_commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        hub = self.hub
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
            sha: str | None = hub._resolve(repo, revision)
            out = []
            for _ in range(len(repo.history)):
                if sha is None:
                    break
                c = repo.commits[sha]
                out.append(
                    {
                        "id": c.sha,
                        "authors": [{"user": hub.user}],
                        "date": c.date,
                        "title": c.message,
                        "message": c.description,
                    }
                )
                sha = c.parent
        self._send_json(out)

    def _resolve_file(self, repo_type: str, repo_id: str, revision: str, filename: str) -> None:
        hub = self.hub
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
            sha = hub._resolve(repo, revision)
            content = repo.commits[sha].files.get(filename)
        if content is None:
            raise _HubError(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": sha})
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{git_blob_sha(content)}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{filename.rsplit("/", 1)[-1]}"',
        }
        status, body = 200, content
        range_header = self.headers.get("Range")
        if range_header and self.command == "GET" and range_header.startswith("bytes="):
            first = range_header[len("bytes=") :].split(",")[0]
            start_s, _, end_s = first.partition("-")
            try:
                if start_s:
                    start = int(start_s)
                    end = int(end_s) if end_s else len(content) - 1
                else:  # suffix range "bytes=-N"
                    start, end = max(len(content) - int(end_s), 0), len(content) - 1
            except ValueError:
                start, end = 0, len(content) - 1
            end = min(end, len(content) - 1)
            if start > end or start >= len(content):
                raise _HubError(
                    416, "", "Requested range not satisfiable", {"Content-Range": f"bytes */{len(content)}"}
                )
            status, body = 206, content[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        self._send(status, body, headers, content_type="application/octet-stream")


# ---------------------------------------------------------------------- pointing the real client at a LocalHub

# Environment variables that would make a child process ignore the fake Hub or our temporary HF_HOME.
_ENV_TO_DROP = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HUGGINGFACE_CO_STAGING",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_ASSETS_CACHE",
    "HUGGINGFACE_ASSETS_CACHE",
    "HF_XET_CACHE",
    "HF_TOKEN_PATH",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_OIDC_RESOURCE",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN",
    "HF_HUB_ENABLE_HF_TRANSFER",
    "HF_XET_HIGH_PERFORMANCE",
    "TRANSFORMERS_CACHE",
    "HF_DATASETS_CACHE",
    "HF_MODULES_CACHE",
)


def _no_proxy(current: str | None) -> str:
    hosts = [h for h in (current or "").split(",") if h.strip()]
    for host in ("127.0.0.1", "localhost"):
        if host not in hosts:
            hosts.append(host)
    return ",".join(hosts)


def hub_env(
    hub: LocalHub,
    hf_home: str | os.PathLike[str],
    *,
    base: Mapping[str, str] | None = None,
    disable_xet: bool = True,
    offline: bool = False,
    **extra: str,
) -> dict[str, str]:
    """The full environment for a fresh subprocess whose ``huggingface_hub``/``transformers`` talk to ``hub``.

    Starts from ``base`` (default: ``os.environ``), drops variables that would redirect caches or force offline
    mode, then sets ``HF_ENDPOINT``, ``HF_HOME`` (cache, token and xet folders all go below it),
    ``HF_HUB_DISABLE_TELEMETRY=1``, ``HF_HUB_DISABLE_PROGRESS_BARS=1``, a dummy ``HF_TOKEN`` (so no real token is
    used; the fake accepts anything), ``HF_HUB_DISABLE_XET=1`` unless ``disable_xet=False`` (with ``hf_xet``
    installed, ``upload_folder`` otherwise takes the Xet-based streaming pipeline; both paths work with this fake
    since it answers "regular" to every file), ``HF_HUB_OFFLINE=1`` if ``offline``, and ``NO_PROXY`` for loopback.
    ``extra`` entries are added last.

    This is the faithful way to test against the fake: the child imports ``huggingface_hub`` with these variables
    set, exactly as a user's process would, instead of relying on :func:`patched_endpoint`'s list of patched
    module attributes.
    """
    env = dict(os.environ if base is None else base)
    for name in _ENV_TO_DROP:
        env.pop(name, None)
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=os.fspath(hf_home),
        HF_TOKEN=DUMMY_TOKEN,
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_SYMLINKS_WARNING="1",
        NO_PROXY=_no_proxy(env.get("NO_PROXY")),
        no_proxy=_no_proxy(env.get("no_proxy")),
    )
    if disable_xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    else:
        env.pop("HF_HUB_DISABLE_XET", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


@contextlib.contextmanager
def patched_endpoint(
    hub: LocalHub, hf_home: str | os.PathLike[str] | None = None, *, disable_xet: bool = True
) -> Iterator[str]:
    """Point this process's already-imported ``huggingface_hub`` (and ``transformers``/``datasets``) at ``hub``.

    ``HF_ENDPOINT`` is read once, when ``huggingface_hub.constants`` is imported, and several values are copied
    from it at import time, so this patches (and restores on exit):

    * ``huggingface_hub.constants``: ``ENDPOINT``, ``HUGGINGFACE_CO_URL_TEMPLATE``, ``HF_URL_HOSTS`` (hosts the auth
      header may follow redirects to), ``HF_HUB_OFFLINE=False``, ``HF_HUB_DISABLE_TELEMETRY=True``,
      ``HF_HUB_DISABLE_XET`` (per ``disable_xet``), and every path constant under ``HF_HOME`` (``HF_HOME``,
      ``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``, ``HF_ASSETS_CACHE``, ``HF_TOKEN_PATH``, ``HF_STORED_TOKENS_PATH``,
      ``HF_XET_CACHE``, ``AGENT_HARNESSES_PATH``, ...) moved under ``hf_home`` (a temporary folder removed on exit
      when ``hf_home`` is None), so nothing is read from or written to the user's real cache;
    * ``huggingface_hub.hf_api.api.endpoint``: the module-level ``HfApi()`` behind ``huggingface_hub.create_repo``,
      ``upload_folder``, ``model_info``, ... captured ``ENDPOINT`` when it was built;
    * ``transformers.utils.hub._hf_api`` (the shared ``HfApi`` behind ``push_to_hub``; its ``endpoint`` if it
      exists, and it is put back as it was on exit so one created meanwhile does not keep the fake endpoint) and
      ``transformers.utils.hub.HF_MODULES_CACHE``, if ``transformers.utils.hub`` is imported;
    * the ``from ..constants import X`` copies in ``huggingface_hub.utils._cache_manager`` (``HF_HUB_CACHE``),
      ``huggingface_hub.utils._cache_assets`` (``HF_ASSETS_CACHE``), ``huggingface_hub.utils._git_credential`` and
      ``huggingface_hub.cli.auth`` (``ENDPOINT``), and ``datasets.config`` (``HF_ENDPOINT``, ``HUB_DATASETS_URL``,
      ``HF_HUB_OFFLINE``), when those modules are imported;
    * environment: ``HF_TOKEN`` set to :data:`DUMMY_TOKEN`, ``HF_OIDC_RESOURCE``/``HUGGING_FACE_HUB_TOKEN``
      removed, ``NO_PROXY`` extended with loopback; and the shared HTTP session is closed on entry and exit so
      proxies are re-read and no connection to a stopped server is reused.

    Less faithful than a subprocess with :func:`hub_env`: an ``HfApi(...)``/``HfFileSystem`` instance created
    before entering keeps its old endpoint, and a module this list does not know about may hold a stale copy.
    Yields the endpoint.
    """
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _http

    endpoint = hub.endpoint
    with contextlib.ExitStack() as stack:
        if hf_home is None:
            hf_home = stack.enter_context(tempfile.TemporaryDirectory(prefix="local-hub-home-"))
        hf_home = os.fspath(hf_home)
        old_home = constants.HF_HOME

        def patch(obj: Any, name: str, value: Any) -> None:
            if hasattr(obj, name):
                stack.enter_context(mock.patch.object(obj, name, value))

        def moved(path: str) -> str:
            return hf_home + path[len(old_home) :]

        stack.callback(_http.close_session)
        env = {k: v for k, v in os.environ.items() if k not in ("HF_OIDC_RESOURCE", "HUGGING_FACE_HUB_TOKEN")}
        env.update(
            HF_TOKEN=DUMMY_TOKEN, NO_PROXY=_no_proxy(env.get("NO_PROXY")), no_proxy=_no_proxy(env.get("no_proxy"))
        )
        stack.enter_context(mock.patch.dict(os.environ, env, clear=True))

        patch(constants, "ENDPOINT", endpoint)
        patch(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        patch(constants, "HF_URL_HOSTS", frozenset(constants.HF_URL_HOSTS | {"127.0.0.1", "localhost"}))
        patch(constants, "HF_HUB_OFFLINE", False)
        patch(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        patch(constants, "HF_HUB_DISABLE_XET", disable_xet)
        for name, value in list(vars(constants).items()):
            if (
                name.isupper()
                and isinstance(value, str)
                and (value == old_home or value.startswith(old_home + os.sep))
            ):
                patch(constants, name, moved(value))
        # the cache/token locations may have been set apart from HF_HOME by the environment: pin them too
        for name, relative in (
            ("HF_HUB_CACHE", "hub"),
            ("HUGGINGFACE_HUB_CACHE", "hub"),
            ("HF_ASSETS_CACHE", "assets"),
            ("HUGGINGFACE_ASSETS_CACHE", "assets"),
            ("HF_XET_CACHE", "xet"),
            ("HF_TOKEN_PATH", "token"),
            ("HF_STORED_TOKENS_PATH", "stored_tokens"),
        ):
            patch(constants, name, os.path.join(hf_home, relative))
        patch(hf_api.api, "endpoint", endpoint)

        modules = sys.modules
        if (mod := modules.get("huggingface_hub.utils._cache_manager")) is not None:
            patch(mod, "HF_HUB_CACHE", constants.HF_HUB_CACHE)
        if (mod := modules.get("huggingface_hub.utils._cache_assets")) is not None:
            patch(mod, "HF_ASSETS_CACHE", constants.HF_ASSETS_CACHE)
        for name in ("huggingface_hub.utils._git_credential", "huggingface_hub.cli.auth"):
            if (mod := modules.get(name)) is not None:
                patch(mod, "ENDPOINT", endpoint)
        if (mod := modules.get("transformers.utils.hub")) is not None:
            patch(mod, "_hf_api", mod._hf_api)  # restored on exit, whatever was created meanwhile
            if mod._hf_api is not None:
                patch(mod._hf_api, "endpoint", endpoint)
            if isinstance(getattr(mod, "HF_MODULES_CACHE", None), str):
                patch(mod, "HF_MODULES_CACHE", os.path.join(hf_home, "modules"))
        if (mod := modules.get("datasets.config")) is not None:
            patch(mod, "HF_ENDPOINT", endpoint)
            patch(mod, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}")
            patch(mod, "HF_HUB_OFFLINE", False)

        _http.close_session()
        yield endpoint


@pytest.fixture(name="local_hub")
def local_hub_fixture() -> Iterator[LocalHub]:
    """Fixture ``local_hub``: a started :class:`LocalHub`, stopped after the test.

    Make it visible with ``from hub_server import local_hub_fixture  # noqa: F401`` (the import name differs from
    the fixture name, so ruff's F811 does not fire on ``def test_x(local_hub)``), or ``pytest_plugins =
    ["hub_server"]``. Use :func:`hub_env` / :func:`patched_endpoint` to point the client at it.
    """
    hub = LocalHub().start()
    try:
        yield hub
    finally:
        hub.stop()


#: Same fixture under its own name, for ``from hub_server import local_hub``.
local_hub = local_hub_fixture
