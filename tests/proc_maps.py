"""What Linux says about this process's memory mappings (for huge-page and resident-set tests)."""

from __future__ import annotations

from collections.abc import Iterator


def _mappings() -> Iterator[tuple[int, int, str, dict[str, str]]]:
    """``(start, end, path, fields)`` of every mapping in /proc/self/smaps (path "" when
    anonymous; fields: ``Rss``, ``VmFlags``, … with their values as text)."""
    current: tuple[int, int, str, dict[str, str]] | None = None
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head, _, rest = line.partition(" ")
            if "-" in head and not head.endswith(":"):
                if current is not None:
                    yield current
                lo, hi = (int(part, 16) for part in head.split("-"))
                parts = rest.split(maxsplit=4)
                current = (lo, hi, parts[4].strip() if len(parts) > 4 else "", {})
            elif current is not None:
                current[3][head.rstrip(":")] = rest.strip()
    if current is not None:
        yield current


def vm_flags(address: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds ``address`` (``hg``: huge-page advice)."""
    for lo, hi, _, fields in _mappings():
        if lo <= address < hi:
            return fields.get("VmFlags", "").split()
    return []


def resident_kib(path: object) -> int:
    """Resident KiB of this process's mappings of the file ``path``."""
    return sum(int(fields["Rss"].split()[0]) for _, _, mapped, fields in _mappings() if mapped == str(path))
