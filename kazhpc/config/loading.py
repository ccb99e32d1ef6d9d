"""Loading: YAML with line numbers, includes, fragments, overrides, then validation.

``load_config`` composes a pipeline config (includes and fragment names), applies the command
line's ``key.path=value`` overrides, lifts the model file's per-size ``train:`` defaults, and
validates the result as a ``PipelineConfig``; every error names the file and line it comes from.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kazhpc.config.messages import ConfigDoc, Origin, describe_validation_error, suggest
from kazhpc.config.paths import deep_merge
from kazhpc.config.pipeline import PipelineConfig
from kazhpc.errors import ConfigError, read_user_text

#: Sections that may be given as a bare fragment name, and the folder under configs/ that holds them.
FRAGMENT_DIRS: dict[str, str] = {"model": "models"}


def find_configs_root(start: Path | None = None) -> Path | None:
    """The configs/ folder that holds fragment libraries (models/, deepspeed/, clusters/).

    Looked up in order: $KAZHPC_CONFIGS, the nearest ancestor of ``start`` named ``configs``,
    ``./configs``, and the configs/ beside the installed package (a source checkout).
    """
    candidates: list[Path] = []
    if os.environ.get("KAZHPC_CONFIGS"):
        candidates.append(Path(os.environ["KAZHPC_CONFIGS"]))
    if start is not None:
        candidates += [p for p in [start, *start.parents] if p.name == "configs"]
    candidates += [Path.cwd() / "configs", Path(__file__).resolve().parents[2] / "configs"]
    return next((c.absolute() for c in candidates if c.is_dir()), None)


def _read_yaml(path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    """Parse a YAML file; also return the 1-based line of every mapping key path."""
    text = read_user_text(path, "config file", ConfigError)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None
    lines: dict[tuple[str, ...], int] = {}

    def walk(n: yaml.Node | None, prefix: tuple[str, ...]) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                key = prefix + (str(key_node.value),)
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)

    walk(node, ())
    return data, lines


def _fragment_path(name: str, section: str, base_dir: Path, origin: Origin) -> Path:
    """A bare fragment name ('gemma3-4b') or a path, as the file to include."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name).expanduser()
        return path if path.is_absolute() else base_dir / path
    root = find_configs_root(base_dir)
    folder = FRAGMENT_DIRS.get(section)
    if folder is None:
        raise ConfigError(f"{origin}: {section}: '{name}': '{section}' has no fragment library; give a .yaml path")
    if root is None:
        raise ConfigError(f"{origin}: {section}: cannot resolve '{name}': no configs/ folder found")
    path = root / folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (root / folder).glob("*.yaml"))
        raise ConfigError(
            f"{origin}: {section}: no fragment '{name}' in {root / folder}"
            f"{suggest(name, known)}; known: {', '.join(known) or 'none'}"
        )
    return path


def load_yaml_file(path: Path, prefix: tuple[str, ...], stack: tuple[Path, ...]) -> ConfigDoc:
    """One YAML file with its includes and fragments resolved, its keys placed under ``prefix``;
    ``stack`` is the chain of files that include it (an include cycle is an error)."""
    path = path.absolute()
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"{path}: include cycle: {chain}")
    data, lines = _read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping of keys at the top, got {type(data).__name__}")
    origins = {prefix + k: Origin(str(path), line) for k, line in lines.items()}
    return _expand(data, prefix, path.parent, origins, (*stack, path))


def _expand(
    data: dict[str, Any],
    prefix: tuple[str, ...],
    base_dir: Path,
    origins: dict[tuple[str, ...], Origin],
    stack: tuple[Path, ...],
) -> ConfigDoc:
    """Resolve `include:` keys and fragment names inside ``data`` (which sits at ``prefix``)."""
    doc = ConfigDoc()
    includes = data.get("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        where = origins.get(prefix + ("include",), Origin(str(stack[-1]) if stack else "config"))
        raise ConfigError(f"{where}: include: expected a path or a list of paths")
    section = prefix[-1] if prefix else ""
    for inc in includes:
        where = origins.get(prefix + ("include",), Origin(str(stack[-1]) if stack else "config"))
        included = _fragment_path(inc, section, base_dir, where)
        if not included.is_file():  # named where it is included, not only by its own path
            raise ConfigError(f"{where}: {'.'.join((*prefix, 'include'))}: {included}: config file not found")
        _merge(doc, load_yaml_file(included, prefix, stack))
    own = ConfigDoc()
    for key, value in data.items():
        if key == "include":
            continue
        path = prefix + (str(key),)
        where = origins.get(path, Origin("config"))
        if not prefix and key in FRAGMENT_DIRS and isinstance(value, str):
            sub = load_yaml_file(_fragment_path(value, key, base_dir, where), path, stack)
            own.data[key] = sub.data
            own.origins.update(sub.origins)
        elif isinstance(value, dict):
            sub = _expand(value, path, base_dir, origins, stack)
            own.data[key] = sub.data
            own.origins.update(sub.origins)
        else:
            own.data[key] = value
        own.origins[path] = where
    _merge(doc, own)
    return doc


def _merge(into: ConfigDoc, other: ConfigDoc) -> None:
    """Deep-merge ``other`` into ``into`` (kazhpc.config.paths.deep_merge), origins too."""
    deep_merge(into.data, other.data)
    into.origins.update(other.origins)


def _apply_override(doc: ConfigDoc, override: str) -> None:
    key, sep, raw = override.partition("=")
    origin = Origin(f"override '{override}'")
    if not sep or not key.strip() or not re.fullmatch(r"[A-Za-z0-9_.-]+", key.strip()):
        raise ConfigError(f"{origin}: expected key.path=value")
    path = tuple(key.strip().split("."))
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if len(path) == 1 and path[0] in FRAGMENT_DIRS and isinstance(value, str):
        sub = load_yaml_file(_fragment_path(value, path[0], Path.cwd(), origin), path, ())
        value = sub.data
        for p in [k for k in doc.origins if k[:1] == path]:
            del doc.origins[p]
        doc.origins.update(sub.origins)
    node: dict[str, Any] = doc.data
    i = 0
    while i < len(path) - 1:
        part = path[i]
        here = node.get(part)
        if isinstance(here, list) and i + 1 < len(path) - 1:
            # A list of named items (the stages): `stages.train-2.with.max_steps=2` names one.
            node = _named_item(here, path[i + 1], origin, ".".join(path[: i + 1]))
            i += 2
            continue
        if not isinstance(here, dict):
            if part in node:
                raise ConfigError(f"{origin}: {'.'.join(path[: i + 1])} is not a section")
            node[part] = {}
        node = node[part]
        i += 1
    node[path[-1]] = value
    doc.origins[path] = origin


def _named_item(items: list[Any], name: str, origin: Origin, where: str) -> dict[str, Any]:
    """The mapping in ``items`` whose ``name`` is ``name`` (an override's way into a list)."""
    for item in items:
        if isinstance(item, dict) and item.get("name") == name:
            return item
    names = [str(item.get("name")) for item in items if isinstance(item, dict) and "name" in item]
    raise ConfigError(f"{origin}: {where}: no item named '{name}'{suggest(name, names)}; named: {', '.join(names) or 'none'}")


def _leaves(data: dict[str, Any], prefix: tuple[str, ...]) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for key, value in data.items():
        path = prefix + (str(key),)
        out |= _leaves(value, path) if isinstance(value, dict) and value else {path}
    return out


def _lift_model_train(doc: ConfigDoc, lifted: set[tuple[str, ...]]) -> set[tuple[str, ...]]:
    """Move a model file's ``train:`` block (per-size defaults) under the top-level ``train``.

    Precedence, lowest first: schema defaults < the model file's ``train:`` block < the pipeline's
    own ``train:`` keys < ``train.*`` overrides. The rule is the same whether the model is named in
    the pipeline or by a ``model=...`` override: ``smoke.yaml model=gemma3-27b`` gets the 27B layout
    (nodes, ZeRO-3, quant storage, batch) except where smoke.yaml itself sets a train key. Defaults
    lifted from a previous model (``lifted``, the leaf paths that came from it and nothing else)
    are removed first, so that switching models leaves none of the old model's layout behind.
    Returns the leaf paths that now come from the model file.
    """
    model = doc.data.get("model")
    if not isinstance(model, dict) or "train" not in model:
        return lifted
    defaults = model.pop("train")
    where = doc.origins.get(("model", "train"), Origin("config"))
    if not isinstance(defaults, dict):
        raise ConfigError(f"{where}: model.train: expected a mapping of train keys (per-size defaults)")
    train = doc.data.get("train")
    if train is not None and not isinstance(train, dict):
        raise ConfigError(f"{doc.origins.get(('train',), where)}: train: expected a mapping")
    train = train or {}
    for leaf in lifted:  # the previous model's defaults that no override replaced since
        if any(str(doc.origins.get(leaf[:i], "")).startswith("override") for i in range(1, len(leaf) + 1)):
            continue
        node: Any = train
        for part in leaf[1:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf[-1], None)
        doc.origins.pop(leaf, None)
    merged = ConfigDoc(data={"train": defaults})
    _merge(merged, ConfigDoc(data={"train": train}))
    own = _leaves(train, ("train",))
    doc.data["train"] = merged.data["train"]
    for key in [k for k in doc.origins if k[:2] == ("model", "train")]:
        origin = doc.origins.pop(key)
        doc.origins.setdefault(("train",) + key[2:], origin)
    return _leaves(defaults, ("train",)) - own


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Load, compose, override and validate a pipeline config; raise ConfigError on any problem."""
    path = Path(path)
    doc = load_yaml_file(path, (), ())
    lifted = _lift_model_train(doc, set())
    for override in overrides:
        _apply_override(doc, override)
        lifted = _lift_model_train(doc, lifted)
    try:
        return PipelineConfig.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, doc, path, PipelineConfig)) from None
