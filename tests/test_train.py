"""End-to-end training on the bundled digits: outputs, exact resume, data parallelism."""
import json
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import digits
from mixer_jax import trainer
from mixer_jax.errors import UserError
from training import (ROOT, SMALL_MODEL, SMALL_MODEL_FLAGS, error_line, restore_params,
                      run_train_py, small_config)
from test_input_pipeline import class_unknown_to_train, folder_config, make_image_folder

def test_training_learns_and_writes_metrics_checkpoints_and_results(tmp_path, monkeypatch):
  # A clock on which each evaluation and checkpoint save takes 1000 s more: steps_per_sec, the
  # rate of training, leaves them out (a window of 10 steps after one fell to 0.005).
  clock, late = time.perf_counter, [0.0]
  monkeypatch.setattr(time, 'perf_counter', lambda: clock() + late[0])
  def slow(work):
    def slowed(*args, **kwargs):
      late[0] += 1000
      return work(*args, **kwargs)
    return slowed
  monkeypatch.setattr(trainer, 'evaluate', slow(trainer.evaluate))
  monkeypatch.setattr(trainer.ckpt._Manager, 'save', slow(trainer.ckpt._Manager.save))
  results = trainer.train_and_evaluate(small_config(total_steps=60), str(tmp_path))
  assert results['test_accuracy'] > 0.6  # chance is 0.1
  assert json.loads((tmp_path / 'results.json').read_text()) == results
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  train = [r for r in records if r['split'] == 'train']
  assert [r['step'] for r in train] == [10, 20, 30, 40, 50, 60]
  assert train[-1]['loss'] < train[0]['loss']
  assert min(r['steps_per_sec'] for r in train) > 0.1, train
  # The rate the logged step used (of the schedule at step - 1): warmup to 3e-3 over 10 steps,
  # then a cosine over the other 50.
  rate = lambda t: 3e-3 * (t / 10 if t < 10 else 0.5 * (1 + math.cos(math.pi * (t - 10) / 50)))
  np.testing.assert_allclose([r['learning_rate'] for r in train],
                             [rate(r['step'] - 1) for r in train], rtol=1e-5)
  assert [r['step'] for r in records if r['split'] == 'test'] == [20, 40, 60]
  assert list(tmp_path.glob('events.out.tfevents.*'))
  assert sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir()) == [20, 40, 60]


def test_eight_devices_train_like_one(tmp_path):
  # SGD, not Adam: the token-mixing output biases get an exactly-zero gradient (the next
  # LayerNorm removes per-token constants), and Adam would blow its rounding noise up to lr.
  overrides = dict(total_steps=10, warmup_steps=2, checkpoint_every=10, eval_every=100,
                   optimizer='sgd', learning_rate=0.1)
  code, out = run_train_py(tmp_path / 'eight', *[f'--config.{k}={v}' for k, v in overrides.items()],
                           *SMALL_MODEL_FLAGS, devices=8)
  assert code == 0, out
  [record] = [json.loads(line) for line in open(tmp_path / 'eight' / 'metrics.jsonl')
              if '"train"' in line]  # the global batch of 128 over 8 devices
  assert record['images_per_sec_per_device'] == pytest.approx(record['steps_per_sec'] * 128 / 8)
  trainer.train_and_evaluate(small_config(**overrides), str(tmp_path / 'one'))
  eight, one = restore_params(tmp_path / 'eight', 10), restore_params(tmp_path / 'one', 10)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), eight, one)
  # A run preempted on 8 devices resumes on 1 (another machine) as if it had never moved.
  for run in ('eight', 'one'):
    trainer.train_and_evaluate(small_config(**{**overrides, 'total_steps': 20}),
                               str(tmp_path / run))
  eight, one = restore_params(tmp_path / 'eight', 20), restore_params(tmp_path / 'one', 20)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), eight, one)


def test_batch_that_does_not_split_over_devices_is_a_clear_error(tmp_path):
  code, out = run_train_py(tmp_path, '--config.batch_size=12', devices=8)
  assert code != 0
  assert 'batch_size=12 does not divide evenly over 8 devices' in out
  assert 'multiple of 8' in out


def wait_for(path, proc, timeout=240):
  deadline = time.time() + timeout
  while not path.exists():
    assert proc.poll() is None, proc.communicate()[0]
    assert time.time() < deadline, f'{path} did not appear'
    time.sleep(0.2)


def test_killed_run_resumes_and_ends_like_an_uninterrupted_one(tmp_path):
  overrides = dict(total_steps=80, warmup_steps=10, checkpoint_every=20, eval_every=1000)
  flags = [f'--config.{k}={v}' for k, v in overrides.items()] + SMALL_MODEL_FLAGS
  proc = run_train_py(tmp_path / 'killed', *flags, wait=False)
  try:
    wait_for(tmp_path / 'killed' / 'checkpoints' / '40', proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  finally:
    proc.kill()
  assert not (tmp_path / 'killed' / 'results.json').exists()

  code, out = run_train_py(tmp_path / 'killed', *flags)
  assert code == 0, out
  resumed_at = int(re.search(r'Resumed from .* at step (\d+)', out).group(1))
  assert 40 <= resumed_at < 80
  assert json.loads((tmp_path / 'killed' / 'results.json').read_text())['step'] == 80
  trainer.train_and_evaluate(small_config(**overrides), str(tmp_path / 'whole'))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               restore_params(tmp_path / 'killed', 80), restore_params(tmp_path / 'whole', 80))


def test_a_resumed_run_logs_each_step_once(tmp_path, caplog):
  caplog.set_level('INFO')
  config = small_config(total_steps=40)
  config.model.update(num_blocks=1, hidden_dim=16)  # compiles fast
  trainer.train_and_evaluate(config, str(tmp_path))
  metrics = tmp_path / 'metrics.jsonl'
  whole = [json.loads(line) for line in metrics.read_text().splitlines()]
  # As if killed after logging step 40 (and while writing one more line), before its checkpoint.
  shutil.rmtree(tmp_path / 'checkpoints' / '40')
  with metrics.open('a') as f:
    f.write('{"step": 4')

  trainer.train_and_evaluate(config, str(tmp_path))
  resumed = [json.loads(line) for line in metrics.read_text().splitlines()]
  repeated = sum(r['step'] > 20 for r in whole)
  assert ('metrics.jsonl: dropped 1 line(s) that were not whole records, as a run stopped while '
          'writing one leaves.') in caplog.text
  assert f'metrics.jsonl: dropped {repeated} records of steps after 20, which' in caplog.text
  assert [(r['step'], r['split']) for r in resumed] == [(r['step'], r['split']) for r in whole]
  assert [(20, 'train'), (20, 'test')] == [(r['step'], r['split']) for r in whole[1:3]]
  for a, b in zip(resumed, whole):
    np.testing.assert_allclose(a['loss'], b['loss'], rtol=1e-6)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
  proc = run_train_py(tmp_path, '--config.total_steps=5000', '--config.checkpoint_every=4000',
                      '--config.log_every=5', *SMALL_MODEL_FLAGS, wait=False)
  try:
    wait_for(tmp_path / 'metrics.jsonl', proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 128 + signal.SIGTERM, out  # unfinished, for a scheduler to rerun
  stopped_at = int(re.search(r'Stopped at step (\d+) on SIGTERM; the checkpoint is saved in '
                             rf'{tmp_path}\. Run the same command to resume\.', out).group(1))
  assert 5 <= stopped_at < 4000
  assert [p.name for p in (tmp_path / 'checkpoints').iterdir()] == [str(stopped_at)]
  assert restore_params(tmp_path, stopped_at)['head']['kernel'].shape == (64, 10)
  assert not (tmp_path / 'results.json').exists()


def test_divergence_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
  trainer.train_and_evaluate(small_config(total_steps=20), str(tmp_path))
  with pytest.raises(FloatingPointError, match=r'diverged at step 2\d: loss (nan|inf).*'
                     r'newest checkpoint, step 20, holds the last good state.*resumes from '
                     r'that step'):
    trainer.train_and_evaluate(small_config(total_steps=40, learning_rate=1e30), str(tmp_path))
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['20']
  with pytest.raises(FloatingPointError, match=r'No checkpoint was saved\..*starts from the '
                                               r'beginning'):  # nothing to resume: not said
    trainer.train_and_evaluate(small_config(total_steps=40, learning_rate=1e30),
                               str(tmp_path / 'fresh'))
  params = restore_params(tmp_path, 20)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize('flags, message', [
    # The config file and its fields.
    (['--config.foo=1'], r'--config.foo: no such field in configs/digits.py\. Its fields are: '
                         r'.*batch_size'),
    (['--config.dataset.image_size=30'], r'--config.dataset.image_size: no such field'),
    (['--config', 'configs/finetune.py:B/16,cifar10', '--config.lr=1'],
     r'--config.lr: no such field in configs/finetune.py:B/16,cifar10. Its fields are: .*'
     r'learning_rate'),
    (['--config.total_steps=3', '--config', 'configs/finetune.py:S/32,digits'],
     r'--config.total_steps=3 comes before --config: give --config=configs/finetune.py:S/32,'
     r'digits first, then the --config.<field>=<value> settings'),  # config_flags: no fix named
    (['--config=configs/finetune.py:S/32,digits'], r'This recipe fine-tunes pre-trained '
                                                   r'weights, and init_from is not set'),
    (['--config=configs/nope.py'], r'--config=configs/nope.py: no such file'),
    (['--config=configs'], r'--config=configs is a folder, not a recipe\. The recipes are the '
                           r'files in configs/, e\.g\. --config=configs/digits\.py'),
    (['--config=README.md'], r'--config=README.md is not a recipe: give a Python file with '
                             r'get_config\(\)'),  # e.g. a run's config.json
    (['--config=configs/cifar10_scratch.py:x'], r'--config=configs/cifar10_scratch.py:x cannot '
                                                r'build its config: ValueError: .*a patch size '
                                                r'that divides 32'),
    # Values (tests/test_validation.py has every kind, in-process).
    (['--config.batch_size=abc'], r'--config.batch_size=abc: invalid literal'),
    (['--config.keep_checkpoints=0'], r'keep_checkpoints=0: at least the newest checkpoint'),
    (['--config.dataset=imagenet'], r"Unknown dataset 'imagenet': use digits, folder"),
    (['--config.dataset=cifar-10'], r"Unknown dataset 'cifar-10': use digits"),  # not a name
    # Launch settings, paths and files.
    # absl guessed its own --log_dir and --logger_levels, which train.py neither uses nor lists.
    (['--logdir=runs/mine'], r"^error: Unknown command line flag 'logdir' \(--help lists the "
                             r"flags\)\.$"),
    (['--num_processes=2'], r'needs --coordinator_address'),
    (['--num_processes=2', '--process_id=2'], r'--process_id=2 with --num_processes=2: give each '
                                              r'process an id from 0 to 1'),
    (['--workdir=/dev/null/run'], r'The workdir /dev/null/run cannot be created or written'),
    (['--workdir=/etc/hostname'], r'The workdir /etc/hostname is a file, not a folder'),
    # An unset shell variable: before, the run went to runs/digits and could resume another's.
    (['--workdir='], r'--workdir is empty \(an unset variable in the command\?\)'),
    (['runs/mine'], r'Unexpected arguments: runs/mine: settings are --config.<field>=<value>, '
                    r"the run's folder --workdir=DIR\."),
    (['--config.init_from=/nowhere/Mixer-B_16.npz'], r'init_from=/nowhere/Mixer-B_16.npz does not '
                                                     r'exist: give an .npz, .pth'),
    (['--config.init_from=/etc/hostname'], r'init_from=/etc/hostname is a file of unknown kind'),
])
def test_bad_input_is_one_error_line_before_any_step_and_without_traceback(tmp_path, flags,
                                                                           message):
  code, out = run_train_py(tmp_path, *flags)
  assert code == 1 and re.search(message, error_line(out)), out
  assert not (tmp_path / 'checkpoints').exists() and not (tmp_path / 'metrics.jsonl').exists()


def test_a_run_that_stops_before_writing_anything_leaves_no_workdir_behind(tmp_path):
  with pytest.raises(UserError, match='does not exist'):
    trainer.train_and_evaluate(small_config(init_from=str(tmp_path / 'nowhere.npz')),
                               str(tmp_path / 'new' / 'run'))
  assert not (tmp_path / 'new' / 'run').exists()
  weights = trainer.train_and_evaluate(small_config(total_steps=2, checkpoint_every=2),
                                       str(tmp_path / 'weights'))
  wider = small_config(init_from=str(tmp_path / 'weights'))
  wider.model.hidden_dim = 96  # the weights' are 64: they do not fit, found after checkpoints/
  with pytest.raises(UserError, match='do not fit'):
    trainer.train_and_evaluate(wider, str(tmp_path / 'new' / 'run'))
  assert not (tmp_path / 'new' / 'run').exists()
  (tmp_path / 'mine').mkdir()  # a folder the user made is theirs, empty or not
  with pytest.raises(UserError, match='does not exist'):
    trainer.train_and_evaluate(small_config(init_from=str(tmp_path / 'nowhere.npz')),
                               str(tmp_path / 'mine'))
  assert (tmp_path / 'mine').is_dir()


def test_running_out_of_memory_is_one_error_naming_what_to_change(tmp_path):
  # 65,536 synthetic images of 224x224 are 39 GB: more than this machine (or CI) can allocate.
  # The smoke model: the images alone are too many, and it compiles in seconds.
  code, out = run_train_py(tmp_path, '--config=configs/synthetic.py:S/32,smoke',
                           '--config.image_size=224', '--config.batch_size=65536',
                           '--config.total_steps=2')
  assert code == 1 and 'Traceback' not in out, out
  last = out.strip().splitlines()[-1]
  assert last.startswith('error: Out of device memory (') and 'batch_size=65536' in last, out
  assert 'grad_accum_steps' in last and 'model.remat=True' in last


def test_running_out_of_memory_in_evaluation_names_eval_batch_size(tmp_path):
  # Training's batches of 8 fit; the evaluation's 65,536 images (39 GB) do not.
  code, out = run_train_py(tmp_path, '--config=configs/synthetic.py:S/32,smoke',
                           '--config.image_size=224', '--config.batch_size=8',
                           '--config.eval_batch_size=65536', '--config.total_steps=2')
  assert code == 1 and 'Traceback' not in out, out
  last = out.strip().splitlines()[-1]
  assert last.startswith('error: Out of device memory (') and 'eval_batch_size=65536' in last, out
  assert 'lower eval_batch_size' in last and 'grad_accum_steps' not in last
  assert (tmp_path / 'checkpoints' / '2').is_dir()  # the training is kept


def test_ctrl_c_while_train_py_starts_ends_it_quietly(tmp_path):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.Popen([sys.executable, str(ROOT / 'train.py'), f'--workdir={tmp_path / "run"}'],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.time() + 60
    while '_jax.so' not in pathlib.Path(f'/proc/{proc.pid}/maps').read_text():  # importing jax
      assert time.time() < deadline and proc.poll() is None
      time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
  finally:
    proc.kill()
  # Before, Python unwound the half-imported jaxlib: a segmentation fault, or a traceback.
  assert proc.returncode == 130 and out.strip().splitlines()[-1] == 'Interrupted (Ctrl-C).', out
  assert 'Traceback' not in out and not (tmp_path / 'run').exists()


def test_sigterm_during_start_up_releases_the_workdir_and_exits_143(tmp_path):
  """Preempted before its first step: the lock goes with the run, or a retry on another host
  is refused for the heartbeat's 120 s."""
  workdir = tmp_path / 'run'
  # Weights that never finish arriving (as from slow storage): reading a pipe that nothing
  # writes holds the run in start-up however late the signal comes.
  weights = tmp_path / 'slow.npz'
  os.mkfifo(weights)
  proc = run_train_py(workdir, f'--config.init_from={weights}', *SMALL_MODEL_FLAGS, wait=False)
  try:
    wait_for(workdir / 'lock.json', proc)  # the workdir is claimed; the weights are being read
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 128 + signal.SIGTERM, out  # before: killed, -15
  assert out.strip().splitlines()[-1] == 'Terminated (SIGTERM).' and 'Traceback' not in out, out
  assert not workdir.exists()  # it held only the lock: nothing had trained


def test_a_failed_checkpoint_write_stops_the_run_in_one_line_and_the_rerun_resumes(tmp_path):
  settings = dict(checkpoint_every=10, log_every=5, eval_every=1000)
  flags = ['--config.total_steps=20', *[f'--config.{k}={v}' for k, v in settings.items()],
           *SMALL_MODEL_FLAGS]
  config = digits.get_config()  # the same run's first 10 steps, in this process (no start-up)
  config.update(settings, total_steps=10)
  config.model.update(SMALL_MODEL)
  trainer.train_and_evaluate(config, str(tmp_path))
  # The checkpoint's data files are over 100 kB; metrics and config files stay far below 64 kB.
  code, out = run_train_py(tmp_path, *flags, file_kib=64)
  # Before: 470 lines of orbax's and asyncio's tracebacks, and only at the next save.
  assert code == 1 and error_line(out) == (
      f'error: Writing a checkpoint to {tmp_path / "checkpoints"} failed (File too large), so the '
      'run stopped. Free space there (keep_checkpoints sets how many checkpoints are kept) or '
      'restore access, then run the same command: it resumes from the checkpoint of step 10.'), out
  assert out.rstrip().endswith(error_line(out)), out  # nothing after it
  assert 'exception was never retrieved' not in out and ' E1' not in out, out
  code, out = run_train_py(tmp_path, *flags)
  assert code == 0 and 'Resumed from' in out and 'at step 10' in out, out
  assert 'Removing 1 unfinished checkpoint write(s)' in out, out
  assert sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir()) == [10, 20]


def test_a_failed_metrics_write_stops_the_run_in_one_line(tmp_path):
  flags = ['--config.total_steps=40', '--config.log_every=1', '--config.checkpoint_every=1000',
           '--config.warmup_steps=1', *SMALL_MODEL_FLAGS]
  code, out = run_train_py(tmp_path, *flags, file_kib=2)  # ~13 records
  # Before: clu's AsyncError ("Consider re-running the code without AsyncWriter") and tracebacks.
  assert code == 1 and re.fullmatch(
      rf'error: Writing the metrics to {tmp_path} failed \({tmp_path}/\S+; File too large\), '
      r'so the run stopped\. .* it starts again, as no checkpoint was complete\.',
      error_line(out)), out
  assert ' E1' not in out, out  # clu's thread reported it too, with a traceback


def test_a_second_run_on_a_busy_workdir_refuses_and_ctrl_c_stops_the_first_with_a_checkpoint(
    tmp_path):
  # No evaluation before the stop: its record would share a step with a training record.
  flags = ['--config.total_steps=5000', '--config.checkpoint_every=4000', '--config.log_every=5',
           '--config.eval_every=4000', *SMALL_MODEL_FLAGS]
  first = run_train_py(tmp_path, *flags, wait=False)
  try:
    wait_for(tmp_path / 'metrics.jsonl', first)
    code, out = run_train_py(tmp_path, *flags)  # the same command again, as a retry would
    first.send_signal(signal.SIGINT)
    first_out, _ = first.communicate(timeout=120)
  finally:
    first.kill()
  assert code == 1 and re.search(rf'error: {tmp_path} is in use by another run: process '
                                 rf'{first.pid} on host \S+, started .*, heartbeat \d+ s ago',
                                 error_line(out)), out
  assert first.returncode == 128 + signal.SIGINT, first_out
  stopped_at = int(re.search(r'Stopped at step (\d+) on SIGINT', first_out).group(1))
  assert [p.name for p in (tmp_path / 'checkpoints').iterdir()] == [str(stopped_at)]
  records = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  steps = [json.loads(line)['step'] for line in records]
  assert steps == sorted(set(steps))  # one writer
  assert not (tmp_path / 'lock.json').exists()


def no_test_folder(root):
  shutil.rmtree(root / 'test')
  return root


@pytest.mark.parametrize('damage, message', [
    (no_test_folder, r'Image folder .*/data/test does not exist'),
    (class_unknown_to_train, r"Class folder 'lion' of .*test is missing from the training"),
])
def test_an_evaluation_split_that_cannot_be_read_stops_the_run_before_training(
    tmp_path, damage, message):
  config = folder_config(damage(make_image_folder(tmp_path / 'data')))
  with pytest.raises(UserError, match=message):
    trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()  # nothing written, not even the workdir


def test_a_resume_names_changed_settings_and_a_run_past_total_steps_keeps_its_step(
    tmp_path, monkeypatch, caplog):
  monkeypatch.setenv('HOME', str(tmp_path))
  config = small_config(dataset='synthetic', num_classes=10, total_steps=10, checkpoint_every=10)
  config.model.update(num_blocks=1, hidden_dim=16)  # compiles fast
  trainer.train_and_evaluate(config, '~/run')
  assert (tmp_path / 'run' / 'checkpoints' / '10').is_dir()  # ~ is the home folder
  config.update(dict(total_steps=5, learning_rate=0.01))
  results = trainer.train_and_evaluate(config, '~/run')
  assert ("This run's last checkpoint is evaluated with settings that differ from those it was "
          'started with (config.json, kept): learning_rate: 0.003 -> 0.01; total_steps: 10 -> 5'
          ) in caplog.text
  assert ('warmup_steps=10 is not below total_steps=5: the learning rate rises for the whole '
          'run, to 0.005 (0.5 x learning_rate=0.01) at its last step') in caplog.text
  assert 'The checkpoint is at step 10, total_steps is 5: evaluating it without training' in (
      caplog.text)
  assert results['step'] == 10
  assert json.loads((tmp_path / 'run' / 'results.json').read_text())['step'] == 10
  # config.json stays the record of the training; the new evaluation replaces the old one.
  assert json.loads((tmp_path / 'run' / 'config.json').read_text())['total_steps'] == 10
  records = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').open()]
  assert [(r['step'], r['split']) for r in records] == [(10, 'train'), (10, 'test')]


def test_a_damaged_config_json_is_named_and_the_resume_goes_on_and_rewrites_it(tmp_path, caplog):
  config = small_config(dataset='synthetic', num_classes=10, total_steps=10, checkpoint_every=10)
  config.model.update(num_blocks=1, hidden_dim=16)  # compiles fast
  trainer.train_and_evaluate(config, tmp_path)
  saved = tmp_path / 'config.json'
  whole = saved.read_text()
  saved.write_text(whole[:len(whole) // 2])  # as a run killed while writing it left it (before)
  config.total_steps = 15
  results = trainer.train_and_evaluate(config, tmp_path)  # before: a JSONDecodeError traceback
  assert results['step'] == 15
  assert re.search(rf'{saved} is not the settings of a run \(.*\): a run writes that file .* '
                   r'This run cannot list the settings it was started with, and goes on with '
                   r'those given\.', caplog.text), caplog.text
  assert caplog.text.count('is not the settings of a run') == 1
  assert json.loads(saved.read_text())['total_steps'] == 15
  assert not (tmp_path / 'config.json.tmp').exists()


@pytest.mark.slow
def test_default_digits_run_reaches_95_percent(tmp_path):
  """The README's first command, as a user runs it: `python train.py` with no flags.

  On one device; test_eight_devices_train_like_one shows that eight give the same parameters.
  """
  start = time.time()
  code, out = run_train_py(tmp_path)
  assert code == 0, out
  accuracy = float(re.search(r'Final test accuracy: ([0-9.]+)', out).group(1))
  assert accuracy >= 0.95
  assert json.loads((tmp_path / 'results.json').read_text())['test_accuracy'] == pytest.approx(
      accuracy, abs=1e-4)
  # Log lines start lines of their own: they ran on from the progress bar's line.
  assert 'step/s' in out
  assert not re.findall(r'[^\n]([IWE]\d{4} [\d:.]+ +\d+ \S+:\d+\] .*)', out)
  assert time.time() - start < 300


def test_image_folder_trains_and_evaluates_through_train_py(tmp_path):
  root = make_image_folder(tmp_path / 'data')
  for split in ('train', 'test'):
    (root / split / 'dog' / 'broken.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
  code, out = run_train_py(
      tmp_path / 'run', '--config.dataset=folder', f'--config.data_dir={root}',
      '--config.batch_size=4', '--config.eval_batch_size=4', '--config.total_steps=40',
      '--config.warmup_steps=5', '--config.log_every=10', '--config.eval_every=20')
  assert code == 0, out
  accuracy = float(re.search(r'Final test accuracy: ([0-9.]+)', out).group(1))
  assert accuracy >= 0.75  # 12 test images of 3 classes; chance is 1/3
  # Each split is decoded once, however often the run reads it (classes, stream, 2 evaluations).
  for split in ('train', 'test'):
    assert out.count(f'Skipped 1 corrupt or unreadable image(s) in {root / split}:') == 1, out
  # The test split is decoded at start, not only listed: its count there leaves the bad file out.
  assert out.count(f'{root / "test"}: 12 images of 3 classes.') == 1, out
  assert f'{root / "test"}: 13 images' not in out


def test_fine_tuning_at_twice_the_resolution_with_one_command(tmp_path, caplog):
  at16 = trainer.train_and_evaluate(small_config(total_steps=100), str(tmp_path / 'at16'))
  fine_tune = dict(image_size=32, warmup_steps=5, learning_rate=2e-3)
  code, out = run_train_py(tmp_path / 'at32', f'--config.init_from={tmp_path / "at16"}',
                           *SMALL_MODEL_FLAGS, '--config.total_steps=50',
                           *[f'--config.{k}={v}' for k, v in fine_tune.items()])
  assert code == 0, out
  assert 'Fine-tuning at 2x the resolution' in out and 'expanded to 4 block-diagonal' in out
  accuracy = float(re.search(r'Final test accuracy: ([0-9.]+)', out).group(1))
  assert accuracy >= min(0.9, at16['test_accuracy'] - 0.05)  # keeps what it learnt at 16x16
  # The same settings, longer (in this process: the resumes are the trainer's), resume from the
  # run's own (expanded) checkpoint: the weights it started from are no longer needed.
  shutil.move(tmp_path / 'at16', tmp_path / 'elsewhere')
  config = digits.get_config()
  config.model.update(SMALL_MODEL)
  config.update(fine_tune, total_steps=52, init_from=str(tmp_path / 'at16'))
  caplog.set_level('INFO', logger='absl')
  trainer.train_and_evaluate(config, str(tmp_path / 'at32'))
  assert re.search(rf'Resumed from .* at step 50 \(init_from={tmp_path / "at16"} is not read: the '
                   r'checkpoint holds the run\)\.', caplog.text), caplog.text
  assert 'Fine-tuning at 2x' not in caplog.text
  # Without init_from too: the checkpoint's width says it is a fine-tune (a shape error before).
  caplog.clear()
  config.update(total_steps=54, init_from='')
  trainer.train_and_evaluate(config, str(tmp_path / 'at32'))
  assert 'Resumed from' in caplog.text and 'at step 52 (init_from=' in caplog.text, caplog.text
  assert 'token-mixing MLPs are 4 times model.tokens_mlp_dim=32 wide' in caplog.text
  # The run's record still names the weights it started from (before: init_from -> '').
  saved = json.loads((tmp_path / 'at32' / 'config.json').read_text())
  assert saved['init_from'] == str(tmp_path / 'at16') and saved['total_steps'] == 54
  assert 'init_from:' not in caplog.text


def test_gradient_accumulation_gives_the_update_of_the_whole_batch(tmp_path):
  # SGD, as in test_eight_devices_train_like_one.
  overrides = dict(total_steps=10, warmup_steps=2, checkpoint_every=10, eval_every=100,
                   optimizer='sgd', learning_rate=0.1)
  trainer.train_and_evaluate(small_config(**overrides), str(tmp_path / 'whole'))
  trainer.train_and_evaluate(small_config(grad_accum_steps=4, **overrides), str(tmp_path / 'acc'))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               restore_params(tmp_path / 'acc', 10), restore_params(tmp_path / 'whole', 10))
  with pytest.raises(UserError, match=r'per-device batch \(128\) does not split into '
                     r'grad_accum_steps=3'):
    trainer.train_and_evaluate(small_config(grad_accum_steps=3), str(tmp_path / 'bad'))


def test_a_config_path_starting_with_a_tilde_is_in_the_home_folder(tmp_path):
  (tmp_path / 'mine.py').write_text((ROOT / 'configs' / 'digits.py').read_text())
  run = subprocess.run(
      [sys.executable, str(ROOT / 'train.py'), '--config=~/mine.py', '--config.batch_size=0',
       f'--workdir={tmp_path / "run"}'], cwd=ROOT, capture_output=True, text=True, timeout=120,
      env={**os.environ, 'HOME': str(tmp_path), 'JAX_PLATFORMS': 'cpu'})
  # The file was found and built: the override is what stops it, before anything is written.
  assert run.returncode == 1 and 'Traceback' not in run.stderr
  assert run.stderr.strip().splitlines()[-1].startswith('error: batch_size=0: must be a positive')
  assert not (tmp_path / 'run').exists()
