"""Custom objects of a user's model: those the forward pass does not need are dropped, the others
come from the user's code (``--custom-objects FILE.py|module``), which runs only with explicit trust."""
from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

#: Layer config keys whose objects only matter while training (initial values, penalties, projections).
_TRAINING_ONLY_RE = re.compile(r"(^|_)(initializer|regularizer|constraint)$")
CUSTOM_OBJECTS_HINT = ("pass the code that defines it with --custom-objects FILE.py|module together with "
                       "--trust-code (that code runs), or in the app fill in \"Custom objects\" and tick "
                       "\"I trust this file\"")


class CustomObjectsError(ValueError):
    """The user's custom-objects code cannot be used; the message says why; nothing was changed."""


@dataclass(frozen=True)
class CustomObjects:
    """Objects taken from the user's code: ``source`` as given, ``objects`` by name."""

    source: str
    objects: Mapping[str, Any]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self.objects))


def _kind_of(key: str) -> str:
    return _TRAINING_ONLY_RE.search(key).group(2)  # type: ignore[union-attr]


def _resolves(kind: str, value: Any, custom: Mapping[str, Any]) -> bool:
    """Whether Keras can rebuild this initializer/regularizer/constraint (it imports only keras modules)."""
    import keras

    module = {"initializer": keras.initializers, "regularizer": keras.regularizers,
              "constraint": keras.constraints}[kind]
    try:
        with keras.saving.custom_object_scope(dict(custom)):
            module.get(copy.deepcopy(value))
        return True
    except Exception:  # noqa: BLE001 - any failure means "cannot be rebuilt here"
        return False


def _object_name(value: Any) -> str:
    if isinstance(value, dict):
        inner = value.get("config")
        if value.get("class_name") == "function" and isinstance(inner, str):
            return inner
        return str(value.get("registered_name") or value.get("class_name"))
    return str(value)


def _training_only_keys(node: Any, layer: str = "") -> Iterator[tuple[dict, str, str]]:
    """(dict, key, layer name) for each initializer, regularizer or constraint set in a config.

    The caller may replace or delete ``dict[key]``: its value is not walked.
    """
    if isinstance(node, dict):
        inner = node.get("config")
        if isinstance(inner, dict) and isinstance(node.get("class_name"), str):
            layer = str(inner.get("name") or layer)
        for key in list(node):
            value = node[key]
            if isinstance(key, str) and _TRAINING_ONLY_RE.search(key) and value is not None:
                yield node, key, layer
            else:
                yield from _training_only_keys(value, layer)
    elif isinstance(node, list):
        for v in node:
            yield from _training_only_keys(v, layer)


def strip_training_only(config: Any, custom: Mapping[str, Any] = {}) -> tuple[Any, tuple[str, ...]]:
    """(config without the initializers, regularizers and constraints Keras cannot rebuild, what was dropped).

    They set initial values or add penalties while training; the forward pass never uses them,
    and a checkpoint's weights replace the initial values. Each dropped one reads
    ``layer.key = Name``. ``config`` is not modified.
    """
    dropped: list[str] = []
    out = copy.deepcopy(config)
    for node, key, layer in _training_only_keys(out):
        if not _resolves(_kind_of(key), node[key], custom):
            dropped.append(f"{layer}.{key} = {_object_name(node[key])}")
            del node[key]  # the layer's default takes its place
    return out, tuple(dropped)


_ZEROS = {"module": "keras.initializers", "class_name": "Zeros", "config": {}, "registered_name": None}


def zero_initializers(config: Any) -> Any:
    """``config`` with every initializer replaced by Zeros (a copy), for a model whose values are set later.

    Random initial values cost time to draw for every variable and are overwritten anyway.
    """
    out = copy.deepcopy(config)
    for node, key, _layer in _training_only_keys(out):
        if _kind_of(key) == "initializer":
            node[key] = dict(_ZEROS)
    return out


def _module_from_file(path: Path) -> Any:
    name = f"ade_custom_objects_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CustomObjectsError(f"{path}: not a Python file that can be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling-free Keras lookups expect it there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_custom_objects(source: str | Path, trust: bool) -> CustomObjects:
    """Import ``source`` (a ``.py`` file or an importable module name) and take its classes and functions.

    Runs the user's code, so it needs ``trust``. Raises CustomObjectsError when untrusted, when
    importing raises, or when the code defines no class or function.
    """
    text = str(source).strip()
    if not text:
        raise CustomObjectsError("--custom-objects is empty: give a .py file or a module name")
    if not trust:
        raise CustomObjectsError(
            f"--custom-objects {text}: loading it runs that Python code; add --trust-code (in the app: tick "
            "\"I trust this file\") if you wrote it or fully trust it")
    path = Path(text)
    try:
        if text.endswith(".py") or path.is_file():
            if not path.is_file():
                raise CustomObjectsError(f"--custom-objects {text}: no such file")
            module = _module_from_file(path)
        else:
            module = importlib.import_module(text)
    except CustomObjectsError:
        raise
    except ModuleNotFoundError as e:
        raise CustomObjectsError(f"--custom-objects {text}: cannot import it ({e}); give a .py file or a module "
                                 "on the Python path") from None
    except BaseException as e:  # noqa: BLE001 - user code may raise anything, SystemExit included
        raise CustomObjectsError(f"--custom-objects {text}: importing it raised {type(e).__name__}: {e}. "
                                 "Fix that code; nothing was loaded") from None
    objects = _public_objects(module)
    if not objects:
        raise CustomObjectsError(f"--custom-objects {text}: defines no class or function to use")
    return CustomObjects(text, objects)


def _public_objects(module: Any) -> dict[str, Any]:
    """Public classes and functions of ``module``, also under their Keras registered names."""
    import keras

    out: dict[str, Any] = {}
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        out[name] = obj
        try:
            registered = keras.saving.get_registered_name(obj)
        except Exception:  # noqa: BLE001
            registered = None
        if registered and registered != name:
            out[registered] = obj
    return out


_MISSING_RES = (
    re.compile(r"Could not locate (?:class|function) '([^']+)'"),
    re.compile(r"Unknown (?:layer|activation|loss|metric)[^:]*: '?([A-Za-z_][\w>.]*)"),
    re.compile(r"Could not interpret (\w+) (?:function )?identifier: ?'?([^'\s}]+)"),
)


def missing_object(text: str) -> str | None:
    """The name of the custom object a Keras deserialisation error says it could not find, if any."""
    for rx in _MISSING_RES:
        m = rx.search(text)
        if m:
            return m.group(m.lastindex or 1)
    return None


def object_modules(model: Any) -> list[dict[str, str | None]]:
    """Objects of ``model``'s config that are not Keras built-ins: name, kind, importable module or None.

    ``module`` is None when the code lives in ``__main__`` or a notebook: another process cannot import it.
    """
    import keras

    found: dict[tuple[str, str], str | None] = {}

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            module, cls = node.get("module"), node.get("class_name")
            if isinstance(cls, str) and "registered_name" in node and not str(module or "").startswith("keras"):
                name = _object_name(node)
                if module != "builtins" or cls == "function":
                    found[(name, cls if cls != "function" else "function")] = None
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    try:
        visit(keras.saving.serialize_keras_object(model))
    except Exception:  # noqa: BLE001 - a model that cannot be serialised cannot be saved either
        return []
    out = []
    for (name, kind), _ in sorted(found.items()):
        obj = keras.saving.get_registered_object(name) or _lookup(model, name)
        module = getattr(obj, "__module__", None) if obj is not None else None
        out.append({"name": name, "kind": "function" if kind == "function" else "class",
                    "module": module if module and module not in ("__main__", "builtins") else None})
    return out


def _lookup(model: Any, name: str) -> Any:
    """The Python object named ``name`` used somewhere in ``model``'s layers, by attribute scan."""
    for layer in _all_layers(model):
        for value in vars(layer).values():
            if getattr(value, "__name__", None) == name or type(value).__name__ == name:
                return value if getattr(value, "__name__", None) == name else type(value)
    return None


def _all_layers(model: Any) -> list[Any]:
    out, stack = [], list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop()
        out.append(layer)
        stack.extend(getattr(layer, "layers", []) or [])
    return out


def add_model_args(p) -> None:
    """Command-line options --trust-code and --custom-objects: every sub-command that loads a model has both."""
    p.add_argument("--trust-code", action="store_true",
                   help="allow Python code from the model (Lambda layers) or from --custom-objects to run. A "
                        "malicious file can then do anything your user account can; only for files you trust")
    p.add_argument("--custom-objects", metavar="FILE.py|MODULE",
                   help="Python file or module defining the custom layers, activations or losses the model "
                        "needs (runs that code: needs --trust-code)")
