"""Runs on object storage (``s3://``, ``gs://``, any fsspec URL), read through a local mirror.

A remote run is copied file by file into a read-only mirror folder under a local cache
directory keyed by the run's URL; every other part of the package then reads the mirror as
an ordinary local run (the sweep cache too lives there: object stores are never written by
the explorer). One recursive listing per refresh (batched by the store, 1000 keys per
request on S3) says what changed; only new or changed files are fetched, each into a hidden
temporary and then renamed, so a reader of the mirror never sees a partial file. The
metadata (manifest, architecture, probes, history) is fetched at once; checkpoints either at
once (command line) or in the background in mini-epoch order (the app), where they appear
like the checkpoints of a run still being written. See docs/distributed.md.

fsspec and its protocol packages (s3fs, gcsfs) are optional: requirements-cloud.txt.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from core.run.runs import (ARCHITECTURE, CACHE_DIR, CHECKPOINT_DIR, HISTORY, MANIFEST, RESUME_DIR, Run,
                           RunError, RunInfo, resolve_run_path)

INSTALL_HINT = "install the cloud extras: .venv/bin/python -m pip install -r requirements-cloud.txt"
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_STATE = ".remote-state.json"
#: The app refreshes a mirror at most this often (seconds).
FOLLOW_SECONDS = 3.0
#: Checkpoints fetched per batched request to the store.
FETCH_BATCH = 16

Progress = Callable[[int, int, str], None]


class RemoteError(RunError):
    """A remote run cannot be read (credentials, bucket, network, an incomplete upload); says what to do."""


def is_url(value: Any) -> bool:
    """True for ``protocol://...`` strings (s3, gs, memory, file, ...); plain paths are False."""
    return isinstance(value, str) and bool(_URL_RE.match(value))


def as_root(value: str | os.PathLike) -> str | Path:
    """A runs root or run given on the command line: URLs stay strings, the rest becomes a Path."""
    return value if is_url(str(value)) else Path(value)


def cache_root() -> Path:
    """Where mirrors live: ``$ADE_REMOTE_CACHE``, else ``$XDG_CACHE_HOME`` (or ~/.cache)/activation-dynamics."""
    env = os.environ.get("ADE_REMOTE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "activation-dynamics" / "remote"


def storage_options() -> dict[str, Any]:
    """Extra fsspec options from ``$ADE_STORAGE_OPTIONS`` (a JSON object), e.g. an S3 endpoint."""
    raw = os.environ.get("ADE_STORAGE_OPTIONS")
    if not raw:
        return {}
    try:
        opts = json.loads(raw)
    except ValueError as e:
        raise RemoteError("ADE_STORAGE_OPTIONS", f"not valid JSON ({e})") from None
    if not isinstance(opts, dict):
        raise RemoteError("ADE_STORAGE_OPTIONS", "must be a JSON object, e.g. {\"endpoint_url\": \"http://...\"}")
    return opts


def filesystem(url: str, options: dict[str, Any] | None = None):
    """(fsspec filesystem, path without protocol) for ``url``; RemoteError with the install hint if absent."""
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise RemoteError(url, f"reading URLs needs fsspec: {INSTALL_HINT}") from None
    with translate_errors(url):  # a fresh instance: credentials from the environment are read now
        fs, path = url_to_fs(url, skip_instance_cache=True, **{**storage_options(), **(options or {})})
    return fs, path.rstrip("/")


@contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Turn storage exceptions into RemoteError messages that say what to do next."""
    try:
        yield
    except RunError:
        raise
    except ImportError as e:
        raise RemoteError(url, f"no support for this protocol is installed ({e}); {INSTALL_HINT}") from None
    except PermissionError as e:
        raise RemoteError(url, f"access denied ({_short(e)}): check the credentials (for s3:// AWS_ACCESS_KEY_ID/"
                               "AWS_SECRET_ACCESS_KEY or AWS_PROFILE; for gs:// GOOGLE_APPLICATION_CREDENTIALS) "
                               "and that they may list and read this bucket") from None
    except FileNotFoundError as e:
        raise RemoteError(url, f"not found ({_short(e)}): check the bucket name and the path; the bucket must "
                               "exist and be visible with these credentials") from None
    except (OSError, ValueError) as e:
        raise RemoteError(url, f"could not be read ({type(e).__name__}: {_short(e)}); check the URL, the "
                               "network and ADE_STORAGE_OPTIONS (e.g. the endpoint of an S3-compatible store)") from None
    except Exception as e:  # botocore/google errors are not OSErrors: name them rather than show a traceback
        name = type(e).__name__
        if "Credential" in name or "AccessDenied" in str(e) or "InvalidAccessKeyId" in str(e):
            raise RemoteError(url, f"credentials rejected ({name}: {_short(e)}); set valid credentials") from None
        raise RemoteError(url, f"could not be read ({name}: {_short(e)})") from None


def _short(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:300]


@dataclass(frozen=True)
class RemoteFile:
    """One object of a remote run: path relative to the run, size, and a version tag (ETag or mtime)."""

    rel: str
    size: int
    version: str


def _version(info: dict[str, Any]) -> str:
    for k in ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "updated", "created"):
        if info.get(k) is not None:
            return f"{k}:{info[k]}"
    return ""


def _skipped(rel: str) -> bool:
    """Files a mirror never fetches: derived caches, resume state, hidden temporaries."""
    parts = rel.split("/")
    return parts[0] in (CACHE_DIR, RESUME_DIR) or any(p.startswith(".") for p in parts)


def list_files(fs, path: str, url: str) -> dict[str, RemoteFile]:
    """Every object under ``path`` (one recursive, paginated listing), by relative path."""
    with translate_errors(url):
        fs.invalidate_cache()  # all of it: a stale child listing hides new files
        found = fs.find(path, detail=True, withdirs=False)
    out = {}
    prefix = path + "/"
    for key, info in found.items():
        key = key.rstrip("/")
        if not key.startswith(prefix):
            continue
        rel = key[len(prefix):]
        if rel and not _skipped(rel) and info.get("type", "file") == "file":
            out[rel] = RemoteFile(rel, int(info.get("size") or 0), _version(info))
    return out


def _is_checkpoint(rel: str, external: set[str]) -> bool:
    return rel.startswith(CHECKPOINT_DIR + "/") or rel in external


class Mirror:
    """The local read-only copy of one remote run (``local``), refreshed with ``sync``."""

    def __init__(self, url: str, root: Path | None = None, options: dict[str, Any] | None = None):
        self.url = url.rstrip("/")
        self.fs, self.path = filesystem(self.url, options)
        name = self.path.rsplit("/", 1)[-1]
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self.local = (root or cache_root()) / digest / name
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last = 0.0
        self.error: str | None = None  # the last background failure, shown by ``follow``

    # -- state: what was fetched, by version -------------------------------------------------
    def _state(self) -> dict[str, list]:
        try:
            d = json.loads((self.local / _STATE).read_text())
            return d if isinstance(d, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_state(self, state: dict[str, list]) -> None:
        from core.run.atomic import atomic_write_bytes

        atomic_write_bytes(self.local / _STATE, json.dumps(state).encode(), fsync=False)

    # -- refresh ----------------------------------------------------------------------------
    def sync(self, checkpoints: bool | Callable[[int], bool] = True, progress: Progress | None = None) -> Run:
        """Fetch what changed; ``checkpoints``: all, none, or those whose mini-epoch passes the filter (and the first).

        Returns the mirror as a Run. RemoteError when the run is absent or incomplete.
        """
        with self._lock:
            files = list_files(self.fs, self.path, self.url)
            self._check_complete(files)
            manifest = self._fetch_manifest(files)
            external = {str(e.get("path", "")) for e in manifest.get("external_checkpoints") or []}
            meta = [f for f in files.values() if not _is_checkpoint(f.rel, external) and f.rel != HISTORY]
            ckpts = sorted((f for f in files.values() if _is_checkpoint(f.rel, external)),
                           key=lambda f: (_mini_epoch(f.rel, manifest), f.rel))
            state = self._state()
            self._fetch([f for f in meta if f.rel != MANIFEST], state, files)
            self._fetch([files[MANIFEST]], state, files)
            self._fetch([files[HISTORY]] if HISTORY in files else [], state, files)
            self._drop_deleted(files, state)
            self._save_state(state)
            if checkpoints is True:
                wanted = ckpts
            elif checkpoints:  # the run's first checkpoint too: the reference for distance from initialisation
                mes = [_mini_epoch(f.rel, manifest) for f in ckpts]
                first = min(mes, default=-1)
                wanted = [f for f, me in zip(ckpts, mes) if me == first or checkpoints(me)]
            else:
                wanted = []
            if wanted:
                self._fetch_checkpoints(wanted, state, files, progress)
            self._last = time.monotonic()
        return Run(self.local)

    def _check_complete(self, files: dict[str, RemoteFile]) -> None:
        if not files:
            raise RemoteError(self.url, "no run here (nothing under this URL): check the path; a run folder "
                                        "holds manifest.json, model.keras and checkpoints/")
        if MANIFEST not in files:
            raise RemoteError(self.url, f"incomplete run: {len(files)} files but no {MANIFEST} (written last): "
                                        "the run is still being uploaded or its upload was interrupted; "
                                        "finish the upload (manifest.json last) and open it again")

    def _fetch_manifest(self, files: dict[str, RemoteFile]) -> dict[str, Any]:
        with translate_errors(self.url):
            raw = self.fs.cat_file(f"{self.path}/{MANIFEST}")
        try:
            manifest = json.loads(raw)
        except ValueError as e:
            raise RemoteError(f"{self.url}/{MANIFEST}", f"not valid JSON ({e}); the manifest is damaged") from None
        arch = str(manifest.get("architecture_file") or ARCHITECTURE) if isinstance(manifest, dict) else ""
        if arch and not os.path.isabs(arch) and not is_url(arch) and arch not in files:
            raise RemoteError(self.url, f"incomplete run: {MANIFEST} is there but {arch} is not: finish the "
                                        "upload (the architecture before the manifest) and open it again")
        return manifest if isinstance(manifest, dict) else {}

    def _fetch(self, todo: list[RemoteFile], state: dict[str, list], files: dict[str, RemoteFile]) -> None:
        """Fetch the files of ``todo`` whose version changed; each lands whole under its final name."""
        todo = [f for f in todo if state.get(f.rel) != [f.size, f.version] or not (self.local / f.rel).exists()]
        if not todo:
            return
        tmps = []
        for f in todo:
            target = self.local / f.rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmps.append(target.parent / f".{target.name}.{secrets.token_hex(6)}.fetch.tmp")  # unique per fetch
        try:
            with translate_errors(self.url):
                self.fs.get([f"{self.path}/{f.rel}" for f in todo], [str(t) for t in tmps])
            for f, tmp in zip(todo, tmps):
                if tmp.stat().st_size != f.size:
                    raise RemoteError(f"{self.url}/{f.rel}", f"fetched {tmp.stat().st_size} bytes, listed "
                                                            f"{f.size}: the object changed while it was read; retry")
                os.replace(tmp, self.local / f.rel)
                state[f.rel] = [f.size, f.version]
        finally:
            for tmp in tmps:
                tmp.unlink(missing_ok=True)

    def _fetch_checkpoints(self, todo: list[RemoteFile], state: dict[str, list], files: dict[str, RemoteFile],
                           progress: Progress | None) -> None:
        for i in range(0, len(todo), FETCH_BATCH):
            self._fetch(todo[i:i + FETCH_BATCH], state, files)
            self._save_state(state)
            if progress:
                progress(min(i + FETCH_BATCH, len(todo)), len(todo), "checkpoints fetched")

    def _drop_deleted(self, files: dict[str, RemoteFile], state: dict[str, list]) -> None:
        """Files deleted remotely (e.g. checkpoints dropped by a resumed trainer) go from the mirror too."""
        for rel in [r for r in state if r not in files]:
            (self.local / rel).unlink(missing_ok=True)
            del state[rel]

    # -- following a run that is being written ----------------------------------------------
    def follow(self) -> Run:
        """For the app: metadata now (at most every FOLLOW_SECONDS), checkpoints in a background thread.

        A failure of the last background fetch is listed in the run's ``problems``.
        """
        busy = self._thread is not None and self._thread.is_alive()
        if busy or ((self.local / MANIFEST).exists() and time.monotonic() - self._last < FOLLOW_SECONDS):
            return self._with_error(Run(self.local))
        run = self._with_error(self.sync(checkpoints=False))
        self._thread = threading.Thread(target=self._background, name=f"mirror-{self.local.name}", daemon=True)
        self._thread.start()
        return run

    def _with_error(self, run: Run) -> Run:
        if self.error:
            run.problems.append(f"fetching checkpoints from {self.url} failed ({self.error}); "
                                "the next refresh tries again")
        return run

    def _background(self) -> None:
        try:
            self.sync(checkpoints=True)
            self.error = None
        except RunError as e:
            self.error = str(e)


def _mini_epoch(rel: str, manifest: dict[str, Any]) -> int:
    for e in manifest.get("external_checkpoints") or []:
        if str(e.get("path")) == rel:
            return int(e.get("mini_epoch", -1))
    m = re.search(r"(\d+)\.npz$", rel)
    return int(m.group(1)) if m else -1


_MIRRORS: dict[str, Mirror] = {}
_MIRRORS_LOCK = threading.Lock()


def mirror(url: str) -> Mirror:
    """The process's one Mirror of ``url`` (so background fetches are not duplicated)."""
    key = url.rstrip("/")
    with _MIRRORS_LOCK:
        if key not in _MIRRORS:
            _MIRRORS[key] = Mirror(key)
        return _MIRRORS[key]


def open_url(url: str, progress: Progress | None = None) -> Run:
    """The run at ``url`` with every checkpoint fetched (command line: sweep, diagnose, report, export)."""
    return mirror(url).sync(checkpoints=True, progress=progress)


def join(root: str, name: str) -> str:
    """URL of run ``name`` under the runs root URL ``root`` (the name is validated like a local one)."""
    resolve_run_path(cache_root(), name)
    return f"{root.rstrip('/')}/{name}"


def list_remote_runs(root: str) -> list[RunInfo]:
    """Runs under a root URL (one listing): folders with a manifest.json, with their checkpoint counts."""
    fs, path = filesystem(root)
    with translate_errors(root):
        fs.invalidate_cache()  # all of it: a stale child listing hides new files
        keys = fs.find(path, withdirs=False)
    prefix = path + "/"
    by_run: dict[str, set[str]] = {}
    for key in keys:
        if key.startswith(prefix):
            parts = key[len(prefix):].split("/")
            if len(parts) >= 2 and not parts[0].startswith("."):
                by_run.setdefault(parts[0], set()).add("/".join(parts[1:]))
    out = []
    for name in sorted(by_run):
        rels = by_run[name]
        local = mirror(f"{root.rstrip('/')}/{name}").local
        n = sum(1 for r in rels if r.startswith(CHECKPOINT_DIR + "/") and r.endswith(".npz"))
        if MANIFEST not in rels:
            out.append(RunInfo(name, local, f"{root}/{name}: incomplete run (no {MANIFEST} yet: still being "
                                             "uploaded, or the upload was interrupted)", n))
        else:
            out.append(RunInfo(name, local, None, n))
    return out


def open_remote_run(root: str, name: str) -> Run:
    """Open run ``name`` under a root URL for the app (checkpoints keep arriving in the background)."""
    run = mirror(join(root, name)).follow()
    _ = run.manifest
    return run


def runs_root_arg() -> str | Path:
    """The runs root from ``$ADE_RUNS_ROOT`` keeping a URL intact (a Path would fold ``s3://`` to ``s3:/``)."""
    from core.run.runs import runs_root_from_env

    env = os.environ.get("ADE_RUNS_ROOT") or ""
    return env.rstrip("/") if is_url(env) else runs_root_from_env()


def url_of(run: str, root: str | os.PathLike) -> str | None:
    """The URL a command-line run argument names (a URL itself, or a name under a root URL), else None."""
    if is_url(run):
        return run.rstrip("/")
    if is_url(str(root)) and "/" not in run:
        return join(str(root), run)
    return None


class Publisher:
    """Writes a run to object storage: staged in a local folder, each file uploaded whole once complete.

    The recorder writes into ``local`` as it would locally (atomic renames); ``push`` then
    uploads every new or changed file under its final name (an object store shows an object
    only once its upload is complete) in the order a reader needs: architecture, probes and
    resume state, then checkpoints, then the manifest, then the history that marks checkpoints
    complete. Files removed locally (a resume dropping later checkpoints) are deleted remotely.
    """

    def __init__(self, url: str, options: dict[str, Any] | None = None):
        self.url = url.rstrip("/")
        self.fs, self.path = filesystem(self.url, options)
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self.local = cache_root() / "staging" / digest / self.path.rsplit("/", 1)[-1]
        self.local.mkdir(parents=True, exist_ok=True)
        self._sent: dict[str, tuple[int, int]] = {}

    def _local_files(self) -> dict[str, tuple[int, int]]:
        out = {}
        for p in self.local.rglob("*"):
            rel = p.relative_to(self.local).as_posix()
            if p.is_file() and not rel.startswith(CACHE_DIR + "/") and not any(s.startswith(".") for s in rel.split("/")):
                st = p.stat()
                out[rel] = (st.st_size, st.st_mtime_ns)
        return out

    def pull(self) -> None:
        """Copy an existing remote run into the staging folder (so resume and overwrite checks see it)."""
        files = list_files(self.fs, self.path, self.url)
        with translate_errors(self.url):
            for rel in sorted(files):
                target = self.local / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.fetch.tmp"
                self.fs.get_file(f"{self.path}/{rel}", str(tmp))
                os.replace(tmp, target)
        for rel in [r for r in self._local_files() if r not in files]:
            (self.local / rel).unlink()  # stale staging of an earlier attempt
        self._sent = self._local_files()

    def push(self) -> None:
        """Upload what changed since the last push, manifest and history last; delete what went away."""
        now = self._local_files()
        changed = [r for r, v in now.items() if self._sent.get(r) != v]
        last = {MANIFEST: 1, HISTORY: 2}
        changed.sort(key=lambda r: (last.get(r, 0), r.startswith(CHECKPOINT_DIR + "/"), r))
        with translate_errors(self.url):
            for rel in changed:
                self.fs.put_file(str(self.local / rel), f"{self.path}/{rel}")
                self._sent[rel] = now[rel]
            for rel in [r for r in self._sent if r not in now]:
                self.fs.rm_file(f"{self.path}/{rel}")
                del self._sent[rel]


def publisher_for(run_dir: str | os.PathLike) -> Publisher | None:
    """A Publisher when ``run_dir`` is a URL (``RunRecorder("s3://...")``), else None."""
    return Publisher(str(run_dir)) if is_url(str(run_dir)) else None


def fetch_folder(url: str, progress: Progress | None = None) -> Path:
    """A local copy of any folder at ``url`` (``python -m core import s3://...``): new or changed files only.

    The copy lives in ``$ADE_REMOTE_CACHE/sources/<hash>/<name>``; a run imported from it
    references its files, so keep it while you use that run.
    """
    fs, path = filesystem(url)
    files = list_files(fs, path, url)
    if not files:
        raise RemoteError(url, "nothing here: check the bucket and the path of the checkpoint folder")
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    local = cache_root() / "sources" / digest / path.rsplit("/", 1)[-1]
    todo = [f for f in files.values() if not ((local / f.rel).is_file() and (local / f.rel).stat().st_size == f.size)]
    with translate_errors(url):
        for i, f in enumerate(todo):
            target = local / f.rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.fetch.tmp"
            fs.get_file(f"{path}/{f.rel}", str(tmp))
            os.replace(tmp, target)
            if progress:
                progress(i + 1, len(todo), f.rel)
    return local


def local_runs_root(value: str | os.PathLike) -> Path:
    """``--runs-root`` of the commands that write runs (train, demo, import): a URL is refused, saying why."""
    import argparse

    if is_url(str(value)):
        raise argparse.ArgumentTypeError(
            f"{value} is a URL; this command writes runs into a local folder (pass --runs-root data/runs). "
            "To write a run to object storage, use RunRecorder(\"s3://...\") in your training script")
    return Path(value)
