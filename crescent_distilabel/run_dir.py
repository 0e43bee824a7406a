"""A finished run's output directory, read and extended by publishing, reviewing and training.

Layout (written by :func:`crescent_distilabel.pipeline.run_recipe`): one ``save_to_disk`` DatasetDict per
config (``default``, ``dropped``, ``preference``; ``reviewed``, ``reviewed_preference`` and ``review_rejected``
after ``crescent review pull``), ``distiset_configs/pipeline.yaml``, ``README.md`` (the card), ``recipe.yaml``,
``crescent_run.json``, and optional JSON reports (``review_report.json``, ``decontamination.json``) that the card
shows.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crescent_distilabel.answers import AnswerKind
from crescent_distilabel.card import dataset_card, models_in
from crescent_distilabel.preference import PairPolicy, preference_pairs
from crescent_distilabel.recipe import PreferenceConfig, Recipe

if TYPE_CHECKING:
    from datasets import Dataset

RUN_FILE = "crescent_run.json"
STATE_DIR = ".crescent"
CONFIG_ORDER = (
    "default", "preference", "dropped", "reviewed", "reviewed_preference", "review_rejected", "contaminated"
)  # fmt: skip
REVIEW_REPORT = "review_report.json"
DECONTAMINATION = "decontamination.json"
DIVERSITY = "question_diversity.json"  # benchmarks/bench_questions.py --save
CALIBRATION = "vote_calibration.json"  # benchmarks/bench_consensus.py --save


class RunDirError(FileNotFoundError):
    """The directory is not a finished CRESCENT run."""


RUN_MARKER = f"{STATE_DIR}/recipe.json"
"""What makes a directory a CRESCENT run: the settings its first run saved (see ``pipeline.prepare_output_dir``)."""
RUN_ENTRIES = (
    *CONFIG_ORDER,
    "distiset_configs",
    "README.md",
    "recipe.yaml",
    RUN_FILE,
    REVIEW_REPORT,
    DECONTAMINATION,
    DIVERSITY,
    CALIBRATION,
    ".published",
    ".distilabel",
    STATE_DIR,
)
"""Everything a run (and publishing, review, decontamination) writes in its output directory: ``--overwrite``
removes these and nothing else."""


def is_run_dir(path: Path) -> bool:
    return (Path(path) / RUN_MARKER).is_file()


def clear_run(output_dir: Path, *, keep_outputs: bool = False) -> list[str]:
    """Remove what runs wrote in ``output_dir`` (:data:`RUN_ENTRIES`), leaving any other file; returns the names
    removed. Refuses a directory that holds no run, so no user file is ever deleted.

    ``keep_outputs`` (a rebuild) keeps the progress store with the LLM's outputs (generations, rejections,
    embeddings: each keyed by exactly what was asked, so still right for any code or settings) and forgets
    only its decisions; the marker then stays until the rebuild writes its own.
    """
    output_dir = Path(output_dir)
    if not is_run_dir(output_dir):
        raise RunDirError(f"{output_dir} holds no CRESCENT run ({RUN_MARKER} missing): nothing to overwrite")
    removed = []
    for name in RUN_ENTRIES:  # the marker (in STATE_DIR) goes last, so an interrupted clear can be repeated
        path = output_dir / name
        if keep_outputs and name == STATE_DIR:
            _forget_decisions(path / "progress.sqlite")
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def _forget_decisions(store_path: Path) -> None:
    from crescent_distilabel.store import ProgressStore

    if store_path.is_file():
        store = ProgressStore(store_path)
        try:
            store.forget_decisions()
        finally:
            store.close()


def atomic_write(path: Path, text: str) -> None:
    """Write a file so a reader (or a killed writer) never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_dir(new: Path, target: Path) -> None:
    """Put directory ``new`` at ``target``, so that ``target`` always holds the old or the new one whole.

    With an existing target the two are exchanged atomically (then the old one, now at ``new``, is removed);
    where the kernel cannot exchange, the old one is moved aside first and the new one renamed in.
    """
    if not target.exists():
        os.replace(new, target)
        return
    if not _exchange(new, target):
        aside = new.with_name(new.name + ".old")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(target, aside)
        os.replace(new, target)
        new = aside
    shutil.rmtree(new)


def save_config(output_dir: Path, name: str, dataset: Dataset) -> None:
    """Save one config's train split, replacing the old one whole (never half old, half new, never missing); an
    empty split is saved as one shard so ``load_from_disk`` can read it."""
    from datasets import DatasetDict

    tmp = output_dir / STATE_DIR / f"saving-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    DatasetDict(train=dataset).save_to_disk(str(tmp), num_shards={"train": 1} if len(dataset) == 0 else None)
    replace_dir(tmp, output_dir / name)


def preference_config(kept: Dataset, cfg: PreferenceConfig, kind: AnswerKind = "auto") -> Dataset:
    """The ``preference`` config of a run's kept rows, with a fixed schema so an empty one loads too."""
    from datasets import Dataset, Features, Value

    turn = [{"role": Value("string"), "content": Value("string")}]
    features = Features(
        prompt=turn,
        chosen=turn,
        rejected=turn,
        question=Value("string"),
        chosen_answer=Value("string"),
        rejected_answer=Value("string"),
        margin=Value("int64"),
        k=Value("int64"),
        agreement=Value("float64"),
        answer_model=Value("string"),
    )
    policy = PairPolicy(**cfg.model_dump(exclude={"enabled"}))  # the recipe section names the policy's fields
    pairs = preference_pairs(kept, policy, kind) if len(kept) else []
    return Dataset.from_dict({name: [pair[name] for pair in pairs] for name in features}, features=features)


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
        return self.report_at(self.path, name)

    @staticmethod
    def report_at(path: Path, name: str) -> dict[str, Any] | None:
        """A JSON report in a run directory (None when absent), also before the run record exists."""
        file = Path(path) / name
        return json.loads(file.read_text()) if file.is_file() else None

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
            diversity=self.report(DIVERSITY),
            calibration=self.report(CALIBRATION),
            models=models_in(*(self.load(c) for c in self.configs())),
        )

    def write_card(self) -> None:
        atomic_write(self.path / "README.md", self.card())
