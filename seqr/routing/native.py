"""Fused CPU kernels for SEQR's hot path, built from ``kernels.c`` with the system C compiler.

SEQR's per-token work is small (z = A x, then N Gram forms of r (r + 1) / 2 terms), so on a CPU
a chain of torch operations spends most of its time writing and re-reading the (tokens, N) score
matrix, in square roots of every score and in torch's scalar arg max. The kernels here do the
projection, the scores and the arg max per block of tokens in registers, and add each token's
update Q_i (R_i z) straight into the base layer's output.

The library is compiled once per source, compiler and CPU into the kernel cache
(``$SEQR_KERNEL_DIR``, else ``$SEQR_CACHE_DIR/kernels``, else the user cache directory) and loaded
with :mod:`ctypes`, which releases the GIL during each call. ``SEQR_NATIVE=0`` turns the kernels
off. Without a C compiler, or when the build fails, routing uses torch operations, which make the
same choices up to ties, and :func:`status` gives the reason.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from seqr.errors import InvalidInputError

logger = logging.getLogger(__name__)

ENABLE_VARIABLE = "SEQR_NATIVE"
FLAGS_VARIABLE = "SEQR_KERNEL_CFLAGS"  # extra compiler flags, for example -DLANES=16 to test the AVX-512 layout
KERNEL_DIR_VARIABLE = "SEQR_KERNEL_DIR"
MARGIN = 2e-5  # kernels.c's relative margin for rounding in its test on squares
PROJECT_TILE = 512  # columns of A per tile in kernels.c's projection
TOKEN_BLOCK = 6  # tokens that kernels.c projects and scores together
WORK_PER_THREAD = 1 << 18  # multiply-adds (about 20 us on one core) that justify one more thread
MAX_RANK = 64  # kernels.c keeps at most r (r + 1) / 2 = 2080 pair products per token
_FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-fopenmp"),
    ("-O3",),
)


@dataclass(frozen=True)
class KernelStatus:
    """Whether the native kernels are in use, and the library path or the reason they are not."""

    available: bool
    detail: str

    def __str__(self) -> str:
        return f"native kernels ({self.detail})" if self.available else f"torch operations ({self.detail})"


class NativeKernels:
    """The loaded kernel library; use :func:`kernels` to get the shared instance.

    Pointers cross into C as plain integers (``data_ptr()``): converting tensors to typed ctypes
    pointers cost more than the kernels themselves for a decoding step of a few tokens.
    """

    def __init__(self, path: Path, flags: tuple[str, ...]) -> None:
        self.path = path
        self.flags = flags
        lib = ctypes.CDLL(str(path))
        pointer, i64 = ctypes.c_void_p, ctypes.c_int64
        self._select = lib.seqr_select
        self._select.restype = ctypes.c_int
        self._select.argtypes = [
            pointer, i64, i64, pointer, pointer, i64, pointer, pointer, pointer, i64, pointer, pointer, pointer,
            ctypes.c_int,
        ]  # fmt: skip
        lanes = lib.seqr_lanes
        lanes.restype, lanes.argtypes = ctypes.c_int, []
        self.lanes = int(lanes())  # adapters per vector; the tables' layout depends on it
        self._update = lib.seqr_update
        self._update.restype = ctypes.c_int
        self._update.argtypes = [
            pointer, i64, i64, pointer, i64, pointer, pointer, i64, ctypes.c_float, pointer, ctypes.c_int,
        ]  # fmt: skip

    def select(self, rows: torch.Tensor, tables: SelectTables) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return z = A x (T, r), the arg max candidate (T,) long and its score (T,) for float32 rows (T, n)."""
        _check_rows(rows, tables)
        z, index, best = self._run_select(rows, tables)
        assert z is not None and best is not None
        return z, index, best

    def add_update(
        self, out: torch.Tensor, z: torch.Tensor, index: torch.Tensor, r: torch.Tensor, q_t: torch.Tensor, scale: float
    ) -> None:
        """Add scale * Q_i (R_i z_t) to row t of ``out`` (T, m) for i = index[t], in place.

        ``r`` is (N, r, r) and ``q_t`` (N, r, m), Q transposed. All are contiguous float32 on the CPU.
        """
        for name, tensor in (("out", out), ("z", z), ("R", r), ("Q^T", q_t)):
            _check_cpu_float32(name, tensor)
        tokens, m = out.shape
        adapters, rank = int(r.shape[0]), int(r.shape[1])
        if r.shape != (adapters, rank, rank):
            raise InvalidInputError(f"R must be an (N, r, r) tensor, got shape {tuple(r.shape)}")
        if index.dtype != torch.int64 or not index.is_contiguous() or index.shape != (tokens,):
            raise InvalidInputError(f"index must be a contiguous int64 ({tokens},) tensor, got {tuple(index.shape)}")
        if z.shape != (tokens, rank) or q_t.shape != (adapters, rank, m):
            raise InvalidInputError(
                f"shapes do not match: out {tuple(out.shape)}, z {tuple(z.shape)}, R {tuple(r.shape)}, "
                f"Q^T {tuple(q_t.shape)}"
            )
        if tokens:
            low, high = int(index.min()), int(index.max())
            if low < 0 or high >= adapters:
                raise InvalidInputError(
                    f"adapter indices range from {low} to {high}, outside 0..{adapters - 1}; "
                    f"pass positions in the stack of {adapters} adapters"
                )
        self._run_update(out, z, index, r, q_t, scale)

    def select_index(self, rows: torch.Tensor, tables: SelectTables) -> torch.Tensor:
        """Return the arg max candidate (T,) long of float32 rows (T, n), as :meth:`select` does, without z or scores.

        Routers call this once per batch, so it allocates only the index tensor.
        """
        _check_rows(rows, tables)
        return self._run_select(rows, tables, outputs=False)[1]

    def route_into(self, rows: torch.Tensor, tables: SelectTables, out: torch.Tensor, scale: float) -> None:
        """Choose each row's adapter and add ``scale`` times its update to ``out`` (T, m) in place.

        ``tables`` must carry R and Q^T. The indices come from the selection kernel itself, so
        they are not checked again. Routed layers call this on every forward.
        """
        if tables.r is None or tables.q_t is None:
            raise InvalidInputError("these tables carry no R and Q^T; build them with SelectTables.build(..., r=, q=)")
        _check_cpu_float32("rows", rows)
        _check_cpu_float32("out", out)
        if rows.ndim != 2 or rows.shape[1] != tables.a.shape[1] or out.shape != (rows.shape[0], tables.q_t.shape[2]):
            raise InvalidInputError(
                f"rows {tuple(rows.shape)} and out {tuple(out.shape)} do not fit the tables "
                f"(n={tables.a.shape[1]}, m={tables.q_t.shape[2]})"
            )
        z, index, _ = self._run_select(rows, tables)
        assert z is not None
        self._run_update(out, z, index, tables.r, tables.q_t, scale)

    def _run_select(
        self, rows: torch.Tensor, tables: SelectTables, outputs: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """Run seqr_select. Without ``outputs`` the kernel keeps z and the best scores to itself."""
        if tables.lanes != self.lanes:
            raise InvalidInputError(
                f"the tables were laid out for {tables.lanes} lanes but the kernels use {self.lanes}; "
                "build them with SelectTables.build(..., lanes=kernels.lanes)"
            )
        tokens = rows.shape[0]
        rank = tables.rank
        index = torch.empty(tokens, dtype=torch.int64)
        z = torch.empty(tokens, rank, dtype=torch.float32) if outputs else None
        best = torch.empty(tokens, dtype=torch.float32) if outputs else None
        if tokens:
            code = self._select(
                rows.data_ptr(), tokens, *tables.arguments(),
                None if z is None else z.data_ptr(), index.data_ptr(), None if best is None else best.data_ptr(),
                _threads(tokens, tables.work_per_token),
            )  # fmt: skip
            if code == 2:
                raise MemoryError(
                    f"the native SEQR kernel failed to allocate scratch space for {tokens} tokens; "
                    "free memory or route fewer tokens per call"
                )
            if code:
                raise InvalidInputError(
                    f"rank r={rank} exceeds the native kernels' limit of {MAX_RANK}; SEQR routers use "
                    "torch operations for larger ranks on their own"
                )
        return z, index, best

    def _run_update(
        self, out: torch.Tensor, z: torch.Tensor, index: torch.Tensor, r: torch.Tensor, q_t: torch.Tensor, scale: float
    ) -> None:
        tokens, m = out.shape
        if not tokens:
            return
        code = self._update(
            z.data_ptr(), tokens, int(r.shape[1]), index.data_ptr(), int(r.shape[0]), r.data_ptr(), q_t.data_ptr(),
            m, float(scale), out.data_ptr(), _threads(tokens, int(r.shape[1]) * (m + int(r.shape[1]))),
        )  # fmt: skip
        if code:
            raise InvalidInputError(
                f"rank r={int(r.shape[1])} exceeds the native kernels' limit of {MAX_RANK}; SEQR routers use "
                "torch operations for larger ranks on their own"
            )


@dataclass(frozen=True)
class SelectTables:
    """SEQR's scoring tables in the layout ``seqr_select`` reads.

    ``lanes`` (L) is the kernels' vector width in floats, 8 or 16 (:attr:`NativeKernels.lanes`).
    ``a_packed`` stores A's columns up to the last multiple of L, tile by tile of
    ``PROJECT_TILE`` columns, each tile's r rows one after another.
    ``blocks`` is (2 ceil(N / 2L), P, L): the doubled upper-triangle Gram entries of L adapters
    per block, divided by sigma^2 when calibrated, with an even number of blocks. ``offset`` is
    mu / sigma (zero uncalibrated). ``offset_low`` is the same less a relative margin of
    ``MARGIN``, which the kernel's test on squares needs. Both are padded like the blocks.
    """

    a: torch.Tensor
    a_packed: torch.Tensor
    blocks: torch.Tensor
    offset: torch.Tensor
    offset_low: torch.Tensor
    num_adapters: int
    lanes: int
    r: torch.Tensor | None = None
    q_t: torch.Tensor | None = None
    # Set by __post_init__: r, n and the multiply-adds per token.
    rank: int = field(init=False, repr=False, compare=False)
    n: int = field(init=False, repr=False, compare=False)
    work_per_token: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The kernels trust these shapes, so tables that break them would make C read out of bounds.
        for name in ("a", "a_packed", "blocks", "offset", "offset_low", "r", "q_t"):
            if getattr(self, name) is not None:
                _check_cpu_float32(name, getattr(self, name))
        if self.a.ndim != 2 or self.a.shape[0] < 1 or self.lanes < 1 or self.num_adapters < 1:
            raise InvalidInputError(
                f"invalid tables: A has shape {tuple(self.a.shape)}, lanes={self.lanes}, "
                f"num_adapters={self.num_adapters}; build them with SelectTables.build"
            )
        rank, n = int(self.a.shape[0]), int(self.a.shape[1])
        pairs = rank * (rank + 1) // 2
        padded = -(-self.num_adapters // (2 * self.lanes)) * 2 * self.lanes
        problems = []
        if self.blocks.shape != (padded // self.lanes, pairs, self.lanes):
            problems.append(f"blocks {tuple(self.blocks.shape)} != {(padded // self.lanes, pairs, self.lanes)}")
        if self.offset.shape != (padded,) or self.offset_low.shape != (padded,):
            problems.append(f"offsets {tuple(self.offset.shape)}, {tuple(self.offset_low.shape)} != ({padded},)")
        if self.a_packed.numel() < rank * (n - n % self.lanes):
            problems.append(f"a_packed has {self.a_packed.numel()} floats, fewer than {rank * (n - n % self.lanes)}")
        if self.r is not None and self.r.shape != (self.num_adapters, rank, rank):
            problems.append(f"R {tuple(self.r.shape)} != {(self.num_adapters, rank, rank)}")
        if self.q_t is not None and (self.q_t.ndim != 3 or self.q_t.shape[:2] != (self.num_adapters, rank)):
            problems.append(f"Q^T {tuple(self.q_t.shape)} != ({self.num_adapters}, {rank}, m)")
        if problems:
            raise InvalidInputError(
                f"the tables do not fit A (r={rank}, n={n}) and N={self.num_adapters}: {'; '.join(problems)}; "
                "build them with SelectTables.build from matching A, Gram table, R and Q"
            )
        # Fixed per table and read on every call, where each tensor attribute costs a microsecond.
        object.__setattr__(self, "rank", rank)
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "work_per_token", rank * n + self.num_adapters * pairs)

    def arguments(self) -> tuple[int, ...]:
        """Return seqr_select's arguments from n to N, with the tensors' current addresses.

        The addresses are read on every call and never stored, because a copied, unpickled or
        moved table has new storage.
        """
        return (
            self.n, self.a.data_ptr(), self.a_packed.data_ptr(), self.rank, self.blocks.data_ptr(),
            self.offset.data_ptr(), self.offset_low.data_ptr(), self.num_adapters,
        )  # fmt: skip

    @classmethod
    def build(
        cls,
        a: torch.Tensor,
        gram_t: torch.Tensor,
        offset: torch.Tensor | None,
        *,
        lanes: int,
        r: torch.Tensor | None = None,
        q: torch.Tensor | None = None,
    ) -> SelectTables:
        """From A (r, n), the (P, N) Gram table (already scaled) and the (N,) offsets or None.

        With the stacked ``r`` (N, r, r) and ``q`` (N, m, r) the tables also serve
        :meth:`NativeKernels.route_into`; Q is stored transposed, without a copy when ``q`` is
        the view that :func:`seqr.routing.library.stack_q` returns.
        """
        pairs, adapters = gram_t.shape
        padded = -(-adapters // (2 * lanes)) * 2 * lanes  # the kernel reads blocks in pairs
        table = torch.zeros(pairs, padded, dtype=torch.float32)
        table[:, :adapters] = gram_t.detach().to("cpu", torch.float32)
        blocks = table.view(pairs, padded // lanes, lanes).permute(1, 0, 2).contiguous()
        shift = torch.zeros(padded, dtype=torch.float32)
        if offset is not None:
            shift[:adapters] = offset.detach().to("cpu", torch.float32)
        a = a.detach().to("cpu", torch.float32).contiguous()
        full = a.shape[1] - a.shape[1] % lanes
        tiles = [a[:, k0 : min(k0 + PROJECT_TILE, full)].reshape(-1) for k0 in range(0, full, PROJECT_TILE)]
        return cls(
            a=a,
            a_packed=torch.cat(tiles) if tiles else torch.zeros(1),
            blocks=blocks,
            offset=shift,
            offset_low=shift - MARGIN * shift.abs(),
            num_adapters=adapters,
            lanes=lanes,
            r=None if r is None else r.detach().to("cpu", torch.float32).contiguous(),
            q_t=None if q is None else q.detach().to("cpu", torch.float32).transpose(1, 2).contiguous(),
        )


def _threads(tokens: int, work_per_token: int) -> int:
    """Return the OpenMP threads for a call: one per TOKEN_BLOCK tokens and per WORK_PER_THREAD multiply-adds at most.

    Waking a second thread costs tens of microseconds, more than a decoding step's few tokens
    take on one.
    """
    by_work = max(1, tokens * work_per_token // WORK_PER_THREAD)
    return max(1, min(torch.get_num_threads(), -(-tokens // TOKEN_BLOCK), by_work))


def _check_rows(rows: torch.Tensor, tables: SelectTables) -> None:
    _check_cpu_float32("rows", rows)
    if rows.ndim != 2 or rows.shape[1] != tables.n:
        raise InvalidInputError(
            f"rows have shape {tuple(rows.shape)} but the shared A expects (tokens, n={tables.n}); "
            "reshape them to two dimensions with n features"
        )


def _check_cpu_float32(name: str, tensor: torch.Tensor) -> None:
    if tensor.device.type != "cpu" or tensor.dtype != torch.float32 or not tensor.is_contiguous():
        raise InvalidInputError(
            f"{name} must be a contiguous float32 CPU tensor for the native kernels, got {tensor.dtype} on "
            f"{tensor.device} (contiguous: {tensor.is_contiguous()}); pass tensor.float().contiguous().cpu()"
        )


def kernel_dir() -> Path:
    """Return the directory of compiled kernel libraries."""
    explicit = os.environ.get(KERNEL_DIR_VARIABLE)
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("SEQR_CACHE_DIR")
    if cache:
        return Path(cache).expanduser() / "kernels"
    import platformdirs

    return Path(platformdirs.user_cache_dir("seqr")) / "kernels"


def _compiler() -> str | None:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _cpu_identity() -> str:
    """Return text that changes when the CPU (and so -march=native code) changes."""
    parts = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    parts.append(line.strip())
                if line.strip() == "":
                    break
    except OSError:
        parts.append(platform.processor())
    return "\n".join(parts)


class UnsafeKernelCacheError(OSError):
    """The kernel cache belongs to another user or others may write to it."""


def _builds(compiler: str, source: str, errors: list[str]) -> Iterator[tuple[Path, tuple[str, ...]]]:
    """Yield compiled libraries in the kernel cache, from the most to the least specific flags.

    A cached library is yielded without compiling. The caller stops at the first library that
    loads; each flag set that fails to compile adds its reason to ``errors``.
    """
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    directory = kernel_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _is_private(directory):
        raise UnsafeKernelCacheError(
            f"the kernel cache {directory} belongs to another user or is writable by group or others, so "
            f"another user could plant a library there; run chmod go-w on it or set {KERNEL_DIR_VARIABLE} "
            "to a directory of your own"
        )
    exposed = _unsafe_parent(directory)
    if exposed is not None:
        raise UnsafeKernelCacheError(
            f"{exposed}, a parent of the kernel cache {directory}, belongs to another user or lets group or "
            f"others replace its entries, so another user could swap the cache; set {KERNEL_DIR_VARIABLE} "
            "to a directory under your home"
        )
    extra = tuple(os.environ.get(FLAGS_VARIABLE, "").split())
    for base_flags in _FLAG_SETS:
        flags = (*base_flags, *extra)
        key = hashlib.sha256("\0".join([source, compiler, version, *flags, _cpu_identity()]).encode()).hexdigest()[:16]
        target = directory / f"seqr_kernels_{key}.so"
        if target.exists() and _is_private(target):  # any other file there is rebuilt and replaced
            yield target, flags
            continue
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            source_path = Path(scratch) / "kernels.c"
            source_path.write_text(source, encoding="utf-8")
            built = Path(scratch) / "kernels.so"
            command = [compiler, *flags, "-std=gnu11", "-fPIC", "-shared", str(source_path), "-o", str(built), "-lm"]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode == 0:
                built.chmod(0o755)  # the compiler's mode follows the umask, which may let the group write
                os.replace(built, target)  # atomic: a concurrent build leaves one complete file
                logger.info("built SEQR's native kernels with %s %s into %s", compiler, " ".join(flags), target)
            else:
                reason = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
                errors.append(f"{' '.join(flags)}: {reason}")
                continue
        yield target, flags


def _is_private(path: Path) -> bool:
    """Return whether ``path`` belongs to this user and no other user may write to it (always True off POSIX).

    The kernels run whatever library the cache has under the expected name, so a file or
    directory that another local user can write would let that user run code in this process.
    """
    if os.name != "posix":
        return True
    info = path.stat()
    return info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _unsafe_parent(directory: Path) -> Path | None:
    """Return the first parent of ``directory`` through which another user could swap it, or None.

    A parent is safe when root or this user owns it and the group and others either cannot write
    to it or, as in /tmp, the sticky bit stops them from renaming entries they do not own.
    """
    if os.name != "posix":
        return None
    for parent in directory.resolve().parents:
        info = parent.stat()
        shared = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX
        if info.st_uid not in (0, os.geteuid()) or shared:
            return parent
    return None


_lock = threading.Lock()
_loaded: NativeKernels | None = None
_status: KernelStatus | None = None


def kernels() -> NativeKernels | None:
    """Return the native kernels, building them on first use, or None when they are off or unavailable."""
    global _loaded, _status
    if _status is not None:
        return _loaded
    with _lock:
        if _status is not None:
            return _loaded
        if os.environ.get(ENABLE_VARIABLE, "1").strip().lower() in ("0", "false", "no", "off"):
            _status = KernelStatus(False, f"{ENABLE_VARIABLE}=0")
            return None
        compiler = _compiler()
        if compiler is None:
            _status = KernelStatus(False, "no C compiler found; install gcc or set CC")
            logger.warning("SEQR's native kernels are off: %s", _status.detail)
            return None
        errors: list[str] = []
        try:
            source = resources.files("seqr.routing").joinpath("kernels.c").read_text(encoding="utf-8")
            for path, flags in _builds(compiler, source, errors):
                try:
                    _loaded = NativeKernels(path, flags)
                except (OSError, AttributeError) as error:  # a library that does not load or lacks a kernel
                    errors.append(f"{' '.join(flags)}: {path.name} did not load: {error}")
                    continue
                _status = KernelStatus(True, f"{path.name}, {Path(compiler).name} {' '.join(flags)}")
                break
            else:
                _status = KernelStatus(False, f"build failed: {'; '.join(errors)}")
        except UnsafeKernelCacheError as error:
            _status = KernelStatus(False, f"unsafe kernel cache: {error}")
        except OSError as error:
            _status = KernelStatus(False, f"build failed: {error}")
        if _loaded is None:
            logger.warning("SEQR's native kernels are off, routing uses torch operations: %s", _status.detail)
        return _loaded


def status() -> KernelStatus:
    """Return whether the native kernels are in use, building them first if needed."""
    kernels()
    assert _status is not None
    return _status


def reset_for_tests() -> None:
    """Forget the loaded kernels so the next call reads ``SEQR_NATIVE`` again."""
    global _loaded, _status
    with _lock:
        _loaded, _status = None, None
