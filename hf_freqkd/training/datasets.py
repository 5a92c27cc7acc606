"""Datasets that format their own rows (``with_image_transform``) keep the raw columns they read."""

from __future__ import annotations


class FormattedDatasets:
    """Mix into a ``transformers.Trainer`` subclass (ahead of ``Trainer``)."""

    # Private Trainer override: the Trainer drops every column its model's forward does not name,
    # and offers no public hook to keep the raw columns a dataset's transform reads.
    def _remove_unused_columns(self, dataset, description: str | None = None):
        # A dataset with a transform already yields exactly the model's inputs (pixel_values, labels)
        # from its raw columns; removing the "unused" raw columns would starve the transform.
        if getattr(dataset, "format", {}).get("type") == "custom":
            return dataset
        return super()._remove_unused_columns(dataset, description)
