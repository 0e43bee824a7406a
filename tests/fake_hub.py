"""FAKE Hugging Face Hub: a small Hub-API test server on 127.0.0.1 for the real huggingface_hub/datasets clients.

No installable server accepts uploads, so the tests point the real client code (``HF_ENDPOINT``) at this fake.
It keeps repos in memory as content-addressed blobs and commits (so every commit is a revision), checks
bearer tokens, and implements only the routes those clients use: whoami, repo info, create, preupload, LFS
batch + PUT, commit (NDJSON), tree, paths-info, resolve. Any other route answers 501 and is recorded in
``unknown_routes`` so a test fails loudly instead of passing on a silently ignored call.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

REPO_ID = r"(?P<repo>[\w.-]+/[\w.-]+)"
REV = r"(?P<rev>[^/]+)"


@dataclass
class FakeRepo:
    repo_type: str
    private: bool
    commits: list[dict[str, Any]] = field(default_factory=list)  # {"oid", "files": {path: blob_sha}, "message"}
    branches: dict[str, str] = field(default_factory=dict)

    def snapshot(self, rev: str | None) -> dict[str, Any] | None:
        rev = unquote(rev or "main")
        oid = self.branches.get(rev, rev)
        return next((c for c in self.commits if c["oid"] == oid), None)


class FakeHub:
    """The fake Hub's state; ``tokens`` maps accepted tokens to user names (only ``write`` tokens may push)."""

    def __init__(self, tokens: dict[str, str]):
        self.tokens = tokens
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.blobs: dict[str, bytes] = {}
        self.unknown_routes: list[str] = []
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    # -- lifecycle
    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            state = hub

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # -- helpers for tests
    def file(self, repo_type: str, repo_id: str, path: str, rev: str = "main") -> bytes:
        snap = self.repos[(repo_type, repo_id)].snapshot(rev)
        assert snap is not None, f"no revision {rev}"
        return self.blobs[snap["files"][path]]

    def all_bytes(self) -> bytes:
        """Everything ever uploaded, for secret sweeps."""
        return b"\n".join(self.blobs.values())


def _is_lfs(path: str) -> bool:
    return path.endswith((".parquet", ".arrow", ".safetensors", ".bin"))


def _blob_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    state: FakeHub
    body: bytes = b""
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    # -- plumbing
    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None):
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        self._send(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message} if code else None)

    def _body(self) -> bytes:
        return self.body

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip()
        return self.state.tokens.get(token)

    def _repo(self, kind: str, repo_id: str, write: bool = False) -> FakeRepo | None:
        """The repo, or None after answering 401/404 (private repos are visible to their owner only)."""
        user = self._user()
        repo = self.state.repos.get((kind, repo_id))
        if write and user is None:
            self._error(401, "Invalid credentials in Authorization header", "InvalidCredentials")
            return None
        if repo is None or (repo.private and user != repo_id.split("/")[0]):
            self._error(404, f"Repository Not Found for url: {self.path}", "RepoNotFound")
            return None
        return repo

    def _snapshot(self, kind: str, repo_id: str, rev: str | None) -> tuple[FakeRepo, dict[str, Any]] | None:
        """(repo, commit) for a readable revision, or None after answering 404."""
        repo = self._repo(kind, repo_id)
        if repo is None:
            return None
        snap = repo.snapshot(rev)
        if snap is None:
            self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            return None
        return repo, snap

    def _route(self) -> None:
        url = urlparse(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        self.state.requests.append(f"{self.command} {path}")
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""  # always drained: connections are kept alive
        with self.state.lock:
            for method, pattern, handler in ROUTES:
                if method == self.command or (method == "GET" and self.command == "HEAD"):
                    match = re.fullmatch(pattern, path)
                    if match:
                        return handler(self, query=query, **match.groupdict())
            self.state.unknown_routes.append(f"{self.command} {self.path}")
            self._error(501, f"fake hub: route not implemented: {self.command} {path}")

    do_GET = do_HEAD = do_POST = do_PUT = _route

    # -- routes
    def whoami(self, query: dict) -> None:
        user = self._user()
        if user is None:
            return self._error(401, "Invalid credentials in Authorization header", "InvalidCredentials")
        self._send(200, {"type": "user", "name": user, "orgs": [], "auth": {"accessToken": {"role": "write"}}})

    def agent_harnesses(self, query: dict) -> None:
        self._send(200, {"standardEnvVars": [], "harnesses": {}})  # huggingface_hub's user-agent registry

    def create_repo(self, query: dict) -> None:
        user = self._user()
        if user is None:
            return self._error(401, "Invalid credentials in Authorization header", "InvalidCredentials")
        body = json.loads(self._body())
        owner = body.get("organization") or user
        if owner != user:
            return self._error(403, f"You don't have the rights to create a repo under {owner}")
        kind = body.get("type", "model")
        repo_id = f"{owner}/{body['name']}"
        url = f"http://{self.headers['Host']}/{'' if kind == 'model' else kind + 's/'}{repo_id}"
        if (kind, repo_id) in self.state.repos:
            return self._send(409, {"error": "You already created this repo", "url": url})
        repo = FakeRepo(kind, bool(body.get("private")) or body.get("visibility") == "private")
        gitattributes = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
        self.state.blobs[_blob_sha(gitattributes)] = gitattributes
        repo.commits.append({"oid": _commit_oid(repo_id, 0), "files": {".gitattributes": _blob_sha(gitattributes)}})
        repo.branches["main"] = repo.commits[-1]["oid"]
        self.state.repos[(kind, repo_id)] = repo
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def info(self, query: dict, kind: str, repo: str, rev: str | None = None) -> None:
        located = self._snapshot(kind[:-1], repo, rev)
        if located is None:
            return None
        found, snap = located
        siblings = [{"rfilename": p} for p in sorted(snap["files"])]
        self._send(200, {"id": repo, "_id": repo, "sha": snap["oid"], "private": found.private, "siblings": siblings,
                         "tags": [], "downloads": 0, "likes": 0, "gated": False, "disabled": False,
                         "lastModified": "2026-11-24T00:00:00.000Z", "author": repo.split("/")[0]})  # fmt: skip

    def validate_yaml(self, query: dict) -> None:
        self._send(200, {"errors": [], "warnings": []})

    def preupload(self, query: dict, kind: str, repo: str, rev: str) -> None:
        if self._repo(kind[:-1], repo, write=True) is None:
            return None
        files = json.loads(self._body())["files"]
        modes = [
            {"path": f["path"], "uploadMode": "lfs" if _is_lfs(f["path"]) or f["size"] > 10_000_000 else "regular",
             "shouldIgnore": False, "oid": None}
            for f in files
        ]  # fmt: skip
        self._send(200, {"files": modes, "commitOid": None})

    def lfs_batch(self, query: dict, prefix: str, repo: str) -> None:
        kind = "dataset" if prefix == "datasets/" else "model"
        if self._repo(kind, repo, write=True) is None:
            return None
        body = json.loads(self._body())
        host = f"http://{self.headers['Host']}"
        objects = []
        for obj in body["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.state.blobs:
                entry["actions"] = {"upload": {"href": f"{host}/fake-lfs/{obj['oid']}", "header": {}}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_put(self, query: dict, oid: str) -> None:
        data = self._body()
        if _blob_sha(data) != oid:
            return self._error(400, "sha256 mismatch")
        self.state.blobs[oid] = data
        self._send(200, {})

    def commit(self, query: dict, kind: str, repo: str, rev: str) -> None:
        found = self._repo(kind[:-1], repo, write=True)
        if found is None:
            return None
        if self._user() != repo.split("/")[0]:
            return self._error(403, "You don't have the rights to write to this repo")
        parent = found.snapshot(rev)
        if parent is None:
            return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        files = dict(parent["files"])
        message = ""
        for line in self._body().decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value.get("summary", "")
            elif key == "file":
                data = base64.b64decode(value["content"])
                self.state.blobs[_blob_sha(data)] = data
                files[value["path"]] = _blob_sha(data)
            elif key == "lfsFile":
                if value["oid"] not in self.state.blobs:
                    return self._error(422, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = value["oid"]
            elif key in ("deletedFile", "deletedFolder"):
                prefix = value["path"].rstrip("/")
                files = {p: s for p, s in files.items() if p != prefix and not p.startswith(prefix + "/")}
            else:
                return self._error(400, f"fake hub: unknown commit operation {key}")
        oid = _commit_oid(repo, len(found.commits))
        found.commits.append({"oid": oid, "files": files, "message": message})
        found.branches[unquote(rev)] = oid
        host = f"http://{self.headers['Host']}"
        self._send(200, {"commitUrl": f"{host}/{kind}/{repo}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None})

    def _entries(self, snap: dict[str, Any], paths: list[str], recursive: bool) -> list[dict[str, Any]]:
        entries: dict[str, dict[str, Any]] = {}
        for root in paths:
            root = root.strip("/")
            for path, sha in sorted(snap["files"].items()):
                if path == root:
                    entries[path] = self._file_entry(path, sha)
                    continue
                if root and not path.startswith(root + "/"):
                    continue
                rest = path[len(root) + 1 :] if root else path
                parts = rest.split("/")
                if len(parts) == 1 or recursive:
                    entries[path] = self._file_entry(path, sha)
                for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                    folder = "/".join(([root] if root else []) + parts[:depth])
                    entries.setdefault(folder, {"type": "directory", "path": folder, "oid": "0" * 40, "size": 0})
        return list(entries.values())

    def _file_entry(self, path: str, sha: str) -> dict[str, Any]:
        size = len(self.state.blobs[sha])
        entry = {"type": "file", "path": path, "oid": sha[:40], "size": size}
        if _is_lfs(path):
            entry["lfs"] = {"oid": sha, "size": size, "pointerSize": 134}
        return entry

    def tree(self, query: dict, kind: str, repo: str, rev: str, path: str = "") -> None:
        located = self._snapshot(kind[:-1], repo, rev)
        if located is None:
            return None
        _, snap = located
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries = self._entries(snap, [path], recursive)
        if path and not entries:
            return self._error(404, f"{path} does not exist", "EntryNotFound")
        self._send(200, entries)

    def paths_info(self, query: dict, kind: str, repo: str, rev: str) -> None:
        located = self._snapshot(kind[:-1], repo, rev)
        if located is None:
            return None
        _, snap = located
        raw = self._body().decode()
        ctype = self.headers.get("Content-Type", "")
        paths = json.loads(raw)["paths"] if "json" in ctype else parse_qs(raw).get("paths", [])
        out = []
        for p in paths:
            p = p.strip("/")
            if p in snap["files"]:
                out.append(self._file_entry(p, snap["files"][p]))
            elif any(f.startswith(p + "/") for f in snap["files"]):
                out.append({"type": "directory", "path": p, "oid": "0" * 40, "size": 0})
        self._send(200, out)

    def resolve(self, query: dict, prefix: str, repo: str, rev: str, path: str) -> None:
        located = self._snapshot("dataset" if prefix == "datasets/" else "model", repo, rev)
        if located is None:
            return None
        _, snap = located
        if path not in snap["files"]:
            return self._error(404, f"Entry not found: {path}", "EntryNotFound")
        sha = snap["files"][path]
        data = self.state.blobs[sha]
        headers = {"X-Repo-Commit": snap["oid"], "ETag": f'"{sha}"', "Accept-Ranges": "bytes"}
        if _is_lfs(path):
            headers.update({"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1) or 0)
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, raw=data[start : end + 1], headers=headers)
        self._send(200, raw=data, headers=headers)


def _commit_oid(repo_id: str, n: int) -> str:
    return hashlib.sha1(f"{repo_id}@{n}".encode()).hexdigest()


ROUTES = [
    ("GET", r"/api/whoami-v2", _Handler.whoami),
    ("GET", r"/api/agent-harnesses", _Handler.agent_harnesses),
    ("POST", r"/api/repos/create", _Handler.create_repo),
    ("POST", r"/api/validate-yaml", _Handler.validate_yaml),
    ("GET", rf"/api/(?P<kind>models|datasets)/{REPO_ID}", _Handler.info),
    ("GET", rf"/api/(?P<kind>models|datasets)/{REPO_ID}/revision/{REV}", _Handler.info),
    ("POST", rf"/api/(?P<kind>models|datasets)/{REPO_ID}/preupload/{REV}", _Handler.preupload),
    ("POST", rf"/(?P<prefix>datasets/)?{REPO_ID}\.git/info/lfs/objects/batch", _Handler.lfs_batch),
    ("PUT", r"/fake-lfs/(?P<oid>[0-9a-f]{64})", _Handler.lfs_put),
    ("POST", rf"/api/(?P<kind>models|datasets)/{REPO_ID}/commit/{REV}", _Handler.commit),
    ("GET", rf"/api/(?P<kind>models|datasets)/{REPO_ID}/tree/{REV}", _Handler.tree),
    ("GET", rf"/api/(?P<kind>models|datasets)/{REPO_ID}/tree/{REV}/(?P<path>.+)", _Handler.tree),
    ("POST", rf"/api/(?P<kind>models|datasets)/{REPO_ID}/paths-info/{REV}", _Handler.paths_info),
    ("GET", rf"/(?P<prefix>datasets/)?{REPO_ID}/resolve/{REV}/(?P<path>.+)", _Handler.resolve),
]
