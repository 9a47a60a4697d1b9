"""The layout registry: skeleton kinds as data (layouts.yaml), detection by joint names, user layouts."""
from __future__ import annotations

import difflib
import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from eai.errors import LayoutError

BUILTIN = Path(__file__).with_name("layouts.yaml")


@functools.lru_cache(maxsize=4096)
def normalise_name(name: str) -> str:
    """Joint-name key for matching: namespace prefix dropped ("mixamorig:Hips"), case and separators folded."""
    name = name.rsplit(":", 1)[-1].rsplit("|", 1)[-1]
    return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclass(frozen=True)
class Canonical:
    """The canonical joint vocabulary every layout maps onto."""

    names: tuple[str, ...]
    parents: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        return self.names.index(name)

    @property
    def mirror_index(self) -> np.ndarray:
        """For each canonical joint, the index of its left/right counterpart (itself if central)."""
        swap = {"l_": "r_", "r_": "l_"}
        return np.array([self.names.index(swap[n[:2]] + n[2:]) if n[:2] in swap else i
                         for i, n in enumerate(self.names)])

    @property
    def edges(self) -> list[tuple[int, int]]:
        return [(i, p) for i, p in enumerate(self.parents) if p >= 0]


@dataclass
class Layout:
    """One kind of skeleton: joint names, parents, canonical mapping, left/right pairs."""

    name: str
    joints: list[str]
    parents: list[int]
    canonical: list[str | None]  # per joint
    description: str = ""
    mirror: tuple[str, str] | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    derived: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """Left/right joint index pairs, from the layout's mirror name fragments."""
        if not self.mirror:
            return []
        left, right = self.mirror
        out = []
        for i, n in enumerate(self.joints):
            if left in n:
                other = n.replace(left, right)
                if other in self.joints:
                    out.append((i, self.joints.index(other)))
        return out

    @functools.cached_property
    def keys(self) -> dict[str, int]:
        """Normalised name (and alias) -> joint index."""
        k = {normalise_name(n): i for i, n in enumerate(self.joints)}
        for alias, target in self.aliases.items():
            k[normalise_name(alias)] = self.joints.index(target)
        return k

    def parents_of(self, index: list[int], n: int) -> list[int]:
        """Parents of a file's n joints, from this layout's tree; index: each layout joint's place among
        the file's joints (-1 if the file lacks it). A joint whose parent is absent hangs on the nearest
        present ancestor; a file joint the layout does not know is a root."""
        owner = {i: j for j, i in enumerate(index) if i >= 0}  # file joint -> layout joint
        parents = []
        for i in range(n):
            lj = owner.get(i)
            p = self.parents[lj] if lj is not None else -1
            while p >= 0 and index[p] < 0:  # skip layout joints this file lacks
                p = self.parents[p]
            parents.append(index[p] if p >= 0 else -1)
        return parents

    @property
    def required(self) -> list[str]:
        """The joints that carry a canonical mapping or a derivation: detection needs all of them."""
        need = [n for n, c in zip(self.joints, self.canonical) if c]
        for parts in self.derived.values():
            need += [p for p in parts if p not in need]
        return need


def _parse_layout(name: str, spec: dict, canonical: Canonical, source: str) -> Layout:
    where = f"{source}: layout {name!r}"
    if not isinstance(spec, dict) or "joints" not in spec:
        raise LayoutError(f"{where} needs a 'joints' list of [name, parent, canonical]")
    joints, parent_names, canon = [], [], []
    for row in spec["joints"]:
        if not isinstance(row, (list, tuple)) or len(row) != 3:
            raise LayoutError(f"{where}: joint entry {row!r} must be [name, parent, canonical or null]")
        joints.append(str(row[0]))
        parent_names.append(row[1])
        canon.append(row[2])
    if len(set(joints)) != len(joints):
        raise LayoutError(f"{where}: joint names repeat")
    parents = []
    for j, p in zip(joints, parent_names):
        if p is None:
            parents.append(-1)
        elif p not in joints:
            raise LayoutError(f"{where}: parent {p!r} of {j!r} is not a joint of the layout")
        else:
            parents.append(joints.index(p))
    for c in canon:
        if c is not None and c not in canonical.names:
            raise LayoutError(f"{where}: {c!r} is not a canonical joint ({', '.join(canonical.names)})")
    mapped = [c for c in canon if c]
    if len(set(mapped)) != len(mapped):
        raise LayoutError(f"{where}: two joints map onto the same canonical joint")
    derived = {str(k): [str(x) for x in v] for k, v in (spec.get("derived") or {}).items()}
    for k, parts in derived.items():
        if k not in canonical.names or any(p not in joints for p in parts):
            raise LayoutError(f"{where}: derived joint {k!r} must be canonical and built from the layout's joints")
    aliases = {str(k): str(v) for k, v in (spec.get("aliases") or {}).items()}
    for a, t in aliases.items():
        if t not in joints:
            raise LayoutError(f"{where}: alias {a!r} points at unknown joint {t!r}")
    mirror = tuple(spec["mirror"]) if spec.get("mirror") else None
    return Layout(name=name, joints=joints, parents=parents, canonical=canon,
                  description=str(spec.get("description", "")), mirror=mirror,  # type: ignore[arg-type]
                  aliases=aliases, derived=derived, source=source)


class Registry:
    """All known layouts, built-in first, then user files."""

    def __init__(self, path: Path = BUILTIN):
        data = yaml.safe_load(path.read_text())
        rows = data["canonical"]
        names = tuple(r[0] for r in rows)
        self.canonical = Canonical(names, tuple(-1 if r[1] is None else names.index(r[1]) for r in rows))
        self.layouts: dict[str, Layout] = {}
        self._detected: dict[tuple[str, ...], tuple[Layout, list[int]]] = {}
        self._add_all(data["layouts"], str(path))
        for extra in filter(None, os.environ.get("EAI_LAYOUTS", "").split(os.pathsep)):
            self.register_file(extra)

    def _add_all(self, layouts: dict, source: str) -> list[str]:
        if not isinstance(layouts, dict) or not layouts:
            raise LayoutError(f"{source}: expected a 'layouts' mapping of name -> layout")
        self._detected.clear()
        for name, spec in layouts.items():
            self.layouts[str(name)] = _parse_layout(str(name), spec, self.canonical, source)
        return list(layouts)

    def register_file(self, path: str | Path) -> list[str]:
        """Add the layouts of a user's YAML or JSON file (same form as layouts.yaml); returns their names."""
        p = Path(path)
        if not p.is_file():
            raise LayoutError("layout file not found", p)
        try:
            data = yaml.safe_load(p.read_text())  # JSON is YAML too
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise LayoutError(f"not a YAML/JSON layout file ({str(e).splitlines()[0]})", p) from None
        if not isinstance(data, dict):
            raise LayoutError("a layout file holds a mapping: layouts: {NAME: {joints: [...]}}", p)
        return self._add_all(data.get("layouts", data), str(p))

    def get(self, name: str) -> Layout:
        if name not in self.layouts:
            near = difflib.get_close_matches(name, self.layouts, n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else f"; known: {', '.join(self.layouts)}"
            raise LayoutError(f"unknown layout {name!r}{hint}")
        return self.layouts[name]

    def detect(self, joint_names: list[str], source: str | None = None) -> tuple[Layout, list[int]]:
        key = tuple(joint_names)
        if key not in self._detected:
            self._detected[key] = self._detect(joint_names, source)
        return self._detected[key]

    def _detect(self, joint_names: list[str], source: str | None) -> tuple[Layout, list[int]]:
        """The layout that explains these joint names, and for each of its joints the index among the names.

        A layout matches when every joint it maps onto the canonical skeleton is present (extra joints are
        allowed, e.g. fingers or End Sites); among matches the one that explains most names wins.
        """
        keys = [normalise_name(n) for n in joint_names]
        where = {k: i for i, k in enumerate(keys)}
        best: tuple[int, Layout, list[int]] | None = None
        closest: tuple[float, Layout] | None = None
        for layout in self.layouts.values():
            lk = layout.keys
            index = [-1] * len(layout.joints)
            for k, i in where.items():
                if k in lk and index[lk[k]] < 0:
                    index[lk[k]] = i
            missing = [n for n in layout.required if index[layout.joints.index(n)] < 0]
            found = sum(i >= 0 for i in index)
            if not missing:
                if best is None or found > best[0]:
                    best = (found, layout, index)
            score = found / max(len(layout.required), 1)
            if closest is None or score > closest[0]:
                closest = (score, layout)
        if best is not None:
            return best[1], best[2]
        assert closest is not None
        layout = closest[1]
        known = set(layout.keys)
        unknown = [n for n, k in zip(joint_names, keys) if k not in known][:4]
        hints = []
        for n in unknown:
            near = difflib.get_close_matches(n, layout.joints, n=2, cutoff=0.5)
            hints.append(f"{n!r} (near: {', '.join(near)})" if near else repr(n))
        missing = [n for n in layout.required if normalise_name(n) not in where][:6]
        raise LayoutError(
            f"joint names match no known skeleton layout; closest is {layout.name} "
            f"(missing {', '.join(missing)}); unknown names: {', '.join(hints) or 'none'}; "
            "register your skeleton with --layout-file FILE (see README)", source)


_REGISTRY: Registry | None = None


def registry() -> Registry:
    """The process-wide registry (built-in layouts plus EAI_LAYOUTS files)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY


def canonical() -> Canonical:
    return registry().canonical
