"""Where a grid's training, validation and evaluation data live, checked before any job: generated
by the workflow (`data.source: generated`), prepared by it from the public releases (`releases`:
only the release names are checked, the DAG never reads the files), or given as files (`files`:
each read now, and the file and line of the first bad record named)."""

from __future__ import annotations

from pathlib import Path

from kdbench import releases, validate
from kdbench.errors import KDBenchError


class Data:
    """The data files of a validated grid config (`files`: name → path) for its evaluation `sets`.
    `require_data` False: absent `files` are listed in `absent`, not an error (`kdbench check`)."""

    def __init__(self, config: dict, where: str, workdir: Path, sets: list[str], require_data: bool = True):
        self.data, self.results, self.where, self.workdir = config["data"], config["results"], where, workdir
        self.require_data, self.absent = require_data, []
        self.prepared, self.release_keys, self.release_paths = [], [], {}
        if self.data["source"] == "generated":
            self.files = {"train": f"{self.results}/data/train.jsonl", "valid": f"{self.results}/data/valid.jsonl",
                          **{name: f"{self.results}/data/eval/{name}.jsonl" for name in sets}}
        elif self.data["source"] == "releases":
            self.files = self._check_releases(sets)
        else:
            self.files = self._check_files(sets)

    def _check_files(self, sets: list[str]) -> dict[str, str]:
        from kdbench.jsonl import read_jsonl

        data = self.data
        files = {"train": data.get("train"), "valid": data.get("valid"), **data.get("sets", {})}
        for name in ("train", "valid", *sets):
            if not files.get(name):
                key = f"data.sets.{name}" if name not in ("train", "valid") else f"data.{name}"
                raise KDBenchError(f"{self.where}: key '{key}' is required with data.source 'files'.")
            if not (self.workdir / files[name]).is_file():
                if not self.require_data:
                    self.absent.append(files[name])
                    continue
                raise KDBenchError(f"{self.where}: key 'data' ({name}): {files[name]}: file not found; make it with "
                                   "`kdbench prepare-eval` (data/README.md gives the command for each file) or "
                                   "correct the path.")
            try:
                read_jsonl(self.workdir / files[name])
                if name not in ("train", "valid"):  # an empty reference scores 0 for every model
                    validate.check_references(self.workdir / files[name])
            except KDBenchError as exc:
                raise KDBenchError(f"{self.where}: key 'data' ({name}): {exc}") from exc
        return files

    def _check_releases(self, sets: list[str]) -> dict[str, str]:
        """`data.releases.<format>` must name every release the grid's files are made from, and no other."""
        fmt = self.data["format"]
        table, given = releases.RELEASES[fmt], (self.data.get("releases") or {}).get(fmt) or {}
        where = f"{self.where}: key 'data.releases.{fmt}"
        unknown = sorted(set(given) - set(table))
        if unknown:
            raise KDBenchError(f"{where}': unknown release '{unknown[0]}'; the {fmt} releases are "
                               f"{', '.join(table)} (data/README.md).")
        self.prepared = ["train", "valid", *sets]
        self.release_keys = releases.needed(fmt, self.prepared)
        for key in self.release_keys:
            if not given.get(key):
                raise KDBenchError(f"{where}.{key}': required: the path of {table[key].expected} "
                                   f"(from {table[key].where}), relative to the repository.")
        self.release_paths = {key: given[key] for key in self.release_keys}
        return {name: f"{self.results}/data/real/{name}.jsonl" for name in self.prepared}

    def prepare_job(self, name: str) -> tuple[dict[str, str], str]:
        """The releases present on disk that prepared file `name` reads (absent ones are reported by
        `missing_releases`, not by the DAG) and its `kdbench prepare-eval` arguments."""
        inputs, args = releases.prepare_job(self.data["format"], name, self.release_paths)
        return {key: path for key, path in inputs.items() if (self.workdir / path).exists()}, args

    def missing_releases(self, prepared: list[str] | None = None) -> list[str]:
        """One line per release that the grid (or the prepared files `prepared`) needs and that is not
        on disk; empty unless `source: releases`."""
        if self.data["source"] != "releases":
            return []
        fmt = self.data["format"]
        keys = self.release_keys if prepared is None else releases.needed(fmt, prepared)
        return releases.missing(fmt, self.release_paths, keys, self.workdir)
