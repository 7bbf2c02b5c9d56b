"""The fused CPU kernels choose what the torch path and NAIVE choose, and apply the same update.

``SEQR_REQUIRE_NATIVE=1`` (set by scripts/test.sh) turns a missing compiler into a failure
instead of a skip, so CI cannot pass without testing the kernels.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import math
import os
from pathlib import Path

import pytest
import torch

from seqr.routing import Granularity, RoutingMethod, StackedFactors, attach_routing, make_router, native
from seqr.routing.routers import SeqrRouter
from tests.routing.conftest import make_library


@pytest.fixture
def kernels() -> native.NativeKernels:
    loaded = native.kernels()
    if loaded is None:
        reason = str(native.status())
        if os.environ.get("SEQR_REQUIRE_NATIVE") == "1":
            pytest.fail(f"SEQR_REQUIRE_NATIVE=1 but the native kernels are unavailable: {reason}")
        pytest.skip(reason)
    return loaded


@pytest.fixture
def fresh_kernel_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Point the kernel cache at an empty directory and forget the loaded library, before and after."""
    monkeypatch.setenv(native.KERNEL_DIR_VARIABLE, str(tmp_path / "kernels"))
    native.reset_for_tests()
    yield tmp_path / "kernels"
    native.reset_for_tests()


def _library(n_adapters: int, rank: int, n: int, m: int, tokens: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(rank, n, generator=generator) / math.sqrt(n)
    b = torch.randn(n_adapters, m, rank, generator=generator) * (torch.rand(n_adapters, 1, 1, generator=generator) + 0.5)
    x = torch.randn(tokens, n, generator=generator)
    mu = torch.rand(n_adapters, generator=generator) * 2
    sigma = torch.rand(n_adapters, generator=generator) + 0.2
    return a, b, x, mu, sigma


# (N, r, n, m, tokens): N not a multiple of 16, r not a multiple of 4, n not a multiple of 8,
# odd token counts, one token, a rank at the kernels' limit.
SHAPES = [
    pytest.param(1000, 8, 576, 64, 257, id="N1000-r8-odd-tokens"),
    pytest.param(37, 6, 100, 24, 33, id="N37-r6-n100"),
    pytest.param(1, 1, 9, 5, 1, id="N1-r1-one-token"),
    pytest.param(17, 3, 1030, 12, 70, id="N17-r3-n1030-two-tiles"),
    pytest.param(20, 64, 128, 96, 9, id="N20-r64"),
]


@pytest.mark.parametrize("calibrated", [False, True], ids=["raw", "calibrated"])
@pytest.mark.parametrize(("n_adapters", "rank", "n", "m", "tokens"), SHAPES)
def test_native_select_matches_naive(kernels, n_adapters, rank, n, m, tokens, calibrated) -> None:
    a, b, x, mu, sigma = _library(n_adapters, rank, n, m, tokens)
    stats = {"mu": mu, "sigma": sigma} if calibrated else {}
    router = make_router("seqr", a, b, **stats)
    reference = make_router("naive", a, b, **stats).scores(x)  # (T, N)
    z, chosen, best = kernels.select(x, router._tables())

    torch.testing.assert_close(z, x @ a.T, rtol=1e-4, atol=1e-5)
    picked = reference.gather(1, chosen.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(picked, reference.max(dim=1).values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(best, picked, rtol=1e-4, atol=1e-4)
    assert torch.equal(router.select(x), chosen)


def test_native_select_reshapes_and_converts_x(kernels) -> None:
    """select() on the kernels keeps x's leading shape, converts bfloat16 and names a wrong n."""
    a, b, x, mu, sigma = _library(50, 8, 64, 16, 24)
    router = make_router("seqr", a, b, mu=mu, sigma=sigma)
    expected = kernels.select(x, router._tables())[1]
    assert torch.equal(kernels.select_index(x, router._tables()), expected)
    assert torch.equal(router.select(x.view(4, 6, 64)), expected.view(4, 6))
    single = router.select(x[3])
    assert single.shape == ()
    assert int(single) == int(expected[3])
    low = x.to(torch.bfloat16)
    assert torch.equal(router.select(low), kernels.select(low.float(), router._tables())[1])
    with pytest.raises(ValueError, match="x has 63 features"):
        router.select(x[:, :63])


def test_native_select_after_deepcopy(kernels) -> None:
    """A copied router's tables have their own storage, and the kernel must read that storage."""
    a, b, x, mu, sigma = _library(300, 8, 64, 16, 13)
    router = make_router("seqr", a, b, mu=mu, sigma=sigma)
    expected = router.select(x)
    copied = copy.deepcopy(router)
    del router
    gc.collect()
    assert torch.equal(copied.select(x), expected)
    copied._tables().blocks.zero_()  # every Gram form of the copy is now 0
    assert not torch.equal(copied.select(x), expected)


@pytest.mark.parametrize("calibrated", [False, True], ids=["raw", "calibrated"])
def test_native_select_nan_rows_like_torch(kernels, calibrated) -> None:
    """A NaN or infinite x makes every score NaN, and the first adapter wins, as torch.argmax picks it."""
    a, b, x, mu, sigma = _library(40, 4, 32, 8, 7)
    stats = {"mu": mu, "sigma": sigma} if calibrated else {}
    x[2, 5] = float("nan")
    x[4, 0] = float("inf")
    router = make_router("seqr", a, b, **stats)
    reference = make_router("naive", a, b, **stats).scores(x).argmax(dim=1)
    chosen = router.select(x)
    assert chosen[2] == 0
    assert chosen[4] == 0
    assert torch.equal(chosen, reference)


def test_native_select_breaks_ties_towards_the_first_adapter(kernels) -> None:
    a, b, x, _, _ = _library(40, 4, 64, 16, 31)
    b[7] *= 3.0  # a clear winner for every token, then two exact copies of it after it
    b[25] = b[7]
    b[33] = b[7]
    router = make_router("seqr", a, b)
    assert kernels.select(x, router._tables())[1].eq(7).all()


def test_native_select_of_no_tokens(kernels) -> None:
    a, b, _, _, _ = _library(5, 4, 32, 8, 1)
    z, index, best = kernels.select(torch.empty(0, 32), make_router("seqr", a, b)._tables())
    assert (z.shape, index.shape, best.shape) == ((0, 4), (0,), (0,))


def test_native_update_matches_the_torch_update(kernels) -> None:
    a, b, x, mu, sigma = _library(300, 8, 96, 72, 65)
    router = make_router("seqr", a, b, mu=mu, sigma=sigma)
    out = torch.randn(65, 72)
    expected = out + 0.75 * router.update(x, router.route(x))
    assert router.add_routed_update(x, out, 0.75)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_native_update_rejects_indices_outside_the_library(kernels) -> None:
    a, b, x, _, _ = _library(4, 2, 16, 8, 3)
    router = make_router("seqr", a, b)
    z = x @ a.T
    index = torch.tensor([0, 4, 1])
    with pytest.raises(ValueError, match=r"outside 0\.\.3"):
        kernels.add_update(torch.zeros(3, 8), z, index, router.factors.r, router.factors.q.transpose(1, 2).contiguous(), 1.0)


def test_native_kernels_check_their_inputs(kernels) -> None:
    a, b, x, _, _ = _library(4, 2, 16, 8, 3)
    tables = make_router("seqr", a, b)._tables()
    with pytest.raises(ValueError, match="contiguous float32 CPU tensor"):
        kernels.select(x.double(), tables)
    with pytest.raises(ValueError, match="contiguous float32 CPU tensor"):
        kernels.select(torch.randn(16, 3).T, tables)
    with pytest.raises(ValueError, match="n=16"):
        kernels.select(torch.randn(3, 15), tables)


def test_routers_outside_the_kernels_reach_use_torch_operations(kernels) -> None:
    a, b, x, _, _ = _library(10, 4, 32, 8, 5)
    top2 = make_router("seqr", a, b, k=2)
    assert top2._kernels() is None  # top-k mixing needs every score
    assert not top2.add_routed_update(x, torch.zeros(5, 8), 1.0)
    wide_a, wide_b, wide_x, _, _ = _library(3, native.MAX_RANK + 1, 80, 70, 4)
    wide = make_router("seqr", wide_a, wide_b)
    assert wide._kernels() is None
    reference = make_router("naive", wide_a, wide_b).scores(wide_x)
    assert torch.equal(wide.select(wide_x), reference.argmax(dim=1))


def test_routed_model_same_logits_without_kernels(kernels, tiny_llama, monkeypatch) -> None:
    library = make_library(tiny_llama, n_adapters=6, calibrated=True)
    routed = attach_routing(
        tiny_llama, library.shared_a, library.adapters, scaling=library.scaling, granularity=Granularity.TOKEN
    )
    ids = torch.randint(0, 256, (3, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fused = routed.model(ids).logits
        monkeypatch.setattr(SeqrRouter, "_kernels", lambda self: None)
        plain = routed.model(ids).logits
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)
    assert routed.layers and all(layer.router.method is RoutingMethod.SEQR for layer in routed.layers.values())


def test_kernels_build_once_into_the_cache(fresh_kernel_state) -> None:
    if native._compiler() is None:
        pytest.skip("no C compiler")
    first = native.kernels()
    assert first is not None, native.status()
    built = sorted(fresh_kernel_state.glob("seqr_kernels_*.so"))
    assert built == [first.path]
    stamp = first.path.stat().st_mtime_ns
    native.reset_for_tests()
    second = native.kernels()
    assert second is not None
    assert second.path == first.path
    assert first.path.stat().st_mtime_ns == stamp
    assert "native kernels" in str(native.status())


def test_kernels_can_be_turned_off(fresh_kernel_state, monkeypatch) -> None:
    monkeypatch.setenv(native.ENABLE_VARIABLE, "0")
    assert native.kernels() is None
    assert str(native.status()) == "torch operations (SEQR_NATIVE=0)"
    a, b, x, _, _ = _library(30, 4, 40, 8, 12)
    reference = make_router("naive", a, b).scores(x)
    assert torch.equal(make_router("seqr", a, b).select(x), reference.argmax(dim=1))


def test_kernels_fall_back_when_the_build_fails(fresh_kernel_state, monkeypatch, caplog) -> None:
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails every build
    with caplog.at_level("WARNING", logger="seqr.routing.native"):
        assert native.kernels() is None
    assert "build failed" in str(native.status())
    assert "routing uses torch operations" in caplog.text
    assert not list(fresh_kernel_state.glob("*.so"))


def test_kernels_fall_back_without_a_compiler(fresh_kernel_state, monkeypatch) -> None:
    monkeypatch.setattr(native, "_compiler", lambda: None)
    assert native.kernels() is None
    assert "no C compiler" in str(native.status())


@pytest.mark.parametrize("lanes", [8, 16])
def test_kernels_with_either_vector_width_choose_like_naive(fresh_kernel_state, monkeypatch, lanes) -> None:
    """16 lanes is the layout of AVX-512 machines; other compilers emulate it, so any CPU can check it."""
    if native._compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv(native.FLAGS_VARIABLE, f"-DLANES={lanes}")
    loaded = native.kernels()
    assert loaded is not None, native.status()
    assert loaded.lanes == lanes
    a, b, x, mu, sigma = _library(45, 5, 70, 40, 23)
    router = make_router("seqr", a, b, mu=mu, sigma=sigma)
    reference = make_router("naive", a, b, mu=mu, sigma=sigma).scores(x)
    chosen = router.select(x)
    picked = reference.gather(1, chosen.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(picked, reference.max(dim=1).values, rtol=1e-5, atol=1e-5)
    out = torch.zeros(23, 40)
    assert router.add_routed_update(x, out, 2.0)
    torch.testing.assert_close(out, 2.0 * router.update(x, router.route(x)), rtol=1e-5, atol=1e-5)


def test_native_update_rejects_r_of_wrong_shape(kernels) -> None:
    a, b, x, _, _ = _library(4, 3, 16, 8, 5)
    router = make_router("seqr", a, b)
    z, index = x @ a.T, torch.full((5,), 3)
    q_t = router.factors.q.transpose(1, 2).contiguous()
    for r in (router.factors.r[:, :, :1].contiguous(), router.factors.r[:, 0, :].contiguous()):
        with pytest.raises(ValueError, match=r"R must be an \(N, r, r\) tensor"):
            kernels.add_update(torch.zeros(5, 8), z, index, r, q_t, 1.0)


def test_select_tables_reject_a_short_gram_table(kernels) -> None:
    a, b, _, _, _ = _library(6, 4, 32, 16, 1)
    gram_t = make_router("seqr", a, b)._gram_t  # (10, 6) for r = 4
    with pytest.raises(ValueError, match="tables do not fit A"):
        native.SelectTables.build(a, gram_t[:3], None, lanes=kernels.lanes)


def test_select_tables_reject_more_adapters_than_stored(kernels) -> None:
    a, b, _, _, _ = _library(6, 4, 32, 16, 1)
    tables = make_router("seqr", a, b)._tables()
    with pytest.raises(ValueError, match="tables do not fit A"):
        dataclasses.replace(tables, num_adapters=1000)


def test_stacked_factors_reject_mismatched_shapes() -> None:
    """A hand-made stack whose R lists more adapters than its Q must not reach any router."""
    a, b, _, _, _ = _library(6, 4, 32, 16, 5)
    factors = make_router("seqr", a, b).factors
    with pytest.raises(ValueError, match=r"and R \(1, 4, 4\)"):
        StackedFactors(a=factors.a, q=factors.q[:1], r=torch.cat([factors.r, factors.r]))
    with pytest.raises(ValueError, match=r"Q must be \(N, m, 4\)"):
        StackedFactors(a=factors.a, q=factors.q[:, :, :3], r=factors.r)
    with pytest.raises(ValueError, match=r"sigma has shape \(5,\)"):
        StackedFactors(a=factors.a, q=factors.q, r=factors.r, mu=torch.ones(6), sigma=torch.ones(5))


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_kernels_reject_a_shared_parent(fresh_kernel_state, monkeypatch) -> None:
    """A parent that others may write without the sticky bit lets them swap the cache directory."""
    if native._compiler() is None:
        pytest.skip("no C compiler")
    parent = fresh_kernel_state.parent / "shared-parent"
    parent.mkdir(mode=0o777)
    parent.chmod(0o777)
    cache = parent / "kernels"
    monkeypatch.setenv(native.KERNEL_DIR_VARIABLE, str(cache))
    assert native.kernels() is None
    assert f"{parent}, a parent of the kernel cache" in str(native.status())
    parent.chmod(0o1777)  # with the sticky bit, as /tmp has it
    native.reset_for_tests()
    assert native.kernels() is not None, native.status()


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_kernels_reject_a_shared_cache(fresh_kernel_state) -> None:
    """Another user could plant a library in a cache directory that group or others can write."""
    fresh_kernel_state.mkdir()
    fresh_kernel_state.chmod(0o777)
    assert native.kernels() is None
    assert str(native.status()).startswith("torch operations (unsafe kernel cache:")
    assert "writable by group or others" in str(native.status())
    assert not list(fresh_kernel_state.glob("*.so"))


def test_kernels_skip_unloadable_library(fresh_kernel_state, monkeypatch) -> None:
    if native._compiler() is None:
        pytest.skip("no C compiler")
    real = native.NativeKernels

    def fail_first(path, flags):
        if "-march=native" in flags:
            raise OSError("cannot open shared object file")
        return real(path, flags)

    monkeypatch.setattr(native, "NativeKernels", fail_first)
    loaded = native.kernels()
    assert loaded is not None, native.status()
    assert "-march=native" not in loaded.flags


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_kernels_rebuild_a_shared_library(fresh_kernel_state) -> None:
    """A cached library that group or others could have rewritten is built again, not loaded."""
    if native._compiler() is None:
        pytest.skip("no C compiler")
    first = native.kernels()
    assert first is not None, native.status()
    # Replace the file instead of rewriting it: this process still maps the loaded library.
    planted = fresh_kernel_state / "planted"
    planted.write_bytes(b"not a shared library")
    planted.chmod(0o666)
    os.replace(planted, first.path)
    native.reset_for_tests()

    second = native.kernels()
    assert second is not None, native.status()
    assert second.path == first.path
    assert second.path.stat().st_mode & 0o777 == 0o755
    assert second.path.read_bytes()[:4] == b"\x7fELF"
