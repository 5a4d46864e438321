"""`m3embed download --model <hub id>` against a fake Hugging Face hub on loopback.

The fake hub speaks the real hub's protocol as huggingface_hub sees it: files under
/<repo>/resolve/<revision>/<file>, X-Repo-Commit on every answer, ETag (git blob sha1)
for small files, a 302 to a CDN host with X-Linked-Etag (sha256) and X-Linked-Size for
large ones, Range requests answered with 206, and X-Error-Code on 404s. The CDN is the
same server reached as "localhost" instead of "127.0.0.1": another origin, so the test
also sees that the token is not forwarded there.

Binary: $M3_HUB_DRIVER when set (a stand-in with the same contract), else $M3_BINARY.
Contract: exit 0 and the snapshot directory as the last stdout line; on failure a
nonzero exit and a one-line error as the last stderr line.
"""

import hashlib
import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = "acme/tiny-m3"
COMMIT = "3d1f0c8e5b7a9f2e4c6d8a0b1e3f5a7c9d2b4e6f"
MIB = 1 << 20


def _binary():
    for var in ("M3_HUB_DRIVER", "M3_BINARY"):
        path = os.environ.get(var)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    pytest.skip("neither M3_HUB_DRIVER nor M3_BINARY names an executable")


def _git_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _repo_files():
    rnd = __import__("random").Random(1234)
    blob = lambda n: bytes(rnd.getrandbits(8) for _ in range(n))  # noqa: E731
    return {
        "config.json": b'{"model_type": "xlm-roberta", "hidden_size": 16}\n',
        "tokenizer_config.json": b'{"model_max_length": 8192}\n',
        "special_tokens_map.json": b'{"cls_token": "<s>"}\n',
        "tokenizer.json": b'{"version": "1.0"}\n',
        "sentencepiece.bpe.model": blob(300_000),
        "model.safetensors": blob(3 * MIB + 12345),
        "colbert_linear.pt": blob(70_000),
        # sparse_linear.pt deliberately absent (optional: 404 tolerated)
    }


LFS = {"sentencepiece.bpe.model", "model.safetensors", "colbert_linear.pt", "pytorch_model.bin"}


class FakeHub:
    def __init__(self):
        self.files = _repo_files()
        self.token = None  # when set, /resolve/ needs "Authorization: Bearer <token>"
        self.drop_once = set()  # files whose first full GET is cut off mid-body
        self.ignore_range = False  # answer Range requests with 200 and the whole file
        self.corrupt = set()  # files served with one byte flipped (their sha256 etag no longer matches)
        self.hold = {}  # file -> threading.Event: its (full or ranged) GET waits until the event is set
        self.aliases = {}  # old repo id -> current repo id (307, as for a renamed repo)
        self.requests = []  # (method, host, path, headers)
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._serve(self, head=True)

            def do_GET(self):
                hub._serve(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # dropped connections are expected
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.cdn = f"http://localhost:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def etag(self, name):
        data = self.files[name]
        return hashlib.sha256(data).hexdigest() if name in LFS else _git_sha1(data)

    def file_requests(self):
        with self.lock:
            return list(self.requests)

    def clear(self):
        with self.lock:
            self.requests.clear()

    # -- HTTP ------------------------------------------------------------------------
    def _reply(self, h, status, headers=(), body=b"", head=False):
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head and body:
            h.wfile.write(body)

    def _serve(self, h, head):
        path = h.path.split("?")[0]
        with self.lock:
            self.requests.append((h.command, h.headers.get("Host", ""), path, dict(h.headers)))
        if path.startswith("/cdn/"):
            return self._serve_cdn(h, path[len("/cdn/"):], head)
        parts = path.lstrip("/").split("/", 4)  # a file may sit in a folder (1_Pooling/config.json)
        if len(parts) != 5 or parts[2] != "resolve":
            return self._reply(h, 404, [("X-Error-Code", "RepoNotFound")], b"not found", head)
        repo, revision, name = f"{parts[0]}/{parts[1]}", parts[3], parts[4]
        if repo in self.aliases:
            target = f"/{self.aliases[repo]}/resolve/{revision}/{name}"
            return self._reply(h, 307, [("Location", target)], b"", head)
        if self.token is not None and h.headers.get("Authorization") != f"Bearer {self.token}":
            return self._reply(h, 401, [("X-Error-Message", "Invalid credentials in Authorization header")],
                               b"unauthorized", head)
        if repo != REPO:
            return self._reply(h, 404, [("X-Error-Code", "RepoNotFound")], b"no such repo", head)
        if revision not in ("main", COMMIT):
            return self._reply(h, 404, [("X-Error-Code", "RevisionNotFound")], b"no such revision", head)
        if name not in self.files:
            return self._reply(h, 404, [("X-Error-Code", "EntryNotFound"), ("X-Repo-Commit", COMMIT)],
                               b"Entry not found", head)
        data = self.files[name]
        if name in LFS:
            sha = self.etag(name)
            return self._reply(h, 302, [
                ("Location", f"{self.cdn}/cdn/{sha}?X-Amz-Signature=fake"),
                ("X-Repo-Commit", COMMIT),
                ("X-Linked-Etag", f'"{sha}"'),
                ("X-Linked-Size", str(len(data))),
                ("ETag", f'W/"{_git_sha1(b"pointer " + data[:16])}"'),
            ], b"", head)
        return self._send_data(h, data, [("X-Repo-Commit", COMMIT), ("ETag", f'"{self.etag(name)}"')], head,
                               name)

    def _serve_cdn(self, h, sha, head):
        for name in self.files:
            if name in LFS and self.etag(name) == sha:
                return self._send_data(h, self.files[name], [("ETag", f'"{sha}"')], head, name)
        return self._reply(h, 404, [], b"no such object", head)

    def _send_data(self, h, data, headers, head, name):
        if not head and name in self.hold:
            self.hold[name].wait(120)  # the limit only keeps a failed test from hanging
        if name in self.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        rng = h.headers.get("Range")
        if rng and not self.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                return self._reply(h, 416, [("Content-Range", f"bytes */{len(data)}")], b"", head)
            body = data[start:]
            return self._reply(h, 206, headers + [
                ("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")], body, head)
        if not head and name in self.drop_once:
            self.drop_once.discard(name)
            h.send_response(200)
            for k, v in headers:
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[: len(data) // 3])
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)
            h.close_connection = True
            return None
        return self._reply(h, 200, headers, data, head)


@pytest.fixture
def hub():
    server = FakeHub()
    yield server
    server.close()


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "hub-cache"


def run_download(hub_or_endpoint, cache, tmp_path, model=REPO, token=None, extra_env=None, timeout=90):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING", "TRANSFORMERS_OFFLINE"))}
    endpoint = hub_or_endpoint if isinstance(hub_or_endpoint, str) else hub_or_endpoint.endpoint
    env.update(HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf-home"),
               NO_PROXY="*", no_proxy="*")
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        env.pop(var, None)
    if token is not None:
        env["HF_TOKEN"] = token
    env.update(extra_env or {})
    return subprocess.run([_binary(), "download", "--model", model], env=env, capture_output=True, text=True,
                          timeout=timeout)


def snapshot_of(result):
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


def error_line(result):
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines, "no error message on stderr"
    return lines[-1]


def repo_dir(cache, repo=REPO):
    return cache / ("models--" + repo.replace("/", "--"))


def assert_layout(hub, cache, repo=REPO, expected_files=None):
    root = repo_dir(cache, repo)
    assert (root / "refs" / "main").read_bytes() == COMMIT.encode()  # no newline, as huggingface_hub
    snap = root / "snapshots" / COMMIT
    names = expected_files or sorted(hub.files)
    assert sorted(p.name for p in snap.iterdir()) == sorted(names)
    for name in names:
        link = snap / name
        assert link.is_symlink(), name
        assert os.readlink(link) == f"../../blobs/{hub.etag(name)}", name
        assert link.read_bytes() == hub.files[name], name
    assert not list((root / "blobs").glob("*.incomplete"))
    return snap


def test_fresh_download_creates_huggingface_cache_layout(hub, cache, tmp_path):
    result = run_download(hub, cache, tmp_path)
    snap = snapshot_of(result)
    assert snap == repo_dir(cache) / "snapshots" / COMMIT
    assert_layout(hub, cache)
    # the absent optional file is remembered the way huggingface_hub does
    assert (repo_dir(cache) / ".no_exist" / COMMIT / "sparse_linear.pt").exists()
    # only the first file is asked for by branch; the rest are pinned to its commit
    resolve_paths = [p for (m, _, p, _) in hub.file_requests() if "/resolve/" in p]
    assert resolve_paths[0].endswith("/resolve/main/config.json")
    assert all(f"/resolve/{COMMIT}/" in p for p in resolve_paths[2:])


def test_second_run_makes_no_requests(hub, cache, tmp_path):
    first = snapshot_of(run_download(hub, cache, tmp_path))
    hub.clear()
    second = run_download(hub, cache, tmp_path)
    assert snapshot_of(second) == first
    assert hub.file_requests() == []
    assert "using cached snapshot" in second.stderr
    # and offline mode is happy with the complete cache
    third = run_download(hub, cache, tmp_path, extra_env={"HF_HUB_OFFLINE": "1"})
    assert snapshot_of(third) == first
    assert hub.file_requests() == []


def test_dropped_connection_is_resumed_with_range(hub, cache, tmp_path):
    hub.drop_once = {"model.safetensors"}
    snap = snapshot_of(run_download(hub, cache, tmp_path))
    sha = hub.etag("model.safetensors")
    gets = [hdrs for (m, _, p, hdrs) in hub.file_requests() if m == "GET" and p == f"/cdn/{sha}"]
    assert len(gets) == 2
    assert "Range" not in gets[0]
    resumed_at = int(gets[1]["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at < len(hub.files["model.safetensors"])
    assert (snap / "model.safetensors").read_bytes() == hub.files["model.safetensors"]
    assert_layout(hub, cache)


def test_incomplete_blob_of_an_earlier_run_is_resumed(hub, cache, tmp_path):
    sha = hub.etag("model.safetensors")
    blobs = repo_dir(cache) / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha}.incomplete").write_bytes(hub.files["model.safetensors"][:MIB])
    snap = snapshot_of(run_download(hub, cache, tmp_path))
    gets = [hdrs for (m, _, p, hdrs) in hub.file_requests() if m == "GET" and p == f"/cdn/{sha}"]
    assert [g.get("Range") for g in gets] == [f"bytes={MIB}-"]
    assert (snap / "model.safetensors").read_bytes() == hub.files["model.safetensors"]
    assert_layout(hub, cache)


def test_corrupt_incomplete_blob_is_detected_and_downloaded_again(hub, cache, tmp_path):
    sha = hub.etag("model.safetensors")
    blobs = repo_dir(cache) / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha}.incomplete").write_bytes(b"\0" * MIB)
    result = run_download(hub, cache, tmp_path)
    snap = snapshot_of(result)
    assert "checksum mismatch" in result.stderr
    gets = [hdrs for (m, _, p, hdrs) in hub.file_requests() if m == "GET" and p == f"/cdn/{sha}"]
    assert [g.get("Range") for g in gets] == [f"bytes={MIB}-", None]
    assert (snap / "model.safetensors").read_bytes() == hub.files["model.safetensors"]
    assert_layout(hub, cache)


def test_content_not_matching_its_sha256_is_refused(hub, cache, tmp_path):
    hub.corrupt = {"model.safetensors"}
    line = error_line(run_download(hub, cache, tmp_path))
    assert "checksum mismatch" in line and "model.safetensors" in line
    blobs = repo_dir(cache) / "blobs"
    assert not (blobs / hub.etag("model.safetensors")).exists()
    assert not list(blobs.glob("*.incomplete"))
    assert not (repo_dir(cache) / "snapshots" / COMMIT / "model.safetensors").exists()


def test_server_ignoring_range_restarts_from_zero(hub, cache, tmp_path):
    hub.ignore_range = True
    sha = hub.etag("model.safetensors")
    blobs = repo_dir(cache) / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha}.incomplete").write_bytes(hub.files["model.safetensors"][:MIB])
    snap = snapshot_of(run_download(hub, cache, tmp_path))
    assert (snap / "model.safetensors").read_bytes() == hub.files["model.safetensors"]


def blocked_lock_waiters(path):
    """How many lock requests on the file `path` wait in the kernel (the "->" lines of
    /proc/locks; matched by inode number only, which overlay file systems keep)."""
    try:
        inode = os.stat(path).st_ino
        locks = Path("/proc/locks").read_text()
    except OSError:
        return 0
    return sum(1 for line in locks.splitlines() if "->" in line and f":{inode} " in line)


def test_concurrent_downloads_share_the_blob_lock(hub, cache, tmp_path):
    # The weights' download is held at the hub until the second process is seen waiting for
    # the blob lock the first one holds: the two certainly overlap, whatever the machine's speed.
    sha = hub.etag("model.safetensors")
    release = threading.Event()
    hub.hold = {"model.safetensors": release}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf-home"),
               NO_PROXY="*", HF_HUB_DISABLE_PROGRESS_BARS="1")
    procs = [subprocess.Popen([_binary(), "download", "--model", REPO], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    stderr = [[], []]

    def read_stderr(i):
        for line in procs[i].stderr:
            stderr[i].append(line)

    readers = [threading.Thread(target=read_stderr, args=(i,), daemon=True) for i in range(2)]
    for t in readers:
        t.start()
    lock_file = cache / ".locks" / ("models--" + REPO.replace("/", "--")) / f"{sha}.lock"

    def weights_gets():
        return [p for (m, _, p, _) in hub.file_requests() if m == "GET" and p == f"/cdn/{sha}"]

    def overlapping():
        """One process's GET of the weights is held at the hub, the other waits for the lock."""
        said = any("another process is downloading model.safetensors" in line for lines in stderr for line in lines)
        return len(weights_gets()) == 1 and (said or blocked_lock_waiters(lock_file) > 0)

    try:
        deadline = time.monotonic() + 120  # only ends a hang; nothing asserts how long it took
        while not overlapping():
            assert all(p.poll() is None for p in procs), \
                "a download ended while the weights were held:\n" + "".join(stderr[0] + stderr[1])
            assert time.monotonic() < deadline, "the second download never waited for the blob lock"
            time.sleep(0.01)
    finally:
        release.set()
        for p in procs:
            try:
                p.wait(90)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for t in readers:
            t.join(60)
    for p, err in zip(procs, stderr):
        out = p.stdout.read()
        p.stdout.close()
        p.stderr.close()
        assert p.returncode == 0, "".join(err)
        assert Path(out.strip().splitlines()[-1]) == repo_dir(cache) / "snapshots" / COMMIT
    assert len(weights_gets()) == 1  # the second process waited on the lock and reused the blob
    assert_layout(hub, cache)


def test_token_is_sent_as_bearer_but_not_to_the_cdn(hub, cache, tmp_path):
    hub.token = "hf_secret123"
    snapshot_of(run_download(hub, cache, tmp_path, token="hf_secret123"))
    requests = hub.file_requests()
    hub_side = [hdrs for (_, _, p, hdrs) in requests if "/resolve/" in p]
    cdn_side = [hdrs for (_, _, p, hdrs) in requests if p.startswith("/cdn/")]
    assert hub_side and cdn_side
    assert all(h.get("Authorization") == "Bearer hf_secret123" for h in hub_side)
    assert all("Authorization" not in h for h in cdn_side)


def test_token_file_under_hf_home_is_used(hub, cache, tmp_path):
    hub.token = "hf_fromfile"
    (tmp_path / "hf-home").mkdir()
    (tmp_path / "hf-home" / "token").write_text("hf_fromfile\n")
    snapshot_of(run_download(hub, cache, tmp_path))


def test_default_cache_is_hf_home_hub_and_endpoint_slash_is_ignored(hub, tmp_path):
    result = run_download(hub.endpoint + "/", tmp_path / "unused", tmp_path, extra_env={"HF_HUB_CACHE": ""})
    snap = snapshot_of(result)
    assert snap == repo_dir(tmp_path / "hf-home" / "hub") / "snapshots" / COMMIT
    assert all("//" not in p for (_, _, p, _) in hub.file_requests())


def test_401_without_token_names_hf_token(hub, cache, tmp_path):
    hub.token = "hf_secret123"
    result = run_download(hub, cache, tmp_path)
    line = error_line(result)
    assert "HF_TOKEN" in line and "401" in line
    assert f"{hub.endpoint}/{REPO}/resolve/main/config.json" in line
    wrong = error_line(run_download(hub, cache, tmp_path, token="hf_wrong"))
    assert "HF_TOKEN" in wrong and "refused" in wrong


def test_missing_required_file_names_the_url(hub, cache, tmp_path):
    del hub.files["sentencepiece.bpe.model"]
    line = error_line(run_download(hub, cache, tmp_path))
    assert "404" in line
    assert f"{hub.endpoint}/{REPO}/resolve/" in line and "/sentencepiece.bpe.model" in line


def test_missing_repo_is_reported(hub, cache, tmp_path):
    line = error_line(run_download(hub, cache, tmp_path, model="acme/nothing-here"))
    assert "acme/nothing-here" in line and "not found" in line


def test_weights_fall_back_to_pytorch_model_bin(hub, cache, tmp_path):
    hub.files["pytorch_model.bin"] = hub.files.pop("model.safetensors")
    snap = snapshot_of(run_download(hub, cache, tmp_path))
    assert (snap / "pytorch_model.bin").read_bytes() == hub.files["pytorch_model.bin"]
    assert not (snap / "model.safetensors").exists()
    assert_layout(hub, cache)


def test_missing_weights_is_an_error(hub, cache, tmp_path):
    del hub.files["model.safetensors"]
    line = error_line(run_download(hub, cache, tmp_path))
    assert "model.safetensors" in line and "pytorch_model.bin" in line


def test_renamed_repo_redirect_is_followed(hub, cache, tmp_path):
    hub.aliases["acme/old-m3"] = REPO
    snap = snapshot_of(run_download(hub, cache, tmp_path, model="acme/old-m3"))
    assert snap == repo_dir(cache, "acme/old-m3") / "snapshots" / COMMIT
    assert (snap / "config.json").read_bytes() == hub.files["config.json"]


def test_unreachable_endpoint_fails_fast_with_one_line(cache, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A refused connection is an error at once; run_download's timeout only ends a hang.
    result = run_download(f"http://127.0.0.1:{port}", cache, tmp_path)
    line = error_line(result)
    assert "cannot reach" in line and f"127.0.0.1:{port}" in line
    assert not repo_dir(cache).exists() or not list((repo_dir(cache) / "snapshots").glob("*/*"))


def test_offline_with_empty_cache_says_so(hub, cache, tmp_path):
    line = error_line(run_download(hub, cache, tmp_path, extra_env={"HF_HUB_OFFLINE": "1"}))
    assert "HF_HUB_OFFLINE" in line and REPO in line
    assert hub.file_requests() == []


def test_local_directory_is_returned_as_is(tmp_path):
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    result = run_download("http://127.0.0.1:9", tmp_path / "c", tmp_path, model=str(model_dir))
    assert snapshot_of(result) == model_dir


def test_not_a_directory_nor_a_hub_id(tmp_path):
    line = error_line(run_download("http://127.0.0.1:9", tmp_path / "c", tmp_path, model="no/such/dir"))
    assert "no/such/dir" in line


def test_huggingface_hub_finds_what_we_downloaded(hub, cache, tmp_path):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    snap = snapshot_of(run_download(hub, cache, tmp_path))
    for name in ("config.json", "model.safetensors", "sentencepiece.bpe.model"):
        found = huggingface_hub.hf_hub_download(REPO, name, cache_dir=str(cache), local_files_only=True)
        assert Path(found) == snap / name
    assert Path(huggingface_hub.snapshot_download(REPO, cache_dir=str(cache), local_files_only=True)) == snap


def test_we_reuse_what_huggingface_hub_downloaded(hub, cache, tmp_path):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    for name in hub.files:
        huggingface_hub.hf_hub_download(REPO, name, cache_dir=str(cache), endpoint=hub.endpoint)
    hub.clear()
    snap = snapshot_of(run_download(hub, cache, tmp_path))
    assert snap == repo_dir(cache) / "snapshots" / COMMIT
    assert hub.file_requests() == []
    assert (snap / "model.safetensors").read_bytes() == hub.files["model.safetensors"]
