"""Experiment templates on disk: a folder with experiment.py, plot.py and template.yaml.

An AI Scientist template (experiment.py and prompt.json, no template.yaml) is
recognised too and runs unchanged: its spec is derived and its bundle wraps it
(``agents.aisci``).

Finding, loading and bundling them lives here; the spec itself is a contract
(``bus.schema.template``), validated when a project starts, so a typo in
template.yaml is one readable line naming the field instead of a crash in an
agent minutes later.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import yaml

from agents import aisci
from bus.schema import TemplateError, TemplateSpec, parse_spec
from bus.settings import settings

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "templates"


def search_path() -> list[Path]:
    return [*settings().templates, BUILTIN_DIR]


def resolve(name_or_path: str) -> Path:
    """A template folder from a path or a name on the search path."""
    p = Path(name_or_path)
    if p.is_dir():
        if not (p / "template.yaml").is_file() and not aisci.is_aisci(p):
            raise TemplateError(f"{p}: not a template (no template.yaml, nor an AI Scientist template's experiment.py and prompt.json)")
        return p.resolve()
    for base in search_path():
        if (base / name_or_path / "template.yaml").is_file() or aisci.is_aisci(base / name_or_path):
            return (base / name_or_path).resolve()
    known = sorted(d.name for base in search_path() if base.is_dir() for d in base.iterdir() if (d / "template.yaml").is_file() or aisci.is_aisci(d))
    raise TemplateError(f"unknown template {name_or_path!r}; known: {', '.join(known) or 'none'}")


def load(name_or_path: str) -> tuple[Path, TemplateSpec]:
    folder = resolve(name_or_path)
    if aisci.is_aisci(folder):
        return folder, aisci.load(folder)
    path = folder / "template.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise TemplateError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise TemplateError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    for needed in ("experiment.py", "plot.py"):
        if not (folder / needed).is_file():
            raise TemplateError(f"{folder}: missing {needed}")
    spec = parse_spec(data, str(path))
    if spec.name != folder.name:
        raise TemplateError(f"{path}: name: {spec.name!r} does not match the folder name {folder.name!r}")
    check_variants(folder, spec)
    return folder, spec


def check_variants(folder: Path, spec: TemplateSpec) -> None:
    """Each variant's edits must apply to the template's own files: a path that exists, a search text found exactly once.

    Checked when the template loads, so a stale variant (the code under it moved) is one
    readable line for the template's author, not a rejected plan in the middle of a project.
    """
    for name, variant in spec.variants.items():
        texts: dict[Path, str] = {}  # the files as this variant's earlier edits left them, as the engineer applies them
        for i, edit in enumerate(variant.edits):
            where = f"{folder / 'template.yaml'}: variants.{name}.edits.{i}"
            target = (folder / edit.path).resolve()
            if not target.is_relative_to(folder.resolve()) or not target.is_file():
                raise TemplateError(f"{where}: no file {edit.path!r} in the template")
            text = texts.setdefault(target, target.read_text())
            count = text.count(edit.search) if edit.search else 0
            if count != 1:
                found = "not found" if count == 0 else f"found {count} times"
                first = next((ln.strip() for ln in edit.search.splitlines() if ln.strip()), "")[:60]
                raise TemplateError(f"{where}: search text {found} in {edit.path} (must occur exactly once): {first!r}")
            texts[target] = text.replace(edit.search, edit.replace, 1)


def bundle(folder: Path) -> bytes:
    """The template folder as tar.gz, the unit the job runner fetches (an AI Scientist template's wrapped, see ``agents.aisci``)."""
    if aisci.is_aisci(folder):
        return aisci.bundle(folder, aisci.load(folder))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in sorted(folder.rglob("*")):
            rel = f.relative_to(folder)
            if any(part in {"__pycache__", ".ipynb_checkpoints"} or part.startswith(".") for part in rel.parts):
                continue
            if f.is_file():
                tar.add(f, arcname=str(rel), recursive=False)
    return buf.getvalue()


def bundle_files(data: bytes, suffixes: tuple[str, ...] = (".py", ".yaml", ".yml", ".md")) -> dict[str, str]:
    """The text files of a bundle, by name (what a mind reads before editing code)."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar.getmembers():
            if m.isfile() and m.name.endswith(suffixes):
                f = tar.extractfile(m)
                if f is not None:
                    out[m.name] = f.read().decode(errors="replace")
    return out


def replace_files(data: bytes, files: dict[str, str]) -> bytes:
    """The bundle with some files' text replaced (after code edits)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as src, tarfile.open(fileobj=buf, mode="w:gz") as dst:
        for m in src.getmembers():
            if m.isfile() and m.name in files:
                body = files[m.name].encode()
                info = tarfile.TarInfo(m.name)
                info.size, info.mode, info.mtime = len(body), m.mode, m.mtime
                dst.addfile(info, io.BytesIO(body))
            else:
                dst.addfile(m, src.extractfile(m) if m.isfile() else None)
    return buf.getvalue()


def unbundle(data: bytes, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
