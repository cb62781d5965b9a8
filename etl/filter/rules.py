"""Thresholds on filter scores, as a dataset version holds them: which scores remove a sample from it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from warehouse.contracts import FILTER_SCORERS


@dataclass(frozen=True)
class FilterRule:
    """Remove a sample when its `scorer` score is above `drop_above`, below `drop_below`, or its label is one
    of `drop_labels`. The paper's settings: `burst` drop_above 15 (images per camera-trap occurrence),
    `faces` drop_above 0 (any face MTCNN finds past its thresholds), `museum_category` drop_labels the
    non-organism categories. Samples the scorer does not cover (a burst score exists for camera-trap images
    only) are never removed by it."""

    scorer: str
    drop_above: float | None = None
    drop_below: float | None = None
    drop_labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.scorer not in FILTER_SCORERS:
            raise ValueError(f"unknown scorer {self.scorer!r}; choose one of: {', '.join(FILTER_SCORERS)}")
        if self.drop_above is None and self.drop_below is None and not self.drop_labels:
            raise ValueError(
                f"the {self.scorer} rule removes nothing: give drop_above, drop_below or drop_labels"
            )
        for name in ("drop_above", "drop_below"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not math.isfinite(float(value))):
                raise ValueError(f"{self.scorer}: {name} must be a finite number, not {value!r}")
        object.__setattr__(self, "drop_labels", tuple(self.drop_labels))
        if not all(isinstance(v, str) and v for v in self.drop_labels):
            raise ValueError(f"{self.scorer}: drop_labels must be non-empty strings")

    def sql(self) -> str:
        """The condition on a `filter_scores` row (`scorer`, `score`, `label`) that removes its sample."""
        parts = []
        if self.drop_above is not None:
            parts.append(f"score > {float(self.drop_above)!r}")
        if self.drop_below is not None:
            parts.append(f"score < {float(self.drop_below)!r}")
        if self.drop_labels:
            labels = ", ".join("'" + v.replace("'", "''") + "'" for v in self.drop_labels)
            parts.append(f"label IN ({labels})")
        return f"(scorer = '{self.scorer}' AND ({' OR '.join(parts)}))"

    def as_text(self) -> str:
        """The rule as `--filter` text (one condition per clause)."""
        parts = [f"{self.scorer}>{self.drop_above:g}"] if self.drop_above is not None else []
        parts += [f"{self.scorer}<{self.drop_below:g}"] if self.drop_below is not None else []
        parts += [f"{self.scorer}={','.join(self.drop_labels)}"] if self.drop_labels else []
        return " or ".join(parts)

    @classmethod
    def parse(cls, text: str) -> FilterRule:
        """`SCORER>X`, `SCORER<X` or `SCORER=LABEL[,LABEL...]` (the command line's `--filter`)."""
        for op, field in ((">", "drop_above"), ("<", "drop_below"), ("=", "drop_labels")):
            if op in text:
                scorer, value = (s.strip() for s in text.split(op, 1))
                if field == "drop_labels":
                    return cls(scorer, drop_labels=tuple(v.strip() for v in value.split(",") if v.strip()))
                try:
                    return cls(scorer, **{field: float(value)})
                except ValueError as exc:
                    raise ValueError(f"--filter {text!r}: {exc}") from None
        raise ValueError(f"--filter {text!r}: write SCORER>NUMBER, SCORER<NUMBER or SCORER=LABEL[,LABEL]")
