"""A finished run's output directory, read and extended by publishing, reviewing and training.

Layout (written by :func:`crescent_distilabel.pipeline.run_recipe`): one ``save_to_disk`` DatasetDict per
config (``default``, ``dropped``; ``reviewed`` and ``review_rejected`` after ``crescent review pull``),
``distiset_configs/pipeline.yaml``, ``README.md`` (the card), ``recipe.yaml``, ``crescent_run.json``, and
optional JSON reports (``review_report.json``, ``decontamination.json``) that the card shows.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crescent_distilabel.card import dataset_card, models_in
from crescent_distilabel.recipe import Recipe

if TYPE_CHECKING:
    from datasets import Dataset

RUN_FILE = "crescent_run.json"
STATE_DIR = ".crescent"
CONFIG_ORDER = ("default", "dropped", "reviewed", "review_rejected", "contaminated")
REVIEW_REPORT = "review_report.json"
DECONTAMINATION = "decontamination.json"


class RunDirError(FileNotFoundError):
    """The directory is not a finished CRESCENT run."""


def atomic_write(path: Path, text: str) -> None:
    """Write a file so a reader (or a killed writer) never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_config(output_dir: Path, name: str, dataset: Dataset) -> None:
    """Save one config's train split, replacing the old one whole (never half old, half new); an empty split
    is saved as one shard so ``load_from_disk`` can read it."""
    from datasets import DatasetDict

    tmp = output_dir / STATE_DIR / f"saving-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    DatasetDict(train=dataset).save_to_disk(str(tmp), num_shards={"train": 1} if len(dataset) == 0 else None)
    shutil.rmtree(output_dir / name, ignore_errors=True)
    os.replace(tmp, output_dir / name)


@dataclass
class RunDir:
    """Read access to a run directory, plus the few files later stages add to it."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not (self.path / RUN_FILE).is_file():
            raise RunDirError(f"{self.path} holds no CRESCENT run ({RUN_FILE} missing); run `crescent generate` first")

    def record(self) -> dict[str, Any]:
        return json.loads((self.path / RUN_FILE).read_text())

    def recipe(self) -> Recipe:
        return Recipe.model_validate(self.record()["recipe"])

    def configs(self) -> list[str]:
        """The configs present, in a fixed order."""
        return [c for c in CONFIG_ORDER if (self.path / c / "dataset_dict.json").is_file()]

    def load(self, config: str = "default", in_memory: bool = False) -> Dataset:
        """One config's rows; ``in_memory`` for callers that ``.map()`` them (no cache files in the run)."""
        from datasets import load_from_disk

        if not (self.path / config / "dataset_dict.json").is_file():
            raise RunDirError(f"{self.path} has no {config!r} config (present: {', '.join(self.configs())})")
        return load_from_disk(str(self.path / config), keep_in_memory=in_memory)["train"]

    def save(self, config: str, dataset: Dataset) -> None:
        save_config(self.path, config, dataset)

    def report(self, name: str) -> dict[str, Any] | None:
        path = self.path / name
        return json.loads(path.read_text()) if path.is_file() else None

    def write_report(self, name: str, data: dict[str, Any]) -> None:
        atomic_write(self.path / name, json.dumps(data, indent=2) + "\n")

    def card(self, configs: list[str] | None = None, hub: bool = False) -> str:
        """The dataset card for these configs (default: all present), with any review/decontamination results."""
        kept = self.load("default")
        agreements = kept["agreement"] if "agreement" in kept.column_names else []
        return dataset_card(
            self.recipe(),
            self.record()["summary"],
            agreements,
            configs=tuple(configs or self.configs()),
            hub=hub,
            review=self.report(REVIEW_REPORT),
            decontamination=self.report(DECONTAMINATION),
            models=models_in(*(self.load(c) for c in self.configs())),
        )

    def write_card(self) -> None:
        atomic_write(self.path / "README.md", self.card())
