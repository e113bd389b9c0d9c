"""Experiment configs: every file validates, carries the paper's settings, and
bad values give one-line errors naming the field (before anything compiles)."""

import glob
import importlib.util
import os

import ml_collections
import pytest

from famus_jax import data as data_lib
from famus_jax import train
from famus_jax.alg2 import config as alg2_config
from famus_jax.famus import samplers as samplers_lib
from famus_jax.training import build as build_lib
from famus_jax.training import config as config_lib
from famus_jax.training import schedules
from famus_jax.training.config import ConfigError

CONFIG_DIR = os.path.join(os.path.dirname(__file__), '..', 'configs')
CONFIG_FILES = sorted(glob.glob(os.path.join(CONFIG_DIR, '*.py')))


def load(name):
  return config_lib.load_config(os.path.join(CONFIG_DIR, name))


def test_config_files_exist():
  names = {os.path.basename(p) for p in CONFIG_FILES}
  assert {'digits.py', 'cifar10.py', 'cifar100.py', 'cifar10_l2r.py', 'cifar10_mlc.py',
          'cifar10_lt.py', 'cifar100_lt.py', 'cnwl.py', 'clothing1m.py',
          'webvision.py'} <= names


@pytest.mark.parametrize('path', CONFIG_FILES, ids=os.path.basename)
def test_every_config_validates(path):
  c = config_lib.load_config(path)
  if c.algorithm == 'alg2':  # Algorithm 2 configs: base schema + their own section
    alg2_config.validate(c)
    c = ml_collections.ConfigDict({k: v for k, v in c.items() if k != 'alg2'})
  else:
    config_lib.validate_config(c)
  # the schema is complete: nothing missing compared with the base
  flat = config_lib.flatten(c.to_dict())
  base = config_lib.flatten(config_lib.base_config().to_dict())
  missing = {k for k in base if not k.startswith('model.kwargs')} - set(flat)
  assert not missing


def test_paper_settings():
  c = load('cifar10.py')
  assert (c.model.name, c.data.batch_size, c.optim.lr, tuple(c.optim.boundaries),
          c.optim.num_steps, c.meta.lr, c.meta.k) == ('wrn28_10', 100, 0.05,
                                                      (18000, 19000), 20000, 1e-3, 4)
  c100 = load('cifar100.py')
  assert c100.data.name == 'cifar100' and c100.optim.num_steps == 20000
  l2r = load('cifar10_l2r.py')
  assert (l2r.meta.method, tuple(l2r.optim.boundaries), l2r.optim.num_steps) == (
      'l2r', (40000, 50000), 60000)
  mlc = load('cifar10_mlc.py')
  assert (mlc.model.name, mlc.data.batch_size, mlc.data.meta_per_class, mlc.meta.method,
          mlc.optim.momentum, mlc.optim.weight_decay) == ('wrn40_2', 64, 50, 'mlc', 0.9, 5e-4)
  # CE warm-up at lr 0.1, then MLC at 1e-4 from the warm-up's last epoch on.
  assert (mlc.meta.warmup_epochs, tuple(mlc.optim.boundaries), mlc.optim.lr,
          mlc.optim.decay_factor) == (39, (39,), 0.1, 1e-3)
  assert dict(mlc.meta.model_kwargs) == {'step_size': 0.11, 'inner_lr': 1e-3}
  lt = load('cifar10_lt.py')
  assert (lt.model.name, lt.optim.lr, lt.optim.unit, tuple(lt.optim.boundaries),
          lt.optim.num_epochs, lt.meta.lr, lt.meta.delta, lt.data.meta_per_class) == (
              'resnet32', 0.1, 'epoch', (160, 180), 200, 1e-5, 1e-2, 10)
  c1m = load('clothing1m.py')
  assert (c1m.model.name, c1m.data.batch_size, c1m.optim.lr, c1m.optim.weight_decay,
          c1m.optim.num_epochs) == ('resnet50', 32, 0.002, 1e-3, 150)
  wv = load('webvision.py')
  assert (wv.model.name, wv.data.batch_size, wv.optim.lr) == ('inception_resnet_v2', 16,
                                                              0.02)


# config -> (optim.nesterov, optim.weight_decay, meta.optimizer, meta.lr,
# meta.momentum, meta.nesterov, meta.weight_decay): the official code of each
# setting where the paper is silent (sources in each config file).
OFFICIAL_OPTIMISERS = {
    'cifar10.py': (True, 5e-4, 'sgd', 1e-3, 0.9, True, 5e-4),   # MW-Net WRN-28-10 code
    'cifar100.py': (True, 5e-4, 'sgd', 1e-3, 0.9, True, 5e-4),
    'cifar10_lt.py': (True, 5e-4, 'sgd', 1e-5, 0.9, True, 5e-4),  # class-imbalance code
    'cnwl.py': (True, 5e-4, 'sgd', 1e-3, 0.9, True, 5e-4),      # official FaMUS code
    'cnwl_alg2.py': (True, 5e-4, 'sgd', 1e-3, 0.9, True, 5e-4),
    'clothing1m.py': (True, 1e-3, 'sgd', 1e-3, 0.9, True, 1e-3),
    'webvision_alg2.py': (True, 5e-4, 'sgd', 1e-3, 0.9, True, 5e-4),
    'digits.py': (False, 5e-4, 'adam', 1e-3, 0.9, False, 1e-4),  # ours (README)
}


@pytest.mark.parametrize('name', sorted(OFFICIAL_OPTIMISERS))
def test_optimisers_follow_the_official_codes(name):
  c = load(name)
  got = (c.optim.nesterov, c.optim.weight_decay, c.meta.optimizer, c.meta.lr,
         c.meta.momentum, c.meta.nesterov, c.meta.weight_decay)
  assert got == OFFICIAL_OPTIMISERS[name]


def test_l2r_and_mlc_follow_their_official_codes():
  l2r = load('cifar10_l2r.py')  # the L2R WRN-28-10 prototxt: momentum, wd 2e-4, dropout 0.3
  assert (l2r.optim.nesterov, l2r.optim.weight_decay, l2r.model.kwargs.dropout) == (
      False, 2e-4, 0.3)
  mlc = load('cifar10_mlc.py')  # main.py: plain SGD, restart from the best warm-up model
  assert (mlc.optim.nesterov, mlc.meta.warmup_restart, mlc.meta.warmup_select_every) == (
      False, True, 100)
  for name in ('clothing1m_alg2.py', 'webvision_alg2.py'):  # DivideMix: α 0.5, λ_u 0
    assert (load(name).alg2.ssl.alpha, load(name).alg2.ssl.lambda_u) == (0.5, 0.0)


def _config_module(name):
  spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(CONFIG_DIR, name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('arg, noise, lambda_u, alpha, boundaries', [
    (None, 40, 50.0, 1.5, (230, 280)),
    ('0.2', 20, 50.0, 1.0, (230, 280)),
    ('60', 60, 50.0, 1.5, (130, 230)),
    ('0.8', 80, 100.0, 2.0, (130, 230)),
])
def test_cnwl_alg2_takes_run_famus_sh_values_per_noise_level(arg, noise, lambda_u, alpha,
                                                            boundaries):
  """--config=configs/cnwl_alg2.py:0.6 passes '0.6' to get_config (config_flags)."""
  module = _config_module('cnwl_alg2.py')
  c = module.get_config() if arg is None else module.get_config(arg)
  assert (c.data.cnwl_noise, c.alg2.ssl.lambda_u, c.alg2.ssl.alpha,
          tuple(c.optim.boundaries), c.optim.num_epochs, c.alg2.warmup_epochs) == (
              noise, lambda_u, alpha, boundaries, 330, 30)


def test_cnwl_alg2_rejects_an_unknown_noise_level_in_one_line():
  with pytest.raises(ConfigError, match=r'^configs/cnwl_alg2.py:0.5: the parameter is the '
                                        r'web noise level, one of 20, 40, 60, 80'):
    _config_module('cnwl_alg2.py').get_config('0.5')


def test_clothing1m_starts_from_imagenet_weights_with_a_new_head():
  c = load('clothing1m.py')
  assert (c.model.init_from, c.model.init_exclude) == ('resnet50_imagenet.npz', 'head')
  assert tuple(c.model.kwargs.input_mean) == (0.6959, 0.6537, 0.6371)
  assert load('clothing1m_alg2.py').model.init_from == 'resnet50_imagenet.npz'


def test_eval_batch_size_is_one_field():
  c = load('cifar10.py')
  assert c.train.eval_batch_size == c.data.eval_batch_size == 500
  c.train.eval_batch_size = 100
  assert c.data.eval_batch_size == 100


def test_schedule_piecewise_by_step_and_epoch():
  c = config_lib.base_config()
  c.optim.lr, c.optim.boundaries, c.optim.num_steps = 0.05, (18, 19), 20
  s = schedules.make_lr_schedule(c.optim, steps_per_epoch=7)
  assert [round(float(s(i)), 6) for i in (0, 17, 18, 19)] == [0.05, 0.05, 0.005, 0.0005]
  c.optim.unit, c.optim.num_steps, c.optim.num_epochs = 'epoch', 0, 3
  c.optim.boundaries = (2,)
  s = schedules.make_lr_schedule(c.optim, steps_per_epoch=10)
  assert schedules.num_train_steps(c.optim, 10) == 30
  assert [round(float(s(i)), 6) for i in (19, 20)] == [0.05, 0.005]
  c.optim.schedule, c.optim.boundaries = 'cosine', ()
  s = schedules.make_lr_schedule(c.optim, steps_per_epoch=10)
  assert float(s(0)) == pytest.approx(0.05) and float(s(30)) == pytest.approx(0.0)


def _digits():
  return load('digits.py')


BAD = [
    ('meta.method', 'mw-net', "config.meta.method='mw-net': must be one of"),
    ('meta.sampler', 'famuss', "config.meta.sampler='famuss'"),
    ('optim.lr', -0.1, 'config.optim.lr=-0.1: must be a number in (0'),
    ('optim.momentum', 1.5, 'config.optim.momentum=1.5'),
    ('optim.schedule', 'step', "config.optim.schedule='step'"),
    ('optim.boundaries', (500, 400), 'config.optim.boundaries'),
    ('meta.interval', 0, 'config.meta.interval=0'),
    ('meta.tau', 0.0, 'config.meta.tau=0.0'),
    ('meta.candidate_layers', 'top:x', "config.meta.candidate_layers='top:x'"),
    ('data.noise_rate', 1.5, 'config.data.noise_rate=1.5'),
    ('data.name', 'mnist', "config.data.name='mnist'"),
    ('model.name', 'vgg', "config.model.name='vgg'"),
    ('train.log_every', 0, 'config.train.log_every=0'),
]


@pytest.mark.parametrize('field,value,message', BAD, ids=[b[0] for b in BAD])
def test_bad_values_name_the_field(field, value, message):
  c = _digits()
  node = c
  *parents, last = field.split('.')
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[last] = value
  with pytest.raises(ConfigError) as e:
    config_lib.validate_config(c)
  assert message in str(e.value)
  assert '\n' not in str(e.value)


def test_exactly_one_run_length():
  c = _digits()
  other = 'num_epochs' if c.optim.unit == 'step' else 'num_steps'
  c.optim[other] = 3
  with pytest.raises(ConfigError, match=f'config.optim.{other}=3: must be 0 with'):
    config_lib.validate_config(c)


def test_unknown_field():
  c = _digits()
  c.meta.unlock()
  c.meta.kk = 3
  with pytest.raises(ConfigError, match=r'config.meta.kk: unknown field'):
    config_lib.validate_config(c)


def test_combinations():
  c = _digits()
  c.meta.method = 'ce'  # its meta.sampler ('famus' here) is ignored, not an error
  config_lib.validate_config(c)
  parts = build_lib.build(c, num_classes=10, image_shape=(8, 8, 1))
  assert (parts.sampler, parts.scope) == (None, None)
  c = _digits()
  c.data.meta_per_class = 0
  with pytest.raises(ConfigError, match='config.data.meta_per_class=0'):
    config_lib.validate_config(c)


def test_model_kwargs_error():
  c = _digits()
  c.model.kwargs.unlock()
  c.model.kwargs.widht = 3
  with pytest.raises(ConfigError, match=r"config.model .*widht"):
    build_lib.build_model(c, 10)


def test_k_larger_than_candidate_layers():
  c = _digits()
  c.meta.candidate_layers = 'top:3'
  c.meta.k = 4
  with pytest.raises(ConfigError, match=r'config.meta.k=4 .*3 candidate layers'):
    build_lib.build(c, num_classes=10, image_shape=(8, 8, 1))
  c.meta.k = 3
  parts = build_lib.build(c, num_classes=10, image_shape=(8, 8, 1))
  assert parts.sampler.num_layers == 3 and parts.scope is not None


@pytest.mark.parametrize('sampler', ['famus', 'block'])
def test_the_builder_lists_the_layers_and_checks_the_sampler_once(monkeypatch, sampler):
  """One build: the network's layers listed once (candidates, scope and sampler
  from the one list), the sampler's name checked once."""
  calls = {'layers': 0, 'name': 0}
  layers, check = samplers_lib.layers_lib.network_layers, samplers_lib.check_sampler_name

  def count(key, fn):
    def counted(*args, **kwargs):
      calls[key] += 1
      return fn(*args, **kwargs)
    return counted
  monkeypatch.setattr(samplers_lib.layers_lib, 'network_layers', count('layers', layers))
  monkeypatch.setattr(samplers_lib, 'check_sampler_name', count('name', check))
  c = _digits()
  c.meta.sampler = sampler
  parts = build_lib.build(c, num_classes=10, image_shape=(8, 8, 1))
  assert (parts.sampler is None) == (sampler == 'block')
  assert (parts.scope is None) == (sampler == 'famus')
  assert calls == {'layers': 1, 'name': 1}


@pytest.fixture(scope='module')
def digits_splits():
  return data_lib.load_dataset(_digits().data, 0)


def _validate_against_data(c, splits, num_devices):
  limits = train.algorithm_class(c)(c).size_limits(splits)
  config_lib.validate_against_data(c, splits, num_devices, limits)


def test_batch_larger_than_data(digits_splits):
  c = _digits()
  c.data.batch_size = 5000
  with pytest.raises(ConfigError, match=r'config.data.batch_size=5000: larger than the '
                     r'training split \(1247 examples\); must be <= 1247'):
    _validate_against_data(c, digits_splits, 1)
  c = _digits()
  c.data.meta_batch_size = 101
  with pytest.raises(ConfigError, match=r'config.data.meta_batch_size=101: .*<= 100'):
    _validate_against_data(c, digits_splits, 1)
  c = _digits()
  c.data.batch_size = 63
  with pytest.raises(ConfigError, match=r'config.data.batch_size=63: must be a multiple '
                     r'of the number of devices \(2\)'):
    _validate_against_data(c, digits_splits, 2)
  c = _digits()
  c.model.num_classes = 7
  with pytest.raises(ConfigError, match=r'config.model.num_classes=7'):
    _validate_against_data(c, digits_splits, 1)


def test_validation_happens_before_any_compile(tmp_path, monkeypatch):
  """A bad value fails in train_and_evaluate before a step function exists."""
  monkeypatch.setattr(build_lib.Parts, 'strategy', lambda *a, **k: pytest.fail('compiled'))
  c = _digits()
  c.data.batch_size = 5000
  with pytest.raises(ConfigError, match='config.data.batch_size=5000'):
    train.train_and_evaluate(c, str(tmp_path))
  c = _digits()
  c.meta.k = 99
  with pytest.raises(ConfigError, match='config.meta.k=99'):
    train.train_and_evaluate(c, str(tmp_path / 'k'))


def test_missing_dataset_gives_loader_error(tmp_path):
  c = load('cifar10.py')
  c.data.data_dir = str(tmp_path / 'nowhere')
  with pytest.raises(data_lib.DatasetMissingError) as e:
    train.train_and_evaluate(c, str(tmp_path / 'run'))
  assert 'tfds build cifar10' in str(e.value) and '\n' not in str(e.value)


def test_resume_guard(tmp_path):
  saved = config_lib.config_to_dict(_digits())
  other = _digits()
  other.optim.lr = 0.2
  assert config_lib.resume_conflicts(saved, other.to_dict()) == ['optim.lr']
  other = _digits()
  other.train.log_every = 7
  assert config_lib.resume_conflicts(saved, other.to_dict()) == []
