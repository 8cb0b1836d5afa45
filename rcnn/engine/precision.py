"""Mixed precision for the training loop: ``rcnn.ops.precision`` (where inference finds it too)."""

from rcnn.ops.precision import (  # noqa: F401  (the engine's names for them)
    AMP_CHOICES,
    autocast,
    cpu_has_bf16,
    register_cpu_autocast_ops,
    resolve_amp,
)
