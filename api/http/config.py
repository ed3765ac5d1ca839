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
    publisher_key_path: str | os.PathLike[str] | None = None  # Ed25519 key signing exported bundles
    fingerprint_key_path: str | os.PathLike[str] | None = None  # None: $MODELSIEVE_FINGERPRINT_KEY or the public key
    audit_log: str | os.PathLike[str] | None = None  # file the audit lines are appended to; None: stderr
    json_body_limit: int = 1 * MIB
    fingerprint_body_limit: int = 16 * MIB
    bundle_body_limit: int = 64 * MIB
    upload_limit: int = 8 * 1024 * MIB
    upload_memory_limit: int = 256 * MIB
    concurrent_uploads: int = 2
    upload_min_rate: float = 64 * 1024  # bytes a second an upload must average after its grace time (else 408)
    upload_grace_seconds: float = 10.0
    request_timeout: float = 30.0
    upload_timeout: float = 600.0
    key_cache_seconds: float = 5.0  # a revoked key stops working within this time
    index_refresh_seconds: float = 1.0  # the match index follows the store's changes this often
    index_stale_seconds: float = 30.0  # readiness fails once the index has not followed the store for this long
    rate_per_second: float = 50.0
    rate_burst: int = 100
    crawl_allow_loopback: bool = False  # tests and the demo only: crawl 127.0.0.0/8 and ::1
    crawl_jobs_dir: str | os.PathLike[str] | None = None  # None: beside a SQLite store; shared by replicas on PostgreSQL
    crawl_jobs_per_process: int = 2  # 0: this process only stores jobs, other processes run them
    crawl_jobs_per_key: int = 16  # jobs a key may have queued or running at once (more: 429)
