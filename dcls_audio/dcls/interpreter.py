"""Work-arounds for Triton 3.6's CPU interpreter (``TRITON_INTERPRET=1``): tests, rehearsals.

Call :func:`patch_triton_interpreter` before :mod:`dcls_audio.dcls.triton_dwconv` is imported.
"""

from __future__ import annotations

import os


def patch_triton_interpreter() -> bool:
    """Patch two interpreter bugs when ``TRITON_INTERPRET=1`` (once); True when patched."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    import numpy as np
    import triton.language as tl
    import triton.runtime.interpreter as interp

    if getattr(interp, "_dcls_patched", False):
        return True
    # triton 3.6's interpreter turns a scalar into an int with int(shape-(1,) array), an error
    # under numpy >= 2.4 (triton-lang/triton#9171); runtime loop bounds need it.
    patch = interp._patch_lang_tensor

    def patched(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interp._patch_lang_tensor = patched
    # Its dot multiplies bfloat16 operands as their raw uint16 bits; widen them exactly first.
    dot = interp.InterpreterBuilder.create_dot

    def widened(handle):
        if handle.dtype.scalar != tl.bfloat16:
            return handle
        data = interp._convert_float(handle.data, tl.bfloat16, tl.float32, None)
        return interp.TensorHandle(data.view(np.float32), tl.float32)

    def create_dot(self, a, b, d, *args):
        return dot(self, widened(a), widened(b), d, *args)

    interp.InterpreterBuilder.create_dot = create_dot
    interp._dcls_patched = True
    return True
