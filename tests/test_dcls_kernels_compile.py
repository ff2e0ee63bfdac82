"""The Triton kernels compile for GPUs without one (Triton's bundled ptxas): every candidate
block configuration, no register spills, tensor-core products."""

import os

import pytest

from dcls_audio.dcls import tuning


def _compile(kind: str, dtype: str, cfg: dict, arch: int, kw: int = 23):
    """Compile one kernel for a GPU architecture without a GPU (Triton's bundled ptxas)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from dcls_audio.dcls import triton_dwconv as tk

    prec = "tf32x3" if dtype == "fp32" else None
    bwi = tk.window(cfg["BW"], kw)
    if kind == "fwd":
        fn = tk._fwd_rows_kernel if cfg.get("R", 1) == 4 else tk._fwd_kernel
        runtime = tk._FWD_RUNTIME
        sig = {"x_ptr": f"*{dtype}", "t_ptr": f"*{dtype}", "b_ptr": "*fp32", "y_ptr": f"*{dtype}"}
        consts = {"BF16_BITS": False, "PREC": prec, "TOEP": bool(cfg["TOEP"]), "BM": cfg["BM"]}
    else:
        fn, runtime = tk._wgrad_kernel, tk._WGRAD_RUNTIME
        sig = {"x_ptr": f"*{dtype}", "g_ptr": f"*{dtype}", "part_ptr": "*fp32"}
        consts = {"PREC": prec, "BR": cfg["BR"]}
    consts |= {"BW": cfg["BW"], "BWI": bwi}
    pointers = len(sig)
    sig |= dict.fromkeys(runtime, "i32") | dict.fromkeys(consts, "constexpr")
    attrs = {(k,): [["tt.divisibility", 16]] for k in range(pointers)}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    options = {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


COMPILE_CASES = [
    *(("fwd", "bf16", 90, k) for k in range(len(tuning.FWD_CANDIDATES))),
    *(("wgrad", "bf16", 90, k) for k in range(len(tuning.WGRAD_CANDIDATES))),
    *((kind, dtype, arch, 0) for kind in ("fwd", "wgrad") for dtype in ("bf16", "fp32")
      for arch in (80, 90) if (dtype, arch) != ("bf16", 90)),
]  # fmt: skip


@pytest.mark.parametrize("kind,dtype,arch,index", COMPILE_CASES)
def test_triton_kernels_compile_for_gpus_without_one(
    kind, dtype, arch, index, tmp_path, monkeypatch
):
    """Every candidate configuration compiles for sm_90 (bf16), the defaults for sm_80 and fp32;
    on sm_90 the products are Hopper's wgmma, and nothing spills to local memory."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("interpreted kernels are not compiled")
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    cfg = (tuning.FWD_CANDIDATES if kind == "fwd" else tuning.WGRAD_CANDIDATES)[index]
    compiled = _compile(kind, dtype, cfg, arch)
    assert compiled.asm["cubin"]
    ptx = compiled.asm["ptx"]
    assert ("wgmma" in ptx) == (arch == 90)
    assert ".local" not in ptx


def _compile_strided(kind: str, dtype: str, cfg: dict, arch: int, kw: int = 23):
    """Compile one any-layout kernel as a channels_last launch specialises it (channel stride 1)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from dcls_audio.dcls import triton_dwconv as tk
    from dcls_audio.dcls import triton_dwconv_cl as ts

    prec = "tf32x3" if dtype == "fp32" else None
    consts = {"PREC": prec, "BC": cfg["BC"], "BW": cfg["BW"], "BWI": tk.window(cfg["BW"], kw)}
    if kind == "fwd":
        fn, sizes, strides = ts._fwd_kernel, ts._SIZES, ("SXN", "SXH", "SXW", "SYN", "SYH", "SYW")
        sig = {"x_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "b_ptr": "*fp32", "y_ptr": f"*{dtype}"}
        consts |= {"SXC": 1, "SYC": 1, "BF16_BITS": False, "BM": cfg["BM"]}
    else:
        fn, sizes = ts._wgrad_kernel, ts._WGRAD_SIZES
        strides = ("SXN", "SXH", "SXW", "SGN", "SGH", "SGW")
        sig = {"x_ptr": f"*{dtype}", "g_ptr": f"*{dtype}", "part_ptr": "*fp32"}
        consts |= {"SXC": 1, "SGC": 1, "BR": cfg["BR"]}
    pointers = len(sig)
    sig |= dict.fromkeys((*sizes, *strides), "i32") | dict.fromkeys(consts, "constexpr")
    attrs = {(k,): [["tt.divisibility", 16]] for k in range(pointers)}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    options = {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


STRIDED_COMPILE_CASES = [
    *(("fwd", "bf16", 90, k) for k in range(len(tuning.STRIDED_FWD_CANDIDATES))),
    *(("wgrad", "bf16", 90, k) for k in range(len(tuning.STRIDED_WGRAD_CANDIDATES))),
    *((kind, "fp32", 80, 0) for kind in ("fwd", "wgrad")),
]


@pytest.mark.parametrize("kind,dtype,arch,index", STRIDED_COMPILE_CASES)
def test_channels_last_kernels_compile_for_gpus_without_one(
    kind, dtype, arch, index, tmp_path, monkeypatch
):
    """Every candidate of the in-place (channels_last) kernels compiles for sm_90 in bf16, the
    defaults for sm_80 in fp32; the batched products are tensor-core mma, with no spills."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("interpreted kernels are not compiled")
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    candidates = tuning.STRIDED_FWD_CANDIDATES if kind == "fwd" else tuning.STRIDED_WGRAD_CANDIDATES
    ptx = _compile_strided(kind, dtype, candidates[index], arch).asm["ptx"]
    assert "mma.sync" in ptx and ".local" not in ptx


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("gauss", [True, False])
def test_construction_kernel_compiles(arch, gauss, backward, tmp_path, monkeypatch):
    """The construction kernels (forward, backward) compile for sm_80 and sm_90 without spills."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("interpreted kernels are not compiled")
    triton = pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from dcls_audio.dcls import triton_construct as tc

    pointers = ("w_ptr", "p_ptr", "s_ptr", "k_ptr")
    if backward:
        pointers = ("g_ptr", "w_ptr", "p_ptr", "s_ptr", "gw_ptr", "gp_ptr", "gs_ptr")
    sig = dict.fromkeys(pointers, "*fp32")
    ints = ("N", "COUNT", "SH", "SW", "LO_H", "LO_W", "OH", "OW")
    sig |= dict.fromkeys(ints, "i32") | {"EPS": "fp32", "OFFSET": "fp32"}
    consts = {"GAUSS": gauss, "BK": 32, "BS": 32}
    sig |= dict.fromkeys(consts, "constexpr")
    fn = tc._construct_backward_kernel if backward else tc._construct_kernel
    src = ASTSource(fn=fn, signature=sig, constexprs=consts)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
    assert compiled.asm["cubin"] and ".local" not in compiled.asm["ptx"]
