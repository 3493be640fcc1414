"""What cloud storage costs a search: the same search into a local folder and into an
S3-compatible bucket on loopback (moto's server), interleaved, timed end to end.

    python benchmarks/storage_overhead.py [--samples 8] [--rounds 2] [-- extra search flags]

Each round runs the search once into ray_results/ and once into s3://bench/runs (every
checkpoint, result and the experiment state uploaded through pyarrow's S3 filesystem), in
alternating order so the machine's drift falls on both. The same flags and seed give the same
trials, so the difference is the storage. Prints a JSON line last with each run's wall time, the
median of each, and wall_ratio (S3 / local; goal <= 1.10).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from common import cpu_model, finish, run_search  # benchmarks/common.py


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("extra", nargs="*", help="more flags for tuning.search (after --)")
    args = ap.parse_args()
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http",
                          allow_bucket_creation=True).create_dir("bench")
        uri = f"s3://bench/runs?endpoint_override={host}:{port}&scheme=http"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        walls: dict[str, list[float]] = {"local": [], "s3": []}
        for i in range(args.rounds):
            order = ["local", "s3"] if i % 2 == 0 else ["s3", "local"]
            for where in order:
                flags = [*args.extra] + (["--storage", uri] if where == "s3" else [])
                walls[where].append(run_search(f"storage-{where}-{stamp}-{i}", args.samples, flags))
                print(f"round {i + 1} {where}: {walls[where][-1]:.1f} s", file=sys.stderr)
    finally:
        server.stop()
    median = {k: statistics.median(v) for k, v in walls.items()}
    result = {"local_wall_s": [round(w, 1) for w in walls["local"]],
              "s3_wall_s": [round(w, 1) for w in walls["s3"]],
              "local_median_s": round(median["local"], 1), "s3_median_s": round(median["s3"], 1),
              "wall_ratio": round(median["s3"] / median["local"], 3), "samples": args.samples,
              "rounds": args.rounds, "cpu": cpu_model()}
    return finish(f"local {median['local']:.1f} s, S3 on loopback {median['s3']:.1f} s (medians "
                  f"of {args.rounds}): ratio {result['wall_ratio']}", result)


if __name__ == "__main__":
    sys.exit(main())
