"""The training-health record shared by the data loader, the step guard and the hooks.

One explicit object instead of attribute chains: the resumable loader counts the samples it saw
and skipped (and sets ``fatal_error`` when too many were skipped), the step guard stores the last
losses averaged over ranks and the skip totals over ranks, and the hooks read it to log losses and
report skipped samples.
"""

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

__all__ = ["TrainingHealth"]


@dataclass
class TrainingHealth:
    """Per-process training health.

    Attributes:
        num_seen / num_skipped: samples this process's loader delivered / replaced (bad files).
        fatal_error: set by the loader when too many samples were skipped; the guard stops on it.
        skip_totals: (skipped, seen) summed over ranks, this process's run (set by the guard).
        last_losses: ``{"iteration", "total_loss", <loss terms>}`` averaged over ranks.
    """

    num_seen: int = 0
    num_skipped: int = 0
    fatal_error: Optional[str] = None
    skip_totals: Tuple[int, int] = (0, 0)
    last_losses: Dict[str, float] = field(default_factory=dict)
