"""Compile the package's C kernels on first use and load them with ctypes.

The C sources ship inside the wheel. They are compiled on the machine that runs them (so
``-march=native`` picks that CPU's vector units) with the system C compiler (``$CC``, else
``cc``, ``gcc`` or ``clang``), once: the shared library is cached under
``$INFERNO_CACHE_DIR/kernels`` (default ``~/.cache/inferno/kernels``), keyed by the source, the
compiler, the flags and the CPU. ``$INFERNO_NATIVE_CFLAGS`` adds flags after the defaults
(``-mno-avx512f`` builds the AVX2 kernels on an AVX-512 machine, say, or ``-march=x86-64-v3``
targets a whole fleet from one cache). Where there is no compiler, or the build fails, the
loader returns ``None`` with the reason, and the engine keeps its PyTorch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import structlog

__all__ = ["NativeLibrary", "cache_dir", "load_native"]

log = structlog.get_logger(__name__)

_HERE = Path(__file__).parent
#: Flags every build gets. No -ffast-math: linking with it would set flush-to-zero for the
#: whole process, and the kernels are bandwidth-bound anyway. -fno-trapping-math changes no
#: result (nothing here reads the floating-point exception flags) but lets gcc turn the clamps
#: in exp and SwiGLU into vector blends without AVX-512's masks: on AVX2 those loops were
#: scalar.
_FLAGS = (
    "-O3",
    "-march=native",
    "-std=c11",
    "-shared",
    "-fPIC",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-pthread",
)
#: OpenMP for the step's threads (bound to torch's own runtime, see `_load`); without it the
#: kernels still build, single-threaded.
_OPENMP = ("-fopenmp",)
#: Extra compiler flags, appended to the defaults (and part of the cache key).
FLAGS_ENV = "INFERNO_NATIVE_CFLAGS"


@dataclass(frozen=True, slots=True)
class NativeLibrary:
    """A loaded kernel library, or why there is none (``lib`` is ``None`` then)."""

    lib: ctypes.CDLL | None
    reason: str
    path: Path | None = None
    openmp: bool = False
    #: The vector code the build selected (``avx512-bf16``, ``avx512``, ``avx2``, ``portable``),
    #: as the library reports it; empty when there is no library or it does not say.
    isa: str = ""


def cache_dir() -> Path:
    """Where compiled kernels are kept (``$INFERNO_CACHE_DIR/kernels``, or
    ``$XDG_CACHE_HOME/inferno/kernels``, or ``~/.cache/inferno/kernels``)."""
    root = os.environ.get("INFERNO_CACHE_DIR")
    if root:
        return Path(root) / "kernels"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "inferno" / "kernels"


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or cc
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _cpu_fingerprint() -> str:
    """The CPU's identity as far as -march=native cares: model and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = ("model name", "flags", "Features", "CPU part")
    lines = sorted({ln.strip() for ln in text.splitlines() if ln.startswith(wanted)})
    return "\n".join(lines) or platform.machine()


def _compiler_identity(cc: str) -> str:
    try:
        out = subprocess.run(
            [cc, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{cc}: {exc}"
    return out.stdout.splitlines()[0] if out.stdout else cc


def _extra_flags() -> tuple[str, ...]:
    return tuple(shlex.split(os.environ.get(FLAGS_ENV, "")))


def _isa(lib: ctypes.CDLL, name: str) -> str:
    """What ``inferno_<name>_isa()`` says the build's vector code is, if the library has it."""
    try:
        fn = getattr(lib, f"inferno_{name}_isa")
    except AttributeError:
        return ""
    fn.restype = ctypes.c_char_p
    fn.argtypes = []
    raw = fn()
    return raw.decode() if isinstance(raw, bytes) else ""


def _compile(cc: str, source: Path, out: Path, flags: tuple[str, ...]) -> str | None:
    """Build ``source`` into ``out`` atomically; returns the compiler's complaint on failure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=out.stem, suffix=".so.tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        proc = subprocess.run(
            [cc, *flags, str(source), "-o", str(tmp), "-lm"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            return (proc.stderr or proc.stdout).strip()[-2000:] or f"exit {proc.returncode}"
        os.replace(tmp, out)  # readers never see a half-written library
        return None
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    finally:
        tmp.unlink(missing_ok=True)


_lock = threading.Lock()
_loaded: dict[str, NativeLibrary] = {}


def load_native(name: str = "decode") -> NativeLibrary:
    """Compile (once per machine) and load ``native/<name>.c``.

    Tries with OpenMP first, then without (one thread). Thread-safe; the result is cached for
    the process. Never raises for a missing or failing compiler: the returned `NativeLibrary`
    says why ``lib`` is ``None``.
    """
    with _lock:
        if name not in _loaded:
            _loaded[name] = _load(name)
        return _loaded[name]


def _load(name: str) -> NativeLibrary:
    # torch first: its bundled libgomp is then the OpenMP runtime the kernels bind to, so a
    # step runs on torch's worker threads instead of beside them.
    import torch  # noqa: F401

    source = _HERE / f"{name}.c"
    cc = _compiler()
    if cc is None:
        return NativeLibrary(None, "no C compiler found (set CC, or install gcc or clang)")
    identity = _compiler_identity(cc)
    errors: list[str] = []
    for extra, openmp in ((_OPENMP, True), ((), False)):
        flags = _FLAGS + extra + _extra_flags()
        parts = (source.read_text(), identity, " ".join(flags), _cpu_fingerprint())
        key = hashlib.sha256(b"\0".join(p.encode() for p in parts)).hexdigest()[:16]
        path = cache_dir() / f"{name}-{key}.so"
        if not path.exists():
            log.info("compiling native kernels", source=source.name, compiler=cc, openmp=openmp)
            error = _compile(cc, source, path, flags)
            if error is not None:
                errors.append(error)
                continue
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:
            errors.append(str(exc))
            continue
        return NativeLibrary(lib, "loaded", path, openmp, _isa(lib, name))
    reason = f"could not build {source.name} with {cc}: {errors[-1] if errors else 'unknown'}"
    log.warning("native kernels unavailable", reason=reason)
    return NativeLibrary(None, reason)
