"""Where the searcher starts (`points_to_evaluate`): a --points file's configurations, or the
known-good points of the space (tuning/space.py `KNOWN_GOOD`), each checked against the space."""
from __future__ import annotations

from model.config import (
    FAMILY_KEY,
    REPLICATE_KEY,
    RUN_KEYS,
    SEARCH_SEED_KEY,
    family_defaults,
    family_keys,
    family_of,
)
from plumbing.cli import read_yaml_or_json
from plumbing.errors import UsageError
from tuning.space import KNOWN_GOOD, check_value, contains


def load_points(path: str, space: dict) -> list[dict]:
    """`--points FILE`: a YAML/JSON list of configurations the searcher tries first, in order.

    Each maps searched keys to values inside the space (keys left out are sampled); fixed keys
    may be given only with their fixed value, so a trial's params.json can be pasted as is."""
    points = read_yaml_or_json(path, "--points")
    return points_in_space(points, space, f"--points {path}")


def points_in_space(points, space: dict, where: str = "points") -> list[dict]:
    """The searched keys of each point, checked to lie inside the space and to be read by the
    point's family (its `family`; the space's when the space fixes it)."""
    if not isinstance(points, list) or not all(isinstance(pt, dict) for pt in points):
        raise UsageError(f"{where}: expected a list of mappings (config key: value)")
    searched = []
    for i, point in enumerate(points, 1):
        where_i = f"{where}: point {i}"
        # a trial's params.json also holds the run settings and the search seed: not searched
        unknown = sorted(set(point) - set(space) - set(RUN_KEYS)
                        - {SEARCH_SEED_KEY, REPLICATE_KEY})
        if unknown:
            raise UsageError(f"{where_i}: {unknown[0]!r} is not a key of the search space")
        point = {k: v for k, v in point.items() if k in space}
        family_spec = space.get(FAMILY_KEY, family_of({}))
        if isinstance(family_spec, dict) and FAMILY_KEY not in point:
            raise UsageError(f"{where_i}: this space searches {FAMILY_KEY}: say which")
        for key, value in point.items():
            check_value(key, value, where_i)
            if not contains(space, {key: value}):
                raise UsageError(f"{where_i}: {key}={value!r} is outside the search space "
                                 f"({space[key]})")
        family = point.get(FAMILY_KEY, family_spec)
        foreign = [k for k in point if k != FAMILY_KEY and k not in family_keys(family)]
        if foreign:
            raise UsageError(f"{where_i}: {foreign[0]!r} is not a hyperparameter of family "
                             f"{family!r}")
        searched.append({k: v for k, v in point.items() if isinstance(space[k], dict)})
    return searched


def known_good_points(space: dict) -> list[dict]:
    """KNOWN_GOOD's points that lie inside `space` (only the searched keys of their family)."""
    points = []
    for known in KNOWN_GOOD:
        family = family_of(known)
        defaults = family_defaults(family)
        keys = (FAMILY_KEY, *family_keys(family))
        point = {k: known.get(k, defaults[k]) for k in keys if isinstance(space.get(k), dict)}
        fixed = {k: v for k, v in {**known, FAMILY_KEY: family}.items()
                 if not isinstance(space.get(k), dict)}
        if contains(space, {**point, **fixed}):
            points.append(point)
    return points
