"""What one API server process is configured with: store, limits, timeouts, crawler allowances."""

from __future__ import annotations

import os
from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class ApiConfig:
    """Settings of one API process; plain values only, so it can be handed to worker processes.

    `db_path` None means the default store ($MODELSIEVE_DB or the per-user data folder).
    Rate limits are per key and per server process: N worker processes admit up to N times
    `rate_per_second` for a key whose connections the kernel spreads over all of them.
    """

    db_path: str | os.PathLike[str] | None = None
    json_body_limit: int = 1 * MIB
    bundle_body_limit: int = 64 * MIB
    upload_limit: int = 8 * 1024 * MIB
    upload_memory_limit: int = 256 * MIB
    concurrent_uploads: int = 2
    request_timeout: float = 30.0
    upload_timeout: float = 600.0
    rate_per_second: float = 50.0
    rate_burst: int = 100
    crawl_url_limit: int = 10_000
    crawl_allow_loopback: bool = False
    page_size_limit: int = 1000
