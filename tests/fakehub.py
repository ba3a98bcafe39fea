"""A fake Hugging Face Hub on 127.0.0.1, for tests: the endpoints huggingface_hub's downloads and commits call.

Taken from huggingface_hub 0.36's source (the version the export extra resolves to here), not guessed:

- ``GET /api/models/{repo}[/revision/{rev}]`` (``HfApi.model_info``, hf_api.py): ``sha`` and ``siblings``, with
  ``size`` and ``lfs`` when asked with ``?blobs=True`` (``files_metadata=True``).
- ``HEAD /{repo}/resolve/{rev}/{file}`` (``get_hf_file_metadata``, file_download.py): it needs ``X-Repo-Commit``,
  an ETag and a size, or raises ``FileMetadataError``. A regular file answers 200 with ``ETag`` (its git sha1) and
  ``Content-Length``; an LFS file answers 302 with ``X-Linked-Etag`` (its sha256), ``X-Linked-Size`` and an
  absolute ``Location`` (the "CDN"), which the HEAD doesn't follow and the GET downloads from.
- ``GET`` of the same URL, and of the CDN location, with ``Range`` for resumed downloads (``http_get``).
- Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``, ``GatedRepo``) and
  ``X-Error-Message``, from which ``hf_raise_for_status`` (utils/_http.py) picks the exception class.
- Publishing (``create_repo``, ``create_branch``, ``create_commit`` in hf_api.py; _commit_api.py; lfs.py):
  ``POST /api/repos/create``, ``POST /api/models/{repo}/branch/{branch}``, ``POST /api/models/{repo}/preupload/
  {rev}`` (which files go through LFS), ``POST /{repo}.git/info/lfs/objects/batch`` (answered with the "basic"
  transfer, so no Xet), ``PUT`` of the upload href and ``POST`` of the verify href, then ``POST /api/models/
  {repo}/commit/{rev}`` with the NDJSON commit (header, file, lfsFile lines). Before that, ``create_commit`` posts
  a README.md's text to ``POST /api/validate-yaml`` (``HfApi._validate_yaml``).

The fake speaks no Xet (the Rust CAS protocol huggingface_hub >= 1.0 uploads with whenever hf_xet is installed):
tests set ``HF_HUB_DISABLE_XET``, so uploads take the LFS "basic" transfer above.

Faults for tests: ``private``/``gated`` repositories and tokens; ``tamper[file]`` rewrites a file's bytes as
served (HEAD still announces the true size); ``oversend[file]`` streams that many bytes for a file (its true bytes,
then zeros) while HEAD announces the true size; ``trickle[file]`` sends its bytes one at a time, that many seconds
apart; ``relocate[file]`` sends an LFS file's HEAD elsewhere; ``streamed[file]`` counts the bytes such a stream
got out before it ended; in these ``LISTING`` names the listing. ``listing`` rewrites the listing; ``hang`` names
routes that stall until the server stops. Every request is logged in ``requests`` as ``(method, path)``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

READ_TOKEN, WRITE_TOKEN = "hf_reader", "hf_writer"
LISTING = "(listing)"  # the name oversend, trickle and streamed know model_info's answer by
PUBLIC_URL = "https://huggingface.co"
LFS_SUFFIXES = (".onnx", ".onnx_data", ".bin", ".safetensors")


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str, data: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or len(data) > 10 * 1024 * 1024


@dataclass
class Repo:
    private: bool = False
    gated: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.authorized: list[str] = []  # the paths of the requests that carried a token
        self.tamper: dict[str, Callable[[bytes], bytes]] = {}
        self.hang: set[str] = set()
        self.oversend: dict[str, int] = {}
        self.trickle: dict[str, float] = {}
        self.streamed: dict[str, int] = {}
        self.relocate: dict[str, str] = {}  # LFS file -> the Location its HEAD sends instead of the CDN's
        self.head_headers: dict[str, dict[str, str]] = {}  # file -> headers its HEAD answer adds (not an LFS one's)
        self.head_status: dict[str, int] = {}  # file -> the status its HEAD answers with (not an LFS one's)
        self.get_redirect: dict[str, str] = {}  # file -> where its GET redirects (not an LFS one's)
        self.get_status: dict[str, int] = {}  # file -> the status its GET answers with (not an LFS one's)
        self.renamed: dict[str, str] = {}  # old repo id -> new: its file addresses redirect there (307), as the Hub's
        self.listing: Callable[[dict], dict | bytes] | None = None  # rewrites model_info's answer
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.url = self.cdn_url = ""
        self.app = Starlette(routes=[
            Route("/api/models/{org}/{name}/revision/{revision:path}", self.model_info, methods=["GET"]),  # refs/pr/1
            Route("/api/models/{org}/{name}", self.model_info, methods=["GET"]),
            Route("/{org}/{name}/resolve/{revision}/{path:path}", self.resolve, methods=["GET", "HEAD"]),
            Route("/cdn/{oid}/{path:path}", self.cdn, methods=["GET"]),
            Route("/api/repos/create", self.create_repo, methods=["POST"]),
            Route("/api/models/{org}/{name}/branch/{branch}", self.create_branch, methods=["POST"]),
            Route("/api/models/{org}/{name}/preupload/{revision}", self.preupload, methods=["POST"]),
            Route("/{org}/{name}.git/info/lfs/objects/batch", self.lfs_batch, methods=["POST"]),
            Route("/lfs-upload/{oid}", self.lfs_upload, methods=["PUT"]),
            Route("/lfs-verify", self.lfs_verify, methods=["POST"]),
            Route("/api/models/{org}/{name}/commit/{revision}", self.commit, methods=["POST"]),
            Route("/api/validate-yaml", self.validate_yaml, methods=["POST"]),
        ])
        self.cards: list[dict] = []  # the metadata of every README.md validated, as YAML parsed it

    # --- repositories, as a test sets them up ---

    def add_commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main", replace: bool = False,
                   private: bool = False, gated: bool = False) -> str:
        """Commit ``files`` on ``branch`` (creating the repo), over the branch's files unless ``replace``."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo(private=private, gated=gated))
            parent = repo.branches.get(branch) or repo.branches.get("main")
            tree = {} if replace or parent is None else dict(repo.commits[parent])
            tree.update(files)
            digest = hashlib.sha1(f"{parent}\n{len(repo.commits)}".encode())
            for path in sorted(tree):
                digest.update(path.encode() + b"\0" + hashlib.sha256(tree[path]).digest())
            sha = digest.hexdigest()
            repo.commits[sha] = tree
            repo.branches[branch] = sha
            for path, data in tree.items():
                if is_lfs(path, data):
                    self.lfs[hashlib.sha256(data).hexdigest()] = data
            return sha

    def downloads(self) -> list[str]:
        """File names whose bytes were requested (GET), in order."""
        names = []
        for method, path in self.requests:
            if method == "GET" and "/resolve/" in path:
                names.append(path.split("/resolve/", 1)[1].split("/", 1)[1])
            elif method == "GET" and path.startswith("/cdn/"):
                names.append(path.split("/", 3)[3])
        return names

    # --- helpers ---

    async def _enter(self, request: Request, route: str) -> None:
        self.requests.append((request.method, request.url.path))
        if "authorization" in request.headers:
            self.authorized.append(request.url.path)
        if route in self.hang:
            while not self._stopping.is_set():  # bounded by the server's stop
                await _sleep(0.05)

    def _auth(self, request: Request, repo: Repo | None, write: bool = False) -> Response | None:
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
        if token is not None and token not in (READ_TOKEN, WRITE_TOKEN):
            return _error(401, message="Invalid credentials in Authorization header")
        if write and token != WRITE_TOKEN:
            return _error(401 if token is None else 403, message="You don't have the rights to write here")
        if repo is not None and repo.private and token is None:
            return _error(401, code="RepoNotFound", message="Invalid username or password.")
        if repo is not None and repo.gated and token is None:
            return _error(403, code="GatedRepo", message="Access to this model is restricted")
        return None

    def _repo(self, request: Request, write: bool = False) -> tuple[str, Repo | None, Response | None]:
        repo_id = f"{request.path_params['org']}/{request.path_params['name']}"
        repo = self.repos.get(repo_id)
        if repo is None:
            return repo_id, None, self._auth(request, None, write) or _error(404, code="RepoNotFound",
                                                                             message="Repository not found")
        return repo_id, repo, self._auth(request, repo, write)

    @staticmethod
    def _commit_of(repo: Repo, revision: str | None) -> str | None:
        revision = revision or "main"
        if revision in repo.branches:
            return repo.branches[revision]
        return revision if revision in repo.commits else None

    # --- downloads ---

    async def model_info(self, request: Request) -> Response:
        await self._enter(request, "model_info")
        repo_id, repo, failure = self._repo(request)
        if failure:
            return failure
        sha = self._commit_of(repo, request.path_params.get("revision"))
        if sha is None:
            return _error(404, code="RevisionNotFound", message="Invalid rev id")
        blobs = request.query_params.get("blobs", "").lower() == "true"
        siblings = []
        for path, data in sorted(repo.commits[sha].items()):
            sibling: dict = {"rfilename": path}
            if blobs:
                sibling.update(size=len(data), blobId=git_sha1(data))
                if is_lfs(path, data):
                    sibling["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            siblings.append(sibling)
        answer = {"_id": sha[:24], "id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private,
                  "gated": "auto" if repo.gated else False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
                  "siblings": siblings}
        answer = self.listing(answer) if self.listing else answer
        if LISTING in self.oversend or LISTING in self.trickle:
            return self._body(request, LISTING, json.dumps(answer).encode(), {})
        return Response(answer, media_type="text/html") if isinstance(answer, bytes) else JSONResponse(answer)

    async def resolve(self, request: Request) -> Response:
        await self._enter(request, "resolve")
        old = f"{request.path_params['org']}/{request.path_params['name']}"
        if old in self.renamed:
            return Response(b"", status_code=307, headers={
                "Location": request.url.path.replace(f"/{old}/", f"/{self.renamed[old]}/", 1)})
        _repo_id, repo, failure = self._repo(request)
        if failure:
            return failure
        sha = self._commit_of(repo, request.path_params["revision"])
        if sha is None:
            return _error(404, code="RevisionNotFound", message="Invalid rev id")
        path = request.path_params["path"]
        tree = repo.commits[sha]
        if path not in tree:
            return _error(404, code="EntryNotFound", message=f"{path} does not exist on {sha}",
                          headers={"X-Repo-Commit": sha})
        data = tree[path]
        headers = {"X-Repo-Commit": sha}
        if is_lfs(path, data):
            oid = hashlib.sha256(data).hexdigest()
            headers.update({"X-Linked-Etag": f'"{oid}"', "X-Linked-Size": str(len(data)), "ETag": f'"{git_sha1(data)}"',
                            "Location": self.relocate.get(path, f"{self.cdn_url}/cdn/{oid}/{path}")})
            return Response(b"", status_code=302, headers=headers)
        headers["ETag"] = f'"{git_sha1(data)}"'
        if request.method == "HEAD":
            extra = self.head_headers.get(path, {})
            return Response(b"", status_code=self.head_status.get(path, 200),
                            headers={**headers, "Content-Length": str(len(data)), **extra})
        if path in self.get_status:
            return Response(b"refused", status_code=self.get_status[path], headers=headers)
        if path in self.get_redirect:
            return Response(b"", status_code=302, headers={**headers, "Location": self.get_redirect[path]})
        return self._body(request, path, data, headers)

    async def cdn(self, request: Request) -> Response:
        await self._enter(request, "cdn")
        oid = request.path_params["oid"]
        if oid not in self.lfs:
            return _error(404, message="no such object")
        return self._body(request, request.path_params["path"], self.lfs[oid], {})

    def _served(self, path: str, data: bytes) -> bytes:
        tamper = self.tamper.get(path)
        return tamper(data) if tamper else data

    def _body(self, request: Request, path: str, data: bytes, headers: dict[str, str]) -> Response:
        if path in self.oversend or path in self.trickle:  # chunked: no Content-Length to contradict HEAD's
            return StreamingResponse(self._stream(request, path, data), headers=headers,
                                     media_type="application/octet-stream")
        return _ranged(request, self._served(path, data), headers)

    async def _stream(self, request: Request, path: str, data: bytes):
        self.streamed[path] = 0
        if path in self.trickle:
            for index in range(len(data)):
                if self._stopping.is_set():
                    return
                await _sleep(self.trickle[path])
                yield data[index:index + 1]
                self.streamed[path] += 1
            return
        total, block = self.oversend[path], b"\0" * (1 << 16)
        yield data
        self.streamed[path] = len(data)
        while self.streamed[path] < total and not self._stopping.is_set() and not await request.is_disconnected():
            part = block[: total - self.streamed[path]]
            yield part
            self.streamed[path] += len(part)

    # --- publishing ---

    async def create_repo(self, request: Request) -> Response:
        await self._enter(request, "create_repo")
        denied = self._auth(request, None, write=True)
        if denied:
            return denied
        body = await request.json()
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        if repo_id in self.repos:
            return _error(409, message="You already created this model repo", body={"url": f"{PUBLIC_URL}/{repo_id}"})
        self.add_commit(repo_id, {".gitattributes": b"*.onnx filter=lfs diff=lfs merge=lfs -text\n"},
                        private=bool(body.get("private")) or body.get("visibility") == "private")  # 0.x, 2.x
        return JSONResponse({"url": f"{PUBLIC_URL}/{repo_id}", "name": repo_id})

    async def validate_yaml(self, request: Request) -> Response:
        """``HfApi._validate_yaml``, called by ``create_commit`` for a README.md: its front matter must be a YAML
        mapping (parsed here with PyYAML, as the Hub would)."""
        await self._enter(request, "validate_yaml")
        content = (await request.json())["content"]
        if not content.startswith("---\n") or "\n---\n" not in content[3:]:
            return JSONResponse({"warnings": [{"message": "empty or missing yaml metadata in repo card"}]})
        try:
            metadata = yaml.safe_load(content[4:content.index("\n---\n", 3)])
        except yaml.YAMLError as exc:
            return JSONResponse({"errors": [{"message": str(exc)}]}, status_code=400)
        if not isinstance(metadata, dict):
            return JSONResponse({"errors": [{"message": "metadata must be a mapping"}]}, status_code=400)
        self.cards.append(metadata)
        return JSONResponse({"errors": [], "warnings": []})

    async def create_branch(self, request: Request) -> Response:
        await self._enter(request, "create_branch")
        _repo_id, repo, failure = self._repo(request, write=True)
        if failure:
            return failure
        branch = request.path_params["branch"]
        if branch in repo.branches:
            return _error(409, message="Reference already exists")
        body = await request.json() if await request.body() else {}
        start = self._commit_of(repo, body.get("startingPoint"))
        if start is None:
            return _error(404, code="RevisionNotFound", message="Invalid starting point")
        repo.branches[branch] = start
        return JSONResponse({})

    async def preupload(self, request: Request) -> Response:
        await self._enter(request, "preupload")
        _repo_id, repo, failure = self._repo(request, write=True)
        if failure:
            return failure
        sha = self._commit_of(repo, request.path_params["revision"])
        tree = repo.commits[sha] if sha else {}
        files = []
        for entry in (await request.json())["files"]:
            path, size = entry["path"], entry["size"]
            lfs = path.endswith(LFS_SUFFIXES) or size > 10 * 1024 * 1024
            existing = tree.get(path)
            oid = None
            if existing is not None:
                oid = hashlib.sha256(existing).hexdigest() if lfs else git_sha1(existing)
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return JSONResponse({"files": files, "commitOid": sha})

    async def lfs_batch(self, request: Request) -> Response:
        await self._enter(request, "lfs_batch")
        _repo_id, _repo, failure = self._repo(request, write=True)
        if failure:
            return failure
        body = await request.json()
        objects = []
        for item in body["objects"]:
            answer = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in self.lfs:
                answer["authenticated"] = True
                answer["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{item['oid']}"},
                                     "verify": {"href": f"{self.url}/lfs-verify"}}
            objects.append(answer)
        return JSONResponse({"transfer": "basic", "objects": objects})

    async def lfs_upload(self, request: Request) -> Response:
        await self._enter(request, "lfs_upload")
        data = await request.body()
        if hashlib.sha256(data).hexdigest() != request.path_params["oid"]:
            return _error(400, message="sha256 doesn't match the oid")
        self.lfs[request.path_params["oid"]] = data
        return Response(b"")

    async def lfs_verify(self, request: Request) -> Response:
        await self._enter(request, "lfs_verify")
        body = await request.json()
        stored = self.lfs.get(body["oid"])
        if stored is None or len(stored) != body["size"]:
            return _error(404, message="object not uploaded")
        return JSONResponse({})

    async def commit(self, request: Request) -> Response:
        await self._enter(request, "commit")
        repo_id, repo, failure = self._repo(request, write=True)
        if failure:
            return failure
        branch = request.path_params["revision"]
        if branch not in repo.branches:
            return _error(404, code="RevisionNotFound", message="Invalid rev id")
        files: dict[str, bytes] = {}
        for line in (await request.body()).splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.lfs:
                    return _error(422, message=f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = self.lfs[value["oid"]]
            elif item["key"] != "header":
                return _error(400, message=f"unsupported commit operation {item['key']}")
        sha = self.add_commit(repo_id, files, branch=branch)
        # The Hub answers with its public URL, whatever the endpoint asked; huggingface_hub rewrites it to ENDPOINT.
        return JSONResponse({"commitUrl": f"{PUBLIC_URL}/{repo_id}/commit/{sha}", "commitOid": sha,
                             "pullRequestUrl": None})

    # --- running ---

    def __enter__(self) -> FakeHub:
        hub = _listen("127.0.0.1")
        self.url = f"http://127.0.0.1:{hub.getsockname()[1]}"
        # The CDN on another origin, as the Hub's is: huggingface_hub 2.x follows a HEAD's redirect to the same
        # origin (taking it for a renamed repo) and would then miss the X-Repo-Commit header. All of 127/8 is
        # loopback on Linux; elsewhere the CDN shares the Hub's address.
        try:
            cdn = _listen("127.0.0.2")
        except OSError:
            cdn = _listen("127.0.0.1")
        self.cdn_url = f"http://{cdn.getsockname()[0]}:{cdn.getsockname()[1]}"
        self._sockets = [hub, cdn]
        config = uvicorn.Config(self.app, log_level="error", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": self._sockets}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake Hub didn't start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stopping.set()
        self._server.should_exit = True
        self._thread.join(timeout=20)
        for sock in self._sockets:
            sock.close()


def _listen(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def _error(status: int, code: str | None = None, message: str = "", headers: dict | None = None,
           body: dict | None = None) -> Response:
    extra = {**(headers or {}), **({"X-Error-Code": code} if code else {}), "X-Error-Message": message}
    return JSONResponse(body or {"error": message}, status_code=status, headers=extra)


def _ranged(request: Request, data: bytes, headers: dict[str, str]) -> Response:
    """The body, or the part a ``Range: bytes=N-`` asks for (huggingface_hub resumes interrupted downloads so)."""
    requested = request.headers.get("range", "")
    if requested.startswith("bytes=") and requested.endswith("-") and requested[6:-1].isdigit():
        start = int(requested[6:-1])
        part = data[start:]
        return Response(part, status_code=206,
                        headers={**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
    return Response(data, headers=headers)
