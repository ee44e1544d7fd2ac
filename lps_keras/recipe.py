"""Recipes: one JSON file describes a whole run (model, data, training, eval, export, search).

JSON is parsed into frozen dataclasses; unknown keys and wrong types are rejected with the
dotted key path (``train.batch_size``) and the file name. Allowed values and ranges live on
the fields themselves (``recipe_sections.field(..., choices=..., gt=...)``, kept in the field metadata).
``--set key.sub=value`` overrides are applied to the raw mapping before validation, so they are
checked the same way; they are the one way configuration enters a run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Optional

from lps_keras.arch import Arch, ArchError
from lps_keras.errors import UsageError
from lps_keras.recipe_schema import RecipeError, build_section, check_rules, field_type
from lps_keras.recipe_sections import (  # noqa: F401 - the sections are part of this module's API
    DATASET_CLASSES,
    AugmentConfig,
    DataConfig,
    EvalConfig,
    ExportConfig,
    ModelConfig,
    NASConfig,
    PretrainConfig,
    ProxyConfig,
    RacingSettings,
    SearchConfig,
    SyntheticConfig,
    TrainConfig,
)


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str = "unnamed"
    description: str = ""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    search: SearchConfig = SearchConfig()
    nas: NASConfig = NASConfig()  # search.py only
    pretrain: PretrainConfig = PretrainConfig()

    # ------------------------------------------------------------- derived values
    def family(self):
        """The recipe's model family (:class:`lps_keras.families.Family`)."""
        from lps_keras.families import get_family

        return get_family(self.model.family)

    def model_config(self, num_classes: Optional[int] = None):
        """The model's config in its family (an :class:`Arch` for LPS-Net), with the class count from
        the model or the dataset."""
        from lps_keras.families import FamilyError, family_of_preset
        from lps_keras.presets import get_preset

        n = num_classes or self.model.num_classes or dataset_num_classes(self.data.dataset)
        family = self.family()
        try:
            if self.model.arch is not None:
                return Arch.from_dict({**self.model.arch, "num_classes": n})
            if self.model.config is not None:
                return family.config(config=self.model.config, num_classes=n)
            if self.model.preset not in family.presets:
                owner = family_of_preset(self.model.preset)  # FamilyError listing every preset if none has it
                raise RecipeError(f"model.preset: {self.model.preset!r} is a preset of family {owner.name!r}; "
                                  f"set model.family to {owner.name!r}")
            if family.name == "lps":
                return get_preset(self.model.preset, num_classes=n)
            return family.config(preset=self.model.preset, num_classes=n)
        except (ArchError, FamilyError) as e:
            raise RecipeError(self._model_error(str(e), family)) from None

    def _model_error(self, message: str, family) -> str:
        """``message`` under the dotted field it is about (``model.config.expansion must be ...``)."""
        where = ("model.arch" if self.model.arch is not None else "model.config" if self.model.config is not None
                 else "model.preset")
        first = message.split(" ", 1)[0]
        fields = {f.name for f in dataclasses.fields(family.config_type)} if dataclasses.is_dataclass(
            family.config_type) else set()
        if where != "model.preset" and first in fields:
            return f"{where}.{message}"
        return f"{where}: {message}"

    def arch(self, num_classes: Optional[int] = None) -> Arch:
        """The LPS-Net architecture (LPS-only: another family's recipe is refused naming the field)."""
        if self.model.family != "lps":
            raise RecipeError(f"model.family: {self.model.family!r}; this needs an LPS-Net architecture "
                              "(expansion, Table 4, re-parameterisation and pretraining are LPS-Net only)")
        return self.model_config(num_classes)

    def check_classes_cover_dataset(self) -> None:
        """Raise RecipeError if the model has fewer outputs than the dataset has classes.

        Training and evaluation call it before any work: such labels would fall outside the
        model's outputs and fail only at the first validation. (Exporting such a model is fine.)
        """
        n, dataset = self.model.num_classes, self.data.dataset
        if n is not None and dataset in DATASET_CLASSES and n < DATASET_CLASSES[dataset]:
            raise RecipeError(f"model.num_classes: {n} is fewer than the {DATASET_CLASSES[dataset]} classes of "
                              f"data.dataset {dataset!r}; its labels would fall outside the model's outputs")

    def to_dict(self) -> dict:
        return _to_jsonable(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


def dataset_num_classes(dataset: str) -> int:
    if dataset not in DATASET_CLASSES:
        raise RecipeError(f"data.dataset: unknown dataset {dataset!r}; known: {', '.join(sorted(DATASET_CLASSES))}")
    return DATASET_CLASSES[dataset]


# --------------------------------------------------------------------------- loading
def load_recipe(path: str | Path, overrides: Optional[list[str]] = None) -> Recipe:
    """Read a recipe JSON file, apply ``key.sub=value`` overrides, validate."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except json.JSONDecodeError as e:
        raise RecipeError(f"{path}: not valid JSON: {e}") from None
    except RecursionError:
        raise RecipeError(f"{path}: nested more than {MAX_NESTING} levels deep; no recipe field "
                          "nests like that") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a JSON object")
    _check_nesting(raw, "", str(path))
    raw.setdefault("name", path.stem)
    return recipe_from_dict(raw, overrides=overrides, source=str(path))


#: No recipe field nests deeper than a few levels (model.arch.depth is a list in an object in an
#: object). Deeper values are refused with the field's name before anything recurses into them:
#: a few thousand levels made json, the schema walk and repr() raise RecursionError tracebacks.
MAX_NESTING = 32


def _check_nesting(value, key: str, source: str) -> None:
    """RecipeError naming the field (``key`` + the path inside ``value``) that nests beyond MAX_NESTING."""
    stack = [(value, key, 0)]
    while stack:  # iterative: the check itself must not recurse
        node, where, depth = stack.pop()
        if depth > MAX_NESTING:
            sep = " " if source == "--set" else ": "
            raise RecipeError(f"{source}{sep}{where or 'recipe'}: nested more than {MAX_NESTING} levels deep; "
                              "no recipe field nests like that")
        if isinstance(node, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, where, depth + 1) for v in node)


def recipe_from_dict(raw: dict, overrides: Optional[list[str]] = None, source: str = "recipe") -> Recipe:
    raw = json.loads(json.dumps(raw))  # deep copy, JSON types only
    for item in overrides or ():
        apply_override(raw, item, source=source)
    try:
        recipe = build_section(Recipe, raw, "")
        _check(recipe)
        recipe.model_config()  # validates model.preset / model.arch / model.config
    except RecipeError as e:
        raise RecipeError(f"{source}: {e}") from None
    return recipe


def validate_recipe(recipe: Recipe, source: str = "recipe") -> Recipe:
    """Check a recipe built in code (e.g. with ``dataclasses.replace``) as a loaded one is checked."""
    try:
        _check(recipe)
        recipe.model_config()
    except RecipeError as e:
        raise RecipeError(f"{source}: {e}") from None
    return recipe


def apply_override(raw: dict, item: str, source: str = "recipe") -> None:
    """Apply one ``a.b.c=value`` to a raw recipe mapping; value parsed as JSON if it can be."""
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected key.sub=value")
    key, _, text = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise RecipeError(f"--set {item!r}: bad key {key!r}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text  # bare strings need no quotes: --set data.root=/data/cs
    except RecursionError:
        raise RecipeError(f"--set {key}: nested more than {MAX_NESTING} levels deep; no recipe field "
                          "nests like that") from None
    _check_nesting(value, key, "--set")
    # Walk the dataclass schema so a typo is caught here with the override's own key.
    cls: Any = Recipe
    node = raw
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else None
        if fields is None or part not in fields:
            where = ".".join(parts[:i]) or "recipe"
            raise RecipeError(f"--set {item!r}: unknown key {key!r} ({where} has no field {part!r})")
        if i == len(parts) - 1:
            node[part] = value
        else:
            ftype = field_type(cls, part)
            if not dataclasses.is_dataclass(ftype):
                # e.g. model.arch.depth: the arch dict is free-form, validated by Arch.
                sub = node.setdefault(part, {}) if isinstance(node.get(part), dict) or node.get(part) is None else None
                if sub is None or not isinstance(sub, dict):
                    raise RecipeError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is not a section")
                node[part] = sub
                rest = parts[i + 1 :]
                for p in rest[:-1]:
                    sub = sub.setdefault(p, {})
                sub[rest[-1]] = value
                return
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is not a section")
            cls = ftype


def _check(recipe: Recipe) -> None:
    check_rules(recipe)
    lo, hi = recipe.data.augment.scale_range
    if not 0 < lo <= hi:
        raise RecipeError(f"data.augment.scale_range: need 0 < low <= high, got {[lo, hi]!r}")
    pre = recipe.pretrain
    for key, (lo, hi), top in (("crop_area", pre.crop_area, 1.0), ("crop_aspect", pre.crop_aspect, math.inf)):
        if not lo <= hi <= top:
            raise RecipeError(f"pretrain.{key}: need low <= high{' <= 1' if top == 1.0 else ''}, got {[lo, hi]!r}")
    proxy = recipe.search.proxy
    if proxy.racing.enabled and proxy.racing.max_seeds <= proxy.seeds:
        raise RecipeError(f"search.proxy.racing.max_seeds: {proxy.racing.max_seeds} must exceed search.proxy.seeds "
                          f"({proxy.seeds}) for racing to add any seed")
    for key in ("warm_iterations", "warm_lr"):
        if getattr(proxy, key) is not None and proxy.init != "parent":
            raise RecipeError(f"search.proxy.{key}: {getattr(proxy, key)} is only used with "
                              f"search.proxy.init=parent (init is {proxy.init!r})")
    t = recipe.train
    if t.lr_schedule == "step":
        if not t.lr_steps or t.lr_step_factors is None or len(t.lr_steps) != len(t.lr_step_factors):
            raise RecipeError(f"train.lr_steps: lr_schedule 'step' needs lr_steps and lr_step_factors of one length, "
                              f"got {t.lr_steps!r} and {t.lr_step_factors!r}")
        if list(t.lr_steps) != sorted(set(t.lr_steps)):
            raise RecipeError(f"train.lr_steps: must increase, got {list(t.lr_steps)!r}")
    elif t.lr_steps is not None or t.lr_step_factors is not None:
        raise RecipeError("train.lr_steps: given, but train.lr_schedule is 'poly'; set it to 'step' to use them")
    if t.class_balance == "explicit" and t.class_weights is None:
        raise RecipeError("train.class_weights: class_balance 'explicit' needs one weight per class")
    if t.class_weights is not None:
        if t.class_balance != "explicit":
            raise RecipeError(f"train.class_weights: given, but train.class_balance is {t.class_balance!r}; set it "
                              "to 'explicit' to use them")
        n = recipe.model.num_classes or DATASET_CLASSES.get(recipe.data.dataset)
        if n is not None and len(t.class_weights) != n:
            raise RecipeError(f"train.class_weights: {len(t.class_weights)} weights for {n} classes")
    if any(not part for part in recipe.data.train_split.split("+")):
        raise RecipeError(f"data.train_split: {recipe.data.train_split!r} has an empty split name ('a+b' joins two)")
    ops = recipe.search.ops
    if ops is not None:
        from lps_keras.arch import EXPANSION_OPS_BY_NAME

        unknown = [n for n in ops if n not in EXPANSION_OPS_BY_NAME]
        if unknown or not ops or len(set(ops)) != len(ops):
            raise RecipeError(f"search.ops: {list(ops)!r} must be distinct names among "
                              f"{', '.join(EXPANSION_OPS_BY_NAME)}" + (f" ({unknown[0]!r} is not)" if unknown else ""))
    source = recipe.search.latency.source
    if source != "measured" and not (source.startswith("profile:") and source[len("profile:"):].strip()):
        raise RecipeError(f"search.latency.source: {source!r} is neither 'measured' nor 'profile:<file>'")
    m = recipe.model
    if m.arch is not None and m.family != "lps":
        raise RecipeError(f"model.arch: an LPS-Net architecture, but model.family is {m.family!r}; give that "
                          "family's model.preset or model.config")
    if m.config is not None and m.family == "lps":
        raise RecipeError("model.config: LPS-Net's explicit architecture is model.arch")
    if sum(v is not None for v in (m.preset, m.arch, m.config)) != 1:
        raise RecipeError("model: give exactly one of model.preset and model.arch"
                          + ("" if m.family == "lps" else " (LPS-Net) or model.config"))


def parse_size(text: str) -> tuple[int, int]:
    """``"1024x2048"`` -> (1024, 2048); raises ValueError quoting the text."""
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise UsageError(f"input size must look like HEIGHTxWIDTH (e.g. 1024x2048), got {text!r}") from None
    if h <= 0 or w <= 0:
        raise UsageError(f"input size must be positive, got {text!r}")
    return h, w


def _to_jsonable(x):
    if isinstance(x, dict):
        return {k: _to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_jsonable(v) for v in x]
    return x


def dotted(d: dict, prefix: str = "", leaves: tuple = ()) -> dict:
    """``{"data": {"augment": {"hflip": 1}}}`` -> ``{"data.augment.hflip": 1}`` (keys as ``--set`` names them);
    a dict under a key in ``leaves`` stays one value."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and key not in leaves:
            out.update(dotted(value, f"{prefix}{key}.", leaves))
        else:
            out[f"{prefix}{key}"] = value
    return out
