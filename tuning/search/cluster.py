"""The Ray cluster a search runs on: start a local one or join one, its size, its dashboard."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def start_ray(args) -> None:
    """Join the cluster at --address, or start a local one; say where its dashboard is."""
    import ray

    # RAY_ADDRESS (set by `ray job submit` for its drivers, or by the user) counts as --address;
    # otherwise a local instance of our own ("local"): a bare ray.init() would join whatever
    # cluster `ray start` last recorded in /tmp/ray, such as a user's own one on this machine
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        ctx = ray.init(address=address, log_to_driver=True)
    else:
        kwargs = {"include_dashboard": not args.no_dashboard}
        if not args.no_dashboard:
            kwargs.update(dashboard_host=args.dashboard_host, dashboard_port=args.dashboard_port)
        # Ray counts the machine's CPUs (and cgroup quotas) but not this process's affinity mask
        if usable_cpus() < (os.cpu_count() or 1):
            kwargs["num_cpus"] = usable_cpus()
        ctx = ray.init(address="local", **kwargs)
    url = getattr(ctx, "dashboard_url", None)
    if url:
        print(f"Ray dashboard: http://{url} ({dashboard_login_hint()})", file=sys.stderr)


def dashboard_login_hint() -> str:
    """How to get past the dashboard's login, as Ray 2.60 configures it."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        token_auth = is_token_auth_enabled()
    except ImportError:  # another Ray release: go by the documented switch
        token_auth = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    if not token_auth:
        return "no token needed"
    return (f"token auth is on: paste the token from `ray get-auth-token` "
            f"({Path.home() / '.ray' / 'auth_token'} on the head node) when the browser asks; "
            f"API calls need 'Authorization: Bearer <token>'; the ray CLI needs RAY_AUTH_MODE=token")


def default_concurrency(resources: dict, cpus_per_trial: int, gpus_per_trial: float) -> int:
    """Trials that fit at once in the cluster's resources (what `ray.cluster_resources()` says)."""
    fits = int(resources.get("CPU", 1) // cpus_per_trial)
    if gpus_per_trial > 0:
        fits = min(fits, int(resources.get("GPU", 0) // gpus_per_trial))
    return max(1, fits)


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (taskset, cpusets), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
