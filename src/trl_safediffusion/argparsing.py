"""Dataclass fields as command-line flags and `--config` YAML keys, the way `trl.TrlParser` reads them.

[`SafeDiffusionParser`] is the one parser of `trl-safediffusion train | evaluate | demo`, the toy demo and the example
scripts. It accepts what `trl.TrlParser` accepts: `--config file.yaml` (flat `field: value` keys; flags override the
file), the YAML `env:` mapping (environment variables set before the dataclasses are built), option names with
underscores or dashes (`--train_learning_rate` / `--train-learning-rate`) and `--no_field` for booleans. On top of it,
values are converted to the field's type with an error that names the field (and the file a value came from), and an
unknown option or key is an error that suggests the closest field.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from trl.scripts.utils import TrlParser


class CLIError(ValueError):
    """A command-line or YAML configuration error; the message names the offending field."""


class FieldValueError(CLIError):
    """A value that does not convert to its field's type: `field`, `value` and the expected `type_hint`."""

    def __init__(self, field: str, value: Any, type_hint, detail: str = ""):
        self.field, self.value, self.type_hint, self.detail = field, value, type_hint, detail
        super().__init__(self.describe(field))

    def describe(self, name: str, bool_text: str = "bool") -> str:
        """The message naming the value `name` (a field or the flag as typed); booleans are called `bool_text`."""
        return f"{name}: expected {type_name(self.type_hint, bool_text)}, got {self.value!r}{self.detail}"


# ----------------------------------------------------------------------------------------------------------------------
# Typed conversion of YAML values and flags
# ----------------------------------------------------------------------------------------------------------------------

TRUE_WORDS = ("true", "yes", "1", "on", "y")
FALSE_WORDS = ("false", "no", "0", "off", "n")


def _unwrap_optional(tp) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def type_name(tp, bool_text: str = "bool") -> str:
    """How a field's type reads in help and errors: `int`, `list of float or null`, ..."""
    inner, optional = _unwrap_optional(tp)
    origin = typing.get_origin(inner)
    if origin in (typing.Union, types.UnionType):
        name = " or ".join(type_name(a, bool_text) for a in typing.get_args(inner))
    elif origin is list:
        (item,) = typing.get_args(inner) or (str,)
        name = f"list of {item.__name__}"
    elif origin is dict or inner is dict:
        name = "mapping (YAML mapping or JSON object)"
    elif inner is bool:
        name = bool_text
    else:
        name = getattr(inner, "__name__", str(inner))
    return name + (" or null" if optional else "")


def default_text(f: dataclasses.Field) -> str:
    """A field's default as help and the configuration reference show it."""
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.name == "exp_name":
        return "the launching script's name"
    if f.default_factory is not dataclasses.MISSING:
        return repr(f.default_factory())
    return "required"


def convert_value(name: str, value: Any, tp) -> Any:
    """Convert a YAML value or a flag string to the field's type; raise [`FieldValueError`] naming the field otherwise."""
    inner, optional = _unwrap_optional(tp)

    def bad(detail: str = ""):
        return FieldValueError(name, value, tp, detail)

    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("none", "null")):
        if optional:
            return None
        raise bad()
    origin = typing.get_origin(inner)
    if origin in (typing.Union, types.UnionType):  # e.g. `int | str`: the first type that takes the value
        for option in typing.get_args(inner):
            try:
                return convert_value(name, value, option)
            except FieldValueError:
                continue
        raise bad()
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
            return value.strip().lower() in TRUE_WORDS
        raise bad()
    if inner is int:
        return _to_int(value, bad)
    if inner is float:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())  # YAML 1.1 reads `1e-5` as a string
            except ValueError:
                raise bad() from None
        raise bad()
    if inner is str:
        if isinstance(value, bool):  # YAML 1.1 reads unquoted no/off/false and yes/on/true as booleans
            example = "no" if value is False else "yes"
            raise bad(f"; YAML reads an unquoted {example} as a boolean: quote the value, e.g. {name}: \"{example}\"")
        if isinstance(value, (str, int, float)):
            return str(value)
        raise bad()
    if inner is dict or origin is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise bad(" (give a JSON object, e.g. '{\"key\": 1}')") from None
        if not isinstance(value, dict):
            raise bad()
        return value
    if origin is list:
        return _to_list(name, value, inner, bad)
    return value


def _to_int(value, bad):
    if isinstance(value, bool):
        raise bad()
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                as_float = float(value)
            except ValueError:
                raise bad() from None
            if as_float.is_integer():
                return int(as_float)
    raise bad()


def _to_list(name, value, inner, bad):
    (item_type,) = typing.get_args(inner) or (str,)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise bad() from None
        else:
            value = [v for v in text.split(",") if v.strip()]
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise bad()
    out = []
    for item in value:
        if isinstance(item, str) and item_type is not str and "," in item:
            out += [convert_value(name, v, item_type) for v in item.split(",") if v.strip()]
        elif isinstance(item, str) and item_type is str and "," in item:
            out += [v.strip() for v in item.split(",") if v.strip()]
        else:
            out.append(convert_value(name, item, item_type))
    return out


def suggest(name: str, known, prefix: str = "") -> str:
    """`"; did you mean X?"` for the entries of `known` closest to `name`, or `""`."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""


def load_yaml_config(path: str) -> dict[str, Any]:
    """Read a flat YAML mapping of field names to values (`CLIError` for a missing or malformed file)."""
    import yaml

    if not os.path.isfile(path):
        raise CLIError(f"--config: file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise CLIError(f"--config: {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CLIError(f"--config: {path} must hold a mapping of field: value pairs, got {type(data).__name__}")
    return data


def apply_env_block(env: Any, source: str) -> None:
    """Set the environment variables of a config file's `env:` mapping (as `trl.TrlParser` does)."""
    if not isinstance(env, dict):
        raise CLIError(f"env: expected a mapping of environment variable names to values, got {env!r} (from {source})")
    for key, value in env.items():
        if isinstance(value, (dict, list)):
            raise CLIError(f"env: {key} must be a single value, got {value!r} (from {source})")
        os.environ[str(key)] = str(value)  # as trl.TrlParser: `false` becomes "False"


# ----------------------------------------------------------------------------------------------------------------------
# The parser
# ----------------------------------------------------------------------------------------------------------------------

_GIVEN = "_flags_given"  # namespace attribute: field -> the option string it was given as on the command line


class _FieldAction(argparse.Action):
    """Store the raw string(s) of a field's flag (converted later, with the field's error) and record the flag."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values is None or self.nargs == 0:  # `--flag` alone (booleans) or `--no_flag`
            values = self.const
        setattr(namespace, self.dest, values)
        namespace.__dict__.setdefault(_GIVEN, {})[self.dest] = option_string


class _HelpFormatter(argparse.HelpFormatter):
    """Lists a field's spellings once with one metavar: `--train_learning_rate, --train-learning-rate VALUE`."""

    def _format_action_invocation(self, action):
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        return f"{', '.join(action.option_strings)} {self._format_args(action, self._get_default_metavar_for_optional(action))}"


class SafeDiffusionParser(TrlParser):
    """A `trl.TrlParser` (an `transformers.HfArgumentParser`) whose values are typed and whose errors name the field.

    Every field of `dataclass_types` is a flag under its name with underscores and with dashes, plus the names in
    `aliases`; a boolean takes `--field`, `--field false` or `--no_field`. [`parse_args_and_config`] reads
    `--config FILE.yaml` first (its `env:` mapping sets environment variables), then the flags, which override the file;
    an unknown key or option, or a value of the wrong type, is a `CLIError` naming it, with the closest field suggested
    and `(from FILE.yaml)` when the value came from the file.

    Args:
        dataclass_types (`type` or `list[type]`):
            The dataclasses to fill, returned in this order.
        group_titles (`dict[type, str]`, *optional*):
            The help section of each dataclass (default: its `_argument_group_name`, or its name).
        aliases (`dict[str, list[str]]`, *optional*):
            Extra names of fields (e.g. `{"num_epochs": ["epochs"]}`), as flags and as YAML keys.
        exclude (`dict[type, list[str]]`, *optional*):
            Fields of a dataclass that are not options (the caller sets them).
        raise_errors (`bool`, *optional*, defaults to `False`):
            Raise `CLIError` on a mistake instead of printing `prog: error: message` (one line) and exiting with code 2.
        bool_text (`str`, *optional*, defaults to `"bool"`):
            How errors and help name the boolean type.
        **kwargs:
            Passed to `argparse.ArgumentParser` (`prog`, `description`, `usage`, ...).
    """

    def __init__(
        self,
        dataclass_types,
        *,
        group_titles: Mapping[type, str] | None = None,
        aliases: Mapping[str, Iterable[str]] | None = None,
        exclude: Mapping[type, Iterable[str]] | None = None,
        raise_errors: bool = False,
        bool_text: str = "bool",
        **kwargs,
    ):
        self._titles = dict(group_titles or {})
        self._aliases = {name: list(names) for name, names in (aliases or {}).items()}
        self._exclude = {cls: set(names) for cls, names in (exclude or {}).items()}
        self._raise_errors = raise_errors
        self._bool_text = bool_text
        self._fields: dict[str, tuple[type, dataclasses.Field, Any]] = {}
        self._actions_of: dict[str, argparse.Action] = {}
        self._layered: dict[str, tuple[Any, str]] = {}  # field -> (value, where it came from), over the defaults
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(dataclass_types, **kwargs)
        self.add_argument("--config", metavar="FILE.yaml", help="YAML file of field: value pairs (flat; an env: mapping "
                          "sets environment variables); flags override it.")

    # -- building the options ------------------------------------------------------------------------------------------

    def _add_dataclass_arguments(self, dtype):
        title = self._titles.get(dtype) or getattr(dtype, "_argument_group_name", dtype.__name__)
        group = self.add_argument_group(title)
        hints = typing.get_type_hints(dtype)
        for f in dataclasses.fields(dtype):
            if not f.init or f.name in self._exclude.get(dtype, ()):
                continue
            if f.name in self._fields:
                raise RuntimeError(f"field {f.name} is defined in both {self._fields[f.name][0].__name__} and "
                                   f"{dtype.__name__}")
            self._fields[f.name] = (dtype, f, hints[f.name])
            self._add_field(group, f, hints[f.name])

    def _add_field(self, group, f: dataclasses.Field, tp) -> None:
        inner, _ = _unwrap_optional(tp)
        flags = []
        for name in (f.name, *self._aliases.get(f.name, ())):
            flags += [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        default = argparse.SUPPRESS
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        kwargs: dict[str, Any] = {"dest": f.name, "action": _FieldAction, "default": default,
                                  "metavar": f.name.upper(), "help": self._help(f, tp, default_text(f))}
        if inner is bool:
            kwargs.update(nargs="?", const="true")
        elif typing.get_origin(inner) is list:
            kwargs.update(nargs="+")
        self._actions_of[f.name] = group.add_argument(*flags, **kwargs)
        if inner is bool:
            negated = [f"--no_{f.name}", f"--no-{f.name.replace('_', '-')}"]
            group.add_argument(*dict.fromkeys(negated), dest=f.name, action=_FieldAction, nargs=0, const="false",
                               default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def _help(self, f: dataclasses.Field, tp, default: str) -> str:
        extra = f"; --no_{f.name} sets false" if _unwrap_optional(tp)[0] is bool else ""
        text = f"{f.metadata.get('help', '')} [{type_name(tp, self._bool_text)}; default: {default}{extra}]"
        return text.replace("%", "%%")

    def field_names(self) -> list[str]:
        """The fields that are options, in order."""
        return list(self._fields)

    def _dest(self, key: str) -> str | None:
        name = str(key).lstrip("-").replace("-", "_")
        if name in self._fields:
            return name
        return next((field for field, names in self._aliases.items() if name in names and field in self._fields), None)

    def _known_names(self) -> list[str]:
        return [*self._fields, *(a for field, names in self._aliases.items() if field in self._fields for a in names)]

    # -- defaults, config file, errors ---------------------------------------------------------------------------------

    def set_defaults_with_config(self, **kwargs) -> list[str]:
        """Make `kwargs` (field names or aliases to values) the defaults that flags override, as `trl.TrlParser` does;
        help shows them. Returns the `--key value` strings of the keys that are no field."""
        return self._set_layer(kwargs, "the defaults")

    def _set_layer(self, values: Mapping[str, Any], source: str) -> list[str]:
        remaining = []
        for key, value in values.items():
            dest = self._dest(key)
            if dest is None:
                remaining += [f"--{key}", str(value)]
                continue
            self._layered[dest] = (value, source)
            action = self._actions_of[dest]
            action.default = value
            _, f, tp = self._fields[dest]
            action.help = self._help(f, tp, repr(value))
        return remaining

    def error(self, message: str):
        """A mistake on the command line: `CLIError` with `raise_errors`, else one line `prog: error: message` and
        exit code 2."""
        message = " ".join(str(message).split())
        if self._raise_errors:
            raise CLIError(message)
        self.exit(2, f"{self.prog}: error: {message}\n")

    # -- parsing -------------------------------------------------------------------------------------------------------

    def parse_args_and_config(self, args: Iterable[str] | None = None, return_remaining_strings: bool = False,
                              fail_with_unknown_args: bool = True, separate_remaining_strings: bool = False):
        """Parse `--config` and the flags into instances of the dataclasses (see the class docstring).

        With `return_remaining_strings`, unknown options and keys are returned (last) instead of being errors: one list,
        or the file's and the command line's with `separate_remaining_strings`.
        """
        try:
            return self._parse(args, return_remaining_strings, fail_with_unknown_args, separate_remaining_strings)
        except CLIError as err:
            self.error(str(err))

    def parse_args_into_dataclasses(self, args=None, return_remaining_strings: bool = False, **ignored):
        """`transformers.HfArgumentParser`'s entry point; the same as [`parse_args_and_config`]."""
        return self.parse_args_and_config(args, return_remaining_strings=return_remaining_strings)

    def parse_dict(self, args: dict[str, Any], allow_extra_keys: bool = False) -> tuple:
        """The dataclasses from a dict of field names (or aliases) to values, converted as YAML values are."""
        values, sources = {}, {}
        for key, value in args.items():
            dest = self._dest(key)
            if dest is None:
                if allow_extra_keys:
                    continue
                raise CLIError(f"unknown field {key!r}{suggest(str(key), self._known_names())}")
            values[dest], sources[dest] = value, "the given dict"
        return self._build(values, sources, {})

    def _parse(self, args, return_remaining, fail_with_unknown, separate):
        args = list(sys.argv[1:] if args is None else args)
        config_path = _config_path(args)
        config_remaining: list[str] = []
        if config_path is not None:
            data = load_yaml_config(config_path)
            if "env" in data:
                apply_env_block(data.pop("env"), config_path)
            config_remaining = self._set_layer(data, config_path)
            if config_remaining and fail_with_unknown and not return_remaining:
                key = config_remaining[0][2:]
                raise CLIError(f"unknown field {key!r} in {config_path}{suggest(key, self._known_names())}")
        namespace, unknown = self.parse_known_args(args)
        if unknown and not return_remaining:
            flags = [u for u in unknown if u.startswith("-")]
            if flags:
                name = flags[0].lstrip("-").split("=", 1)[0]
                close = suggest(name.replace("-", "_"), self._known_names(), prefix="--")
                raise CLIError(f"unknown option --{name}{close.replace('_', '-') if '-' in name else close}")
            raise CLIError(f"unexpected arguments {unknown}; every value needs a --field flag")
        given = namespace.__dict__.pop(_GIVEN, {})
        values = {dest: value for dest, (value, _) in self._layered.items()}
        sources = {dest: source for dest, (_, source) in self._layered.items()}
        for dest in given:
            values[dest], sources[dest] = getattr(namespace, dest), "command line"
        out = self._build(values, sources, given)
        if not return_remaining:
            return out
        return out + ((config_remaining, unknown) if separate else (config_remaining + unknown,))

    def _build(self, values: dict[str, Any], sources: dict[str, str], given: dict[str, str]) -> tuple:
        kwargs: dict[type, dict[str, Any]] = {cls: {} for cls in self.dataclass_types}
        for dest, value in values.items():
            cls, _, tp = self._fields[dest]
            try:
                kwargs[cls][dest] = convert_value(dest, value, tp)
            except FieldValueError as err:
                if dest in given:
                    raise CLIError(err.describe(given[dest], self._bool_text)) from None
                raise CLIError(f"{err.describe(dest, self._bool_text)} (from {sources[dest]})") from None
        out = []
        for cls in self.dataclass_types:
            try:
                out.append(cls(**kwargs[cls]))
            except (ValueError, TypeError) as err:
                raise CLIError(f"invalid {cls.__name__}: {err}") from None
        return tuple(out)


def _config_path(args: list[str]) -> str | None:
    """The value of the last `--config FILE` / `--config=FILE` in `args`."""
    path = None
    for i, arg in enumerate(args):
        if arg == "--config":
            if i + 1 >= len(args) or args[i + 1].startswith("-"):
                raise CLIError("--config needs a value: the path of a YAML file")
            path = args[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    return path
