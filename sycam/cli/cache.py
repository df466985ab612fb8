"""``sycam cache info`` and ``sycam cache clear``: the on-disk capture cache (:mod:`sycam.cache`)."""
from __future__ import annotations

import argparse
import json
import time


def register(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["info", "clear"], help="info: where the cache is, its size and contents; "
                        "clear: delete every entry")
    parser.add_argument("--json", action="store_true", help="info as JSON")


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def run(name: str, args: argparse.Namespace) -> int:
    from sycam.cache import CaptureCache, cache_dir, default_cache

    cache = default_cache()
    enabled = cache is not None
    if cache is None:  # SYCAM_CACHE=off: still show (or clear) what the folder holds
        cache = CaptureCache(cache_dir())
    if args.action == "clear":
        n = cache.clear()
        print(f"removed {n} cached batch{'es' if n != 1 else ''} from {cache.root}")
        return 0
    info = cache.info()
    info["enabled"] = enabled
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"capture cache: {info['dir']} ({'on' if enabled else 'off: SYCAM_CACHE=off'}, {info['dtype']})")
    print(f"  {info['entries']} cached batches, {info['bytes'] / 1e9:.3f} GB of {info['max_bytes'] / 1e9:.1f} GB "
          f"(SYCAM_CACHE_MAX_GB; least recently used deleted beyond it)")
    print(f"  last used: oldest {_when(info['oldest_use'])}, newest {_when(info['newest_use'])}")
    for what, g in sorted(info["by_model_and_data"].items()):
        print(f"  {what}: {g['entries']} batches, {g['images']} images, {g['bytes'] / 1e9:.3f} GB")
    return 0
