"""``dataset_config_name`` strings of the generated datasets: ``"key=value,key=value"`` with integers."""

from __future__ import annotations

from collections.abc import Sequence


def parse_int_options(text: str | None, dataset_name: str, keys: Sequence[str]) -> dict[str, int]:
    """``"a=1,b=2"`` -> ``{"a": 1, "b": 2}``; ``None``, ``""`` or ``"default"`` -> ``{}``.

    Raises a ValueError naming the dataset and the bad part for an unknown key or a non-integer value.
    """
    if text is None or not text.strip() or text.strip() == "default":
        return {}
    values: dict[str, int] = {}
    for part in text.split(","):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or key not in keys:
            raise ValueError(
                f"{dataset_name}: dataset_config_name part {part.strip()!r} is invalid: "
                f"expected key=value with key one of {', '.join(keys)}"
            )
        try:
            values[key] = int(raw.strip())
        except ValueError:
            raise ValueError(f"{dataset_name}: {key} = {raw.strip()!r} is invalid: expected an integer") from None
    return values
