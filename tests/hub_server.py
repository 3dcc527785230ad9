"""A fake Hugging Face Hub for tests: a real HTTP server on 127.0.0.1 (stdlib only, in a thread).

It implements the subset of the Hub HTTP API that `huggingface_hub` (upload, download, snapshot), `diffusers`
(`from_pretrained`, `load_lora_weights`) and `datasets` (`load_dataset`) use, so tests exercise the real clients
through `HF_ENDPOINT` without patching any client method:

    GET  /api/whoami-v2                                            the token's user
    POST /api/repos/create                                         create a repo (409 if it exists)
    POST /api/validate-yaml                                        README.md metadata check (front matter closed)
    GET  /api/{models|datasets}/{ns}/{name}[/revision/{rev}]       repo info (sha, siblings, private)
    POST /api/{models|datasets}/{ns}/{name}/preupload/{rev}        every file is uploaded "regular" (base64 in the commit)
    POST /api/{models|datasets}/{ns}/{name}/commit/{rev}           NDJSON commit: header, file, deletedFile, deletedFolder
    POST /api/{models|datasets}/{ns}/{name}/branch/{branch}        create a branch from main
    GET  /api/{models|datasets}/{ns}/{name}/tree/{rev}[/{path}]    tree listing (`recursive`, `expand` accepted)
    POST /api/{models|datasets}/{ns}/{name}/paths-info/{rev}       info of given paths
    GET  /api/{models|datasets}/{ns}/{name}/refs                   branches
    HEAD/GET /[datasets/]{ns}/{name}/resolve/{rev}/{path}          file metadata / content (Range supported)

Repos live in memory as git-like commits (path -> bytes). Switches for failure tests: `fail_status` makes every
request answer that status; `stop()` closes the socket (connection refused). Write requests need a token in
`valid_tokens`; an unknown token answers 401 on every request, as the Hub does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

FAKE_USER = "tester"

_REPO = r"(?P<ns>[^/]+)/(?P<name>[^/]+)"
_TYPE = r"(?P<type>models|datasets|spaces)"
_ROUTES = [
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/{_TYPE}/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/{_TYPE}/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("POST", re.compile(rf"^/api/{_TYPE}/{_REPO}/branch/(?P<rev>[^/]+)$"), "create_branch"),
    ("POST", re.compile(rf"^/api/{_TYPE}/{_REPO}/paths-info/(?P<rev>[^/]+)$"), "paths_info"),
    ("GET", re.compile(rf"^/api/{_TYPE}/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"), "tree"),
    ("GET", re.compile(rf"^/api/{_TYPE}/{_REPO}/refs$"), "refs"),
    ("GET", re.compile(rf"^/api/{_TYPE}/{_REPO}(?:/revision/(?P<rev>[^/]+))?$"), "info"),
    ("HEAD", re.compile(rf"^/(?:(?P<type>datasets|spaces)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("GET", re.compile(rf"^/(?:(?P<type>datasets|spaces)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
]


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    """One repo: commits (sha -> {path: bytes}) and branches (name -> sha)."""

    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    commit_messages: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        """The commit sha of a branch name or a full commit sha, or None."""
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.commits:
            return revision
        return None

    def files(self, revision: str = "main") -> dict[str, bytes]:
        sha = self.resolve(revision)
        return {} if sha is None else self.commits[sha]


class FakeHub:
    """The in-memory Hub and its HTTP server.

    Args:
        valid_tokens (`set[str]`):
            Tokens accepted for writes (and for reading private repos).
    """

    def __init__(self, valid_tokens: set[str]):
        self.valid_tokens = set(valid_tokens)
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.fail_status: int | None = None
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> str:
        """Start serving on a free port of 127.0.0.1; returns the base URL."""
        hub = self

        class Handler(_Handler):
            fake_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-hub", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and close the socket: later requests get 'connection refused'."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def repo(self, repo_id: str, repo_type: str = "model") -> FakeRepo:
        return self.repos[(repo_type, repo_id)]

    def add_repo(self, repo_type: str, repo_id: str, private: bool) -> FakeRepo:
        repo = FakeRepo(repo_type=repo_type, repo_id=repo_id, private=private)
        sha = self._new_sha(repo_id, "initial")
        repo.commits[sha] = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}
        repo.branches["main"] = sha
        repo.commit_messages[sha] = "initial commit"
        self.repos[(repo_type, repo_id)] = repo
        return repo

    @staticmethod
    def _new_sha(*parts: str) -> str:
        return hashlib.sha1(("/".join(parts) + repr(time.time_ns())).encode()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    fake_hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass

    # ----------------------------------------------------------------- plumbing
    def _dispatch(self, method: str) -> None:
        hub = self.fake_hub
        split = urlsplit(self.path)
        with hub.lock:
            hub.requests.append((method, self.path))
        body = b""
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            body = self.rfile.read(length)
        if hub.fail_status is not None:
            return self._send_json({"error": "fake hub failure"}, status=hub.fail_status)
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip() or None
        if token is not None and token not in hub.valid_tokens:
            return self._send_json({"error": "Invalid credentials in Authorization header"}, status=401)
        self._token = token
        self._query = parse_qs(split.query)
        for route_method, pattern, handler in _ROUTES:
            if route_method != method:
                continue
            match = pattern.match(split.path)
            if match is not None:
                groups = {k: (unquote(v) if v is not None else None) for k, v in match.groupdict().items()}
                with hub.lock:
                    return getattr(self, f"_{handler}")(body=body, **groups)
        return self._send_json({"error": f"fake hub: no route for {method} {split.path}"}, status=404)

    def do_GET(self):  # noqa: N802
        self._dispatch("GET")

    def do_HEAD(self):  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        # one request per connection, so that `stop()` really takes the server down for pooled clients too
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        if not head:
            self.wfile.write(payload)

    def _send_json(self, obj, status: int = 200, headers: dict[str, str] | None = None) -> None:
        all_headers = {"Content-Type": "application/json"}
        all_headers.update(headers or {})
        self._send(status, json.dumps(obj).encode(), all_headers, head=self.command == "HEAD")

    def _error(self, status: int, code: str, message: str) -> None:
        self._send_json({"error": message}, status=status, headers={"X-Error-Code": code, "X-Error-Message": message})

    def _repo_or_error(self, type: str | None, ns: str, name: str, write: bool = False) -> FakeRepo | None:  # noqa: A002
        repo_type = {"models": "model", "datasets": "dataset", "spaces": "space", None: "model"}[type]
        repo = self.fake_hub.repos.get((repo_type, f"{ns}/{name}"))
        authorized = self._token is not None
        if repo is None or (repo.private and not authorized):
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if write and not authorized:
            self._error(401, "RepoNotFound", "You must be authenticated to write to this repo")
            return None
        return repo

    def _sha_or_error(self, repo: FakeRepo, rev: str) -> str | None:
        sha = repo.resolve(rev or "main")
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return sha

    # ----------------------------------------------------------------- routes
    def _whoami(self, body: bytes) -> None:
        if self._token is None:
            return self._send_json({"error": "Invalid username or password."}, status=401)
        self._send_json({"type": "user", "name": FAKE_USER, "orgs": [], "auth": {"type": "access_token"}})

    def _create_repo(self, body: bytes) -> None:
        if self._token is None:
            return self._send_json({"error": "You must be authenticated"}, status=401)
        payload = json.loads(body or b"{}")
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or FAKE_USER
        repo_id = f"{namespace}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.fake_hub.url}/{prefix}{repo_id}"
        if (repo_type, repo_id) in self.fake_hub.repos:  # the Hub answers 409 with the repo's url
            return self._send_json({"error": "You already created this repo", "url": url}, status=409)
        self.fake_hub.add_repo(repo_type, repo_id, bool(payload.get("private")))
        self._send_json({"url": url, "name": repo_id})

    def _validate_yaml(self, body: bytes) -> None:
        content = json.loads(body or b"{}").get("content", "")
        if content.startswith("---") and "\n---" not in content[3:]:
            message = "README.md metadata block is not closed by '---'"
            return self._send_json({"errors": [{"message": message}], "warnings": []}, status=400)
        self._send_json({"errors": [], "warnings": []})

    def _preupload(self, body: bytes, type: str, ns: str, name: str, rev: str) -> None:  # noqa: A002
        repo = self._repo_or_error(type, ns, name, write=True)
        if repo is None:
            return
        files = json.loads(body)["files"]
        self._send_json(
            {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files]}
        )

    def _commit(self, body: bytes, type: str, ns: str, name: str, rev: str) -> None:  # noqa: A002
        repo = self._repo_or_error(type, ns, name, write=True)
        if repo is None:
            return
        parent = self._sha_or_error(repo, rev)
        if parent is None:
            return
        if rev not in repo.branches:
            return self._error(400, "BadRequest", f"Can only commit to a branch, got {rev}")
        files = dict(repo.commits[parent])
        message = ""
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value.get("summary", "")
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: c for p, c in files.items() if not p.startswith(prefix)}
            else:
                return self._error(400, "BadRequest", f"fake hub does not support commit operation {key!r}")
        sha = self.fake_hub._new_sha(repo.repo_id, message)
        repo.commits[sha] = files
        repo.commit_messages[sha] = message
        repo.branches[rev] = sha
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        self._send_json(
            {"success": True, "commitOid": sha, "commitUrl": f"{self.fake_hub.url}/{prefix}{repo.repo_id}/commit/{sha}"}
        )

    def _create_branch(self, body: bytes, type: str, ns: str, name: str, rev: str) -> None:  # noqa: A002
        repo = self._repo_or_error(type, ns, name, write=True)
        if repo is None:
            return
        if rev in repo.branches:
            return self._send_json({"error": f"Reference {rev} already exists"}, status=409)
        payload = json.loads(body or b"{}")
        start = self._sha_or_error(repo, payload.get("startingPoint") or "main")
        if start is None:
            return
        repo.branches[rev] = start
        self._send_json({})

    def _info(self, body: bytes, type: str, ns: str, name: str, rev: str | None) -> None:  # noqa: A002
        repo = self._repo_or_error(type, ns, name)
        if repo is None:
            return
        sha = self._sha_or_error(repo, rev or "main")
        if sha is None:
            return
        files = repo.commits[sha]
        self._send_json(
            {
                "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": sha,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "lastModified": "2026-01-01T00:00:00.000Z",
                "createdAt": "2026-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": path} for path in sorted(files)],
            }
        )

    def _refs(self, body: bytes, type: str, ns: str, name: str) -> None:  # noqa: A002
        repo = self._repo_or_error(type, ns, name)
        if repo is None:
            return
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in repo.branches.items()]
        self._send_json({"branches": branches, "tags": [], "converts": []})

    @staticmethod
    def _file_entry(path: str, data: bytes) -> dict:
        return {"type": "file", "path": path, "oid": _git_blob_sha1(data), "size": len(data)}

    def _tree(self, body: bytes, type: str, ns: str, name: str, rev: str, path: str | None) -> None:  # noqa: A002
        repo = self._repo_or_error(type, ns, name)
        if repo is None:
            return
        sha = self._sha_or_error(repo, rev)
        if sha is None:
            return
        files = repo.commits[sha]
        recursive = self._query.get("recursive", ["false"])[0].lower() in ("1", "true")
        base = (path or "").strip("/")
        prefix = base + "/" if base else ""
        if base and base not in {d for p in files for d in _parents(p)}:
            if base in files:
                return self._send_json([self._file_entry(base, files[base])])
            return self._error(404, "EntryNotFound", f"{base} does not exist on {rev}")
        entries: dict[str, dict] = {}
        for file_path, data in sorted(files.items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix) :]
            parts = rest.split("/")
            if recursive:
                for i in range(1, len(parts)):
                    directory = prefix + "/".join(parts[:i])
                    entries.setdefault(directory, {"type": "directory", "path": directory, "oid": "0" * 40, "size": 0})
                entries[file_path] = self._file_entry(file_path, data)
            elif len(parts) == 1:
                entries[file_path] = self._file_entry(file_path, data)
            else:
                directory = prefix + parts[0]
                entries.setdefault(directory, {"type": "directory", "path": directory, "oid": "0" * 40, "size": 0})
        self._send_json(list(entries.values()))

    def _paths_info(self, body: bytes, type: str, ns: str, name: str, rev: str) -> None:  # noqa: A002
        repo = self._repo_or_error(type, ns, name)
        if repo is None:
            return
        sha = self._sha_or_error(repo, rev)
        if sha is None:
            return
        files = repo.commits[sha]
        content_type = self.headers.get("Content-Type", "")
        if "json" in content_type:
            paths = json.loads(body).get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        directories = {d for p in files for d in _parents(p)}
        out = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                out.append(self._file_entry(path, files[path]))
            elif path in directories:
                out.append({"type": "directory", "path": path, "oid": "0" * 40, "size": 0})
        self._send_json(out)

    def _resolve(self, body: bytes, type: str | None, ns: str, name: str, rev: str, path: str) -> None:  # noqa: A002
        repo = self._repo_or_error(type, ns, name)
        if repo is None:
            return
        sha = self._sha_or_error(repo, rev)
        if sha is None:
            return
        files = repo.commits[sha]
        if path not in files:
            return self._error(404, "EntryNotFound", f"Entry not found: {path}")
        data = files[path]
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{_git_blob_sha1(data)}"',
            "X-Repo-Commit": sha,
            "Accept-Ranges": "bytes",
        }
        status = 200
        range_header = self.headers.get("Range")
        if range_header and self.command == "GET":
            match = re.match(r"bytes=(\d*)-(\d*)$", range_header.strip())
            if match is not None:
                start_s, end_s = match.groups()
                if start_s == "":
                    start, end = max(len(data) - int(end_s), 0), len(data) - 1
                else:
                    start = int(start_s)
                    end = min(int(end_s), len(data) - 1) if end_s else len(data) - 1
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                data = data[start : end + 1]
                status = 206
        self._send(status, data, headers, head=self.command == "HEAD")


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def quote_path(path: str) -> str:
    """URL-quote a path in a repo as the clients do (kept here for tests that build URLs by hand)."""
    return quote(path, safe="/")
