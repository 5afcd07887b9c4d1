"""What a filter run is told, in one object: the sources, how the gate decides, where files go, what is written.

``qponder filter`` builds a :class:`FilterOptions` from its flags (one field per flag, the same name); Python
callers build one directly. It also builds, once, the gate and the scoring configuration the run keys its store by.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..gate import QualityGate
from ..images import DEFAULT_MAX_PIXELS
from .fingerprint import file_digest, scoring_config
from .groups import DEFAULT_DISTANCE, DEFAULT_WINDOW

DEFAULT_STORE = "qponder-results.sqlite"


@dataclass(frozen=True)
class RayOptions:
    """A cluster ``address`` (None: start a local one), ``workers`` actors with ``gpus_per_worker`` GPUs each (0:
    one CPU), rows per batch, and how often a dead actor is restarted and its batch retried."""

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    batch_size: int = 8
    max_retries: int = 2


@dataclass(frozen=True)
class FilterOptions:
    """One filter run's settings. ``action`` is how files are placed (``copy``, ``link``, ``move``); ``strategy``
    which readings the gate takes (``cascade``, ``fast``, ``think``); ``settings`` the backend's own options."""

    sources: tuple[str, ...] = ()
    threshold: float | None = None
    keep: str | None = None
    reject: str | None = None
    action: str = "copy"
    store: str = DEFAULT_STORE
    report: str | None = None
    export: str | None = None
    model: str | None = None
    profile: str | None = None
    gate_file: str | None = None  # where threshold, model, profile, strategy and margin came from, if they did
    backend: str | None = None
    settings: Mapping = field(default_factory=dict)
    strategy: str = "cascade"
    margin: float = 0.25
    on_error: str = "reject"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    write_metadata: str | None = None  # None, or where ratings go: "auto", "embedded", "sidecar", "both"
    sidecar: str = "darktable"  # sidecar names: "darktable" (NAME.EXT.xmp), "lightroom" (NAME.xmp), "both"
    batch_size: int = 8
    engine: str = "local"
    ray: RayOptions = field(default_factory=RayOptions)
    output: str | None = None
    shard_size: int = 1000
    groups: bool = False
    best_of_group: int | None = None  # keep at most this many of each group (implies groups)
    group_distance: float = DEFAULT_DISTANCE  # the share of perceptual-hash bits that may differ (0-1)
    group_window: float = DEFAULT_WINDOW  # seconds between the capture times of two photos at most

    @property
    def grouped(self) -> bool:
        """Whether near-duplicate groups are formed (``--groups``, or ``--best-of-group``)."""
        return self.groups or self.best_of_group is not None

    @property
    def chunk_size(self) -> int:
        """Inputs hashed, scored, committed and placed together."""
        return self.batch_size * 4

    def gate(self) -> QualityGate:
        """The gate these options describe (its model loads on first use)."""
        profile = {"profile": self.profile} if self.profile else {}
        return QualityGate(self.threshold, model=self.model, backend=self.backend, strategy=self.strategy,
                           margin=self.margin, on_error=self.on_error, batch_size=self.batch_size, **profile,
                           **self.settings)

    def scoring_config(self, digest: Callable[[str], str] = file_digest) -> dict:
        """Everything that changes a score under these options: the key of the store's readings."""
        return scoring_config(self.model, backend=self.backend, profile=self.profile, max_pixels=DEFAULT_MAX_PIXELS,
                              digest=digest, settings=self.settings)
