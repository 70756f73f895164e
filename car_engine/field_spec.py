"""`--fields instruction=KEY,input=KEY,output=KEY`: the mapping a user gives for a single-turn
schema whose keys have other names (SPEC §6), parsed and checked before anything is read."""

from __future__ import annotations

from car_engine.errors import UsageError

FIELD_TARGETS = ("instruction", "input", "output")


def parse_fields(spec: str) -> dict[str, str]:
    """``instruction=q,output=a`` as ``{"instruction": "q", "input": "", "output": "a"}``
    (an input left out is none); anything malformed is a UsageError naming the part."""
    mapping = dict.fromkeys(FIELD_TARGETS, "")
    seen = set()
    for part in str(spec).split(","):
        target, eq, key = (s.strip() for s in part.partition("="))
        if not eq or not key or target not in FIELD_TARGETS:
            raise UsageError(f"--fields {spec}: '{part.strip()}' must be FIELD=KEY with FIELD "
                             f"one of {', '.join(FIELD_TARGETS)}")
        if target in seen:
            raise UsageError(f"--fields {spec}: '{target}' is named twice")
        seen.add(target)
        mapping[target] = key
    for target in ("instruction", "output"):
        if not mapping[target]:
            raise UsageError(f"--fields {spec}: names no key for '{target}'")
    return mapping
