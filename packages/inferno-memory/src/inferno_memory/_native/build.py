"""Compile ``poolcore.c`` on first use and load it as a CPython extension module.

The C source ships inside the (pure) wheel and is built on the machine that runs it, with the
system C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) against this interpreter's
headers. The extension is cached under `cache_dir`, keyed by the source, the compiler and the
interpreter, so each machine compiles it once. Nothing here raises for a missing compiler,
missing headers or a failed build: `load_native_core` returns the reason instead, and the pool
keeps its pure-Python core.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

__all__ = ["NativeCore", "cache_dir", "load_native_core"]

_log = logging.getLogger("inferno_memory.native")

_SOURCE = Path(__file__).with_name("poolcore.c")  # includes the headers beside it
_MODULE = "inferno_memory._native.poolcore"
# No -march=native: the cache may sit in a home directory shared by different machines, and
# the core is bound by pointer chasing, not arithmetic.
_FLAGS = ("-O2", "-shared", "-fPIC", "-DNDEBUG")
_TIMEOUT_S = 120


@dataclass(frozen=True, slots=True)
class NativeCore:
    """The loaded C core (``module.PoolCore``), or why there is none (``module`` is None)."""

    module: ModuleType | None
    reason: str
    path: Path | None = None


def cache_dir() -> Path:
    """Where the compiled core is kept: ``$INFERNO_CACHE_DIR/memory``, else
    ``$XDG_CACHE_HOME/inferno/memory``, else ``~/.cache/inferno/memory``."""
    root = os.environ.get("INFERNO_CACHE_DIR")
    if root:
        return Path(root) / "memory"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "inferno" / "memory"


def _compiler() -> list[str] | None:
    """The compiler command: ``$CC`` (which may carry arguments, e.g. ``ccache gcc``) or the
    first of cc, gcc, clang on PATH."""
    cc = os.environ.get("CC", "").strip()
    if cc:
        return shlex.split(cc)
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return [found]
    return None


def _compiler_identity(cc: list[str]) -> str:
    try:
        out = subprocess.run(
            [*cc, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{shlex.join(cc)}: {exc}"
    first = out.stdout.splitlines()[0] if out.stdout.strip() else ""
    return f"{shlex.join(cc)}: {first}"


def _include_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    dirs = [paths["include"]]
    if paths.get("platinclude") and paths["platinclude"] != paths["include"]:
        dirs.append(paths["platinclude"])
    return dirs


def _flags() -> list[str]:
    flags = [*_FLAGS, *(f"-I{d}" for d in _include_dirs())]
    if sys.platform == "darwin":
        # Extension modules resolve the interpreter's symbols when loaded.
        flags += ["-undefined", "dynamic_lookup"]
    return flags


def _suffix() -> str:
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def _cache_key(cc: list[str], flags: list[str]) -> str:
    sources = sorted(_SOURCE.parent.glob("*.[ch]"))
    parts = [
        *(p.name.encode() + b"\0" + p.read_bytes() for p in sources),
        _compiler_identity(cc).encode(),
        " ".join(flags).encode(),
        sys.version.encode(),
        (sysconfig.get_config_var("SOABI") or "").encode(),
        _suffix().encode(),
        platform.machine().encode(),
    ]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _compile(cc: list[str], flags: list[str], out: Path) -> str | None:
    """Build the extension into ``out`` atomically; the compiler's complaint on failure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        proc = subprocess.run(
            [*cc, *flags, str(_SOURCE), "-o", str(tmp)],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0:
            return (proc.stderr or proc.stdout).strip()[-2000:] or f"exit {proc.returncode}"
        # Another process may be building the same file: each writes its own temporary and
        # renames it into place, so a reader never sees a half-written library.
        os.replace(tmp, out)
        return None
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    finally:
        tmp.unlink(missing_ok=True)


def _import(path: Path) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader(_MODULE, str(path))
    spec = importlib.util.spec_from_file_location(_MODULE, path, loader=loader)
    if spec is None:
        raise ImportError(f"cannot make an import spec for {path}")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    if not hasattr(module, "PoolCore"):
        raise ImportError(f"{path} has no PoolCore")
    return module


def _build() -> NativeCore:
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").is_file():
        return NativeCore(
            None,
            f"no Python headers (Python.h) in {include}; install the interpreter's "
            "development package (e.g. python3-dev)",
        )
    cc = _compiler()
    if cc is None:
        return NativeCore(None, "no C compiler found (set CC, or install gcc or clang)")
    flags = _flags()
    path = cache_dir() / f"poolcore-{_cache_key(cc, flags)}{_suffix()}"
    reason = "not built"
    for attempt in range(2):
        if attempt or not path.exists():
            start = time.perf_counter()
            error = _compile(cc, flags, path)
            if error is not None:
                return NativeCore(
                    None, f"compiling {_SOURCE.name} with {shlex.join(cc)} failed: {error}"
                )
            _log.info(
                "compiled the native pool core into %s in %.1f s",
                path,
                time.perf_counter() - start,
            )
        try:
            return NativeCore(_import(path), "loaded", path)
        except (ImportError, OSError) as exc:
            # A cached file that does not load (truncated by a full disk, say) is rebuilt once.
            reason = f"loading {path} failed: {exc}"
    return NativeCore(None, reason)


_lock = threading.Lock()
_builds: dict[tuple[str, ...], NativeCore] = {}


def load_native_core() -> NativeCore:
    """Build (once per machine) and load the C pool core; thread-safe, cached per process.

    Never raises for a missing compiler or a failed build: the result says why ``module`` is
    None. A different ``$CC`` or cache directory is a different build.
    """
    try:
        where = str(cache_dir())
    except RuntimeError as exc:  # no home directory to put the cache in
        return NativeCore(None, f"no cache directory for the native pool core: {exc}")
    key = (os.environ.get("CC", ""), where)
    with _lock:
        found = _builds.get(key)
        if found is None:
            try:
                found = _build()
            except Exception as exc:  # an optional speed-up must never break the pool
                found = NativeCore(
                    None, f"cannot build the native pool core: {type(exc).__name__}: {exc}"
                )
            _builds[key] = found
        return found
