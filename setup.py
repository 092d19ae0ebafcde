"""Build the compiled kernels of fastnet.

Every Cython module in ``fastnet/_kernels`` becomes one extension.  The C GEMM in ``csrc/`` is
linked into ``fastnet._kernels.gemm`` only; the other kernels reach it through Cython's
cross-module ``cimport``, so there is one dispatch table per process.

The per-ISA microkernels (``csrc/avx2``, ``csrc/avx512``) are compiled as separate objects with
their own ``-m`` flags and chosen at run time; the default build never tunes for the build
machine's CPU, so it runs on any x86-64 CPU.  Without OpenMP the build falls back to serial kernels.

Environment knobs (for development):
  FASTNET_BUILD_ONLY=gemm,conv   build only these kernel modules (helps parallel work)
  FASTNET_NO_OPENMP=1            force the serial build
  FASTNET_CFLAGS="-g ..."        extra compiler flags
  FASTNET_SANITIZE=address,undefined   instrumented build (see .ci/sanitize)
"""
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from glob import glob

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
IS_MSVC = sys.platform == "win32" and "GCC" not in sys.version

# Per-ISA object groups: (name, flags, sources, macro that enables it in dispatch).
ISA_GROUPS = [
    ("avx2", ["-mavx2", "-mfma"], sorted(glob("csrc/avx2/*.c")), "FN_HAVE_AVX2"),
    ("avx512", ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mavx2", "-mfma"],
     sorted(glob("csrc/avx512/*.c")), "FN_HAVE_AVX512"),
]

# The int8 GEMM (csrc/int8) is linked into fastnet._kernels.int8 with its own ISA groups; its
# macros go to its sources directly.  -ffp-contract=off: the requantization epilogue must round
# identically on every path (no fused multiply-add where another path multiplies then adds).
INT8_EXT = "fastnet._kernels.int8"
INT8_FLAGS = ["-ffp-contract=off"]
INT8_ISA_GROUPS = [
    ("avx2", ["-mavx2", "-mfma"], sorted(glob("csrc/int8/avx2/*.c")), "FN_HAVE_INT8_AVX2"),
    ("avx512vnni", ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mavx512vnni",
                    "-mavx2", "-mfma"],
     sorted(glob("csrc/int8/avx512vnni/*.c")), "FN_HAVE_INT8_AVX512VNNI"),
]


def _compiler_accepts(flags, code="int main(void){return 0;}\n"):
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as f:
            f.write(code)
        res = subprocess.run(cc + flags + [src, "-o", os.path.join(tmp, "t.out")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return res.returncode == 0
    except OSError:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


OMP_TEST = "#include <omp.h>\nint main(void){\n#pragma omp parallel\n{}\nreturn omp_get_max_threads()<0;}\n"
if IS_MSVC:
    BASE_FLAGS, OMP_FLAGS, OMP_LINK = ["/O2"], ["/openmp"], []
else:
    BASE_FLAGS = ["-O3", "-fno-math-errno", "-Wno-unused-function", "-Wno-unreachable-code"]
    OMP_FLAGS, OMP_LINK = ["-fopenmp"], ["-fopenmp"]
    if os.environ.get("FASTNET_NO_OPENMP") or not _compiler_accepts(["-fopenmp"], OMP_TEST):
        print("fastnet: the C compiler has no OpenMP; building serial kernels", file=sys.stderr)
        # keep `#pragma omp simd` hints without the OpenMP runtime where the compiler can
        OMP_FLAGS = ["-fopenmp-simd"] if _compiler_accepts(["-fopenmp-simd"]) else []
        OMP_LINK = []
EXTRA = os.environ.get("FASTNET_CFLAGS", "").split()
# FASTNET_SANITIZE=address,undefined: an instrumented build for .ci/sanitize.  -O1 keeps the
# reports' stacks readable; target_clones is off because its ifunc resolvers run before ASan starts.
SANITIZE = os.environ.get("FASTNET_SANITIZE", "").strip()
SANITIZE_LINK = []
if SANITIZE and not IS_MSVC:
    SANITIZE_LINK = [f"-fsanitize={SANITIZE}"]
    EXTRA = ["-O1", "-g", "-fno-omit-frame-pointer", "-DFN_NO_TARGET_CLONES"] + SANITIZE_LINK + EXTRA


class BuildExt(build_ext):
    """build_ext that first compiles each ISA group of ``csrc`` with its own flags."""

    def _int8_objects(self):
        common = dict(output_dir=self.build_temp, include_dirs=["csrc/int8"], debug=self.debug)
        flags = BASE_FLAGS + OMP_FLAGS + EXTRA + (INT8_FLAGS if not IS_MSVC else [])
        objects, macros = [], []
        if IS_X86 and not IS_MSVC:
            for name, isa_flags, sources, macro in INT8_ISA_GROUPS:
                if sources and _compiler_accepts(isa_flags):
                    objects += self.compiler.compile(sources, extra_postargs=flags + isa_flags,
                                                     **common)
                    macros.append((macro, "1"))
        objects += self.compiler.compile(
            sorted(glob("csrc/int8/*.c")) + sorted(glob("csrc/int8/generic/*.c")),
            extra_postargs=flags, macros=macros, **common)
        return objects, macros

    def _isa_objects(self, ext):
        objects, macros = [], []  # macros reach dispatch through csrc/fn_isa_config.h
        if ext.name == INT8_EXT:
            return self._int8_objects()
        if ext.name != "fastnet._kernels.gemm":
            return objects, macros
        common = dict(output_dir=self.build_temp, include_dirs=["csrc"], debug=self.debug)
        # The frame and the portable kernels: baseline flags only.
        objects += self.compiler.compile(
            sorted(glob("csrc/*.c")) + sorted(glob("csrc/generic/*.c")),
            extra_postargs=BASE_FLAGS + OMP_FLAGS + EXTRA, **common)
        if IS_X86 and not IS_MSVC:
            for name, flags, sources, macro in ISA_GROUPS:
                if sources and _compiler_accepts(flags):
                    objects += self.compiler.compile(
                        sources, extra_postargs=BASE_FLAGS + OMP_FLAGS + EXTRA + flags, **common)
                    macros.append(macro)
        return objects, macros

    def build_extension(self, ext):
        objects, macros = self._isa_objects(ext)
        if objects:
            ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


def _kernel_extensions():
    only = {s.strip() for s in os.environ.get("FASTNET_BUILD_ONLY", "").split(",") if s.strip()}
    exts = []
    for pyx in sorted(glob("fastnet/_kernels/*.pyx")):
        name = os.path.splitext(os.path.basename(pyx))[0]
        if only and name not in only:
            continue
        ext = Extension(
            f"fastnet._kernels.{name}", [pyx],
            include_dirs=[np.get_include(), "csrc"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=BASE_FLAGS + OMP_FLAGS + EXTRA,
            extra_link_args=OMP_LINK + SANITIZE_LINK,
            # The GEMM extension must relink when any C source or header changes.
            depends=sorted(glob("csrc/**/*.[ch]", recursive=True)) if name == "gemm" else
            sorted(glob("csrc/int8/**/*.[ch]", recursive=True)) if name == "int8" else [],
        )
        exts.append(ext)
    return exts


# dispatch.c must know which ISA groups were built; tell it through a generated header.
def _write_isa_config():
    lines = ["/* generated by setup.py: ISA groups compiled into this build */"]
    if IS_X86 and not IS_MSVC:
        for _, flags, sources, macro in ISA_GROUPS:
            if sources and _compiler_accepts(flags):
                lines.append(f"#define {macro} 1")
    path = os.path.join(HERE, "csrc", "fn_isa_config.h")
    text = "\n".join(lines) + "\n"
    old = open(path).read() if os.path.exists(path) else None
    if old != text:
        with open(path, "w") as f:
            f.write(text)


_write_isa_config()

setup(
    ext_modules=cythonize(
        _kernel_extensions(),
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "nonecheck": False,
            "embedsignature": True,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
