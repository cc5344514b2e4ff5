"""Union label space over several datasets, matched by class name.

Point Prompt Training aligns the label spaces of its datasets through class names: every
dataset's class i points at one entry of a union list of names, and the unionized and
language-guided heads read that mapping. The mapping is built from names and checked by name
at start-up, never written by hand: a hand-written index list silently pairs a dataset's labels
with the wrong text embeddings when one entry is off.

Names are compared after `normalize_class_name` only. No synonyms are merged: S3DIS
"bookcase" and ScanNet "bookshelf" stay two union entries, because their annotation rules
differ and the language-guided head already relates them through their text embeddings
(merging would force one logit on both). A dataset whose names need remapping should rename
its classes where its class list is defined.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from pptkit.errors import InputError


def normalize_class_name(name: str) -> str:
    """Canonical form for comparing class names: lowercase, '_' as space, outer spaces gone."""
    return name.lower().replace("_", " ").strip()


class UnionLabelSpace:
    """Union of class names over datasets plus, per dataset, the union index of each class.

    Build it with `from_class_names`; the plain constructor takes an explicit mapping (for
    example one read back from a checkpoint) and validates it with `check`.
    """

    def __init__(
        self,
        union_names: Sequence[str],
        dataset_class_names: Mapping[str, Sequence[str]],
        dataset_to_union: Mapping[str, Sequence[int] | torch.Tensor],
    ):
        self.union_names: tuple[str, ...] = tuple(union_names)
        self.class_names: dict[str, tuple[str, ...]] = {
            dataset: tuple(names) for dataset, names in dataset_class_names.items()
        }
        self.dataset_to_union: dict[str, torch.Tensor] = {
            dataset: torch.as_tensor(indices, dtype=torch.long).clone()
            for dataset, indices in dataset_to_union.items()
        }
        self.check()

    @classmethod
    def from_class_names(cls, dataset_class_names: Mapping[str, Sequence[str]]) -> UnionLabelSpace:
        """Union by normalised name, ordered by first appearance in the given dataset order."""
        union_index: dict[str, int] = {}
        mapping: dict[str, list[int]] = {}
        for dataset, names in dataset_class_names.items():
            _check_unique(dataset, names)
            indices = []
            for name in names:
                key = normalize_class_name(name)
                indices.append(union_index.setdefault(key, len(union_index)))
            mapping[dataset] = indices
        return cls(list(union_index), dataset_class_names, mapping)

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(self.class_names)

    def __len__(self) -> int:
        return len(self.union_names)

    def mappings(self, datasets: Sequence[str]) -> list[torch.Tensor]:
        """Index tensors in the given dataset order: the `dataset_to_union` argument of the heads."""
        missing = [d for d in datasets if d not in self.dataset_to_union]
        if missing:
            raise InputError(f"datasets {missing} are not in the label space {list(self.datasets)}")
        return [self.dataset_to_union[d] for d in datasets]

    def check(self) -> None:
        """Raise InputError unless every dataset's class i maps to a union entry of the same name."""
        union_keys = [normalize_class_name(n) for n in self.union_names]
        if len(set(union_keys)) != len(union_keys):
            raise InputError(f"union label space has duplicate names: {list(self.union_names)}")
        if set(self.class_names) != set(self.dataset_to_union):
            raise InputError(
                f"label space datasets {sorted(self.class_names)} and mapped datasets "
                f"{sorted(self.dataset_to_union)} differ"
            )
        for dataset, names in self.class_names.items():
            _check_unique(dataset, names)
            indices = self.dataset_to_union[dataset]
            if indices.ndim != 1 or len(indices) != len(names):
                raise InputError(
                    f"dataset {dataset!r} has {len(names)} classes but its union mapping has "
                    f"shape {tuple(indices.shape)}"
                )
            for local, (name, union) in enumerate(zip(names, indices.tolist())):
                if not 0 <= union < len(self.union_names):
                    raise InputError(
                        f"dataset {dataset!r} class {local} ({name!r}) maps to union index "
                        f"{union}, outside 0..{len(self.union_names) - 1}"
                    )
                if union_keys[union] != normalize_class_name(name):
                    raise InputError(
                        f"dataset {dataset!r} class {local} ({name!r}) maps to union entry "
                        f"{union} ({self.union_names[union]!r}): names differ"
                    )

    def describe(self) -> str:
        """Plain-text table: one row per union class, the local label in each dataset or '-'."""
        local = {
            dataset: {u: i for i, u in enumerate(indices.tolist())}
            for dataset, indices in self.dataset_to_union.items()
        }
        header = ["#", "class", *self.datasets]
        rows = [
            [str(u), name, *(str(local[d].get(u, "-")) for d in self.datasets)]
            for u, name in enumerate(self.union_names)
        ]
        widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
        counts = ", ".join(f"{d} {len(n)}" for d, n in self.class_names.items())
        return "\n".join([f"union label space: {len(self)} classes ({counts})", *lines])


def _check_unique(dataset: str, names: Sequence[str]) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        key = normalize_class_name(name)
        if key in seen:
            raise InputError(
                f"dataset {dataset!r} names class {seen[key]} and class {i} both {key!r}"
            )
        seen[key] = i
