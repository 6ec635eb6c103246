"""optjit: deep-learning optimizers as expression graphs, fused and JIT-compiled.

``optjit.torch`` has them as ``torch.optim`` optimizers for CPU tensors; ``Program`` is the
compiled optimizer they run (``print(program)`` shows its code).
"""

from ._optjit import Program

__all__ = ["Program"]
__version__ = "0.1.0"
