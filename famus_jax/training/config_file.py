"""Config files and the command line that names them, with one-line errors.

A config file is a Python file whose `get_config()` returns an
`ml_collections.ConfigDict` (`configs/*.py`); `--config=FILE.py:PARAM` calls
`get_config('PARAM')`. `load_config_file` reads one and turns whatever goes
wrong (no such file, a syntax error, no `get_config`, a parameter it does not
take, an exception inside it, something else than a ConfigDict returned) into
a `ConfigFileError` naming the file (and line) and what to do. `parse_flags`
reads the command line the same way: the config file first, then absl's flags
with their `--config.FIELD=VALUE` overrides, whose errors name the field (an
unknown one with the nearest field name).
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import os
import traceback
from typing import Optional

from absl import flags
import ml_collections

# Where every field and its default are defined (named in the messages).
SCHEMA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'config.py')
EXAMPLE = 'configs/digits.py'


class ConfigFileError(ValueError):
  """A config file cannot be used; str() is one line naming it and what to do."""


class CommandLineError(ValueError):
  """A bad command line; str() is one line naming the flag and what to do."""


def split_config_arg(value: str) -> tuple[str, Optional[str]]:
  """`FILE.py:PARAM` -> (FILE.py, 'PARAM'); `FILE.py` -> (FILE.py, None)."""
  path, sep, param = value.partition(':')
  return path, (param if sep else None)


def _line_in(error: BaseException, path: str) -> str:
  """' (line N)': the last line of `path` in the traceback of `error`."""
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if os.path.abspath(f.filename) == os.path.abspath(path)]
  return f' (line {frames[-1].lineno})' if frames else ''


def _failure(error: BaseException) -> str:
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  return f'{type(error).__name__}: {lines[0]}' if lines else type(error).__name__


def _load_module(path: str, module_name: str):
  """Runs the config file as a module; `ConfigFileError` if it cannot run."""
  if not os.path.isfile(path):
    raise ConfigFileError(f'{path}: no such config file (the configs are configs/*.py, '
                          f'e.g. --config={EXAMPLE})')
  spec = importlib.util.spec_from_file_location(module_name, path)
  if spec is None:
    raise ConfigFileError(f'{path}: not a Python file; a config file is a .py file '
                          f'defining get_config() (e.g. {EXAMPLE})')
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except ConfigFileError:
    raise
  except SyntaxError as e:
    raise ConfigFileError(f'{path}, line {e.lineno}: syntax error ({e.msg}); fix the '
                          'config file') from None
  except Exception as e:  # pylint: disable=broad-except  (any error inside the file)
    raise ConfigFileError(f'{path}{_line_in(e, path)}: {_failure(e)}; fix the config '
                          'file') from None
  return module


def load_config_file(path: str, param: Optional[str] = None, *,
                     module_name: str = 'famus_cli_config') -> ml_collections.ConfigDict:
  """`get_config()` (or `get_config(param)`) of the config file `path`."""
  module = _load_module(path, module_name)
  get_config = getattr(module, 'get_config', None)
  if not callable(get_config):
    raise ConfigFileError(f'{path}: defines no get_config(); a config file defines '
                          'get_config() returning an ml_collections.ConfigDict (e.g. '
                          f'{EXAMPLE})')
  args = () if param is None else (param,)
  try:
    inspect.signature(get_config).bind(*args)
  except TypeError:
    raise ConfigFileError(
        f'--config={path}: get_config() needs a parameter; use --config={path}:VALUE'
        if param is None else f'--config={path}:{param}: get_config() of {path} takes '
        f'no parameter; use --config={path}') from None
  try:
    config = get_config(*args)
  except ConfigFileError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigFileError(f'{path}{_line_in(e, path)}: get_config() failed with '
                          f'{_failure(e)}; fix the config file') from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigFileError(f'{path}: get_config() returned {type(config).__name__}, not '
                          f'an ml_collections.ConfigDict (e.g. {EXAMPLE})')
  return config


# ---------------------------------------------------------------------------
# The command line.


def flag_value(argv: list[str], name: str) -> Optional[str]:
  """The value of `--name=V` or `--name V` in `argv` (the last one), or None."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      value = arg.split('=', 1)[1]
    elif arg == f'--{name}' and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def field_names(node: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Every dotted field name of `node`, sub-dicts included."""
  out = []
  for key in node.keys():
    out.append(prefix + key)
    if isinstance(node[key], ml_collections.ConfigDict):
      out.extend(field_names(node[key], f'{prefix}{key}.'))
  return out


def _lookup(config, dotted: str):
  for part in dotted.split('.'):
    config = config[part]
  return config


def unknown_override(argv: list[str], config) -> Optional[str]:
  """A one-line message for the first `--config.X` naming no field, or None."""
  names = field_names(config)
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    dotted = arg[len('--config.'):].split('=', 1)[0]
    if dotted in names:
      continue
    parent = dotted.rsplit('.', 1)[0] if '.' in dotted else ''
    if parent in names and not isinstance(_lookup(config, parent),
                                          ml_collections.ConfigDict):
      return f'--config.{dotted}: config.{parent} is a value, it has no fields'
    depth = dotted.count('.')  # the fields of an existing parent, else any at that depth
    candidates = [n for n in names if n.count('.') == depth
                  and (parent not in names or n.startswith(parent + '.'))]
    close = difflib.get_close_matches(dotted, candidates, n=1, cutoff=0.6)
    hint = f'; did you mean {close[0]}?' if close else ''
    return (f'--config.{dotted}: no such config field{hint} (every field and its '
            f'default: {os.path.relpath(SCHEMA)}, base_config())')
  return None


def _flag_error(error: flags.Error, config) -> str:
  """absl's message on one line: a missing required flag says what to pass, a
  bad override value the type its field takes."""
  line = str(error).strip().splitlines()[0]
  for name, example in (('config', f'--config={EXAMPLE}'),
                        ('workdir', '--workdir=/tmp/famus_digits')):
    if line.startswith(f'flag --{name}=None'):
      return f'--{name} is required (e.g. {example})'
  flag, _, reason = line[len('flag '):].partition(': ')
  field = flag[len('--config.'):].split('=', 1)[0]
  if flag.startswith('--config.') and config is not None and field in field_names(config):
    kind = type(_lookup(config, field)).__name__
    return f'{flag}: config.{field} takes a value of type {kind} ({reason})'
  return line


def parse_flags(flag_values: flags.FlagValues, argv: list[str]) -> list[str]:
  """`flag_values(argv)` with every error a `CommandLineError` or
  `ConfigFileError` (one line); the config file is read first, so that its own
  errors are named as such."""
  value = flag_value(argv, 'config')
  config = None
  if value is not None:
    path, param = split_config_arg(value)
    if not os.path.isfile(path):
      raise CommandLineError(f'--config={path}: no such config file (the configs are '
                             f'configs/*.py, e.g. --config={EXAMPLE})')
    config = load_config_file(path, param)
  try:
    rest = flag_values(argv)
  except flags.Error as e:
    raise CommandLineError(_flag_error(e, config)) from None
  except Exception as e:  # pylint: disable=broad-except  (config_flags' overrides)
    raise CommandLineError((unknown_override(argv, config) if config else None)
                           or _failure(e)) from None
  if len(rest) > 1:
    raise CommandLineError(f'unexpected argument {rest[1]!r}: every setting is a flag '
                           '(--config=FILE, --workdir=DIR, --config.FIELD=VALUE)')
  return rest
