"""The weights manager: manifest, resumable verified downloads, import, verify, remove.

Every file the engine loads is listed in `weights/manifest.toml` with where it comes from and how
it is checked. A file is only ever handed to loading code after its SHA-256 matched: the one
upstream publishes, or, where upstream publishes none, the one pinned when it was first installed
(`<data dir>/weights/pins.json`). Since a pin vouches for whatever file came first, a file is
installed (and pinned) only once it loads as the architecture of its entry (engine/nets/checkpoints.py):
a picture or another model's checkpoint is refused before anything is written. Downloads go to a
`.part` file that is resumed with HTTP range requests and renamed into place only once verified, so
the final path is never a partial or corrupt file.

Nothing is written past a size limit: the manifest's `size` plus a margin where it is known, a cap
per kind of file where it is not (`MAX_UNSIZED_*`). Downloads stop there whatever the server
declares, zip members are refused by their declared size and counted while they are copied.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TypeVar

from engine import __version__
from engine.errors import BadCheckpoint, UserError
from nst_common.endpoints import data_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ProgressFn = Callable[[str, int, int | None], None]
"""progress(weight_id, bytes_done, bytes_total_or_None), called as bytes arrive."""
T = TypeVar("T")

MANIFEST_ENV = "NST_MANIFEST"
CHUNK = 1 << 16
RETRIES = 4
BACKOFF_S = 0.5
TIMEOUT_S = 30.0
_MISSING_CODES = (404, 410)

# Size limits. The manifest's `size` is upstream's; the hash decides whether a file is right, so the
# margin only lets a file that differs slightly reach the hash check (and its checksum-mismatch
# message) while a server or zip that sends far more is stopped long before it fills a disk.
SIZE_MARGIN_FRACTION = 0.01
SIZE_MARGIN_MIN = 1 << 20
# A weights file with no size in the manifest (AdaIN's, CycleGAN's: 10 to 80 MiB). The largest
# checkpoint any of the engine's architectures holds is torchvision's VGG19 with its classifier
# (548 MiB), so 1 GiB never refuses a real file.
MAX_UNSIZED_FILE_BYTES = 1 << 30
# A bundle with no size in the manifest (pytorch/examples' saved_models.zip: four models of about
# 6.5 MiB each). 1 GiB leaves room for bundles many times that size.
MAX_UNSIZED_ARCHIVE_BYTES = 1 << 30
# A zip member with no size in the manifest: members are feed-forward style nets (Johnson's are
# about 6.5 MiB each). 64 MiB is ten times that; a zip bomb, which inflates a few hundred KB into
# gigabytes, is refused at its declared size or stopped there while it is copied. A manifest entry
# for a larger member gives its `size`.
MAX_UNSIZED_MEMBER_BYTES = 64 << 20


@dataclass(frozen=True)
class Archive:
    """A downloadable bundle (a zip) whose members are weight files."""

    id: str
    file: str
    urls: tuple[str, ...]
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Entry:
    id: str
    method: str
    file: str
    urls: tuple[str, ...] = ()
    archive: str | None = None
    package: str | None = None
    member: str | None = None
    size: int | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None
    checksum_note: str = ""
    license: str = ""
    citation: str = ""
    arch: dict = field(default_factory=dict)
    notes: str = ""
    trained: dict = field(default_factory=dict)  # provenance of a model trained here (`nst train`)

    @property
    def checksum_source(self) -> str:
        """How the expected hash is known: what `nst models list` shows."""
        if self.trained:
            return "pinned when trained"
        if self.sha256:
            return "published"
        if self.sha256_prefix:
            return "published prefix, full hash pinned"
        return "pinned at first download"


@dataclass
class Manifest:
    path: Path
    entries: dict[str, Entry]
    archives: dict[str, Archive]

    def entry(self, weight_id: str) -> Entry:
        try:
            return self.entries[weight_id]
        except KeyError:
            # A model's own name (`candy`, as `--model` takes it) is the end of its weights' id.
            meant = sorted(i for i in self.entries if i.endswith(f"_{weight_id}"))
            hint = f"did you mean {' or '.join(meant)}? " if meant else ""
            known = ", ".join(sorted(self.entries))
            message = f"no weights called {weight_id!r}; {hint}known: {known}"
            raise UserError("unknown-weights", message) from None

    def models(self, method: str) -> tuple[str, ...]:
        """The trained models of a model method (Johnson, CycleGAN), in manifest order: its entries
        `<method>_<model>`, less the prefix. The manifest is the one list of them."""
        prefix = f"{method}_"
        return tuple(
            e.id[len(prefix) :]
            for e in self.entries.values()
            if e.method == method and e.id.startswith(prefix)
        )

    def download_size(self, weight_id: str) -> int | None:
        """Bytes a pull of `weight_id` fetches (its archive's, for an archive member), where known."""
        entry = self.entry(weight_id)
        if entry.archive:
            return self.archives[entry.archive].size
        return None if entry.package else entry.size

    def downloadable(self, weight_id: str) -> Entry:
        """The entry of `weight_id` when `pull` can fetch it; a UserError for an unknown id or a
        file that ships inside a package."""
        entry = self.entry(weight_id)
        if entry.package or entry.trained:
            raise UserError("not-downloadable", f"{weight_id} cannot be downloaded; {_how_to_get(entry)}")
        return entry


@dataclass
class ModelStatus:
    """One line of `nst models list` / `verify`."""

    id: str
    method: str
    state: str  # verified | pinned | unpinned | missing | corrupt (see `checked_by`)
    checksum: str
    size: int | None
    license: str
    path: Path | None
    message: str = ""


def size_limit(size: int | None, cap: int) -> int:
    """The most bytes accepted for a file whose manifest size is `size`: that plus a margin, or
    `cap` (one of the MAX_UNSIZED_* constants) where the size is not known."""
    if size is None:
        return cap
    return size + max(int(size * SIZE_MARGIN_FRACTION), SIZE_MARGIN_MIN)


def file_limit(entry: Entry) -> int:
    """The most bytes accepted for the installed file of `entry` (downloaded, extracted or imported)."""
    return size_limit(entry.size, MAX_UNSIZED_MEMBER_BYTES if entry.archive else MAX_UNSIZED_FILE_BYTES)


def checked_by(entry: Entry) -> str:
    """How a good file of `entry` is known to be right: "verified" where it matches the sha256 that
    upstream publishes, "pinned" where it matches the hash pinned when it was first downloaded or
    imported (no published hash, or only a published prefix of one)."""
    return "verified" if entry.sha256 else "pinned"


def manifest_path() -> Path:
    """The manifest in use: $NST_MANIFEST, the source checkout's, or the one installed with the venv.

    The checkout's copy serves editable installs; install.py (and pyproject data-files) put a copy
    at `<venv>/share/neural-style/manifest.toml` for regular installs.
    """
    override = os.environ.get(MANIFEST_ENV)
    if override:
        return Path(override)
    candidates = [
        Path(__file__).resolve().parents[1] / "weights" / "manifest.toml",
        Path(sys.prefix) / "share" / "neural-style" / "manifest.toml",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserError(
        "no-manifest",
        "the weights manifest is missing (looked in " + ", ".join(map(str, candidates)) + "); "
        "re-run install.py",
    )


def load_manifest(path: Path | None = None) -> Manifest:
    path = path or manifest_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError("bad-manifest", f"cannot read the weights manifest {path}: {exc}") from None
    archives = {}
    for raw in data.get("archives", []):
        archives[raw["id"]] = Archive(
            id=raw["id"],
            file=raw["file"],
            urls=tuple(raw.get("urls", ())),
            size=raw.get("size"),
            sha256=raw.get("sha256"),
        )
    entries = {}
    for raw in data.get("weights", []):
        raw = dict(raw)
        raw["urls"] = tuple(raw.get("urls", ()))
        try:
            entry = Entry(**raw)
        except TypeError as exc:
            raise UserError("bad-manifest", f"{path}: entry {raw.get('id')!r}: {exc}") from None
        sources = [bool(entry.urls), bool(entry.archive), bool(entry.package)]
        if sum(sources) != 1 or (entry.archive and entry.archive not in archives):
            raise UserError("bad-manifest", f"{path}: {entry.id} needs exactly one of urls, archive, package")
        entries[entry.id] = entry
    for weight_id, record in _read_json(_trained_path()).items():
        if weight_id not in entries and isinstance(record, dict):  # a shipped model keeps its id
            entries[weight_id] = Entry(
                id=weight_id,
                method=str(record.get("method", "")),
                file=f"{weight_id}.pth",
                license="yours (trained here)",
                trained=dict(record),
            )
    return Manifest(path=path, entries=entries, archives=archives)


# --- local state --------------------------------------------------------------------------------


def weights_dir() -> Path:
    """Where downloaded and imported weights live: `weights` in the data folder, created on demand."""
    path = data_dir() / "weights"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pins_path() -> Path:
    return weights_dir() / "pins.json"


def _trained_path() -> Path:
    """The models trained here ({weight id: provenance}); read without creating the folder."""
    return data_dir() / "weights" / "trained.json"


def _stamps_path() -> Path:
    return weights_dir() / "verified.json"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UserError(
            "bad-state", f"{path} is unreadable ({exc}); delete it and run: nst models verify"
        ) from None


def _write_json(path: Path, data: dict) -> None:
    """Write via a temporary file and rename so a crash never leaves half a pins file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def pins() -> dict[str, dict]:
    return _read_json(_pins_path())


def _pin(weight_id: str, sha256: str, source: str) -> None:
    data = pins()
    data[weight_id] = {
        "sha256": sha256,
        "source": source,
        "pinned_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write_json(_pins_path(), data)


def _stamp(weight_id: str, path: Path, sha256: str) -> None:
    """Remember that this exact file (size, mtime) hashed right, so path_for need not rehash it."""
    st = path.stat()
    data = _read_json(_stamps_path())
    data[weight_id] = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
    _write_json(_stamps_path(), data)


def _stamped(weight_id: str, path: Path, sha256: str | None) -> bool:
    stamp = _read_json(_stamps_path()).get(weight_id)
    if not stamp or stamp.get("path") != str(path):
        return False
    st = path.stat()
    same_file = stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns
    return same_file and (sha256 is None or stamp.get("sha256") == sha256)


# Files hashed right in this process, by (path, size, mtime_ns, expected sha256): a package's file is
# not stamped in the data dir (the package owns it), and a long-lived engine hashes each file once.
_checked: set[tuple[str, int, int, str]] = set()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# --- where files are and whether they are right -------------------------------------------------


def _installed_path(entry: Entry) -> Path | None:
    """Where the file would be: in the data dir, or inside the distribution that ships it."""
    if entry.package:
        try:
            dist = metadata.distribution(entry.package)
        except metadata.PackageNotFoundError:
            return None
        return Path(str(dist.locate_file(entry.member or entry.file)))
    return weights_dir() / entry.file


def _expected(entry: Entry) -> str | None:
    """The full hash a file must have, or None when nothing is pinned yet."""
    if entry.sha256:
        return entry.sha256.lower()
    pin = pins().get(entry.id)
    return pin["sha256"] if pin else None


def _shown(source: str) -> str:
    """A file's source as a message names it: the URL, or the path of an imported file."""
    return source.removeprefix("import:")


def _pin_origin(entry: Entry) -> str:
    """Where the pin of `entry` came from: 'the first import of ID (2025-05-01 10:00:00+00:00, from
    FILE)', so that a mismatch with a wrong first file can be told from a damaged new one."""
    pin = pins().get(entry.id, {})
    source = str(pin.get("source", ""))
    if source == "trained":
        event, origin = f"the training of {entry.id}", ""
    elif source.startswith("import:"):
        event, origin = f"the first import of {entry.id}", _shown(source)
    else:
        event, origin = f"the first download of {entry.id}", source
    details = [str(pin["pinned_at"]).replace("T", " ")] if pin.get("pinned_at") else []
    details += [f"from {origin}"] if origin else []
    return f"{event} ({', '.join(details)})" if details else event


def _check(entry: Entry, digest: str) -> str | None:
    """Why a file with this hash is wrong for the entry ("does not match ..."), or None when it is
    right or pinnable."""
    expected = _expected(entry)
    if expected is not None and digest != expected:
        if entry.sha256:
            return f"does not match the published {expected}"
        return f"does not match {expected}, pinned at {_pin_origin(entry)}"
    if expected is None and entry.sha256_prefix and not digest.startswith(entry.sha256_prefix.lower()):
        return f"does not start with the published {entry.sha256_prefix}"
    return None


def _accept(entry: Entry, file: Path, source: str) -> None:
    """Verify a complete file (raising checksum-mismatch after removing it), pin it if unpinned."""
    digest = sha256_file(file)
    problem = _check(entry, digest)
    if problem:
        file.unlink(missing_ok=True)
        message = f"{entry.id}: {_shown(source)} has sha256 {digest}, which {problem}; the file was discarded"
        if not entry.sha256 and entry.id in pins():
            message += (
                f". If that first file was the wrong one, drop its pin with "
                f"`nst models remove --unpin {entry.id}`, then import or pull {entry.id} again"
            )
        raise UserError("checksum-mismatch", message)
    if _expected(entry) is None:
        _pin(entry.id, digest, source)


def path_for(weight_id: str, manifest: Manifest | None = None) -> Path | None:
    """The installed file for `weight_id` when it is within its size limit and matches its published
    or pinned sha256, else None. Loading code takes its files from here (or `require`) only."""
    entry = (manifest or load_manifest()).entry(weight_id)
    path = _installed_path(entry)
    if path is None or not path.is_file():
        return None
    st = path.stat()
    if st.st_size > file_limit(entry):
        return None  # never hashed, never loaded
    expected = _expected(entry)
    if expected is None:
        return None  # nothing to check it against: only pull/import may pin
    key = (str(path), st.st_size, st.st_mtime_ns, expected)
    if key in _checked:
        return path
    if not entry.package and _stamped(entry.id, path, expected):
        _checked.add(key)
        return path
    if _check(entry, sha256_file(path)) is not None:
        return None
    _checked.add(key)
    if not entry.package:
        _stamp(entry.id, path, expected)
    return path


def _how_to_get(entry: Entry) -> str:
    if entry.trained:
        return f"it was trained on this machine: train it again (nst train {entry.method} ...)"
    if entry.package:
        return f"reinstall the {entry.package} package (python3 install.py does it)"
    return f"run: nst models pull {entry.id}"


def _how_to_replace(entry: Entry) -> str:
    """How to put the right file in place of a wrong one that its hash (a pin) vouches for."""
    if entry.trained or entry.package:
        return _how_to_get(entry)
    return (
        f"drop it and its pin with `nst models remove --unpin {entry.id}`, then re-import the right "
        f"file with `nst models import {entry.id} FILE` or `nst models pull {entry.id}`"
    )


def require(weight_id: str, manifest: Manifest | None = None, hint: str = "") -> Path:
    """Like path_for, but a file that is missing or wrong is a UserError that says what is wrong
    and how to get it (`hint`, when given, is added to that)."""
    manifest = manifest or load_manifest()
    path = path_for(weight_id, manifest)
    if path is not None:
        return path
    entry = manifest.entry(weight_id)
    status = _status(entry, rehash=True)
    if status.state in ("verified", "pinned") and status.path is not None:  # installed meanwhile
        return status.path
    if status.state == "missing":
        message = f"the {weight_id} weights are not installed; {_how_to_get(entry)}"
    else:
        message = f"the {weight_id} weights at {status.path} are {status.state}: {status.message}"
    raise UserError("missing-weights", f"{message}; {hint}" if hint else message)


def load_with(
    weight_id: str, loader: Callable[[Path], T], manifest: Manifest | None = None, hint: str = ""
) -> T:
    """`loader(path)` of the file `require` hands out. A file its hash vouches for can still be one
    the loader cannot read (a wrong file pinned before imports were checked): that is one line that
    names the weights and the fix, never torch's text."""
    manifest = manifest or load_manifest()
    path = require(weight_id, manifest, hint)
    try:
        return loader(path)
    except BadCheckpoint as exc:
        raise UserError(
            "bad-weights",
            f"the {weight_id} weights at {path} are not a {exc.arch} checkpoint ({exc.reason}); "
            + _how_to_replace(manifest.entry(weight_id)),
        ) from None


# --- downloading --------------------------------------------------------------------------------


def _content_range(header: str | None) -> tuple[int, int | None] | None:
    """(start, total) from 'bytes START-END/TOTAL' (TOTAL may be '*')."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (header or "").strip())
    if not match:
        return None
    return int(match.group(1)), None if match.group(2) == "*" else int(match.group(2))


class _Missing(Exception):
    """The server says the file is not there (404/410): retrying the same URL will not help."""


class _TooLarge(Exception):
    """The server declares or sends more than the limit, or more than it declared: not retried."""


def _fetch_once(
    url: str, part: Path, label: str, size_hint: int | None, progress: ProgressFn | None, limit: int
) -> None:
    """One HTTP request that appends to `part` (resuming if it has bytes); raises on a short read,
    and _TooLarge before `part` would grow past `limit` or past the size the server declared."""
    have = part.stat().st_size if part.exists() else 0
    if have > limit:  # left by a run without limits: start again
        part.unlink()
        have = 0
    headers = {"User-Agent": f"neural-style-engine/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code in _MISSING_CODES:
            raise _Missing(f"{url} answered {exc.code} {exc.reason}") from None
        if exc.code == 416 and have:
            # Range not satisfiable: the .part is already whole, or longer than the file.
            total = (exc.headers.get("Content-Range") or "").rpartition("/")[2]
            if total != str(have):
                part.unlink()
            return
        raise
    with response:
        declared: int | None  # the whole file's size, as the server states it
        if have and response.status == 206:
            span = _content_range(response.headers.get("Content-Range"))
            if span is None or span[0] != have:
                raise OSError(f"{url}: unexpected Content-Range {response.headers.get('Content-Range')!r}")
            declared = span[1]
            mode = "ab"
        else:  # a full body: the server ignored the range, or there was nothing to resume
            have = 0
            length = response.headers.get("Content-Length")
            declared = int(length) if length and length.isdigit() else None
            mode = "wb"
        if declared is not None and declared > limit:
            raise _TooLarge(f"{url} declares {declared} bytes")
        total = declared or size_hint
        done = have
        with open(part, mode) as out:
            while block := response.read(CHUNK):
                if done + len(block) > (limit if declared is None else declared):
                    if declared is None:
                        raise _TooLarge(f"{url} sent more than that")
                    raise _TooLarge(f"{url} sent more than the {declared} bytes it declared")
                out.write(block)
                done += len(block)
                if progress:
                    progress(label, done, total)
            out.flush()
            os.fsync(out.fileno())
        if total is not None and done < total:
            raise http.client.IncompleteRead(b"", total - done)


def download(
    urls: Iterable[str],
    dest: Path,
    label: str,
    size_hint: int | None = None,
    progress: ProgressFn | None = None,
    limit: int | None = None,
) -> str:
    """Fetch `dest.part` from the first URL that has it, resuming and retrying; returns the URL.

    `dest.part` never grows past `limit` bytes (default: `size_hint` plus the margin, or
    MAX_UNSIZED_FILE_BYTES): a URL that declares or sends more is given up and its bytes removed.
    The caller verifies the .part and renames it: this function never writes `dest` itself.
    """
    if limit is None:
        limit = size_limit(size_hint, MAX_UNSIZED_FILE_BYTES)
    part = dest.with_name(dest.name + ".part")
    failures: list[str] = []
    too_large: list[str] = []
    all_missing = True
    for url in urls:
        for attempt in range(RETRIES + 1):
            try:
                _fetch_once(url, part, label, size_hint, progress, limit)
                return url
            except _Missing as exc:
                failures.append(str(exc))
                break
            except _TooLarge as exc:
                part.unlink(missing_ok=True)
                failures.append(str(exc))
                too_large.append(str(exc))
                all_missing = False
                break
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                if attempt == RETRIES:
                    reason = getattr(exc, "reason", None) or exc
                    failures.append(f"{url}: {reason} (after {RETRIES + 1} tries)")
                    all_missing = False
                    break
                time.sleep(min(BACKOFF_S * 2**attempt, 8.0))
    if too_large and not part.exists():
        raise UserError(
            "weights-too-large",
            f"{label}: {dest.name} may be at most {limit} bytes, but {'; '.join(too_large)}; "
            "the partial file was removed",
        )
    if all_missing:
        raise UserError(
            "weights-not-found",
            f"{label}: not found upstream ({'; '.join(failures)}). "
            f"If you have the file, install it with: nst models import {label} FILE",
        )
    again = (
        f"Run the same command again to resume (the partial file {part.name} is kept)"
        if part.exists() and part.stat().st_size
        else "Run the same command again once the connection works"
    )
    raise UserError(
        "download-failed",
        f"{label}: download failed: {'; '.join(failures)}. {again}; a proxy is taken from "
        "HTTPS_PROXY/HTTP_PROXY",
    )


def _check_contents(entry: Entry, file: Path, shown: str) -> None:
    """Refuse a file that does not load as the architecture of `entry`, before it is pinned: a pin
    would vouch for it from then on. `shown` names the file in the message."""
    from engine.nets.checkpoints import check_file  # torch, only where a file is checked

    try:
        check_file(entry, file)
    except BadCheckpoint as exc:
        if exc.readable:
            problem = f"{shown} is a checkpoint, but not a {exc.arch} for {entry.id}: {exc.reason}"
        else:
            problem = f"{shown} is not a PyTorch checkpoint ({exc.reason})"
        raise UserError("bad-weights", f"{problem}; nothing was installed as {entry.id}") from None


def _install_checked(entry: Entry, part: Path, source: str, shown: str) -> Path:
    """Check what a downloaded or extracted .part holds (removing it when it is not the entry's
    architecture), then install it."""
    try:
        _check_contents(entry, part, shown)
    except UserError:
        part.unlink(missing_ok=True)
        raise
    return _install_from_part(entry, part, source)


def _install_from_part(entry: Entry, part: Path, source: str) -> Path:
    """Verify a complete .part whose contents are checked and rename it into place (atomic on one
    file system)."""
    _accept(entry, part, source)
    final = weights_dir() / entry.file
    os.replace(part, final)
    _stamp(entry.id, final, _expected(entry) or sha256_file(final))
    return final


def _extract_member(archive_file: Path, member: str, entry: Entry, source: str) -> Path:
    """Extract `member` to the entry's .part and install it. A member whose declared size is over
    the entry's limit is refused before anything is written, and the bytes are counted while they
    are inflated, so a member that inflates past its declared size (a zip can lie) is stopped there."""
    part = weights_dir() / (entry.file + ".part")
    limit = file_limit(entry)
    what = f"{entry.id}: {member} in {archive_file.name}"
    try:
        with zipfile.ZipFile(archive_file) as zf:
            info = zf.getinfo(member)
            if info.file_size > limit:
                raise UserError(
                    "weights-too-large",
                    f"{what} declares {info.file_size} bytes, over the limit of {limit} bytes for "
                    f"{entry.file}; nothing was extracted",
                )
            with zf.open(info) as src, open(part, "wb") as out:
                done = 0
                while block := src.read(CHUNK):
                    done += len(block)
                    if done > info.file_size:  # at most the limit, checked above
                        raise UserError(
                            "weights-too-large",
                            f"{what} inflates to more than the {info.file_size} bytes it declares "
                            f"(the limit for {entry.file} is {limit} bytes); the partial file was removed",
                        )
                    out.write(block)
    except KeyError:
        part.unlink(missing_ok=True)
        raise UserError("bad-archive", f"{archive_file.name} has no member {member}") from None
    except UserError:
        part.unlink(missing_ok=True)
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        part.unlink(missing_ok=True)
        raise UserError(
            "bad-archive", f"{what} cannot be extracted: {exc}; the partial file was removed"
        ) from None
    return _install_checked(entry, part, f"{source}#{member}", f"{member} in {archive_file.name}")


def _pull_archive(
    manifest: Manifest, archive: Archive, wanted: list[Entry], progress: ProgressFn | None
) -> None:
    """Download a bundle once, extract every member that is a manifest entry, then delete it."""
    dest = weights_dir() / archive.file
    part = dest.with_name(dest.name + ".part")
    limit = size_limit(archive.size, MAX_UNSIZED_ARCHIVE_BYTES)
    url = download(archive.urls, dest, archive.id, archive.size, progress, limit=limit)
    if archive.sha256 and sha256_file(part) != archive.sha256:
        part.unlink()
        raise UserError(
            "checksum-mismatch", f"{archive.id}: the downloaded archive does not match its sha256"
        )
    if not zipfile.is_zipfile(part):
        part.unlink()
        raise UserError(
            "bad-archive", f"{archive.id}: {url} did not return a zip file; the file was discarded"
        )
    members = [e for e in manifest.entries.values() if e.archive == archive.id]
    try:
        errors = []
        for entry in members:
            if entry in wanted or path_for(entry.id, manifest) is None:
                try:
                    _extract_member(part, entry.member or entry.file, entry, url)
                except UserError as exc:
                    if entry in wanted:
                        errors.append(exc)
        if errors:
            raise errors[0]
    finally:
        part.unlink(missing_ok=True)


def expand_ids(ids: Iterable[str], manifest: Manifest) -> list[str]:
    """The ids `pull` installs, in order and once each: "all" is every downloadable entry."""
    ids = list(ids)
    if "all" in ids:
        ids = [e.id for e in manifest.entries.values() if not e.package and not e.trained]
    return list(dict.fromkeys(ids))


def pull(
    ids: Iterable[str],
    progress: ProgressFn | None = None,
    manifest: Manifest | None = None,
) -> list[Path]:
    """Download, verify and install weights; "all" means every downloadable entry.

    Files already installed and verified are skipped, so pulling again is cheap.
    """
    manifest = manifest or load_manifest()
    entries = [manifest.entry(i) for i in expand_ids(ids, manifest)]
    by_archive: dict[str, list[Entry]] = {}
    for entry in entries:
        if path_for(entry.id, manifest) is not None:
            continue
        if entry.package:
            require(entry.id, manifest)  # cannot be downloaded: explains how to get it
        elif entry.archive:
            by_archive.setdefault(entry.archive, []).append(entry)
        else:
            dest = weights_dir() / entry.file
            url = download(entry.urls, dest, entry.id, entry.size, progress, limit=file_limit(entry))
            _install_checked(entry, dest.with_name(dest.name + ".part"), url, f"the file from {url}")
    for archive_id, wanted in by_archive.items():
        _pull_archive(manifest, manifest.archives[archive_id], wanted, progress)
    return [require(entry.id, manifest) for entry in entries]


def import_file(weight_id: str, source: Path, manifest: Manifest | None = None) -> Path:
    """Install a file the user already has (or the bundle that contains it), verified like a download."""
    manifest = manifest or load_manifest()
    entry = manifest.entry(weight_id)
    if entry.package or entry.trained:
        raise UserError("not-importable", f"{weight_id} cannot be imported; {_how_to_get(entry)}")
    source = Path(source).expanduser()
    if not source.is_file():
        raise UserError("no-such-file", f"{source} does not exist")
    if entry.member and zipfile.is_zipfile(source):
        try:
            with zipfile.ZipFile(source) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise UserError("bad-archive", f"{source} cannot be read as a zip file: {exc}") from None
        if entry.member in names:
            return _extract_member(source, entry.member, entry, f"import:{source.resolve()}")
    limit = file_limit(entry)
    size = source.stat().st_size
    if size > limit:
        raise UserError(
            "weights-too-large",
            f"{weight_id}: {source} is {size} bytes, over the limit of {limit} bytes for {entry.file}",
        )
    _check_contents(entry, source, str(source))
    part = weights_dir() / (entry.file + ".part")
    shutil.copyfile(source, part)
    return _install_from_part(entry, part, f"import:{source.resolve()}")


def _status(entry: Entry, rehash: bool) -> ModelStatus:
    path = _installed_path(entry)
    status = ModelStatus(
        id=entry.id,
        method=entry.method,
        state="missing",
        checksum=entry.checksum_source,
        size=entry.size,
        license=entry.license,
        path=None,
    )
    if path is None or not path.is_file():
        if entry.package:
            status.message = f"the {entry.package} package is not installed"
        return status
    status.path = path
    status.size = path.stat().st_size
    if entry.package or entry.trained:
        fix = _how_to_get(entry)
    else:
        fix = f"run: nst models remove {entry.id} && nst models pull {entry.id}"
    limit = file_limit(entry)
    expected = _expected(entry)
    if status.size > limit:
        status.state = "corrupt"
        status.message = f"{status.size} bytes, over the limit of {limit} bytes; {fix}"
    elif expected is None:
        status.state = "unpinned"
        status.message = (
            "no published sha256 and no pin to check it against; "
            f"if you trust this file, pin it: nst models import {entry.id} {path}"
        )
    elif not rehash and _stamped(entry.id, path, expected):
        status.state = checked_by(entry)
    else:
        digest = sha256_file(path)
        problem = _check(entry, digest)
        if problem:
            status.state = "corrupt"
            status.message = f"sha256 {digest} {problem}; {fix}"
        else:
            status.state = checked_by(entry)
            _stamp(entry.id, path, expected)
    return status


def list_models(manifest: Manifest | None = None) -> list[ModelStatus]:
    """Every manifest entry with its install state (trusting files already checked and unchanged)."""
    manifest = manifest or load_manifest()
    return [_status(entry, rehash=False) for entry in manifest.entries.values()]


def verify(ids: Iterable[str] | None = None, manifest: Manifest | None = None) -> list[ModelStatus]:
    """Rehash installed files (all, or `ids`) against their published or pinned hashes, and check
    that those that match load as their architecture: a wrong file pinned before imports were
    checked is "corrupt" too."""
    from engine.nets.checkpoints import check_file  # torch, only where files are checked

    manifest = manifest or load_manifest()
    entries = [manifest.entry(i) for i in ids] if ids else list(manifest.entries.values())
    statuses = [_status(entry, rehash=True) for entry in entries]
    for entry, status in zip(entries, statuses, strict=True):
        if status.state in ("verified", "pinned") and status.path is not None:
            try:
                check_file(entry, status.path)
            except BadCheckpoint as exc:
                status.state = "corrupt"
                status.message = f"not a {exc.arch} checkpoint ({exc.reason}); {_how_to_replace(entry)}"
    return statuses


def remove(weight_id: str, unpin: bool = False, manifest: Manifest | None = None) -> bool:
    """Delete an installed file (and any partial download); True if something was removed.

    The pin is kept unless `unpin`, so a later download must match what was first trusted. A model
    trained here goes entirely: file, pin and provenance.
    """
    entry = (manifest or load_manifest()).entry(weight_id)
    unpin = unpin or bool(entry.trained)
    if entry.package:
        raise UserError("not-removable", f"{weight_id} ships inside the {entry.package} package")
    final = weights_dir() / entry.file
    removed = False
    for file in (final, final.with_name(final.name + ".part")):
        if file.exists():
            file.unlink()
            removed = True
    stamps = _read_json(_stamps_path())
    if stamps.pop(weight_id, None) is not None:
        _write_json(_stamps_path(), stamps)
    if unpin:
        data = pins()
        if data.pop(weight_id, None) is not None:
            _write_json(_pins_path(), data)
            removed = True
    trained = _read_json(_trained_path())
    if trained.pop(weight_id, None) is not None:
        _write_json(_trained_path(), trained)
        removed = True
    return removed


def install_trained(weight_id: str, method: str, file: Path, provenance: dict, replace: bool) -> Path:
    """Move a model trained here (a state dict at `file`, on the same file system) into the weights
    folder under `weight_id`, pinned to its sha256 and listed with its provenance. A shipped
    model's id is refused; a trained one is replaced only when `replace`. The file comes last: once
    it is in place, its pin and provenance are too."""
    check_trained_id(weight_id, replace)
    dest = weights_dir() / f"{weight_id}.pth"
    _pin(weight_id, sha256_file(file), "trained")
    trained = _read_json(_trained_path())
    trained[weight_id] = {**provenance, "method": method}
    _write_json(_trained_path(), trained)
    os.replace(file, dest)
    return dest


def trained_styles(weight_id: str, manifest: Manifest | None = None) -> list[str]:
    """The paintings a model trained here on several learnt, in order (the names a mix takes);
    [] for any other model."""
    entry = (manifest or load_manifest()).entries.get(weight_id)
    styles = list(entry.trained.get("styles", [])) if entry is not None else []
    return styles if len(styles) > 1 else []


def check_trained_id(weight_id: str, replace: bool) -> None:
    """Refuse, before any training, an id that a shipped model has, or that a trained model has
    unless `replace`: nothing the user has is overwritten by surprise."""
    manifest = load_manifest()
    entry = manifest.entries.get(weight_id)
    if entry is not None and not entry.trained:
        raise UserError("bad-option", f"{weight_id} is a published model's name; choose another name")
    if entry is not None and not replace:
        raise UserError(
            "exists",
            f"a trained model called {weight_id} exists; choose another name, "
            "or replace it (--force), or remove it first: nst models remove " + weight_id,
        )
